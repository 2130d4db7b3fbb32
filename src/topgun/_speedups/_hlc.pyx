# cython: language_level=3
"""Compiled twin of :mod:`topgun.core._hlc_py` (same names, same results).

The clock state is kept in C integers; ``compare``, ``max_timestamp`` and
``sort_timestamps`` read the timestamp tuples' fields directly. Millis and
counters are limited to signed 64 bits here (the specification has no bound);
values outside that range fall back to Python comparison where possible.
"""

import logging

from libc.stdlib cimport malloc, free, qsort
from libc.stdint cimport int64_t
from cpython.list cimport PyList_New, PyList_SET_ITEM
from cpython.ref cimport Py_INCREF
from cpython.float cimport PyFloat_Check, PyFloat_AS_DOUBLE

from topgun.core.records import Timestamp
from topgun.errors import ClockDriftError

__all__ = [
    "DEFAULT_MAX_DRIFT_MS",
    "HLC",
    "MAX_COUNTER",
    "compare",
    "max_timestamp",
    "sort_timestamps",
    "wall_millis",
]

log = logging.getLogger("topgun.core.hlc")

MAX_COUNTER = 2**32
DEFAULT_MAX_DRIFT_MS = 60_000

cdef long long _MAX_COUNTER = 4294967296

cdef extern from "Python.h":
    long long _as_ll "PyLong_AsLongLongAndOverflow"(PyObject*, int*) except? -1
    bint _long_exact "PyLong_CheckExact"(PyObject*) noexcept

cdef object _Timestamp = Timestamp
cdef object _tuple_new = tuple.__new__


cdef extern from *:
    """
    /* The same clock as Python's time.time_ns(), floored to milliseconds. */
    #if defined(_WIN32)
    #ifndef WIN32_LEAN_AND_MEAN
    #define WIN32_LEAN_AND_MEAN
    #endif
    #include <windows.h>
    static long long tg_wall_ms(void) {
        FILETIME ft;
        ULARGE_INTEGER u;
        GetSystemTimePreciseAsFileTime(&ft);
        u.LowPart = ft.dwLowDateTime;
        u.HighPart = ft.dwHighDateTime;
        return (long long)((u.QuadPart - 116444736000000000ULL) / 10000ULL);
    }
    #else
    #include <time.h>
    static long long tg_wall_ms(void) {
        struct timespec t;
        clock_gettime(CLOCK_REALTIME, &t);
        return (long long)t.tv_sec * 1000 + t.tv_nsec / 1000000;
    }
    #endif
    """
    long long _c_wall "tg_wall_ms"() noexcept nogil


def wall_millis():
    """The wall clock in integer milliseconds since the Unix epoch."""
    return _c_wall()


cdef long long c_wall_ms() noexcept nogil:
    """:func:`wall_millis` for C callers (the other twins' default clock)."""
    return _c_wall()


cdef int ts_cmp_slow(object a, object b) except -2:
    ta = (a[0], a[1], a[2])
    tb = (b[0], b[1], b[2])
    return -1 if ta < tb else (1 if ta > tb else 0)


cdef inline object _make_ts(long long m, long long c, str node):
    return _tuple_new(_Timestamp, (m, c, node))


cdef bint _as_int(object x, long long* out) except -1:
    """Exact integer value of an int or an integral float; False when the value must be ignored."""
    cdef int ovf = 0
    cdef double d
    if PyLong_CheckExact(x):
        out[0] = PyLong_AsLongLongAndOverflow(x, &ovf)
        if ovf:
            raise OverflowError("timestamp field does not fit in 64 bits")
        return True
    if isinstance(x, bool):
        return False
    if isinstance(x, int):
        out[0] = int(x)
        return True
    if PyFloat_Check(x):
        d = PyFloat_AS_DOUBLE(x)
        if d == d and d - d == 0.0 and d == <double>(<long long>d):
            out[0] = <long long>d
            return True
        if (<object>x).is_integer():
            out[0] = int(x)
            return True
    return False


