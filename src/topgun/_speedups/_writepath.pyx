# cython: language_level=3
"""Compiled twin of :mod:`topgun.server._writepath_py` (same outcomes, rows, changes, state, acks).

The common change (a str key, a record with integer timestamp fields that fit
the storage columns, no NUL characters) is judged, staged and merged without a
Python call besides the value encoder; any other change goes through the pure
twin, one change at a time, so the two cannot disagree on unusual input.
"""

from cpython.object cimport PyObject, PyTypeObject
from cpython.ref cimport Py_INCREF, Py_DECREF
from cpython.dict cimport PyDict_GetItem, PyDict_SetItem
from cpython.list cimport PyList_GET_ITEM, PyList_GET_SIZE
from cpython.long cimport PyLong_CheckExact
from cpython.tuple cimport PyTuple_Check, PyTuple_GET_SIZE, PyTuple_GET_ITEM

from libc.stdint cimport uint32_t
from libc.stdlib cimport malloc, free
from libc.string cimport memcpy

from topgun._speedups._hashing cimport c_item_hash
from topgun._speedups._hlc cimport HLC, c_wall_ms, ts_cmp
from topgun._speedups._lww cimport LWWMap
from topgun._speedups._merkle cimport MerkleTree
from topgun._speedups._slots cimport PyType_GenericAlloc, member_offset

from topgun._speedups._hlc import wall_millis as _wall_millis
from topgun.errors import StorageError
from topgun.protocol.messages import ClientOp, ClientOpMessage, OpBatch, OpType, WriteConcern
from topgun.server import _writepath_py
from topgun.server.changes import (
    APPLIED, UNCHANGED, ApplyResult, Change, ChangeKind, Outcome, OutcomeStatus, drift_outcome,
)
from topgun.server.storage.base import MapKind, encode_value

cdef extern from "Python.h":
    void _tuple_set "PyTuple_SET_ITEM"(PyObject*, Py_ssize_t, PyObject*)
    long long PyLong_AsLongLongAndOverflow(object, int*) except? -1
    const char* PyUnicode_AsUTF8AndSize(object, Py_ssize_t*) except NULL
    object PyBytes_FromStringAndSize(const char*, Py_ssize_t)
    char* PyBytes_AS_STRING(object)

__all__ = [
    "apply_changes", "apply_lww_run", "apply_state", "ok_ack_frame", "plain_changes", "watches", "write_message",
]

cdef object _py_run = _writepath_py.apply_lww_run
cdef object _py_apply_changes = _writepath_py.apply_changes
cdef object _log = _writepath_py.log
cdef object _ApplyResult = ApplyResult
cdef object _OR_ADD = ChangeKind.OR_ADD
cdef object _LWW_MAP = MapKind.LWW
cdef long long _LIMIT_LL = 1LL << 62
cdef object _py_one = _writepath_py.apply_one
cdef object _APPLIED = APPLIED
cdef object _UNCHANGED = UNCHANGED
cdef object _Change = Change
cdef object _Outcome = Outcome
cdef object _PUT = ChangeKind.PUT
cdef object _REMOVE = ChangeKind.REMOVE
cdef object _REJECTED = OutcomeStatus.REJECTED
cdef object _UNCHANGED_STATUS = OutcomeStatus.UNCHANGED
cdef object _StorageError = StorageError
cdef object _encode_value = encode_value
cdef object _drift_outcome = drift_outcome
cdef object _tuple_new = tuple.__new__


cdef PyTypeObject* _CHANGE_T = <PyTypeObject*>Change
# the object True (a literal True cast to a pointer would be the C integer 1)
cdef object _TRUE = True


cdef object _change(object name, object key, object kind, object record, object previous):
    """``Change(name, key, kind, record, previous=previous)`` of an LWW write: what
    ``tuple.__new__(Change, ...)`` builds, without the temporary tuple and the Python-level call."""
    cdef PyObject* o = PyType_GenericAlloc(_CHANGE_T, 9)
    cdef PyObject* items[9]
    cdef Py_ssize_t i
    items[0] = <PyObject*>name
    items[1] = <PyObject*>key
    items[2] = <PyObject*>kind
    items[3] = <PyObject*>record
    items[4] = <PyObject*>None
    items[5] = <PyObject*>None
    items[6] = <PyObject*>None
    items[7] = <PyObject*>_TRUE
    items[8] = <PyObject*>previous
    for i in range(9):
        Py_INCREF(<object>items[i])
        _tuple_set(o, i, items[i])
    # the allocation's own reference becomes the returned object's
    cdef object r = <object>o
    Py_DECREF(r)
    return r


