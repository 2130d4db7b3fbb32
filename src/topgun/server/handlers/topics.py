"""Ephemeral pub/sub topics (PROTOCOL.md §4.8, §5.12, §5.15).

``TOPIC_SUB`` / ``TOPIC_UNSUB`` add or remove the connection to a topic's
subscribers, silently. ``TOPIC_PUB`` fans one ``TOPIC_MESSAGE`` out to every
subscriber except the publishing connection; the message is encoded once and
the same frame is queued on every subscriber. Nothing is stored and delivery
is at most once. A bad topic name is answered with ``ERROR`` 400.

Usage::

    topics = TopicRegistry()
    topics.install(server)        # registers the three processors
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any

from topgun.errors import ProtocolError
from topgun.protocol import codec
from topgun.protocol.messages import MessageType, TopicMessage, TopicPub, TopicSub, TopicUnsub
from topgun.server.interfaces import RequestContext

__all__ = ["MAX_NAME_LENGTH", "NAME_PATTERN", "TopicRegistry", "check_name", "is_valid_name"]

log = logging.getLogger("topgun.server.topics")

#: Longest topic or lock name (PROTOCOL Appendix B).
MAX_NAME_LENGTH = 256
#: Topic and lock names: 1-256 characters of ``A-Z a-z 0-9 _ - . : /`` (PROTOCOL §4.8, Appendix B).
NAME_PATTERN = re.compile(r"[A-Za-z0-9_\-.:/]{1,256}")

# Key of the per-connection set of subscribed topics in ``ctx.data``.
_CTX_KEY = "topgun.topics"


def is_valid_name(name: object) -> bool:
    """True when ``name`` is a valid topic or lock name."""
    return isinstance(name, str) and NAME_PATTERN.fullmatch(name) is not None


def check_name(name: object, what: str = "topic") -> str:
    """Return ``name`` or raise :class:`ProtocolError` (code 400) when it is not a valid name."""
    if not is_valid_name(name):
        shown = name if not isinstance(name, str) or len(name) <= 64 else name[:64] + "…"
        raise ProtocolError(
            f"invalid {what} name {shown!r}: 1-{MAX_NAME_LENGTH} characters of A-Z a-z 0-9 _ - . : /",
            code=400,
            field=what,
        )
    return name  # type: ignore[return-value]


def _wall_millis() -> int:
    return time.time_ns() // 1_000_000


class TopicRegistry:
    """Topic name → subscribed connections; the processor of ``TOPIC_SUB``/``TOPIC_UNSUB``/``TOPIC_PUB``."""

    def __init__(self, *, encode: Any = None) -> None:
        self._subs: dict[str, dict[int, RequestContext]] = {}
        self._encode = encode if encode is not None else codec.encode
        #: messages fanned out (one per receiving connection), for metrics and tests
        self.delivered = 0
        #: ``TOPIC_PUB`` messages accepted
        self.published = 0

    def install(self, server: Any) -> None:
        """Register the topic processors on ``server.processors``."""
        reg = server.processors
        reg.register(MessageType.TOPIC_SUB, self.handle_sub)
        reg.register(MessageType.TOPIC_UNSUB, self.handle_unsub)
        reg.register(MessageType.TOPIC_PUB, self.handle_pub)

    # -- introspection -----------------------------------------------------------------------------
    def subscribers(self, topic: str) -> list[int]:
        """Connection ids subscribed to ``topic``."""
        return sorted(self._subs.get(topic, ()))

    def topics(self) -> list[str]:
        """Topics that have at least one subscriber."""
        return sorted(self._subs)

    # -- processors ---------------------------------------------------------------------------------
    def handle_sub(self, ctx: RequestContext, msg: TopicSub) -> None:
        """``TOPIC_SUB``: subscribe the connection (no reply)."""
        topic = check_name(msg.topic)
        mine: set[str] | None = ctx.data.get(_CTX_KEY)
        if mine is None:
            mine = ctx.data[_CTX_KEY] = set()
            ctx.add_cleanup(self._on_close)
        mine.add(topic)
        self._subs.setdefault(topic, {})[ctx.connection_id] = ctx

    def handle_unsub(self, ctx: RequestContext, msg: TopicUnsub) -> None:
        """``TOPIC_UNSUB``: unsubscribe the connection (no reply; unknown topics are ignored)."""
        topic = check_name(msg.topic)
        mine: set[str] | None = ctx.data.get(_CTX_KEY)
        if mine is not None:
            mine.discard(topic)
        self._remove(topic, ctx.connection_id)

    def handle_pub(self, ctx: RequestContext, msg: TopicPub) -> None:
        """``TOPIC_PUB``: send ``TOPIC_MESSAGE`` to every subscriber but the publisher."""
        topic = check_name(msg.topic)
        self.published += 1
        subs = self._subs.get(topic)
        if not subs:
            return
        me = ctx.connection_id
        if len(subs) == 1 and me in subs:
            return
        publisher = ctx.user_id or ctx.device_id
        frame = self._encode(
            TopicMessage(topic=topic, data=msg.data, timestamp=_wall_millis(), publisher_id=publisher or None)
        )
        n = 0
        # A slow subscriber may be disconnected while we send, which mutates ``subs``.
        for cid, sub in list(subs.items()):
            if cid == me or sub.closed:
                continue
            sub.send_frame(frame)
            n += 1
        self.delivered += n

    # -- cleanup ------------------------------------------------------------------------------------
    def _remove(self, topic: str, connection_id: int) -> None:
        subs = self._subs.get(topic)
        if subs is None:
            return
        subs.pop(connection_id, None)
        if not subs:
            del self._subs[topic]

    def _on_close(self, ctx: RequestContext) -> None:
        mine: set[str] | None = ctx.data.pop(_CTX_KEY, None)
        for topic in mine or ():
            self._remove(topic, ctx.connection_id)
