# cython: language_level=3
"""Compiled twin of :mod:`topgun.protocol._codec_py` (same names, same results).

Compiled here: the byte-level frame scan, the decode of ``OP_BATCH`` /
``CLIENT_OP`` ops straight into validated records, and the encoders of
``SERVER_EVENT``, ``QUERY_UPDATE`` and ``OP_ACK`` (bytes written directly,
identical to what msgpack writes for the pure twin's wire dict). Anything
unusual on those paths (an invalid op, an unexpected Python type) is handed
to the pure module, so results and errors are the pure module's by
construction. Every other kind delegates to the pure module.
"""

from libc.stdint cimport uint8_t, uint32_t, uint64_t, int64_t
from libc.string cimport memcpy
from libc.math cimport floor, isfinite
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE, PyBytes_FromStringAndSize, PyBytes_CheckExact
from cpython.dict cimport PyDict_GetItem, PyDict_Next, PyDict_CheckExact
from cpython.list cimport PyList_GET_ITEM, PyList_GET_SIZE, PyList_New, PyList_SET_ITEM, PyList_CheckExact
from cpython.tuple cimport PyTuple_GET_ITEM, PyTuple_GET_SIZE, PyTuple_CheckExact
from cpython.unicode cimport PyUnicode_CheckExact
from cpython.long cimport PyLong_CheckExact, PyLong_FromDouble, PyLong_AsLongLongAndOverflow, PyLong_AsUnsignedLongLong
from cpython.float cimport PyFloat_CheckExact, PyFloat_AS_DOUBLE
from cpython.bool cimport PyBool_Check
from cpython.mem cimport PyMem_Malloc, PyMem_Realloc, PyMem_Free
from cpython.object cimport PyObject, PyTypeObject
from cpython.ref cimport Py_INCREF

cdef extern from "Python.h":
    const char* PyUnicode_AsUTF8AndSize(object, Py_ssize_t*) except NULL
    Py_ssize_t PyUnicode_GET_LENGTH(object)
    Py_ssize_t PyUnicode_FindChar(object, Py_UCS4, Py_ssize_t, Py_ssize_t, int) except -2
    ctypedef struct PyMemberDef:
        const char* name
        int type
        Py_ssize_t offset
    ctypedef struct PyMemberDescrObject:
        PyMemberDef* d_member
    PyObject* PyType_GenericAlloc(PyTypeObject*, Py_ssize_t) except NULL
    void PyTuple_SET_ITEM(PyObject*, Py_ssize_t, PyObject*)

import msgpack

from topgun.core.records import LWWRecord, ORMapRecord, Timestamp
from topgun.errors import FrameTooLargeError, ProtocolError
from topgun.protocol import _codec_py as _py
from topgun.protocol.messages import (
    ClientOp,
    ClientOpMessage,
    OpAck,
    OpBatch,
    OpResult,
    OpType,
    QueryUpdate,
    ServerEvent,
    ChangeType,
    ServerEventType,
    WriteConcern,
    Ext,
)
from topgun.protocol._codec_py import DEFAULT_LIMITS, Limits, encode_batch, split_batch, pack, to_wire

__all__ = [
    "DEFAULT_LIMITS",
    "Limits",
    "decode",
    "encode",
    "encode_batch",
    "from_wire",
    "pack",
    "scan",
    "split_batch",
    "to_wire",
    "unpack",
]

cdef object _unpackb = msgpack.unpackb
cdef object _packb = msgpack.packb
cdef object _ext_hook = _py._ext_hook
cdef object _py_decode_op = _py._decode_op
cdef object _py_from_wire = _py.from_wire
cdef object _py_encode = _py.encode
cdef object _DEFAULT_LIMITS = DEFAULT_LIMITS
cdef object _Ext = Ext
cdef object _OpBatch = OpBatch

# --------------------------------------------------------------------------- scan


cdef inline uint64_t _be(const uint8_t* p, int w) noexcept nogil:
    cdef uint64_t v = 0
    cdef int i
    for i in range(w):
        v = (v << 8) | p[i]
    return v


cdef object _bad(str msg):
    return ProtocolError("malformed frame: " + msg)


def scan(frame, limits=DEFAULT_LIMITS):
    """Validate the MsgPack structure of ``frame`` (see :func:`topgun.protocol._codec_py.scan`)."""
    cdef const uint8_t[::1] view
    if isinstance(frame, bytes):
        view = frame
    else:
        view = memoryview(frame).cast("B")
    return _scan(&view[0] if view.shape[0] else NULL, view.shape[0], limits)