cdef inline bint _small_nonneg(object x, long long* out) except -1:
    """True when ``x`` is an exact int in [0, 2**63 - 1] (its value in ``out``)."""
    cdef int ovf = 0
    if not PyLong_CheckExact(x):
        return False
    out[0] = PyLong_AsLongLongAndOverflow(x, &ovf)
    return ovf == 0 and out[0] >= 0


cdef inline bint _storable_ttl(object ttl) except -1:
    cdef int ovf = 0
    if ttl is None:
        return True
    if not PyLong_CheckExact(ttl):
        return False
    PyLong_AsLongLongAndOverflow(ttl, &ovf)
    return ovf == 0


cdef enum:
    _SMALL = 8


cdef class _MerkleBatch:
    """Merkle updates of a run, applied together (grouped by leaf, as ``merge_many`` does).

    Holds a reference to every pending key. Flushed before anything else may touch the
    tree (the pure twin's per-change fallback) and at the end of the run.
    """
    cdef MerkleTree tree
    cdef PyObject** keys
    cdef uint32_t* kh
    cdef uint32_t* ih
    cdef Py_ssize_t n, cap
    # Room for a short run inside the object: most runs are a batch of one or a few writes.
    cdef PyObject* small_keys[_SMALL]
    cdef uint32_t small_kh[_SMALL]
    cdef uint32_t small_ih[_SMALL]

    def __cinit__(self, MerkleTree tree, Py_ssize_t cap):
        self.tree = tree
        self.n = 0
        if cap <= _SMALL:
            self.cap = _SMALL
            self.keys = self.small_keys
            self.kh = self.small_kh
            self.ih = self.small_ih
            return
        self.cap = cap
        self.keys = <PyObject**>malloc(self.cap * sizeof(PyObject*))
        self.kh = <uint32_t*>malloc(self.cap * sizeof(uint32_t))
        self.ih = <uint32_t*>malloc(self.cap * sizeof(uint32_t))
        if self.keys == NULL or self.kh == NULL or self.ih == NULL:
            raise MemoryError()

    cdef int add(self, str key, object ts) except -1:
        if self.n == self.cap:
            self.flush()
        c_item_hash(key, ts, &self.kh[self.n], &self.ih[self.n])
        Py_INCREF(key)
        self.keys[self.n] = <PyObject*>key
        self.n += 1
        return 0

    cdef int flush(self) except -1:
        cdef Py_ssize_t i, n = self.n
        if n == 0:
            return 0
        self.n = 0
        try:
            self.tree.c_apply_batch(self.keys, self.kh, self.ih, n)
        finally:
            for i in range(n):
                Py_DECREF(<object>self.keys[i])
        return 0

    def __dealloc__(self):
        cdef Py_ssize_t i
        if self.keys != NULL:
            for i in range(self.n):
                Py_DECREF(<object>self.keys[i])
        if self.keys != self.small_keys:
            free(self.keys)
            free(self.kh)
            free(self.ih)


def apply_lww_run(lww, hlc, batch, changes, Py_ssize_t start, long long wall,
                  long long max_drift, horizon, list outcomes, list effective):
    """Merge ``changes[start:stop]`` (see :func:`topgun.server._writepath_py.apply_lww_run`)."""
    return _run(lww, hlc, batch, changes, start, wall, max_drift, horizon, outcomes, effective)