cdef bint ts_fields(object remote, long long* rm, long long* rc) except -1:
    """Step 1 of update: the integer millis and counter of ``remote``; False when it must be ignored."""
    cdef int ovf = 0
    cdef PyObject* pm
    cdef PyObject* pc
    if PyTuple_Check(remote) and PyTuple_GET_SIZE(remote) >= 2:
        # Borrowed fields: no reference counting on the per-record hot path.
        pm = PyTuple_GET_ITEM(remote, 0)
        pc = PyTuple_GET_ITEM(remote, 1)
        if _long_exact(pm) and _long_exact(pc):
            rm[0] = _as_ll(pm, &ovf)
            if ovf == 0:
                rc[0] = _as_ll(pc, &ovf)
            if ovf:
                raise OverflowError("timestamp field does not fit in 64 bits")
            return True
    return _as_int(remote[0], rm) and _as_int(remote[1], rc)


cdef class HLC:
    """A hybrid logical clock for one node (see :class:`topgun.core._hlc_py.HLC`)."""

    def __init__(self, node_id, *, max_drift_ms=DEFAULT_MAX_DRIFT_MS, strict=False, wall_clock=None):
        if not isinstance(node_id, str) or not node_id or ":" in node_id:
            raise ValueError(f"invalid node id: {node_id!r}")
        self.node_id = node_id
        self.max_drift_ms = int(max_drift_ms)
        self.strict = bool(strict)
        self._wall = wall_clock
        self._millis = 0
        self._counter = 0

    @property
    def last_millis(self):
        """Physical part of the latest reading (0 before the first event)."""
        return self._millis

    @property
    def last_counter(self):
        """Logical part of the latest reading."""
        return self._counter

    @property
    def wall_clock(self):
        """The wall-clock function this clock reads."""
        return wall_millis if self._wall is None else self._wall

    def state(self):
        """``(last_millis, last_counter)``."""
        return self._millis, self._counter

    cdef long long _now_ms(self) except? -1:
        if self._wall is None:
            return _c_wall()
        return self._wall()

    cdef object c_now(self):
        cdef long long t = self._now_ms()
        if t > self._millis:
            self._millis = t
            self._counter = 0
        else:
            self._counter += 1
            if self._counter >= _MAX_COUNTER:
                self._millis += 1
                self._counter = 0
        return _make_ts(self._millis, self._counter, self.node_id)

    def now(self):
        """Stamp a local event; every reading is greater than all earlier ones."""
        return self.c_now()

    cdef int c_update(self, object remote) except -1:
        cdef long long rm, rc
        if not ts_fields(remote, &rm, &rc):
            return 0
        return self.c_advance(rm, rc, self._now_ms())

    cdef int c_advance(self, long long rm, long long rc, long long t) except -1:
        """Steps 2-5 of update for a parsed remote timestamp and a wall reading ``t``."""
        cdef long long m, c, lm, lc
        if rm - t > self.max_drift_ms:
            if self.strict:
                raise ClockDriftError(rm, t, self.max_drift_ms)
            log.warning("remote timestamp %d is %d ms ahead of the wall clock", rm, rm - t)
        lm = self._millis
        lc = self._counter
        m = lm
        if t > m:
            m = t
        if rm > m:
            m = rm
        if m == lm and m == rm:
            c = lc if lc > rc else rc
        elif m == lm:
            c = lc
        elif m == rm:
            c = rc
        else:
            c = -1
        # Compared before the increment: a remote counter of 2**63 - 1 must roll over, not wrap.
        if c >= _MAX_COUNTER - 1:
            m += 1
            c = 0
        else:
            c += 1
        self._millis = m
        self._counter = c
        return 0

    def update(self, remote, wall=None):
        """Merge a timestamp received from another node (§3.1 update); ``wall``: a reading already taken."""
        cdef long long rm, rc
        if wall is None:
            self.c_update(remote)
        elif ts_fields(remote, &rm, &rc):
            self.c_advance(rm, rc, wall)

    def drift_exceeded(self, ts):
        """True when ``ts`` is more than ``max_drift_ms`` ahead of the wall clock."""
        return bool(ts[0] - self._now_ms() > self.max_drift_ms)

    def __repr__(self):
        return f"HLC({self.node_id!r}, millis={self._millis}, counter={self._counter})"