cdef list _scan(const uint8_t* buf, Py_ssize_t n, object limits):
    cdef Py_ssize_t max_depth = limits.max_depth
    cdef uint64_t max_str = limits.max_str_len
    cdef uint64_t max_bin = limits.max_bin_len
    cdef list ext_m1 = []
    cdef Py_ssize_t pos = 0, top = 0, cap
    cdef uint64_t r, cnt, ln
    cdef uint8_t b, b0
    cdef int w
    cdef bint mp
    cdef uint64_t* rem
    cdef uint8_t* is_map
    if n == 0:
        raise _bad("empty frame")
    b0 = buf[0]
    if not (0x80 <= b0 <= 0x8F or b0 == 0xDE or b0 == 0xDF):
        raise ProtocolError("frame is not a MsgPack map")
    cap = max_depth + 2
    rem = <uint64_t*>PyMem_Malloc(cap * sizeof(uint64_t))
    is_map = <uint8_t*>PyMem_Malloc(cap)
    if rem == NULL or is_map == NULL:
        PyMem_Free(rem)
        PyMem_Free(is_map)
        raise MemoryError()
    try:
        rem[0] = 1
        is_map[0] = 0
        top = 0
        while top >= 0:
            r = rem[top]
            if r == 0:
                top -= 1
                continue
            rem[top] = r - 1
            if pos >= n:
                raise _bad("truncated")
            b = buf[pos]
            pos += 1
            if is_map[top] and r % 2 == 0 and not (0xA0 <= b <= 0xBF or 0xD9 <= b <= 0xDB):
                raise ProtocolError("map key is not a string")
            if b <= 0x7F or b >= 0xE0:
                continue
            if b <= 0x8F:
                cnt = (b & 0x0F) * 2
                mp = True
            elif b <= 0x9F:
                cnt = b & 0x0F
                mp = False
            elif b <= 0xBF:
                ln = b & 0x1F
                if pos + <Py_ssize_t>ln > n:
                    raise _bad("truncated string")
                pos += ln
                continue
            elif b == 0xC0 or b == 0xC2 or b == 0xC3:
                continue
            elif b == 0xCA or b == 0xCB or (0xCC <= b <= 0xD3):
                if b == 0xCA:
                    w = 4
                elif b == 0xCB:
                    w = 8
                elif b <= 0xCF:
                    w = 1 << (b - 0xCC)
                else:
                    w = 1 << (b - 0xD0)
                pos += w
                if pos > n:
                    raise _bad("truncated number")
                continue
            elif (0xD9 <= b <= 0xDB) or (0xC4 <= b <= 0xC6):
                w = (1 << (b - 0xD9)) if b >= 0xD9 else (1 << (b - 0xC4))
                if pos + w > n:
                    raise _bad("truncated length")
                ln = _be(buf + pos, w)
                pos += w
                if ln > (max_str if b >= 0xD9 else max_bin):
                    raise ProtocolError("string or bin longer than the limit", code=413)
                if ln > <uint64_t>(n - pos):
                    raise _bad("declared length exceeds the frame")
                pos += ln
                continue
            elif (0xD4 <= b <= 0xD8) or (0xC7 <= b <= 0xC9):
                if b >= 0xD4:
                    ln = 1 << (b - 0xD4)
                else:
                    w = 1 << (b - 0xC7)
                    if pos + w > n:
                        raise _bad("truncated length")
                    ln = _be(buf + pos, w)
                    pos += w
                    if ln > max_bin:
                        raise ProtocolError("ext longer than the limit", code=413)
                if pos >= n or ln > <uint64_t>(n - pos - 1):
                    raise _bad("declared length exceeds the frame")
                if buf[pos] == 0xFF:
                    ext_m1.append(pos)
                elif buf[pos] == 0x80:
                    raise ProtocolError("reserved ext type -128")
                pos += 1 + ln
                continue
            elif b == 0xDC or b == 0xDD or b == 0xDE or b == 0xDF:
                mp = b >= 0xDE
                w = 2 if (b == 0xDC or b == 0xDE) else 4
                if pos + w > n:
                    raise _bad("truncated length")
                cnt = _be(buf + pos, w)
                pos += w
                if mp:
                    cnt *= 2
            else:
                raise _bad(f"invalid byte 0x{b:02x}")
            if cnt > <uint64_t>(n - pos):
                raise _bad("declared container length exceeds the frame")
            top += 1
            if top > max_depth:
                raise ProtocolError(f"nesting deeper than {max_depth}")
            rem[top] = cnt
            is_map[top] = mp
        if pos != n:
            raise _bad("trailing bytes after the value")
        return ext_m1
    finally:
        PyMem_Free(rem)
        PyMem_Free(is_map)


def unpack(frame, limits=None):
    """Check and unpack one frame into its plain MsgPack value (a ``dict``)."""
    cdef object lim = limits if limits is not None else _DEFAULT_LIMITS
    cdef const uint8_t[::1] view
    cdef Py_ssize_t n
    cdef list ext_m1
    if isinstance(frame, bytes):
        view = frame
    else:
        view = memoryview(frame).cast("B")
    n = view.shape[0]
    if n > lim.max_frame_bytes:
        raise FrameTooLargeError(n, lim.max_frame_bytes)
    ext_m1 = _scan(&view[0] if n else NULL, n, lim)
    if ext_m1:
        buf = bytearray(frame)
        for p in ext_m1:
            buf[p] = 0x80
        frame = bytes(buf)
    try:
        return _unpackb(frame, raw=False, strict_map_key=False, ext_hook=_ext_hook)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise ProtocolError(f"malformed frame: {exc}") from None


# --------------------------------------------------------------------------- fast record construction