cdef class _GridState:
    """What ``apply_changes`` reads of a started grid, held at C level: its dicts, clock,
    committer and listeners never change identity after ``Grid.start()`` (they are mutated in
    place), so they are looked up once instead of as nine attribute reads per batch."""
    cdef object committer, wall, hlc, drift_obj
    cdef dict kinds, lwws, horizons
    cdef list listeners
    cdef bint keeps_rows, drift_ok, c_wall
    cdef long long max_drift

    def __init__(self, grid):
        cdef int ovf = 0
        self.committer = grid.committer
        self.wall = grid._wall
        # the compiled default clock is read without a Python call
        self.c_wall = self.wall is _wall_millis
        self.hlc = grid._hlc
        self.kinds = grid._kinds
        self.lwws = grid._lww
        self.horizons = grid._horizons
        self.listeners = grid._listeners
        self.keeps_rows = grid._keeps_rows
        self.drift_obj = grid.max_drift_ms
        self.drift_ok = False
        if PyLong_CheckExact(self.drift_obj):
            self.max_drift = PyLong_AsLongLongAndOverflow(self.drift_obj, &ovf)
            self.drift_ok = ovf == 0 and -_LIMIT_LL < self.max_drift < _LIMIT_LL


def apply_state(grid):
    """The grid's state as ``apply_changes`` reads it (built by ``Grid.start()``)."""
    return _GridState(grid)


def apply_changes(grid, changes, origin):
    """The body of ``Grid.apply`` (see :func:`topgun.server._writepath_py.apply_changes`)."""
    return _apply(grid, changes, origin)


cdef object _apply(grid, changes, origin):
    cdef object st_obj = grid._apply_state
    cdef _GridState st
    cdef object committer, batch, rows, ch, name, kind, have, found, lww, commit, wall_obj, hlc
    cdef list outcomes = [], effective = [], todo
    cdef dict kinds, lwws, horizons
    cdef PyObject* p
    cdef Py_ssize_t i = 0, staged
    cdef long long wall, max_drift
    cdef int ovf = 0
    cdef bint lww_change
    if not isinstance(st_obj, _GridState) or (<_GridState>st_obj).committer is not grid.committer:
        if grid.committer is None:
            raise RuntimeError("grid not started")
        st_obj = _GridState(grid)
    st = <_GridState>st_obj
    committer = st.committer
    batch = committer.open_batch
    if batch is None:
        batch = committer.batch  # closed: raises as the pure twin does
    wall = -1
    if st.c_wall:
        wall = c_wall_ms()
        wall_obj = None  # made only for what needs the object
    else:
        wall_obj = st.wall()
        if PyLong_CheckExact(wall_obj):
            wall = PyLong_AsLongLongAndOverflow(wall_obj, &ovf)
    if ovf != 0 or not (0 <= wall < _LIMIT_LL) or not st.drift_ok:
        # clocks or settings beyond 62 bits: the specification's arbitrary-precision arithmetic
        return _py_apply_changes(grid, changes, origin)
    max_drift = st.max_drift
    kinds = st.kinds
    lwws = st.lwws
    horizons = st.horizons
    hlc = st.hlc
    todo = changes if type(changes) is list else list(changes)
    rows = batch if st.keeps_rows else None
    while i < PyList_GET_SIZE(todo):
        ch = <object>PyList_GET_ITEM(todo, i)
        if PyTuple_Check(ch) and PyTuple_GET_SIZE(ch) == 9:
            name = <object>PyTuple_GET_ITEM(ch, 0)
            kind = <object>PyTuple_GET_ITEM(ch, 2)
        else:
            name = ch.map_name
            kind = ch.kind
        lww_change = kind is _PUT or kind is _REMOVE
        if lww_change:
            p = PyDict_GetItem(lwws, name)
            if p != NULL:
                # a map in _lww is an LWW map: no kind to check
                i = _run(<object>p, hlc, rows, todo, i, wall, max_drift, horizons.get(name), outcomes, effective)
                continue
        p = PyDict_GetItem(kinds, name)
        have = <object>p if p != NULL else None
        if have is not None and (have is _LWW_MAP) is not lww_change:
            outcomes.append(_Outcome(_REJECTED, 409, f"map {name!r} is an {have.value.upper()} map"))
            i += 1
            continue
        if lww_change:
            lww = grid._new_lww()
            staged = len(effective)
            i = _run(lww, hlc, rows, todo, i, wall, max_drift, horizons.get(name), outcomes, effective)
            if len(effective) > staged:
                grid._register(name, lww, batch)
            continue
        if wall_obj is None:
            wall_obj = wall
        if kind is _OR_ADD:
            outcomes.append(grid._apply_or_add(ch, have, wall_obj, max_drift, batch, effective))
        else:
            outcomes.append(grid._apply_or_remove(ch, have, wall_obj, max_drift, batch, effective))
        i += 1
    # batch.recorded > 0 is what WriteBatch truth means, without a Python-level __bool__ call
    commit = committer.commit_future() if batch.recorded > 0 else None
    if effective:
        for entry in st.listeners:
            listener, watched = entry
            if watched is not None and not _watches(watched, effective, origin):
                continue
            try:
                listener.on_changes(effective, origin)
            except Exception:
                _log.exception("change listener %r failed", listener)
    return _tuple_new(_ApplyResult, (outcomes, effective, commit))