def compare(a, b):
    """-1, 0 or 1 as ``a`` is before, equal to or after ``b``."""
    return ts_cmp(a, b)


def max_timestamp(seq):
    """The greatest timestamp of ``seq`` (the first of equal maxima), or None when empty."""
    cdef list items = seq if type(seq) is list else list(seq)
    cdef Py_ssize_t i, n = len(items)
    if n == 0:
        return None
    cdef object best = items[0]
    cdef object cur
    for i in range(1, n):
        cur = items[i]
        if ts_cmp(cur, best) > 0:
            best = cur
    return best


ctypedef struct _Key:
    int64_t millis
    int64_t counter
    Py_ssize_t rank
    Py_ssize_t idx


cdef int _key_cmp(const void* pa, const void* pb) noexcept nogil:
    cdef const _Key* a = <const _Key*>pa
    cdef const _Key* b = <const _Key*>pb
    if a.millis != b.millis:
        return -1 if a.millis < b.millis else 1
    if a.counter != b.counter:
        return -1 if a.counter < b.counter else 1
    if a.rank != b.rank:
        return -1 if a.rank < b.rank else 1
    return -1 if a.idx < b.idx else (1 if a.idx > b.idx else 0)


def sort_timestamps(seq):
    """The timestamps of ``seq`` in ascending order (stable for equal timestamps)."""
    cdef list items = seq if type(seq) is list else list(seq)
    cdef Py_ssize_t i, n = len(items)
    cdef _Key* keys
    cdef object ts, om, oc, node, last_node = None
    cdef Py_ssize_t last_rank = -1
    cdef int ovf = 0
    cdef dict node_slot = {}
    cdef list nodes
    cdef list out
    if n < 2:
        return list(items)
    keys = <_Key*>malloc(n * sizeof(_Key))
    if keys == NULL:
        raise MemoryError()
    try:
        # Node ids are ranked once (usually a handful of distinct ids), so the
        # C comparator never calls back into Python.
        for i in range(n):
            ts = items[i]
            if not (PyTuple_Check(ts) and PyTuple_GET_SIZE(ts) >= 3):
                return sorted(items)
            om = <object>PyTuple_GET_ITEM(ts, 0)
            oc = <object>PyTuple_GET_ITEM(ts, 1)
            node = <object>PyTuple_GET_ITEM(ts, 2)
            if not (PyLong_CheckExact(om) and PyLong_CheckExact(oc) and type(node) is str):
                return sorted(items)
            keys[i].millis = PyLong_AsLongLongAndOverflow(om, &ovf)
            if ovf == 0:
                keys[i].counter = PyLong_AsLongLongAndOverflow(oc, &ovf)
            if ovf:
                return sorted(items)
            keys[i].idx = i
            if node is not last_node:
                slot = node_slot.get(node)
                if slot is None:
                    slot = len(node_slot)
                    node_slot[node] = slot
                last_node = node
                last_rank = slot
            keys[i].rank = last_rank
        nodes = sorted(node_slot)
        rank_of = [0] * len(nodes)
        for i in range(len(nodes)):
            rank_of[node_slot[nodes[i]]] = i
        for i in range(n):
            keys[i].rank = rank_of[keys[i].rank]
        qsort(keys, n, sizeof(_Key), _key_cmp)
        out = PyList_New(n)
        for i in range(n):
            ts = items[keys[i].idx]
            Py_INCREF(ts)
            PyList_SET_ITEM(out, i, ts)
        return out
    finally:
        free(keys)