cdef PyTypeObject* _TS_T = <PyTypeObject*>Timestamp
cdef PyTypeObject* _LWW_T = <PyTypeObject*>LWWRecord
cdef PyTypeObject* _OR_T = <PyTypeObject*>ORMapRecord
cdef PyTypeObject* _OP_T = <PyTypeObject*>ClientOp


cdef inline object _tuple3(PyTypeObject* t, object a, object b, object c):
    # what tuple.__new__(t, (a, b, c)) does for a NamedTuple, without the temporary tuple
    cdef PyObject* o = PyType_GenericAlloc(t, 3)
    Py_INCREF(a)
    Py_INCREF(b)
    Py_INCREF(c)
    PyTuple_SET_ITEM(o, 0, <PyObject*>a)
    PyTuple_SET_ITEM(o, 1, <PyObject*>b)
    PyTuple_SET_ITEM(o, 2, <PyObject*>c)
    return <object>o


cdef inline object _tuple4(PyTypeObject* t, object a, object b, object c, object d):
    cdef PyObject* o = PyType_GenericAlloc(t, 4)
    Py_INCREF(a)
    Py_INCREF(b)
    Py_INCREF(c)
    Py_INCREF(d)
    PyTuple_SET_ITEM(o, 0, <PyObject*>a)
    PyTuple_SET_ITEM(o, 1, <PyObject*>b)
    PyTuple_SET_ITEM(o, 2, <PyObject*>c)
    PyTuple_SET_ITEM(o, 3, <PyObject*>d)
    return <object>o


# ClientOp is a slotted dataclass: its fields live at fixed offsets, written here
# directly (its frozen __setattr__ and keyword __init__ cost more than the whole walk).
cdef enum:
    N_OP_SLOTS = 10

_OP_FIELDS = ("id", "map_name", "key", "op_type", "record", "or_record", "or_tag",
              "write_concern", "timeout", "timestamp")
cdef Py_ssize_t _op_off[N_OP_SLOTS]
cdef bint _op_fast = False


cdef void _init_op_offsets():
    global _op_fast
    member_type = type(ClientOp.__dict__["id"])
    for i, name in enumerate(_OP_FIELDS):
        d = ClientOp.__dict__.get(name)
        if d is None or type(d) is not member_type:
            return
        _op_off[i] = (<PyMemberDescrObject*>d).d_member.offset
    if tuple(f for f in ClientOp.__slots__) != _OP_FIELDS:
        return
    _op_fast = True


_init_op_offsets()


cdef object _make_op(object op_id, object map_name, object key, object op_type, object record,
                     object or_record, object or_tag, object wc, object timeout, object ts):
    cdef PyObject* o
    cdef PyObject* vals[N_OP_SLOTS]
    cdef int i
    if not _op_fast:
        return ClientOp(id=op_id, map_name=map_name, key=key, op_type=op_type, record=record,
                        or_record=or_record, or_tag=or_tag, write_concern=wc, timeout=timeout,
                        timestamp=ts)
    o = PyType_GenericAlloc(_OP_T, 0)
    vals[0] = <PyObject*>op_id
    vals[1] = <PyObject*>map_name
    vals[2] = <PyObject*>key
    vals[3] = <PyObject*>op_type
    vals[4] = <PyObject*>record
    vals[5] = <PyObject*>or_record
    vals[6] = <PyObject*>or_tag
    vals[7] = <PyObject*>wc
    vals[8] = <PyObject*>timeout
    vals[9] = <PyObject*>ts
    for i in range(N_OP_SLOTS):
        Py_INCREF(<object>vals[i])
        (<PyObject**>((<char*>o) + _op_off[i]))[0] = vals[i]
    return <object>o


# --------------------------------------------------------------------------- op fast path
# Each helper returns NULL-equivalent (a sentinel) when the input is anything but the
# plain valid shape; the caller then runs the pure decoder for that op.

cdef object _FAIL = object()
cdef dict _OP_TYPES = {m.value: m for m in OpType}
cdef dict _WCS = {m.value: m for m in WriteConcern}
cdef object _PUT = OpType.PUT
cdef object _REMOVE = OpType.REMOVE
cdef object _OR_ADD = OpType.OR_ADD
cdef object _OR_REMOVE = OpType.OR_REMOVE
cdef str K_ID = "id", K_MAP = "mapName", K_KEY = "key", K_OPTYPE = "opType", K_RECORD = "record"
cdef str K_ORREC = "orRecord", K_ORTAG = "orTag", K_WC = "writeConcern", K_TIMEOUT = "timeout"
cdef str K_TS = "timestamp", K_VALUE = "value", K_TTL = "ttlMs", K_TAG = "tag"
cdef str K_MILLIS = "millis", K_COUNTER = "counter", K_NODE = "nodeId", K_OPS = "ops", K_PAYLOAD = "payload"
cdef str K_TYPE = "type"


cdef inline object _fast_int(PyObject* v):
    """Exact int of an int or integral float, else _FAIL (no range checks beyond the pure ones)."""
    cdef double d
    if PyLong_CheckExact(<object>v):
        return <object>v
    if PyFloat_CheckExact(<object>v):
        d = PyFloat_AS_DOUBLE(<object>v)
        if isfinite(d) and d == floor(d) and d >= -9223372036854775808.0 and d < 18446744073709551616.0:
            return PyLong_FromDouble(d)
    return _FAIL