def watches(watched, changes, origin):
    """Whether a listener watching ``watched`` hears of ``changes`` (see the pure twin)."""
    return _watches(watched, changes if type(changes) is list else list(changes), origin)


cdef bint _watches(object watched, list effective, object origin) except -1:
    """Whether a change of ``effective`` names a map in ``watched`` (any container); a dict's
    value for a map is its watchers' connection ids, and the origin's alone does not count."""
    cdef Py_ssize_t i
    cdef object ch, name, who, cid = None
    cdef PyObject* p
    cdef bint by_conn = type(watched) is dict
    if by_conn:
        cid = origin.connection_id
    for i in range(PyList_GET_SIZE(effective)):
        ch = <object>PyList_GET_ITEM(effective, i)
        name = <object>PyTuple_GET_ITEM(ch, 0) if PyTuple_Check(ch) else ch.map_name
        if by_conn:
            p = PyDict_GetItem(<dict>watched, name)
            if p == NULL:
                continue
            who = <object>p
            if len(who) == 1 and cid in who:
                continue
            return True
        if name in watched:
            return True
    return False


cdef Py_ssize_t _run(lww, hlc, batch, changes, Py_ssize_t start, long long wall,
                     long long max_drift, horizon, list outcomes, list effective) except -1:
    cdef LWWMap cmap
    cdef HLC chlc = hlc if isinstance(hlc, HLC) else None
    cdef dict data
    cdef dict rows
    cdef list lst
    cdef Py_ssize_t i = start, staged = 0
    cdef object run_name, kind, ch, name, key, record, ts, current, cts, node, ttl, value, enc
    cdef PyObject* found
    cdef long long millis, counter
    cdef int c
    cdef _MerkleBatch tree = None
    if not isinstance(lww, LWWMap) or type(changes) is not list or wall < 0:
        return _py_run(lww, hlc, batch, changes, start, wall, max_drift, horizon, outcomes, effective)
    cmap = <LWWMap>lww
    lst = <list>changes
    rows = batch.lww if batch is not None else None
    if cmap._merkle is not None:
        tree = _MerkleBatch(cmap._merkle, PyList_GET_SIZE(lst) - start)
    run_name = lst[start].map_name
    try:
        # Bounded by the live size: a Python callback (a pure clock, the value encoder) could
        # shrink the caller's list while we iterate.
        while i < PyList_GET_SIZE(lst):
            ch = <object>PyList_GET_ITEM(lst, i)
            if not (PyTuple_Check(ch) and PyTuple_GET_SIZE(ch) == 9):
                if ch.map_name != run_name or (ch.kind is not _PUT and ch.kind is not _REMOVE):
                    break
                i += 1
                if tree is not None:
                    tree.flush()
                _py_one(lww, hlc, batch, ch, wall, max_drift, horizon, outcomes, effective)
                continue
            name = <object>PyTuple_GET_ITEM(ch, 0)
            kind = <object>PyTuple_GET_ITEM(ch, 2)
            if (name is not run_name and name != run_name) or (kind is not _PUT and kind is not _REMOVE):
                break
            i += 1
            key = <object>PyTuple_GET_ITEM(ch, 1)
            record = <object>PyTuple_GET_ITEM(ch, 3)
            if (
                type(name) is not str
                or type(key) is not str
                or not (PyTuple_Check(record) and PyTuple_GET_SIZE(record) == 3)
            ):
                if tree is not None:
                    tree.flush()
                _py_one(lww, hlc, batch, ch, wall, max_drift, horizon, outcomes, effective)
                continue
            ts = <object>PyTuple_GET_ITEM(record, 1)
            if not (PyTuple_Check(ts) and PyTuple_GET_SIZE(ts) == 3):
                if tree is not None:
                    tree.flush()
                _py_one(lww, hlc, batch, ch, wall, max_drift, horizon, outcomes, effective)
                continue
            node = <object>PyTuple_GET_ITEM(ts, 2)
            ttl = <object>PyTuple_GET_ITEM(record, 2)
            if (
                not _small_nonneg(<object>PyTuple_GET_ITEM(ts, 0), &millis)
                or not _small_nonneg(<object>PyTuple_GET_ITEM(ts, 1), &counter)
                or type(node) is not str
                or not _storable_ttl(ttl)
                or "\x00" in <str>name
                or "\x00" in <str>key
                or "\x00" in <str>node
            ):
                # Anything storage may refuse, or any arithmetic beyond 64 bits: the specification.
                if tree is not None:
                    tree.flush()
                _py_one(lww, hlc, batch, ch, wall, max_drift, horizon, outcomes, effective)
                continue
            # 0 <= millis and 0 <= wall: the difference cannot overflow.
            if millis - wall > max_drift:
                outcomes.append(_drift_outcome(<object>PyTuple_GET_ITEM(ts, 0), wall))
                continue
            data = cmap._data
            found = PyDict_GetItem(data, key)
            if found == NULL:
                current = None
                if horizon is not None and ts_cmp(ts, horizon) < 0:
                    outcomes.append(
                        _Outcome(_REJECTED, 409, f"write is older than the retention horizon {horizon}")
                    )
                    continue
            else:
                current = <object>found
                # a stored record is an LWWRecord: indexing a NamedTuple from C would go through
                # its Python-level __getitem__
                cts = <object>PyTuple_GET_ITEM(current, 1) if PyTuple_Check(current) else current[1]
                c = ts_cmp(ts, cts)
                if c <= 0:
                    if chlc is not None:
                        chlc.c_update(ts)
                    else:
                        hlc.update(ts)
                    if c < 0:
                        outcomes.append(_Outcome(_UNCHANGED_STATUS, 0, "", current))
                    else:
                        outcomes.append(_UNCHANGED)
                    continue
            value = <object>PyTuple_GET_ITEM(record, 0)
            if rows is not None:
                if value is None:
                    enc = None
                else:
                    try:
                        enc = _encode_value(value)
                    except _StorageError as exc:
                        outcomes.append(_Outcome(_REJECTED, 400, str(exc)))
                        continue
                PyDict_SetItem(rows, (name, key), (enc, <object>PyTuple_GET_ITEM(ts, 0),
                                                   <object>PyTuple_GET_ITEM(ts, 1), node, ttl))
                staged += 1
            # else: a store that keeps no rows; the checks above are all it would refuse
            # Wins by construction (compared above); the map's own clock sees the timestamp.
            cmap._store_winner(<str>key, record, ts)
            if tree is not None:
                tree.add(<str>key, ts)
            effective.append(_change(name, key, _REMOVE if value is None else _PUT, record, current))
            outcomes.append(_APPLIED)
    finally:
        # The tree catches up with every record stored, even when a later change raised.
        try:
            if tree is not None:
                tree.flush()
        finally:
            if staged:
                batch.recorded += staged
    return i


