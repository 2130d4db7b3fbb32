"""Ephemeral pub/sub topics on the client (PROTOCOL.md §4.8, §5.4, §5.12).

>>> chat = client.topic("chat")                        # doctest: +SKIP
>>> off = chat.subscribe(lambda ev: print(ev.publisher_id, ev.data))
>>> chat.publish({"text": "hi"})                        # everyone subscribed but us gets it

Messages are not stored anywhere: a subscriber receives what is published while
it is connected and subscribed, at most once; a publisher never receives its own
messages. Publishing while offline raises :class:`~topgun.errors.NotConnectedError`
unless the handle was created with ``offline_queue=N``: then up to ``N`` messages
wait (oldest dropped first) and go out right after the next authentication. The
client re-subscribes every subscribed topic after each (re)connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import re
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from topgun.client._per_client import PerClient
from topgun.errors import ConfigError, NotConnectedError
from topgun.protocol.messages import Message, MessageType, TopicMessage, TopicPub, TopicSub, TopicUnsub

if TYPE_CHECKING:
    from topgun.client.client import TopGunClient

__all__ = ["NAME_PATTERN", "TopicCallback", "TopicEvent", "TopicHandle", "TopicManager", "check_name"]

log = logging.getLogger("topgun.client.topics")

#: Topic and lock names: 1-256 characters of ``A-Z a-z 0-9 _ - . : /`` (PROTOCOL Appendix B).
NAME_PATTERN = re.compile(r"[A-Za-z0-9_\-.:/]{1,256}")


def check_name(name: object, what: str) -> str:
    """Return ``name`` or raise :class:`ConfigError` when the server would refuse it."""
    if not isinstance(name, str) or NAME_PATTERN.fullmatch(name) is None:
        raise ConfigError(f"invalid {what} name {name!r}: use 1-256 characters of A-Z a-z 0-9 _ - . : /")
    return name


@dataclass(frozen=True, slots=True)
class TopicEvent:
    """One message received on a topic."""

    topic: str
    #: the published value, as decoded from MsgPack
    data: Any
    #: the publisher's user id (JWT ``sub``), else its device id, else None
    publisher_id: str | None
    #: server wall clock (ms) when the message was fanned out
    timestamp: int


#: Called with every :class:`TopicEvent`; may be a coroutine function (run as a task).
TopicCallback = Callable[[TopicEvent], Any]


class TopicHandle:
    """One topic of one client (from :meth:`TopGunClient.topic`)."""

    def __init__(self, manager: TopicManager, name: str, offline_queue: int) -> None:
        self._manager = manager
        self.name = name
        self._queue: deque[Any] = deque()
        self._queue_limit = offline_queue
        #: messages dropped from a full offline queue
        self.dropped = 0

    @property
    def offline_queue(self) -> int:
        """How many messages may wait while offline (0: publishing offline raises)."""
        return self._queue_limit

    @offline_queue.setter
    def offline_queue(self, limit: int) -> None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise ConfigError("offline_queue must be an integer >= 0")
        self._queue_limit = limit
        while len(self._queue) > limit:
            self._queue.popleft()
            self.dropped += 1

    @property
    def queued(self) -> int:
        """Messages waiting for the next connection."""
        return len(self._queue)

    def publish(self, data: Any) -> None:
        """Send ``data`` to every other subscriber of the topic (at most once, not stored).

        Raises :class:`NotConnectedError` while offline, unless the handle has an
        ``offline_queue``: then the message waits (dropping the oldest waiting one
        when the queue is full) and is sent after the next authentication.
        """
        client = self._manager.client
        client._require_open()
        if client.connected:
            client.send(TopicPub(topic=self.name, data=data))
            return
        if self._queue_limit <= 0:
            raise NotConnectedError(
                f"cannot publish to topic {self.name!r}: not connected "
                f"(state {client.state.value}; create the handle with offline_queue=N to queue)"
            )
        if len(self._queue) >= self._queue_limit:
            self._queue.popleft()
            self.dropped += 1
        self._queue.append(data)

    def subscribe(self, callback: TopicCallback) -> Callable[[], None]:
        """Call ``callback(TopicEvent)`` for every message of the topic; returns the unsubscribe callable."""
        return self._manager.subscribe(self.name, callback)

    @property
    def subscribed(self) -> bool:
        """True while at least one callback is subscribed."""
        return bool(self._manager.callbacks(self.name))

    def _drain_queue(self) -> list[Message]:
        out: list[Message] = [TopicPub(topic=self.name, data=d) for d in self._queue]
        self._queue.clear()
        return out

    def __repr__(self) -> str:
        return f"TopicHandle({self.name!r}, subscribed={self.subscribed}, queued={self.queued})"


class TopicManager:
    """The topics of one client: handles, callbacks, re-subscription and the offline queue."""

    def __init__(self, client: TopGunClient) -> None:
        self.client = client
        self._handles: dict[str, TopicHandle] = {}
        self._callbacks: dict[str, list[TopicCallback]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        client.register_handler(MessageType.TOPIC_MESSAGE, self._on_message)
        client.add_after_auth_hook(self._after_auth)

    def topic(self, name: str, *, offline_queue: int | None = None) -> TopicHandle:
        """The handle of ``name`` (one per name; ``offline_queue`` given again replaces the bound)."""
        check_name(name, "topic")
        h = self._handles.get(name)
        if h is None:
            h = self._handles[name] = TopicHandle(self, name, 0)
        if offline_queue is not None:
            h.offline_queue = offline_queue
        return h

    def callbacks(self, name: str) -> list[TopicCallback]:
        """The callbacks subscribed to ``name``."""
        return list(self._callbacks.get(name, ()))

    def subscribe(self, name: str, callback: TopicCallback) -> Callable[[], None]:
        """Add ``callback`` for topic ``name``; the first one sends ``TOPIC_SUB`` (when connected)."""
        if not callable(callback):
            raise ConfigError("a topic callback must be callable")
        cbs = self._callbacks.setdefault(name, [])
        first = not cbs
        cbs.append(callback)
        if first:
            self.client.send(TopicSub(topic=name))

        def unsubscribe() -> None:
            lst = self._callbacks.get(name)
            if lst is None:
                return
            with contextlib.suppress(ValueError):
                lst.remove(callback)
                if not lst:
                    del self._callbacks[name]
                    self.client.send(TopicUnsub(topic=name))

        return unsubscribe

    def _after_auth(self) -> list[Message]:
        # §5.4: queued publications first, then the subscriptions of the new connection.
        out: list[Message] = []
        for h in self._handles.values():
            out.extend(h._drain_queue())
        out.extend(TopicSub(topic=name) for name in self._callbacks)
        return out

    def _on_message(self, msg: TopicMessage) -> None:
        cbs = self._callbacks.get(msg.topic)
        if not cbs:
            return
        ev = TopicEvent(msg.topic, msg.data, msg.publisher_id, msg.timestamp)
        for cb in list(cbs):
            try:
                res = cb(ev)
            except Exception:
                log.exception("topic %r: subscriber callback failed", msg.topic)
                continue
            if inspect.isawaitable(res):
                task = asyncio.ensure_future(res)
                self._tasks.add(task)
                task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("topic subscriber coroutine failed", exc_info=task.exception())


#: The topic manager of a client (created on first use).
topics_of: PerClient[TopicManager] = PerClient(TopicManager)