cdef object _fast_ts(PyObject* v):
    cdef PyObject* m
    cdef PyObject* c
    cdef PyObject* nd
    cdef int overflow = 0
    cdef long long x
    cdef object millis, counter
    if v == NULL or not PyDict_CheckExact(<object>v):
        return _FAIL
    m = PyDict_GetItem(<object>v, K_MILLIS)
    c = PyDict_GetItem(<object>v, K_COUNTER)
    nd = PyDict_GetItem(<object>v, K_NODE)
    if m == NULL or c == NULL or nd == NULL:
        return _FAIL
    millis = _fast_int(m)
    if millis is _FAIL:
        return _FAIL
    counter = _fast_int(c)
    if counter is _FAIL:
        return _FAIL
    x = PyLong_AsLongLongAndOverflow(millis, &overflow)
    if overflow != 0 or x < 0:
        return _FAIL
    x = PyLong_AsLongLongAndOverflow(counter, &overflow)
    if overflow != 0 or x < 0 or x >= 4294967296:
        return _FAIL
    if not PyUnicode_CheckExact(<object>nd):
        return _FAIL
    if PyUnicode_GET_LENGTH(<object>nd) == 0:
        return _FAIL
    if PyUnicode_FindChar(<object>nd, 0x3A, 0, PyUnicode_GET_LENGTH(<object>nd), 1) != -1:
        return _FAIL
    return _tuple3(_TS_T, millis, counter, <object>nd)


cdef object _same_ts(PyObject* v, object rec):
    """The timestamp of ``rec`` when the wire map ``v`` spells exactly it, else None."""
    cdef PyObject* m
    cdef PyObject* c
    cdef PyObject* nd
    cdef object ts
    cdef int overflow = 0
    cdef long long want
    if rec is None or not PyDict_CheckExact(<object>v):
        return None
    ts = <object>PyTuple_GET_ITEM(rec, 1)
    m = PyDict_GetItem(<object>v, K_MILLIS)
    c = PyDict_GetItem(<object>v, K_COUNTER)
    nd = PyDict_GetItem(<object>v, K_NODE)
    if m == NULL or c == NULL or nd == NULL or not PyUnicode_CheckExact(<object>nd):
        return None
    if not PyLong_CheckExact(<object>c) or not PyLong_CheckExact(<object>PyTuple_GET_ITEM(ts, 1)):
        return None
    if PyLong_AsLongLongAndOverflow(<object>c, &overflow) != PyLong_AsLongLongAndOverflow(
            <object>PyTuple_GET_ITEM(ts, 1), &overflow) or overflow != 0:
        return None
    want = PyLong_AsLongLongAndOverflow(<object>PyTuple_GET_ITEM(ts, 0), &overflow)
    if overflow != 0 or want < 0 or want > 9007199254740992:
        return None
    if PyFloat_CheckExact(<object>m):
        if PyFloat_AS_DOUBLE(<object>m) != <double>want:
            return None
    elif PyLong_CheckExact(<object>m):
        if PyLong_AsLongLongAndOverflow(<object>m, &overflow) != want or overflow != 0:
            return None
    else:
        return None
    if <object>nd != <object>PyTuple_GET_ITEM(ts, 2):
        return None
    return ts


cdef object _fast_ttl(object d):
    cdef PyObject* t = PyDict_GetItem(d, K_TTL)
    if t == NULL or <object>t is None:
        return None
    return _fast_int(t)


cdef object _fast_lww(PyObject* v):
    cdef PyObject* val
    cdef object ts, ttl
    if not PyDict_CheckExact(<object>v):
        return _FAIL
    ts = _fast_ts(PyDict_GetItem(<object>v, K_TS))
    if ts is _FAIL:
        return _FAIL
    ttl = _fast_ttl(<object>v)
    if ttl is _FAIL:
        return _FAIL
    val = PyDict_GetItem(<object>v, K_VALUE)
    return _tuple3(_LWW_T, <object>val if val != NULL else None, ts, ttl)


cdef object _fast_or(PyObject* v):
    cdef PyObject* val
    cdef PyObject* tag
    cdef object ts, ttl
    if not PyDict_CheckExact(<object>v):
        return _FAIL
    ts = _fast_ts(PyDict_GetItem(<object>v, K_TS))
    if ts is _FAIL:
        return _FAIL
    tag = PyDict_GetItem(<object>v, K_TAG)
    if tag == NULL or not PyUnicode_CheckExact(<object>tag) or PyUnicode_GET_LENGTH(<object>tag) == 0:
        return _FAIL
    ttl = _fast_ttl(<object>v)
    if ttl is _FAIL:
        return _FAIL
    val = PyDict_GetItem(<object>v, K_VALUE)
    return _tuple4(_OR_T, <object>val if val != NULL else None, ts, <object>tag, ttl)