# ClientOp is slotted too: the fields read per op, by offset (same fallback rule).
_OP_FIELDS = ("map_name", "key", "op_type", "record", "write_concern")
cdef Py_ssize_t _op_off[5]
cdef Py_ssize_t _id_off = 0
cdef bint _op_fast = False
cdef type _ClientOp = ClientOp
cdef object _OP_PUT = OpType.PUT
cdef object _OP_REMOVE = OpType.REMOVE
cdef dict _RANK = {wc: wc.rank for wc in WriteConcern}
cdef object _py_plain_changes = _writepath_py.plain_changes


cdef void _init_op_offsets():
    global _op_fast, _id_off
    for i, name in enumerate(_OP_FIELDS):
        _op_off[i] = member_offset(ClientOp, name)
        if _op_off[i] < 0:
            return
    _id_off = member_offset(ClientOp, "id")
    _op_fast = _id_off >= 0


_init_op_offsets()


cdef inline object _slot(object o, Py_ssize_t off):
    cdef PyObject* v = (<PyObject**>((<char*>(<PyObject*>o)) + off))[0]
    if v == NULL:
        raise AttributeError("unset ClientOp field")
    return <object>v


def plain_changes(ops, requested):
    """The changes of a batch of plain ``PUT``/``REMOVE`` ops, or None (see the pure twin)."""
    return _plain_changes(ops, requested)


