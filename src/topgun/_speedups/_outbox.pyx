# cython: language_level=3
"""Compiled twin of :mod:`topgun.server.transport._outbox_py` (same queueing, bound answers and
writes, in the same order).

Every reply and push goes through :meth:`Outbox.send_bounded`, and every connection with frames
through :func:`flush_all` once per event-loop iteration: as an extension type the outbox's state
is read and written at C level instead of through slot descriptors.
"""

from cpython.list cimport PyList_GET_ITEM, PyList_GET_SIZE

from topgun.server.transport import _outbox_py

__all__ = ["Outbox", "flush_all"]

cdef object _BINARY_OPCODE = _outbox_py._BINARY_OPCODE
cdef object _NO_BOUND = _outbox_py.NO_BOUND
cdef list _HEADER_TABLE = _outbox_py._HEADER_TABLE
cdef Py_ssize_t _TABLE_LIMIT = _outbox_py._TABLE_LIMIT
cdef object _frame_header = _outbox_py._frame_header
cdef object _log = _outbox_py.log


cdef class Outbox:
    """The frames one connection queued during this event-loop iteration, and its write state
    (see the pure twin for what each field means)."""

    cdef public object dirty, schedule, transport, write_frame, underlying, write_buffer_size
    cdef public object first, rest
    cdef public object high_water, out_bytes, paused_frames
    cdef public bint accepting, paused

    def __init__(self, server):
        self.dirty = server._dirty
        self.schedule = None
        self.transport = None
        self.write_frame = None
        self.underlying = None
        self.write_buffer_size = None
        self.high_water = 0
        self.accepting = False
        self.paused = False
        self.paused_frames = 0
        self.first = None
        self.rest = None
        self.out_bytes = 0

    def send(self, data):
        self.send_bounded(data, _NO_BOUND, _NO_BOUND)

    def send_bounded(self, data, max_bytes, max_frames):
        """Queue ``data`` for the flush, then whether the outbound queue is over ``max_bytes``
        bytes or ``max_frames`` frames (see the pure twin)."""
        cdef object size
        if self.accepting:
            if self.first is None:
                self.first = data
                dirty = self.dirty
                if not dirty:
                    self.schedule()
                dirty.append(self)
            else:
                if self.rest is None:
                    self.rest = [data]
                else:
                    self.rest.append(data)
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

    def outbound_bytes(self):
        size = self.write_buffer_size
        if size is None:
            return 0
        return int(size()) + self.out_bytes

    def drop(self):
        """Forget the frames queued for the flush."""
        self.first = None
        self.rest = None
        self.out_bytes = 0

    def flush(self):
        cdef object first = self.first, rest, ut, second, data
        cdef list parts
        cdef Py_ssize_t n, m
        if first is None:
            return
        rest = self.rest
        self.first = None
        self.rest = None
        self.out_bytes = 0
        ut = self.underlying
        if ut.is_closing():
            return
        if rest is None:
            self.write_frame(_BINARY_OPCODE, first)
            return
        n = len(first)
        if len(rest) == 1:
            second = rest[0]
            m = len(second)
            if n < _TABLE_LIMIT and m < _TABLE_LIMIT:
                ut.write(b"".join((_HEADER_TABLE[n], first, _HEADER_TABLE[m], second)))
                return
        parts = [_HEADER_TABLE[n] if n < _TABLE_LIMIT else _frame_header(n), first]
        for data in rest:
            n = len(data)
            parts.append(_HEADER_TABLE[n] if n < _TABLE_LIMIT else _frame_header(n))
            parts.append(data)
        ut.write(b"".join(parts))


def flush_all(list dirty):
    """Write the corked frames of every outbox in ``dirty`` (in order), then empty the list."""
    cdef Py_ssize_t i = 0
    cdef Outbox box
    cdef object first, item
    try:
        # An outbox that gets a frame while this runs is appended and still flushed here.
        while i < PyList_GET_SIZE(dirty):
            item = <object>PyList_GET_ITEM(dirty, i)
            i += 1
            try:
                if type(item) is not Outbox:
                    _outbox_py.flush_all([item])
                    continue
                box = <Outbox>item
                if box.rest is None:
                    first = box.first
                    if first is None:
                        continue
                    box.first = None
                    box.out_bytes = 0
                    if not box.underlying.is_closing():
                        box.write_frame(_BINARY_OPCODE, first)
                else:
                    box.flush()
            except Exception:
                # one connection's failure must not strand the frames of the others
                _log.exception("flushing a connection's frames failed")
    finally:
        del dirty[:]