cdef object _fast_op(object v):
    """The ClientOp of a plainly valid op, else _FAIL (then the pure decoder judges it)."""
    cdef PyObject* p
    cdef PyObject* rec_raw
    cdef PyObject* or_raw
    cdef PyObject* tag_raw
    cdef PyObject* q
    cdef object op_id = None, map_name, key, op_type = None, record = None, or_record = None
    cdef object or_tag = None, wc = None, timeout = None, ts = None
    if not PyDict_CheckExact(v):
        return _FAIL
    p = PyDict_GetItem(v, K_ID)
    if p != NULL and <object>p is not None:
        if not PyUnicode_CheckExact(<object>p):
            return _FAIL
        op_id = <object>p
    p = PyDict_GetItem(v, K_MAP)
    if p == NULL or not PyUnicode_CheckExact(<object>p) or PyUnicode_GET_LENGTH(<object>p) == 0:
        return _FAIL
    map_name = <object>p
    p = PyDict_GetItem(v, K_KEY)
    if p == NULL or not PyUnicode_CheckExact(<object>p):
        return _FAIL
    key = <object>p
    p = PyDict_GetItem(v, K_OPTYPE)
    if p != NULL and <object>p is not None:
        if not PyUnicode_CheckExact(<object>p):
            return _FAIL
        q = PyDict_GetItem(_OP_TYPES, <object>p)
        if q != NULL:
            op_type = <object>q
    rec_raw = PyDict_GetItem(v, K_RECORD)
    or_raw = PyDict_GetItem(v, K_ORREC)
    if or_raw != NULL and <object>or_raw is None:
        or_raw = NULL
    tag_raw = PyDict_GetItem(v, K_ORTAG)
    if tag_raw != NULL and <object>tag_raw is None:
        tag_raw = NULL
    if op_type is None:
        if rec_raw != NULL and <object>rec_raw is None:
            op_type = _REMOVE
        elif or_raw != NULL:
            op_type = _OR_ADD
        elif tag_raw != NULL:
            op_type = _OR_REMOVE
        else:
            op_type = _PUT
    if rec_raw != NULL and <object>rec_raw is not None:
        record = _fast_lww(rec_raw)
        if record is _FAIL:
            return _FAIL
    if or_raw != NULL:
        or_record = _fast_or(or_raw)
        if or_record is _FAIL:
            return _FAIL
    if tag_raw != NULL:
        if not PyUnicode_CheckExact(<object>tag_raw):
            return _FAIL
        or_tag = <object>tag_raw
    if op_type is _PUT:
        if record is None:
            return _FAIL
        if PyTuple_GET_ITEM(record, 0) == <PyObject*>None:
            op_type = _REMOVE
    elif op_type is _OR_ADD:
        if or_record is None:
            return _FAIL
    elif op_type is _OR_REMOVE:
        if or_tag is None or PyUnicode_GET_LENGTH(or_tag) == 0:
            return _FAIL
    p = PyDict_GetItem(v, K_WC)
    if p != NULL and <object>p is not None:
        if not PyUnicode_CheckExact(<object>p):
            return _FAIL
        q = PyDict_GetItem(_WCS, <object>p)
        if q == NULL:
            return _FAIL
        wc = <object>q
    p = PyDict_GetItem(v, K_TIMEOUT)
    if p != NULL and <object>p is not None:
        timeout = _fast_int(p)
        if timeout is _FAIL:
            return _FAIL
    p = PyDict_GetItem(v, K_TS)
    if p != NULL and <object>p is not None:
        # the TS op log repeats the record's timestamp here: share that Timestamp
        ts = _same_ts(p, record if record is not None else or_record)
        if ts is None:
            ts = _fast_ts(p)
            if ts is _FAIL:
                return _FAIL
    return _make_op(op_id, map_name, key, op_type, record, or_record, or_tag, wc, timeout, ts)


cdef list _decode_ops(list ops, object lim):
    cdef Py_ssize_t i, n = PyList_GET_SIZE(ops)
    cdef list out = PyList_New(n)
    cdef object raw, op
    for i in range(n):
        raw = <object>PyList_GET_ITEM(ops, i)
        op = _fast_op(raw)
        if op is _FAIL:
            op = _py_decode_op(raw, f"payload.ops[{i}]", lim)
        Py_INCREF(op)
        PyList_SET_ITEM(out, i, op)
    return out


def from_wire(obj, limits=None):
    """Build the typed message from an already unpacked frame value."""
    cdef PyObject* t
    cdef PyObject* payload
    cdef PyObject* ops
    cdef object lim = limits if limits is not None else _DEFAULT_LIMITS
    cdef object op
    if PyDict_CheckExact(obj):
        t = PyDict_GetItem(obj, K_TYPE)
        payload = PyDict_GetItem(obj, K_PAYLOAD)
        if t != NULL and payload != NULL and PyUnicode_CheckExact(<object>t) and PyDict_CheckExact(<object>payload):
            if <str>t == "OP_BATCH":
                ops = PyDict_GetItem(<object>payload, K_OPS)
                if ops != NULL and PyList_CheckExact(<object>ops):
                    wc = (<object>payload).get("writeConcern")
                    timeout = (<object>payload).get("timeout")
                    return _OpBatch(
                        ops=_decode_ops(<list>ops, lim),
                        write_concern=None if wc is None else _py._d_write_concern(wc, "payload.writeConcern", lim),
                        timeout=None if timeout is None else _py._as_int(timeout, "payload.timeout"),
                    )
            elif <str>t == "CLIENT_OP":
                op = _fast_op(<object>payload)
                if op is _FAIL:
                    op = _py_decode_op(<object>payload, "payload", lim)
                return ClientOpMessage(op=op)
    return _py_from_wire(obj, lim)