cdef object _plain_changes(ops, requested):
    cdef list changes = []
    cdef list maps = []
    cdef object last = None, name, record, t, wc, op
    cdef Py_ssize_t top, r
    if not _op_fast or type(ops) is not list:
        return _py_plain_changes(ops, requested)
    top = -1 if requested is None else _RANK[requested]
    for op in <list>ops:
        if type(op) is not _ClientOp:
            return None
        record = _slot(op, _op_off[3])
        t = _slot(op, _op_off[2])
        if record is None or (t is not _OP_PUT and t is not _OP_REMOVE):
            return None
        name = _slot(op, _op_off[0])
        if name is not last and name != last:
            if name not in maps:
                maps.append(name)
            last = name
        wc = _slot(op, _op_off[4])
        if wc is not None:
            r = _RANK[wc]
            if r > top:
                requested = wc
                top = r
        changes.append(_change(name, _slot(op, _op_off[1]), _PUT if t is _OP_PUT else _REMOVE, record, None))
    return changes, maps, requested


# --------------------------------------------------------------------------- OP_ACK of an all-accepted batch
# The codec's layout of OpAck(lastId, achievedLevel, results=[{opId, success, achievedLevel}]),
# written straight from the ops: no OpResult objects. Equal bytes are a tested contract.
cdef bytes _ACK_HEAD = b"\x82\xa4type\xa6OP_ACK\xa7payload\x83\xa6lastId"
cdef bytes _ACK_LEVEL = b"\xadachievedLevel"
cdef bytes _ACK_RESULTS = b"\xa7results"
cdef bytes _RES_HEAD = b"\x83\xa4opId"
cdef bytes _RES_SUCCESS = b"\xa7success\xc3\xadachievedLevel"
cdef object _py_ok_ack_frame = _writepath_py.ok_ack_frame
cdef dict _LEVEL_NAMES = {wc: wc.value for wc in WriteConcern}


cdef inline Py_ssize_t _str_hdr_len(Py_ssize_t n) noexcept:
    return 1 if n < 32 else (2 if n < 256 else (3 if n < 65536 else 5))


cdef inline char* _put_bytes(char* p, bytes b) noexcept:
    cdef Py_ssize_t n = len(b)
    memcpy(p, PyBytes_AS_STRING(b), n)
    return p + n


cdef inline char* _put_hdr(char* p, Py_ssize_t n, int fix, Py_ssize_t fix_max, int t8, int t16,
                           int t32) noexcept:
    """A MsgPack length header: fixed form below ``fix_max``, else 8 (``t8 >= 0``), 16 or 32 bits."""
    if n < fix_max:
        p[0] = <char>(fix | n)
        return p + 1
    if t8 >= 0 and n < 256:
        p[0] = <char>t8
        p[1] = <char>n
        return p + 2
    if n < 65536:
        p[0] = <char>t16
        p[1] = <char>(n >> 8)
        p[2] = <char>(n & 0xFF)
        return p + 3
    p[0] = <char>t32
    p[1] = <char>((n >> 24) & 0xFF)
    p[2] = <char>((n >> 16) & 0xFF)
    p[3] = <char>((n >> 8) & 0xFF)
    p[4] = <char>(n & 0xFF)
    return p + 5


cdef inline char* _put_utf8(char* p, const char* u, Py_ssize_t n) noexcept:
    p = _put_hdr(p, n, 0xA0, 32, 0xD9, 0xDA, 0xDB)
    memcpy(p, u, n)
    return p + n


def ok_ack_frame(ops, achieved):
    """The encoded ``OP_ACK`` of an all-accepted batch (see the pure twin)."""
    return _ok_ack(ops, achieved)


