"""A connection's outbox (pure twin): frames corked during one event-loop iteration.

This is the specification of :mod:`topgun._speedups._outbox`. A connection's
frames queued during one iteration are written at its end by :func:`flush_all`,
all of one connection in one ``write`` (a lone frame through the WebSocket
transport's own ``send``); :meth:`Outbox.send_bounded` queues a frame and
answers the session's slow-consumer question in the same call.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable
from typing import Any

__all__ = ["NO_BOUND", "Outbox", "flush_all"]

log = logging.getLogger("topgun.transport")

#: The binary opcode (RFC 6455 §5.2) as a plain int: picows converts an int argument to its C
#: enum more cheaply than the IntEnum member (about 55 instructions a frame, measured).
_BINARY_OPCODE = 0x2
#: A bound no queue reaches (``send`` without a slow-consumer question).
NO_BOUND = 1 << 62

_SMALL_HEADERS = [bytes((0x82, n)) for n in range(126)]
_HEADER16 = struct.Struct(">BBH")
_HEADER64 = struct.Struct(">BBQ")
#: Headers of every frame size below this, prebuilt: pushes (a SERVER_EVENT is ~150 bytes) take
#: them by index in the flush loop instead of calling :func:`_frame_header`.
_TABLE_LIMIT = 2048
_HEADER_TABLE = _SMALL_HEADERS + [_HEADER16.pack(0x82, 126, n) for n in range(126, _TABLE_LIMIT)]


def _frame_header(size: int) -> bytes:
    """Header of an unmasked, final, binary WebSocket frame of ``size`` bytes (RFC 6455 §5.2)."""
    if size < 126:
        return _SMALL_HEADERS[size]
    if size < 0x1_0000:
        return _HEADER16.pack(0x82, 126, size)
    return _HEADER64.pack(0x82, 127, size)


class Outbox:
    """The frames one connection queued during this event-loop iteration, and its write state.

    Kept apart from the listener because every frame touches it and the session holds its
    ``send_bounded``; a plain slotted object is the cheapest place for that state.
    """

    __slots__ = (
        "accepting",
        "dirty",
        "first",
        "high_water",
        "out_bytes",
        "paused",
        "paused_frames",
        "rest",
        "schedule",
        "transport",
        "underlying",
        "write_buffer_size",
        "write_frame",
    )

    def __init__(self, server: Any) -> None:
        # ``server`` is the transport server: its ``_dirty`` is the list of outboxes to flush.
        # The server's list of outboxes with frames for this iteration's flush, and the call
        # that schedules that flush (bound on connect, inside the event loop).
        self.dirty = server._dirty
        self.schedule: Callable[[], object] | None = None
        self.transport: Any = None
        # ``transport.send``, bound on connect: writes one frame (what most flushes do). Called
        # with the opcode as an int, which its stub does not admit.
        self.write_frame: Callable[..., object] | None = None
        # The asyncio transport under the WebSocket one.
        self.underlying: Any = None
        # Bound once: the session asks after frames it queues.
        self.write_buffer_size: Any = None
        # Upper bound of the transport's buffer while writing is not paused (set on connect;
        # until then nothing is buffered).
        self.high_water = 0
        #: sends are taken (connected, no close sent, not disconnected); the queue is dropped
        #: when the peer goes, so a flush finds nothing for a lost connection
        self.accepting = False
        self.paused = False
        self.paused_frames = 0
        # Frames waiting for the end-of-iteration flush: the first (None: nothing pending) and
        # the list of the others (None: at most one), so the usual single reply needs no list.
        self.first: bytes | None = None
        self.rest: list[bytes] | None = None
        self.out_bytes = 0

    def send(self, data: bytes) -> None:
        # The session sends through send_bounded; this is the plain Connection method.
        self.send_bounded(data, NO_BOUND, NO_BOUND)

    def send_bounded(self, data: bytes, max_bytes: int, max_frames: int) -> bool:
        """Queue ``data`` for the flush, then whether ``outbound_bytes() > max_bytes or
        outbound_frames() > max_frames``.

        The same answer as asking both after the send, without doing so for every frame: while the
        transport has not paused writing its buffer holds at most the high-water mark (it pauses
        as soon as a write takes it past), and frames are only counted while it is paused, so in
        the common case the corked bytes alone settle the question.
        """
        if self.accepting:
            if self.first is None:
                self.first = data
                dirty = self.dirty
                if not dirty:
                    self.schedule()  # type: ignore[misc]
                dirty.append(self)
            else:
                rest = self.rest
                if rest is None:
                    self.rest = [data]
                else:
                    rest.append(data)
            size = self.out_bytes + len(data)
            self.out_bytes = size
            if not self.paused:
                return size + self.high_water > max_bytes and self.outbound_bytes() > max_bytes
            self.paused_frames += 1
        if self.paused:
            return self.paused_frames > max_frames or self.outbound_bytes() > max_bytes
        if self.out_bytes + self.high_water <= max_bytes:
            return False
        return self.outbound_bytes() > max_bytes

    def outbound_bytes(self) -> int:
        size = self.write_buffer_size
        if size is None:
            return 0
        return int(size()) + self.out_bytes

    def drop(self) -> None:
        """Forget the frames queued for the flush."""
        self.first = None
        self.rest = None
        self.out_bytes = 0

    def flush(self) -> None:
        first = self.first
        if first is None:
            return
        rest = self.rest
        self.first = None
        self.rest = None
        self.out_bytes = 0
        ut = self.underlying
        if ut.is_closing():
            # The peer is gone but frames it sent earlier are still being dispatched.
            return
        if rest is None:
            self.write_frame(_BINARY_OPCODE, first)  # type: ignore[misc]
            return
        table = _HEADER_TABLE
        n = len(first)
        if len(rest) == 1:
            # Two frames, what a write to a map with live queries leaves each subscriber (its
            # SERVER_EVENT and QUERY_UPDATE): joined from a tuple, without a list grown in a loop.
            second = rest[0]
            m = len(second)
            if n < _TABLE_LIMIT and m < _TABLE_LIMIT:
                ut.write(b"".join((table[n], first, table[m], second)))
                return
        parts: list[bytes] = [table[n] if n < _TABLE_LIMIT else _frame_header(n), first]
        append = parts.append
        for data in rest:
            n = len(data)
            append(table[n] if n < _TABLE_LIMIT else _frame_header(n))
            append(data)
        ut.write(b"".join(parts))


def flush_all(dirty: list[Outbox]) -> None:
    """Write the corked frames of every outbox in ``dirty`` (in order), then empty the list."""
    try:
        # An outbox that gets a frame while this runs is appended and still flushed here.
        for box in dirty:
            try:
                if box.rest is None:
                    # A lone frame (a request's reply): what Outbox.flush does for it,
                    # inline, without a method call per connection.
                    first = box.first
                    if first is None:
                        continue
                    box.first = None
                    box.out_bytes = 0
                    if not box.underlying.is_closing():
                        # through a local: a call on a slot attribute is not specialized
                        write = box.write_frame
                        write(_BINARY_OPCODE, first)  # type: ignore[misc]
                else:
                    box.flush()
            except Exception:
                # one connection's failure must not strand the frames of the others
                log.exception("flushing a connection's frames failed")
    finally:
        dirty.clear()