def decode(frame, limits=None):
    """Decode one frame into a typed message (see :func:`topgun.protocol._codec_py.decode`)."""
    return from_wire(unpack(frame, limits), limits)


# --------------------------------------------------------------------------- byte writer


cdef struct Buf:
    char* data
    Py_ssize_t len
    Py_ssize_t cap


cdef int _grow(Buf* b, Py_ssize_t extra) except -1:
    cdef Py_ssize_t cap = b.cap * 2
    cdef char* d
    if cap < b.len + extra:
        cap = b.len + extra + 64
    d = <char*>PyMem_Realloc(b.data, cap)
    if d == NULL:
        raise MemoryError()
    b.data = d
    b.cap = cap
    return 0


cdef inline int _put(Buf* b, const char* s, Py_ssize_t n) except -1:
    if b.len + n > b.cap:
        _grow(b, n)
    memcpy(b.data + b.len, s, n)
    b.len += n
    return 0


cdef inline int _put1(Buf* b, uint8_t c) except -1:
    if b.len + 1 > b.cap:
        _grow(b, 1)
    b.data[b.len] = <char>c
    b.len += 1
    return 0


cdef inline int _put_be(Buf* b, uint8_t head, uint64_t v, int w) except -1:
    cdef char tmp[9]
    cdef int i
    tmp[0] = <char>head
    for i in range(w):
        tmp[w - i] = <char>(v & 0xFF)
        v >>= 8
    return _put(b, tmp, w + 1)


cdef int _put_str(Buf* b, object s) except -1:
    cdef Py_ssize_t n
    cdef const char* u = PyUnicode_AsUTF8AndSize(s, &n)
    if n < 32:
        _put1(b, 0xA0 | n)
    elif n < 256:
        _put_be(b, 0xD9, n, 1)
    elif n < 65536:
        _put_be(b, 0xDA, n, 2)
    else:
        _put_be(b, 0xDB, n, 4)
    return _put(b, u, n)


cdef inline int _put_key(Buf* b, bytes k) except -1:
    return _put(b, PyBytes_AS_STRING(k), PyBytes_GET_SIZE(k))


cdef int _put_map_hdr(Buf* b, Py_ssize_t n) except -1:
    if n < 16:
        return _put1(b, 0x80 | n)
    if n < 65536:
        return _put_be(b, 0xDE, n, 2)
    return _put_be(b, 0xDF, n, 4)


cdef int _put_arr_hdr(Buf* b, Py_ssize_t n) except -1:
    if n < 16:
        return _put1(b, 0x90 | n)
    if n < 65536:
        return _put_be(b, 0xDC, n, 2)
    return _put_be(b, 0xDD, n, 4)


cdef int _put_int(Buf* b, object o) except -1:
    # msgpack's choice of width: unsigned forms for positive values, signed for the rest
    cdef int overflow = 0
    cdef long long v = PyLong_AsLongLongAndOverflow(o, &overflow)
    cdef unsigned long long u
    if overflow > 0:
        u = PyLong_AsUnsignedLongLong(o)  # raises OverflowError beyond 2**64 - 1, like msgpack
        return _put_be(b, 0xCF, u, 8)
    if overflow < 0:
        raise OverflowError("int too big to convert")
    if v >= 0:
        if v < 128:
            return _put1(b, <uint8_t>v)
        if v < 256:
            return _put_be(b, 0xCC, v, 1)
        if v < 65536:
            return _put_be(b, 0xCD, v, 2)
        if v < 4294967296:
            return _put_be(b, 0xCE, v, 4)
        return _put_be(b, 0xCF, v, 8)
    if v >= -32:
        return _put1(b, <uint8_t>(v & 0xFF))
    if v >= -128:
        return _put_be(b, 0xD0, <uint64_t>v, 1)
    if v >= -32768:
        return _put_be(b, 0xD1, <uint64_t>v, 2)
    if v >= -2147483648:
        return _put_be(b, 0xD2, <uint64_t>v, 4)
    return _put_be(b, 0xD3, <uint64_t>v, 8)


cdef int _put_float(Buf* b, double d) except -1:
    cdef uint64_t bits
    memcpy(&bits, &d, 8)
    return _put_be(b, 0xCB, bits, 8)


cdef int _put_bin(Buf* b, object o) except -1:
    cdef Py_ssize_t n = PyBytes_GET_SIZE(o)
    if n < 256:
        _put_be(b, 0xC4, n, 1)
    elif n < 65536:
        _put_be(b, 0xC5, n, 2)
    else:
        _put_be(b, 0xC6, n, 4)
    return _put(b, PyBytes_AS_STRING(o), n)