cdef object _ok_ack(ops, achieved):
    cdef Py_ssize_t count = 0, total, n, lvl_n, last_n = 1, i
    cdef const char* u
    cdef const char* lvl
    cdef const char* last_u = "0"
    cdef object op_id, level_name, out
    cdef char* p
    cdef list ids = []
    level_name = _LEVEL_NAMES.get(achieved)
    if not _op_fast or level_name is None or type(ops) is not list:
        return _py_ok_ack_frame(ops, achieved)
    lvl = PyUnicode_AsUTF8AndSize(level_name, &lvl_n)
    total = len(_ACK_HEAD) + len(_ACK_LEVEL) + _str_hdr_len(lvl_n) + lvl_n + len(_ACK_RESULTS)
    for op in <list>ops:
        if type(op) is not _ClientOp:
            return _py_ok_ack_frame(ops, achieved)
        op_id = _slot(op, _id_off)
        if op_id is None:
            continue
        if type(op_id) is not str:
            return _py_ok_ack_frame(ops, achieved)
        u = PyUnicode_AsUTF8AndSize(op_id, &n)
        ids.append(op_id)
        count += 1
        total += (len(_RES_HEAD) + _str_hdr_len(n) + n + len(_RES_SUCCESS) + _str_hdr_len(lvl_n) + lvl_n)
        last_u = u
        last_n = n
    total += _str_hdr_len(last_n) + last_n
    total += 1 if count < 16 else (3 if count < 65536 else 5)
    out = PyBytes_FromStringAndSize(NULL, total)
    p = PyBytes_AS_STRING(out)
    p = _put_bytes(p, _ACK_HEAD)
    p = _put_utf8(p, last_u, last_n)
    p = _put_bytes(p, _ACK_LEVEL)
    p = _put_utf8(p, lvl, lvl_n)
    p = _put_bytes(p, _ACK_RESULTS)
    p = _put_hdr(p, count, 0x90, 16, -1, 0xDC, 0xDD)
    for i in range(count):
        u = PyUnicode_AsUTF8AndSize(<object>PyList_GET_ITEM(ids, i), &n)
        p = _put_bytes(p, _RES_HEAD)
        p = _put_utf8(p, u, n)
        p = _put_bytes(p, _RES_SUCCESS)
        p = _put_utf8(p, lvl, lvl_n)
    assert p - PyBytes_AS_STRING(out) == total
    return out


# --------------------------------------------------------------------------- one write message
cdef object _ClientOpMessage = ClientOpMessage
cdef object _OpBatch = OpBatch
cdef object _Writer = _writepath_py.Writer
cdef object _py_write_message = _writepath_py.write_message
cdef object _WRITER_KEY = _writepath_py.WRITER_KEY
cdef object _ACKS_KEY = _writepath_py.ACKS_KEY
cdef dict _OP_KEYS = {t: (t.value,) for t in OpType}
cdef Py_ssize_t _APPLIED_RANK = WriteConcern.APPLIED.rank
cdef object _APPLIED_WC = WriteConcern.APPLIED
cdef object _PERSISTED = WriteConcern.PERSISTED
cdef object _apply_changes_fn = apply_changes
cdef Py_ssize_t _ready_off = member_offset(_writepath_py.Writer, "ready")
cdef Py_ssize_t _origin_off = member_offset(_writepath_py.Writer, "origin")


cdef class _WriteState:
    """What ``write_message`` keeps of a handler whose grid is loaded: the grid and the pieces of
    it and of the handler that never change identity while that grid lives."""
    cdef object grid, committer, core
    cdef dict series
    cdef bint direct

    def __init__(self, handler, grid):
        self.grid = grid
        self.committer = grid.committer
        self.core = handler.core
        self.series = handler._ops_series
        # a grid whose apply is not this module's (a subclass overriding it) is called as a method
        self.direct = getattr(type(grid), "apply", None) is _apply_changes_fn


