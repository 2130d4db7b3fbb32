"""A session's per-message steps (pure twin): taking a message in, and queueing a frame out.

This is the specification of :mod:`topgun._speedups._sessionpath`; both are what
:meth:`topgun.server.session.Session.on_message` and
:meth:`~topgun.server.session.Session.send_frame` are. The compiled twin must
decode, count, dispatch, report and send exactly as these functions do.
"""

from __future__ import annotations

import asyncio
import enum
import inspect
from typing import Any

from topgun.protocol.messages import MessageType

__all__ = ["RECEIVED_KEY", "WIRE_NAME", "SessionState", "on_message", "send_frame"]


class SessionState(str, enum.Enum):
    """Connection state (PROTOCOL §5.1)."""

    AWAIT_AUTH = "AWAIT_AUTH"
    OPEN = "OPEN"
    CLOSED = "CLOSED"


# Looking a member up on an Enum class costs ~60 ns; every message tests for them.
_CLOSED = SessionState.CLOSED
_OPEN = SessionState.OPEN
#: Series keys of messages_received, built once.
RECEIVED_KEY: dict[MessageType, tuple[str]] = {m: (m.value,) for m in MessageType}
#: Wire names (enum ``.value`` is a descriptor call; a dict lookup is several times cheaper).
WIRE_NAME: dict[MessageType, str] = {m: m.value for m in MessageType}


def on_message(session: Any, data: bytes) -> None:
    """One complete binary message from the transport (the body of ``Session.on_message``).

    Decoded with ``hub.decode(data, hub.limits)`` (a failure goes to
    ``session._on_decode_error``). An open session with nothing queued hands a
    message whose kind has a processor (``hub.processors.by_kind``; the
    session's own kinds never have one) straight to it, counted in
    ``hub.received``: a processor that raises is reported through
    ``session._report_failure``, one that returns an awaitable makes it the
    session's queue task. Everything else goes to ``session._on_decoded``.
    """
    state = session.state
    if state is _CLOSED:
        return
    hub = session.hub
    try:
        msg = hub.decode(data, hub.limits)
    except Exception as exc:
        session._on_decode_error(exc)
        return
    if state is _OPEN and session._task is None:
        # The common case, decided in one step: none of the handshake, PING, BATCH or queueing
        # branches of _on_decoded can apply.
        kind = msg.TYPE
        handler = hub.processors.by_kind.get(kind)
        if handler is not None:
            received = hub.received
            key = RECEIVED_KEY[kind]
            received[key] = received.get(key, 0) + 1
            try:
                result = handler(session, msg)
            except Exception as exc:
                session._report_failure(WIRE_NAME[kind], exc)
                return
            if result is not None and inspect.isawaitable(result):
                session._task = asyncio.ensure_future(session._run_queue(result))
            return
    session._on_decoded(msg, len(data))


def send_frame(session: Any, data: bytes) -> None:
    """Queue one encoded frame; drop the connection if its outbound queue is over its bound
    (the body of ``Session.send_frame``)."""
    if session.state is _CLOSED:
        return
    send_bounded = session._send_bounded
    if send_bounded is not None:
        # the transport's one-call send and bound check (same answer, cheaper per frame)
        if send_bounded(data, session._max_out_bytes, session._max_out_frames):
            session._slow_consumer()
        return
    conn = session.conn
    conn.send(data)
    if conn.outbound_bytes() > session._max_out_bytes or conn.outbound_frames() > session._max_out_frames:
        session._slow_consumer()