cdef int _put_value(Buf* b, object o, int depth) except -1:
    """Pack a user value exactly as msgpack.packb(use_bin_type=True) would."""
    cdef Py_ssize_t pos = 0, i, n
    cdef PyObject* k
    cdef PyObject* v
    if o is None:
        return _put1(b, 0xC0)
    if o is True:
        return _put1(b, 0xC3)
    if o is False:
        return _put1(b, 0xC2)
    if depth > 256:
        # deeper than any decodable frame: let the pure path (msgpack) decide
        raise ValueError("value nested too deeply")
    if PyUnicode_CheckExact(o):
        return _put_str(b, o)
    if PyLong_CheckExact(o):
        return _put_int(b, o)
    if PyFloat_CheckExact(o):
        return _put_float(b, PyFloat_AS_DOUBLE(o))
    if PyDict_CheckExact(o):
        _put_map_hdr(b, len(<dict>o))
        while PyDict_Next(o, &pos, &k, &v):
            _put_value(b, <object>k, depth + 1)
            _put_value(b, <object>v, depth + 1)
        return 0
    if PyList_CheckExact(o):
        n = PyList_GET_SIZE(o)
        _put_arr_hdr(b, n)
        for i in range(n):
            _put_value(b, <object>PyList_GET_ITEM(o, i), depth + 1)
        return 0
    if PyBytes_CheckExact(o):
        return _put_bin(b, o)
    return _put_other(b, o)


cdef int _put_other(Buf* b, object o) except -1:
    # anything else (tuples, Ext, subclasses, unsupported types): msgpack decides
    cdef bytes packed = _packb(o, use_bin_type=True)
    return _put(b, PyBytes_AS_STRING(packed), PyBytes_GET_SIZE(packed))


cdef int _put_ts(Buf* b, object ts) except -1:
    _put(b, b"\x83\xa6millis", 8)
    _put_int(b, <object>PyTuple_GET_ITEM(ts, 0))
    _put(b, b"\xa7counter", 8)
    _put_int(b, <object>PyTuple_GET_ITEM(ts, 1))
    _put(b, b"\xa6nodeId", 7)
    return _put_str(b, <object>PyTuple_GET_ITEM(ts, 2))


cdef bint _ts_ok(object ts):
    if type(ts) is not Timestamp:
        return False
    return (PyLong_CheckExact(<object>PyTuple_GET_ITEM(ts, 0)) and PyLong_CheckExact(<object>PyTuple_GET_ITEM(ts, 1))
            and PyUnicode_CheckExact(<object>PyTuple_GET_ITEM(ts, 2)))


cdef bint _lww_ok(object r):
    cdef object ttl
    if type(r) is not LWWRecord or not _ts_ok(<object>PyTuple_GET_ITEM(r, 1)):
        return False
    ttl = <object>PyTuple_GET_ITEM(r, 2)
    return ttl is None or PyLong_CheckExact(ttl)


cdef bint _or_ok(object r):
    cdef object ttl
    if type(r) is not ORMapRecord or not _ts_ok(<object>PyTuple_GET_ITEM(r, 1)):
        return False
    if not PyUnicode_CheckExact(<object>PyTuple_GET_ITEM(r, 2)):
        return False
    ttl = <object>PyTuple_GET_ITEM(r, 3)
    return ttl is None or PyLong_CheckExact(ttl)


cdef int _put_lww(Buf* b, object r) except -1:
    cdef object ttl = <object>PyTuple_GET_ITEM(r, 2)
    _put1(b, 0x82 if ttl is None else 0x83)
    _put(b, b"\xa5value", 6)
    _put_value(b, <object>PyTuple_GET_ITEM(r, 0), 2)
    _put(b, b"\xa9timestamp", 10)
    _put_ts(b, <object>PyTuple_GET_ITEM(r, 1))
    if ttl is not None:
        _put(b, b"\xa5ttlMs", 6)
        _put_int(b, ttl)
    return 0


cdef int _put_or(Buf* b, object r) except -1:
    cdef object ttl = <object>PyTuple_GET_ITEM(r, 3)
    _put1(b, 0x83 if ttl is None else 0x84)
    _put(b, b"\xa5value", 6)
    _put_value(b, <object>PyTuple_GET_ITEM(r, 0), 2)
    _put(b, b"\xa9timestamp", 10)
    _put_ts(b, <object>PyTuple_GET_ITEM(r, 1))
    _put(b, b"\xa3tag", 4)
    _put_str(b, <object>PyTuple_GET_ITEM(r, 2))
    if ttl is not None:
        _put(b, b"\xa5ttlMs", 6)
        _put_int(b, ttl)
    return 0


cdef dict _ENUM_VALUES = {}
for _e in (ServerEventType, ChangeType, WriteConcern):
    for _m in _e:
        _ENUM_VALUES[_m] = _m.value

cdef bytes _ENV_SERVER_EVENT = b"\x82\xa4type\xacSERVER_EVENT\xa7payload"
cdef bytes _ENV_QUERY_UPDATE = b"\x82\xa4type\xacQUERY_UPDATE\xa7payload"
cdef bytes _ENV_OP_ACK = b"\x82\xa4type\xa6OP_ACK\xa7payload"