def write_message(handler, ctx, msg):
    """The body of ``WriteHandler.handle`` (see :func:`topgun.server._writepath_py.write_message`)."""
    cdef object t = type(msg), ops, batch_wc, grid, st_obj, plain, committer, limit, batch
    cdef _WriteState st
    if t is _ClientOpMessage:
        ops = [msg.op]
        batch_wc = None
    elif t is _OpBatch:
        ops = msg.ops
        batch_wc = msg.write_concern
    else:
        return _py_write_message(handler, ctx, msg)
    core = handler.core
    grid = core._grid
    if grid is None or type(ops) is not list:
        return _py_write_message(handler, ctx, msg)
    st_obj = handler._write_state
    if st_obj is None or (<_WriteState>st_obj).grid is not grid or (<_WriteState>st_obj).core is not core:
        st_obj = _WriteState(handler, grid)
        handler._write_state = st_obj
    st = <_WriteState>st_obj
    if PyList_GET_SIZE(ops):  # an empty batch gets no reply at all
        plain = _plain_changes(ops, batch_wc)
        if plain is None or not _write_plain(st, handler, ctx, <list>ops, <tuple>plain):
            handler._general(ctx, ops, batch_wc)
    committer = st.committer
    if committer is None:
        return None
    limit = handler.backlog_high_water
    batch = committer.open_batch
    if batch is not None and type(limit) is int and batch.recorded + committer.sealed_rows <= limit:
        # what over_backlog answers first, without its Python frame
        return None
    if committer.over_backlog(limit):
        return handler._backlog(committer)
    return None


cdef bint _write_plain(_WriteState st, handler, ctx, list ops, tuple plain) except -1:
    cdef list changes = <list>PyTuple_GET_ITEM(plain, 0), maps = <list>PyTuple_GET_ITEM(plain, 1)
    cdef object requested = <object>PyTuple_GET_ITEM(plain, 2)
    cdef object data = ctx.data, writer, ready, origin, name, outcomes, o, key, level, ack, grid = st.grid
    cdef dict series = st.series
    cdef PyObject* p
    cdef Py_ssize_t i, n = PyList_GET_SIZE(ops)
    cdef bint plain_dict = type(data) is dict
    if plain_dict:
        p = PyDict_GetItem(<dict>data, _WRITER_KEY)
        writer = <object>p if p != NULL else None
    else:
        writer = data.get(_WRITER_KEY)
    if writer is None:
        writer = _Writer(ctx.connection_id)
        data[_WRITER_KEY] = writer
    if type(writer) is _Writer and _ready_off >= 0 and _origin_off >= 0:
        # slot reads, as in plain_changes (the pure Writer is slotted)
        ready = _slot(writer, _ready_off)
        origin = _slot(writer, _origin_off)
    else:
        ready = writer.ready
        origin = writer.origin
    for i in range(PyList_GET_SIZE(maps)):
        name = <object>PyList_GET_ITEM(maps, i)
        if name not in ready:
            if not handler._admit(ctx, name):
                return False
            ready.add(name)
    if st.direct:
        outcomes = (<tuple>_apply(grid, changes, origin))[0]
    else:
        outcomes = grid.apply(changes, origin).outcomes
    for o in outcomes:
        # what outcomes.count(APPLIED) + outcomes.count(UNCHANGED) == n settles (identity first)
        if not (o is _APPLIED or o is _UNCHANGED or o == _APPLIED or o == _UNCHANGED):
            handler._reply(ctx, ops, outcomes, requested)
            return True
    if len(outcomes) != n:
        handler._reply(ctx, ops, outcomes, requested)
        return True
    # Every op accepted, none lost to a newer record: count, then the prebuilt ack.
    for i in range(n):
        o = <object>PyList_GET_ITEM(ops, i)
        key = _OP_KEYS[_slot(o, _op_off[2]) if _op_fast else o.op_type]
        p = PyDict_GetItem(series, key)
        PyDict_SetItem(series, key, (<object>p + 1) if p != NULL else 1)
    level = requested if requested is not None else st.core.default_concern
    if <Py_ssize_t>_RANK[level] > _APPLIED_RANK and grid.durable:
        handler._ack(ctx, st.committer.sync_point(), _ok_ack(ops, _PERSISTED))
        return True
    ack = _ok_ack(ops, _APPLIED_WC)
    p = PyDict_GetItem(<dict>data, _ACKS_KEY) if plain_dict else NULL
    if p != NULL or (not plain_dict and _ACKS_KEY in data):
        data[_ACKS_KEY].push(None, ack)  # behind acks still waiting for a commit
    else:
        ctx.send_frame(ack)
    return True