cdef bint _server_event(Buf* b, object ev) except -1:
    """Write the SERVER_EVENT frame; False when the fields are not the plain types."""
    cdef object map_name = ev.map_name, et = ev.event_type, key = ev.key
    cdef object record = ev.record, or_record = ev.or_record, or_tag = ev.or_tag, epoch = ev.epoch
    cdef int n = 3
    if not (PyUnicode_CheckExact(map_name) and PyUnicode_CheckExact(key) and type(et) is ServerEventType):
        return False
    if record is not None:
        if not _lww_ok(record):
            return False
        n += 1
    if or_record is not None:
        if not _or_ok(or_record):
            return False
        n += 1
    if or_tag is not None:
        if not PyUnicode_CheckExact(or_tag):
            return False
        n += 1
    if epoch is not None:
        if not PyLong_CheckExact(epoch):
            return False
        n += 1
    _put_key(b, _ENV_SERVER_EVENT)
    _put1(b, 0x80 | n)
    _put(b, b"\xa7mapName", 8)
    _put_str(b, map_name)
    _put(b, b"\xa9eventType", 10)
    _put_str(b, <str>_ENUM_VALUES[et])
    _put(b, b"\xa3key", 4)
    _put_str(b, key)
    if record is not None:
        _put(b, b"\xa6record", 7)
        _put_lww(b, record)
    if or_record is not None:
        _put(b, b"\xa8orRecord", 9)
        _put_or(b, or_record)
    if or_tag is not None:
        _put(b, b"\xa5orTag", 6)
        _put_str(b, or_tag)
    if epoch is not None:
        _put(b, b"\xa5epoch", 6)
        _put_int(b, epoch)
    return True


cdef bint _query_update(Buf* b, object m) except -1:
    cdef object qid = m.query_id, key = m.key, ct = m.change_type
    if not (PyUnicode_CheckExact(qid) and PyUnicode_CheckExact(key) and type(ct) is ChangeType):
        return False
    _put_key(b, _ENV_QUERY_UPDATE)
    _put(b, b"\x84\xa7queryId", 9)
    _put_str(b, qid)
    _put(b, b"\xa3key", 4)
    _put_str(b, key)
    _put(b, b"\xa5value", 6)
    _put_value(b, m.value, 2)
    _put(b, b"\xaachangeType", 11)
    _put_str(b, <str>_ENUM_VALUES[ct])
    return True


cdef bint _op_ack(Buf* b, object m) except -1:
    cdef object last_id = m.last_id, level = m.achieved_level, results = m.results, r
    cdef Py_ssize_t i, n
    if not PyUnicode_CheckExact(last_id):
        return False
    if level is not None and type(level) is not WriteConcern:
        return False
    if results is not None:
        if not PyList_CheckExact(results):
            return False
        for r in results:
            if (type(r) is not OpResult or not PyUnicode_CheckExact(r.op_id) or not PyBool_Check(r.success)
                    or type(r.achieved_level) is not WriteConcern
                    or (r.error is not None and not PyUnicode_CheckExact(r.error))):
                return False
    _put_key(b, _ENV_OP_ACK)
    _put1(b, 0x81 + (level is not None) + (results is not None))
    _put(b, b"\xa6lastId", 7)
    _put_str(b, last_id)
    if level is not None:
        _put(b, b"\xadachievedLevel", 14)
        _put_str(b, <str>_ENUM_VALUES[level])
    if results is not None:
        _put(b, b"\xa7results", 8)
        n = PyList_GET_SIZE(results)
        _put_arr_hdr(b, n)
        for i in range(n):
            r = <object>PyList_GET_ITEM(results, i)
            _put1(b, 0x83 if r.error is None else 0x84)
            _put(b, b"\xa4opId", 5)
            _put_str(b, r.op_id)
            _put(b, b"\xa7success", 8)
            _put1(b, 0xC3 if r.success else 0xC2)
            _put(b, b"\xadachievedLevel", 14)
            _put_str(b, <str>_ENUM_VALUES[r.achieved_level])
            if r.error is not None:
                _put(b, b"\xa5error", 6)
                _put_str(b, r.error)
    return True


def encode(msg):
    """Encode a typed message into one frame (see :func:`topgun.protocol._codec_py.encode`)."""
    cdef Buf b
    cdef bint ok
    cdef object t = type(msg)
    if t is not ServerEvent and t is not QueryUpdate and t is not OpAck:
        return _py_encode(msg)
    b.data = <char*>PyMem_Malloc(256)
    if b.data == NULL:
        raise MemoryError()
    b.len = 0
    b.cap = 256
    try:
        if t is ServerEvent:
            ok = _server_event(&b, msg)
        elif t is QueryUpdate:
            ok = _query_update(&b, msg)
        else:
            ok = _op_ack(&b, msg)
        if not ok:
            return _py_encode(msg)
        return PyBytes_FromStringAndSize(b.data, b.len)
    except (TypeError, ValueError, OverflowError, UnicodeError):
        # a value msgpack itself refuses: let the pure path raise its own error
        return _py_encode(msg)
    finally:
        PyMem_Free(b.data)
