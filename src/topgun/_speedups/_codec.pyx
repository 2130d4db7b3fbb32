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

from libc.stdint cimport uint8_t, uint32_t, uint64_t, int64_t, int8_t, int16_t, int32_t
from libc.string cimport memcpy, memcmp, memchr
from libc.math cimport floor, isfinite
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE, PyBytes_FromStringAndSize, PyBytes_CheckExact
from cpython.dict cimport PyDict_GetItem, PyDict_Next, PyDict_CheckExact
from cpython.list cimport PyList_GET_ITEM, PyList_GET_SIZE, PyList_New, PyList_SET_ITEM, PyList_CheckExact
from cpython.tuple cimport PyTuple_GET_ITEM, PyTuple_GET_SIZE, PyTuple_CheckExact
from cpython.unicode cimport PyUnicode_CheckExact
from cpython.long cimport (PyLong_CheckExact, PyLong_FromDouble, PyLong_AsLongLongAndOverflow, PyLong_AsUnsignedLongLong,
    PyLong_FromLong, PyLong_FromLongLong, PyLong_FromUnsignedLongLong)
from cpython.float cimport PyFloat_CheckExact, PyFloat_AS_DOUBLE, PyFloat_FromDouble
from cpython.bool cimport PyBool_Check
from cpython.mem cimport PyMem_Malloc, PyMem_Realloc, PyMem_Free
from cpython.object cimport PyObject, PyTypeObject
from cpython.ref cimport Py_INCREF, Py_DECREF, Py_XDECREF

from topgun._speedups._slots cimport PyType_GenericAlloc, member_offset

cdef extern from "Python.h":
    const char* PyUnicode_AsUTF8AndSize(object, Py_ssize_t*) except NULL
    Py_ssize_t PyUnicode_GET_LENGTH(object)
    Py_ssize_t PyUnicode_FindChar(object, Py_UCS4, Py_ssize_t, Py_ssize_t, int) except -2
    void PyTuple_SET_ITEM(PyObject*, Py_ssize_t, PyObject*)
    object PyUnicode_DecodeUTF8(const char*, Py_ssize_t, const char*)
    void PyUnicode_InternInPlace(PyObject**)
    # the same macros on borrowed pointers (no reference counting around them)
    bint _u_compact_ascii "PyUnicode_IS_COMPACT_ASCII"(PyObject*) noexcept nogil
    const void* _u_data "PyUnicode_DATA"(PyObject*) noexcept nogil
    Py_ssize_t _u_len "PyUnicode_GET_LENGTH"(PyObject*) noexcept nogil

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

# --------------------------------------------------------------------------- scan


cdef inline uint64_t _be(const uint8_t* p, int w) noexcept nogil:
    cdef uint64_t v = 0
    cdef int i
    for i in range(w):
        v = (v << 8) | p[i]
    return v


cdef object _bad(str msg):
    return ProtocolError("malformed frame: " + msg)


# The limits the byte-level passes check, as C values.
cdef struct Lim:
    Py_ssize_t max_depth
    uint64_t max_str
    uint64_t max_bin


cdef int _lim_of(object limits, Lim* out) except -1:
    out.max_depth = limits.max_depth
    out.max_str = limits.max_str_len
    out.max_bin = limits.max_bin_len
    return 0


# Limits is a frozen slotted dataclass: its fields are read at their offsets (four attribute
# lookups cost a tenth of decoding an op). Anything but exact, plainly ranged ints there takes
# the attribute path, with its conversions and errors.
cdef Py_ssize_t _lim_off[6]  # the first four are the ones read here
cdef bint _lim_fast = _slot_layout(Limits, ("max_frame_bytes", "max_depth", "max_str_len", "max_bin_len",
                                            "max_batch_items", "max_predicate_depth"), _lim_off)


cdef inline long long _lim_slot(object limits, int i) noexcept:
    """Field ``i`` of an exact Limits when it is an int in [0, 2**62), else -1."""
    cdef PyObject* v = (<PyObject**>((<char*><PyObject*>limits) + _lim_off[i]))[0]
    cdef int overflow = 0
    cdef long long x
    if v == NULL or not PyLong_CheckExact(<object>v):
        return -1
    x = PyLong_AsLongLongAndOverflow(<object>v, &overflow)
    if overflow or x < 0 or x >= (<long long>1 << 62):
        return -1
    return x


cdef bint _lim_fast_of(object limits, Lim* out, Py_ssize_t* max_frame) noexcept:
    """Fill ``out`` and ``max_frame`` from a plain Limits; False to take the attribute path."""
    cdef long long f, d, s, b
    if not _lim_fast or type(limits) is not Limits:
        return False
    f = _lim_slot(limits, 0)
    d = _lim_slot(limits, 1)
    s = _lim_slot(limits, 2)
    b = _lim_slot(limits, 3)
    if f < 0 or d < 0 or s < 0 or b < 0:
        return False
    max_frame[0] = <Py_ssize_t>f
    out.max_depth = <Py_ssize_t>d
    out.max_str = <uint64_t>s
    out.max_bin = <uint64_t>b
    return True


def scan(frame, limits=DEFAULT_LIMITS):
    """Validate the MsgPack structure of ``frame`` (see :func:`topgun.protocol._codec_py.scan`)."""
    cdef const uint8_t[::1] view
    cdef Lim lm
    if isinstance(frame, bytes):
        view = frame
    else:
        view = memoryview(frame).cast("B")
    _lim_of(limits, &lm)
    return _scan(&view[0] if view.shape[0] else NULL, view.shape[0], &lm)


cdef enum:
    SCAN_STACK = 258  # the default max_depth (256) + 2

# what _walk found wrong (the invalid byte itself rides in the bits above W_MASK)
cdef enum:
    W_TRUNCATED = 1
    W_KEY_NOT_STR
    W_TRUNC_STR
    W_TRUNC_NUM
    W_TRUNC_LEN
    W_STR_LIMIT
    W_DECLARED_LEN
    W_EXT_LIMIT
    W_EXT_RESERVED
    W_INVALID_BYTE
    W_CONTAINER_LEN
    W_DEPTH
    W_UTF8
    W_MASK = 0xFF


cdef Py_ssize_t _walk(const uint8_t* buf, Py_ssize_t n, Py_ssize_t pos, Py_ssize_t base, const Lim* lim,
                      list ext_m1, bint utf8, int* err) except -2:
    """Check the one MsgPack value at ``pos`` and return the position after it, or -1 with
    ``err`` saying what is wrong. ``base`` is the nesting of the container holding the value
    (the frame map itself is at 1), ``ext_m1`` (unless None) collects the offsets of ext type
    bytes -1, ``utf8`` also requires every string to be valid UTF-8 (as msgpack will)."""
    cdef Py_ssize_t max_depth = lim.max_depth
    cdef uint64_t max_str = lim.max_str
    cdef uint64_t max_bin = lim.max_bin
    cdef Py_ssize_t top = 0, cap
    cdef uint64_t r, cnt, ln
    cdef uint8_t b
    cdef int w
    cdef bint mp
    cdef uint64_t* rem
    cdef uint8_t* is_map
    # the default depth limit fits on the C stack: no allocation per frame
    cdef uint64_t rem_stack[SCAN_STACK]
    cdef uint8_t is_map_stack[SCAN_STACK]
    cap = max_depth + 2
    if cap <= SCAN_STACK:
        rem = rem_stack
        is_map = is_map_stack
    else:
        rem = <uint64_t*>PyMem_Malloc(cap * sizeof(uint64_t))
        is_map = <uint8_t*>PyMem_Malloc(cap)
        if rem == NULL or is_map == NULL:
            PyMem_Free(rem)
            PyMem_Free(is_map)
            raise MemoryError()
    err[0] = 0
    try:
        rem[0] = 1
        is_map[0] = 0
        while top >= 0:
            r = rem[top]
            if r == 0:
                top -= 1
                continue
            rem[top] = r - 1
            if pos >= n:
                err[0] = W_TRUNCATED
                return -1
            b = buf[pos]
            pos += 1
            if is_map[top] and r % 2 == 0 and not (0xA0 <= b <= 0xBF or 0xD9 <= b <= 0xDB):
                err[0] = W_KEY_NOT_STR
                return -1
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
                    err[0] = W_TRUNC_STR
                    return -1
                if utf8 and not _utf8_ok(buf + pos, ln):
                    err[0] = W_UTF8
                    return -1
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
                    err[0] = W_TRUNC_NUM
                    return -1
                continue
            elif (0xD9 <= b <= 0xDB) or (0xC4 <= b <= 0xC6):
                w = (1 << (b - 0xD9)) if b >= 0xD9 else (1 << (b - 0xC4))
                if pos + w > n:
                    err[0] = W_TRUNC_LEN
                    return -1
                ln = _be(buf + pos, w)
                pos += w
                if ln > (max_str if b >= 0xD9 else max_bin):
                    err[0] = W_STR_LIMIT
                    return -1
                if ln > <uint64_t>(n - pos):
                    err[0] = W_DECLARED_LEN
                    return -1
                if utf8 and b >= 0xD9 and not _utf8_ok(buf + pos, ln):
                    err[0] = W_UTF8
                    return -1
                pos += ln
                continue
            elif (0xD4 <= b <= 0xD8) or (0xC7 <= b <= 0xC9):
                if b >= 0xD4:
                    ln = 1 << (b - 0xD4)
                else:
                    w = 1 << (b - 0xC7)
                    if pos + w > n:
                        err[0] = W_TRUNC_LEN
                        return -1
                    ln = _be(buf + pos, w)
                    pos += w
                    if ln > max_bin:
                        err[0] = W_EXT_LIMIT
                        return -1
                if pos >= n or ln > <uint64_t>(n - pos - 1):
                    err[0] = W_DECLARED_LEN
                    return -1
                if buf[pos] == 0xFF:
                    if ext_m1 is not None:
                        ext_m1.append(pos)
                elif buf[pos] == 0x80:
                    err[0] = W_EXT_RESERVED
                    return -1
                pos += 1 + ln
                continue
            elif b == 0xDC or b == 0xDD or b == 0xDE or b == 0xDF:
                mp = b >= 0xDE
                w = 2 if (b == 0xDC or b == 0xDE) else 4
                if pos + w > n:
                    err[0] = W_TRUNC_LEN
                    return -1
                cnt = _be(buf + pos, w)
                pos += w
                if mp:
                    cnt *= 2
            else:
                err[0] = W_INVALID_BYTE | (b << 8)
                return -1
            if cnt > <uint64_t>(n - pos):
                err[0] = W_CONTAINER_LEN
                return -1
            top += 1
            if top + base > max_depth:
                err[0] = W_DEPTH
                return -1
            rem[top] = cnt
            is_map[top] = mp
        return pos
    finally:
        if rem != rem_stack:
            PyMem_Free(rem)
            PyMem_Free(is_map)


cdef list _scan(const uint8_t* buf, Py_ssize_t n, const Lim* lim):
    cdef list ext_m1 = []
    cdef Py_ssize_t pos
    cdef int err = 0, e
    cdef uint8_t b0
    if n == 0:
        raise _bad("empty frame")
    b0 = buf[0]
    if not (0x80 <= b0 <= 0x8F or b0 == 0xDE or b0 == 0xDF):
        raise ProtocolError("frame is not a MsgPack map")
    pos = _walk(buf, n, 0, 0, lim, ext_m1, False, &err)
    if pos >= 0:
        if pos != n:
            raise _bad("trailing bytes after the value")
        return ext_m1
    e = err & W_MASK
    if e == W_TRUNCATED:
        raise _bad("truncated")
    if e == W_KEY_NOT_STR:
        raise ProtocolError("map key is not a string")
    if e == W_TRUNC_STR:
        raise _bad("truncated string")
    if e == W_TRUNC_NUM:
        raise _bad("truncated number")
    if e == W_TRUNC_LEN:
        raise _bad("truncated length")
    if e == W_STR_LIMIT:
        raise ProtocolError("string or bin longer than the limit", code=413)
    if e == W_DECLARED_LEN:
        raise _bad("declared length exceeds the frame")
    if e == W_EXT_LIMIT:
        raise ProtocolError("ext longer than the limit", code=413)
    if e == W_EXT_RESERVED:
        raise ProtocolError("reserved ext type -128")
    if e == W_INVALID_BYTE:
        raise _bad(f"invalid byte 0x{err >> 8:02x}")
    if e == W_CONTAINER_LEN:
        raise _bad("declared container length exceeds the frame")
    raise ProtocolError(f"nesting deeper than {lim.max_depth}")


def unpack(frame, limits=None):
    """Check and unpack one frame into its plain MsgPack value (a ``dict``)."""
    cdef object lim = limits if limits is not None else _DEFAULT_LIMITS
    cdef const uint8_t[::1] view
    cdef Py_ssize_t n
    cdef Lim lm
    if isinstance(frame, bytes):
        view = frame
    else:
        view = memoryview(frame).cast("B")
    n = view.shape[0]
    if n > lim.max_frame_bytes:
        raise FrameTooLargeError(n, lim.max_frame_bytes)
    _lim_of(lim, &lm)
    return _unpack_scanned(frame, _scan(&view[0] if n else NULL, n, &lm))


cdef object _unpack_scanned(object frame, list ext_m1):
    """The plain value of a frame that :func:`_scan` accepted (``ext_m1`` is what it returned)."""
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


cdef inline object _steal(PyObject* o):
    # take over the new reference returned by tp_alloc (a plain <object> cast would add one)
    cdef object r = <object>o
    Py_DECREF(r)
    return r


cdef inline object _tuple3(PyTypeObject* t, object a, object b, object c):
    # what tuple.__new__(t, (a, b, c)) does for a NamedTuple, without the temporary tuple
    cdef PyObject* o = PyType_GenericAlloc(t, 3)
    Py_INCREF(a)
    Py_INCREF(b)
    Py_INCREF(c)
    PyTuple_SET_ITEM(o, 0, <PyObject*>a)
    PyTuple_SET_ITEM(o, 1, <PyObject*>b)
    PyTuple_SET_ITEM(o, 2, <PyObject*>c)
    return _steal(o)


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
    return _steal(o)


# ClientOp, ClientOpMessage and OpBatch are slotted dataclasses: their fields live at fixed
# offsets, written here directly (the frozen __setattr__ and keyword __init__ cost more than
# the whole walk of an op). Each class is checked once: a layout other than the expected one
# (renamed or reordered fields, a __post_init__) keeps the plain constructor.
cdef enum:
    N_OP_SLOTS = 10
    N_BATCH_SLOTS = 3

_OP_FIELDS = ("id", "map_name", "key", "op_type", "record", "or_record", "or_tag",
              "write_concern", "timeout", "timestamp")
_COP_FIELDS = ("op",)
_BATCH_FIELDS = ("ops", "write_concern", "timeout")
cdef Py_ssize_t _op_off[N_OP_SLOTS]
cdef Py_ssize_t _cop_off[1]
cdef Py_ssize_t _batch_off[N_BATCH_SLOTS]
cdef PyTypeObject* _COP_T = <PyTypeObject*>ClientOpMessage
cdef PyTypeObject* _BATCH_T = <PyTypeObject*>OpBatch


cdef bint _slot_layout(type cls, tuple names, Py_ssize_t* offs) except -1:
    """Fill ``offs`` with the slot offsets of ``names``; False unless filling those slots is
    all that the dataclass constructor of ``cls`` does."""
    import dataclasses  # called while the module initialises only

    if not dataclasses.is_dataclass(cls) or getattr(cls, "__post_init__", None) is not None:
        return False
    if tuple(cls.__slots__) != names or tuple(f.name for f in dataclasses.fields(cls)) != names:
        return False
    for i, name in enumerate(names):
        offs[i] = member_offset(cls, name)
        if offs[i] < 0:
            return False
    return True


cdef bint _op_fast = _slot_layout(ClientOp, _OP_FIELDS, _op_off)
cdef bint _cop_fast = _slot_layout(ClientOpMessage, _COP_FIELDS, _cop_off)
cdef bint _batch_fast = _slot_layout(OpBatch, _BATCH_FIELDS, _batch_off)


cdef inline object _fill_slots(PyTypeObject* t, const Py_ssize_t* offs, PyObject** vals, int n):
    """A new instance of ``t`` with slot ``offs[i]`` holding ``vals[i]`` (each a new reference)."""
    cdef PyObject* o = PyType_GenericAlloc(t, 0)
    cdef int i
    for i in range(n):
        Py_INCREF(<object>vals[i])
        (<PyObject**>((<char*>o) + offs[i]))[0] = vals[i]
    return _steal(o)


cdef object _make_op(object op_id, object map_name, object key, object op_type, object record,
                     object or_record, object or_tag, object wc, object timeout, object ts):
    cdef PyObject* vals[N_OP_SLOTS]
    if not _op_fast:
        return ClientOp(id=op_id, map_name=map_name, key=key, op_type=op_type, record=record,
                        or_record=or_record, or_tag=or_tag, write_concern=wc, timeout=timeout,
                        timestamp=ts)
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
    return _fill_slots(_OP_T, _op_off, vals, N_OP_SLOTS)


cdef object _make_cop(object op):
    """``ClientOpMessage(op=op)``."""
    cdef PyObject* vals[1]
    if not _cop_fast:
        return ClientOpMessage(op=op)
    vals[0] = <PyObject*>op
    return _fill_slots(_COP_T, _cop_off, vals, 1)


cdef object _make_batch(object ops, object wc, object timeout):
    """``OpBatch(ops=ops, write_concern=wc, timeout=timeout)``."""
    cdef PyObject* vals[N_BATCH_SLOTS]
    if not _batch_fast:
        return OpBatch(ops=ops, write_concern=wc, timeout=timeout)
    vals[0] = <PyObject*>ops
    vals[1] = <PyObject*>wc
    vals[2] = <PyObject*>timeout
    return _fill_slots(_BATCH_T, _batch_off, vals, N_BATCH_SLOTS)


# --------------------------------------------------------------------------- op fast path
# Each helper returns NULL-equivalent (a sentinel) when the input is anything but the
# plain valid shape; the caller then runs the pure decoder for that op.

cdef object _FAIL = object()
# 2**32 as a C constant (a literal beyond int is a Python int, and comparing with it a call)
cdef long long U32_END = <long long>1 << 32
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
    if overflow != 0 or x < 0 or x >= U32_END:
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
    if overflow != 0 or want < 0 or want > (<long long>1 << 53):
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


cdef object _finish_op(object op_id, object map_name, object key, object op_type, bint rec_nil,
                       object record, object or_record, object or_tag, object wc, object timeout, object ts):
    """Classification (§5.6) and the kind's requirements on already type-checked parts."""
    if op_type is None:
        if rec_nil:
            op_type = _REMOVE
        elif or_record is not None:
            op_type = _OR_ADD
        elif or_tag is not None:
            op_type = _OR_REMOVE
        else:
            op_type = _PUT
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
    return _make_op(op_id, map_name, key, op_type, record, or_record, or_tag, wc, timeout, ts)


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
    tag_raw = PyDict_GetItem(v, K_ORTAG)
    if rec_raw != NULL and <object>rec_raw is not None:
        record = _fast_lww(rec_raw)
        if record is _FAIL:
            return _FAIL
    if or_raw != NULL and <object>or_raw is not None:
        or_record = _fast_or(or_raw)
        if or_record is _FAIL:
            return _FAIL
    if tag_raw != NULL and <object>tag_raw is not None:
        if not PyUnicode_CheckExact(<object>tag_raw):
            return _FAIL
        or_tag = <object>tag_raw
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
    return _finish_op(op_id, map_name, key, op_type, rec_raw != NULL and <object>rec_raw is None,
                      record, or_record, or_tag, wc, timeout, ts)


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
    cdef object op, wc, timeout
    cdef list lst
    if PyDict_CheckExact(obj):
        t = PyDict_GetItem(obj, K_TYPE)
        payload = PyDict_GetItem(obj, K_PAYLOAD)
        if t != NULL and payload != NULL and PyUnicode_CheckExact(<object>t) and PyDict_CheckExact(<object>payload):
            if <str>t == "OP_BATCH":
                ops = PyDict_GetItem(<object>payload, K_OPS)
                if ops != NULL and PyList_CheckExact(<object>ops):
                    wc = (<object>payload).get("writeConcern")
                    timeout = (<object>payload).get("timeout")
                    lst = _decode_ops(<list>ops, lim)
                    wc = None if wc is None else _py._d_write_concern(wc, "payload.writeConcern", lim)
                    timeout = None if timeout is None else _py._as_int(timeout, "payload.timeout")
                    return _make_batch(lst, wc, timeout)
            elif <str>t == "CLIENT_OP":
                op = _fast_op(<object>payload)
                if op is _FAIL:
                    op = _py_decode_op(<object>payload, "payload", lim)
                return _make_cop(op)
    return _py_from_wire(obj, lim)


# --------------------------------------------------------------------------- OP_BATCH / CLIENT_OP straight from bytes
# For the hot frames the intermediate dicts of msgpack are skipped: ops, records and
# timestamps are read from the bytes into records; only opaque user values become plain
# objects, exactly as msgpack builds them. The reader checks every read against the frame
# and the limits as the scan would, so it runs first, on the unscanned frame; whatever it
# is unsure of sends the frame through the scan and then the reader again. An op that is
# not plainly valid is then unpacked on its own and judged by the general decoder;
# anything unusual about the frame itself (a payload that is no map, a repeated type,
# invalid UTF-8) abandons this path for the whole frame, which then goes through unpack +
# from_wire (the results are identical).

cdef struct Rd:
    const uint8_t* b
    Py_ssize_t pos
    Py_ssize_t n
    const Lim* lim

cdef PyTypeObject* _EXT_T = <PyTypeObject*>Ext


cdef inline int _peek(Rd* r) noexcept nogil:
    """The byte at the cursor, or -1 at the end of the frame."""
    return r.b[r.pos] if r.pos < r.n else -1


cdef inline Py_ssize_t _container_len(Rd* r, uint8_t fix, uint8_t c16, uint64_t per) noexcept nogil:
    """Size of the map or array at the cursor (cursor moved past the header), or -1 if the value
    is not of that family or its header is malformed: ``fix`` is its fix-size base code, ``c16``
    its 16-bit code (``c16 + 1`` the 32-bit one), ``per`` the values per item (a lower bound of
    the bytes each takes, as the scan requires)."""
    cdef int c = _peek(r)
    cdef uint64_t k
    if fix <= c <= fix + 0x0F:
        r.pos += 1
        k = c & 0x0F
    elif c == c16:
        if r.pos + 3 > r.n:
            return -1
        k = _be(r.b + r.pos + 1, 2)
        r.pos += 3
    elif c == c16 + 1:
        if r.pos + 5 > r.n:
            return -1
        k = _be(r.b + r.pos + 1, 4)
        r.pos += 5
    else:
        return -1
    if k * per > <uint64_t>(r.n - r.pos):
        return -1
    return <Py_ssize_t>k


cdef inline Py_ssize_t _map_len(Rd* r) noexcept nogil:
    """Entries of the map at the cursor (cursor moved past the header), or -1 if not a map."""
    return _container_len(r, 0x80, 0xDE, 2)


cdef inline Py_ssize_t _arr_len(Rd* r) noexcept nogil:
    """Items of the array at the cursor (cursor moved past the header), or -1 if not an array."""
    return _container_len(r, 0x90, 0xDC, 1)


cdef inline Py_ssize_t _str_len(Rd* r) noexcept nogil:
    """Length of the string at the cursor (cursor moved to its bytes), or -1 if not a string, or
    one the scan refuses (truncated, or a str8/16/32 longer than the limit)."""
    cdef int c = _peek(r)
    cdef uint64_t ln
    cdef int w
    if 0xA0 <= c <= 0xBF:
        r.pos += 1
        ln = c & 0x1F
    elif 0xD9 <= c <= 0xDB:
        w = 1 << (c - 0xD9)
        if r.pos + 1 + w > r.n:
            return -1
        ln = _be(r.b + r.pos + 1, w)
        if ln > r.lim.max_str:
            return -1
        r.pos += 1 + w
    else:
        return -1
    if ln > <uint64_t>(r.n - r.pos):
        return -1
    return <Py_ssize_t>ln


cdef inline Py_ssize_t _key_len(Rd* r) except -1:
    """Like _str_len for a map key, abandoning the byte path unless it is a well-formed string."""
    cdef Py_ssize_t n = _str_len(r)
    if n < 0:
        raise _Abandon()
    return n


cdef inline bint _key_is(const uint8_t* s, Py_ssize_t n, const char* k, Py_ssize_t kn) noexcept nogil:
    return n == kn and memcmp(s, k, n) == 0


cdef bint _utf8_ok(const uint8_t* s, Py_ssize_t n) noexcept nogil:
    """Strict UTF-8, exactly what Python's decoder accepts (no overlongs, no surrogates)."""
    cdef Py_ssize_t i = 0
    cdef uint8_t c, lo, hi
    cdef int need, k
    while i < n:
        c = s[i]
        if c < 0x80:
            i += 1
            continue
        lo = 0x80
        hi = 0xBF
        if c < 0xC2:
            return False
        elif c < 0xE0:
            need = 1
        elif c < 0xF0:
            need = 2
            if c == 0xE0:
                lo = 0xA0
            elif c == 0xED:
                hi = 0x9F
        elif c < 0xF5:
            need = 3
            if c == 0xF0:
                lo = 0x90
            elif c == 0xF4:
                hi = 0x8F
        else:
            return False
        if i + need >= n:  # truncated sequence
            return False
        if not (lo <= s[i + 1] <= hi):
            return False
        for k in range(2, need + 1):
            if not (0x80 <= s[i + k] <= 0xBF):
                return False
        i += need + 1
    return True


cdef int _skip(Rd* r, Py_ssize_t base, bint utf8) except -1:
    """Move past one complete value held by a container at nesting ``base``, abandoning unless
    the scan would accept it (and, with ``utf8``, every string in it is valid UTF-8, as msgpack
    requires of whatever it builds)."""
    cdef int err
    cdef Py_ssize_t end = _walk(r.b, r.n, r.pos, base, r.lim, None, utf8, &err)
    if end < 0:
        raise _Abandon()
    r.pos = end
    return 0


cdef int _skip_entry(Rd* r, const uint8_t* ks, Py_ssize_t kn, Py_ssize_t base) except -1:
    """Skip the value of an entry whose key we do not use (its map at nesting ``base``); both
    must be valid UTF-8 like msgpack demands."""
    if not _utf8_ok(ks, kn):
        raise _Abandon()
    return _skip(r, base, True)


cdef object _rd_str(Rd* r):
    """A str at the cursor, else _FAIL (cursor unchanged) or _Abandon for a malformed one;
    invalid UTF-8 raises."""
    cdef Py_ssize_t start = r.pos
    cdef Py_ssize_t n = _str_len(r)
    cdef int c
    if n < 0:
        r.pos = start
        c = _peek(r)
        if 0xA0 <= c <= 0xBF or 0xD9 <= c <= 0xDB:
            raise _Abandon()
        return _FAIL
    r.pos += n
    return PyUnicode_DecodeUTF8(<const char*>(r.b + r.pos - n), n, NULL)


# Recently decoded short strings, by their UTF-8 bytes. The keys of user values are the same
# few strings in op after op (and msgpack interns each one: a UTF-8 check, a new str, a
# siphash and an interned-dict lookup, for the str it already holds), op ids repeat from
# batch to batch, and map names and node ids from op to op of each client (with many
# clients interleaved, so remembering only the last one seldom helps); a direct-mapped
# table returns the str decoded last time for the same bytes instead. A slot is trusted
# only after comparing the bytes (a cheap hash picks the slot, nothing more); it holds
# compact ASCII strs only, whose data are their UTF-8 bytes, so non-ASCII and invalid UTF-8
# always take the decoder. Equal strs only: what a caller sees is unchanged (later stages
# test map names for identity before equality; a stored record's node id is shared rather
# than copied). The GIL serialises access.
cdef enum:
    STR_CACHE_MAX = 32     # longer keys and op ids are decoded every time
    NAME_CACHE_MAX = 64    # likewise map names and node ids (UUIDs and the like fit)
    KEY_CACHE_BITS = 9     # value-map keys: 512 slots, each an interned str
    ID_CACHE_BITS = 10     # op ids: 1024 slots (a batch of a few hundred ops mostly fits)
    MAP_CACHE_BITS = 10    # map names: 1024 slots (one per client writing to its own map)
    NODE_CACHE_BITS = 10   # node ids: 1024 slots (one per client writing)

cdef PyObject* _key_cache[1 << KEY_CACHE_BITS]
cdef PyObject* _id_cache[1 << ID_CACHE_BITS]
cdef PyObject* _map_cache[1 << MAP_CACHE_BITS]
cdef PyObject* _node_cache[1 << NODE_CACHE_BITS]


cdef inline uint64_t _short_hash(const uint8_t* s, Py_ssize_t n) noexcept nogil:
    """A slot picker for ``n`` bytes (its top bits are the slot); reads at most 16 of them."""
    cdef uint64_t a = 0, b = 0
    cdef Py_ssize_t i
    if n >= 8:
        memcpy(&a, s, 8)
        memcpy(&b, s + n - 8, 8)
    else:
        for i in range(n):
            a = (a << 8) | s[i]
    return ((a * <uint64_t>0x9E3779B97F4A7C15) ^ (b * <uint64_t>0xC2B2AE3D27D4EB4F) ^ <uint64_t>n) \
        * <uint64_t>0x9E3779B97F4A7C15


cdef inline bint _cached_is(PyObject* c, const uint8_t* s, Py_ssize_t n) noexcept nogil:
    """Whether the cached str ``c`` (or NULL) is exactly the UTF-8 bytes ``s[:n]``."""
    return (c != NULL and _u_compact_ascii(c) and _u_len(c) == n
            and memcmp(_u_data(c), s, n) == 0)


cdef inline void _cache_put(PyObject** slot, object s) noexcept:
    """Keep ``s`` in ``slot`` when it is compact ASCII (the only kind :func:`_cached_is` matches)."""
    cdef PyObject* old
    if _u_compact_ascii(<PyObject*>s):
        old = slot[0]
        Py_INCREF(s)
        slot[0] = <PyObject*>s
        Py_XDECREF(old)


cdef object _rd_key(Rd* r):
    """The key of a value map (the scan guarantees a string), interned as msgpack interns it;
    invalid UTF-8 raises."""
    cdef Py_ssize_t n = _key_len(r)
    cdef const uint8_t* s = r.b + r.pos
    cdef PyObject** slot = NULL
    cdef PyObject* e
    cdef object k
    r.pos += n
    if n <= STR_CACHE_MAX:
        slot = &_key_cache[_short_hash(s, n) >> (64 - KEY_CACHE_BITS)]
        if _cached_is(slot[0], s, n):
            # interned when stored, and kept alive (so interned) by the slot: the very str
            # msgpack's InternInPlace would return
            return <object>slot[0]
    k = PyUnicode_DecodeUTF8(<const char*>s, n, NULL)
    # InternInPlace owns (and may replace) the reference in e
    e = <PyObject*>k
    Py_INCREF(k)
    PyUnicode_InternInPlace(&e)
    k = <object>e
    Py_DECREF(k)
    if slot != NULL:
        _cache_put(slot, k)
    return k


cdef object _cached_str(PyObject** table, int bits, Py_ssize_t max_len, const uint8_t* s, Py_ssize_t n):
    """The str of the UTF-8 bytes ``s[:n]``: the one ``table`` holds for them, else a new one
    (kept there when at most ``max_len`` bytes); invalid UTF-8 raises."""
    cdef PyObject** slot
    cdef object o
    if n > max_len:
        return PyUnicode_DecodeUTF8(<const char*>s, n, NULL)
    slot = &table[_short_hash(s, n) >> (64 - bits)]
    if _cached_is(slot[0], s, n):
        return <object>slot[0]
    o = PyUnicode_DecodeUTF8(<const char*>s, n, NULL)
    _cache_put(slot, o)
    return o


cdef object _rd_opt_cached(Rd* r, PyObject** table, int bits, Py_ssize_t max_len):
    """Like _rd_opt_str (nil -> None, str -> an equal str, anything else abandons), through
    :func:`_cached_str`."""
    cdef Py_ssize_t start = r.pos, n
    if _peek(r) == 0xC0:
        r.pos += 1
        return None
    n = _str_len(r)
    if n < 0:
        r.pos = start
        raise _Abandon()
    r.pos += n
    return _cached_str(table, bits, max_len, r.b + r.pos - n, n)


cdef object _rd_wc(Rd* r):
    """A ``writeConcern`` (op or batch level) at the cursor: the member, or _Abandon."""
    cdef object wc = _rd_member(r, &_wcs_raw, _WCS)
    if wc is _FAIL:
        raise _Abandon()
    return wc


cdef object _rd_timeout(Rd* r):
    """A ``timeout`` (op or batch level) at the cursor: None for nil, an int, or _Abandon."""
    cdef object t
    if _peek(r) == 0xC0:
        r.pos += 1
        return None
    t = _rd_int(r)
    if t is _FAIL:
        raise _Abandon()
    return t


cdef inline int _need(Rd* r, Py_ssize_t k) except -1:
    """Abandon unless ``k`` more bytes follow the cursor (the scan's truncation checks)."""
    if k > r.n - r.pos:
        raise _Abandon()
    return 0


cdef Py_ssize_t _bin_len(Rd* r, int w) except -1:
    """The ``w``-byte length after the bin or ext header at the cursor (cursor moved past both);
    abandons past the frame or beyond ``max_bin_len``, as the scan refuses."""
    cdef uint64_t ln
    _need(r, 1 + w)
    ln = _be(r.b + r.pos + 1, w)
    r.pos += 1 + w
    if ln > r.lim.max_bin:
        raise _Abandon()
    return <Py_ssize_t>ln


cdef object _rd_int(Rd* r):
    """An int field: any integer or an integral float, else _FAIL (cursor unchanged)."""
    cdef uint8_t c
    _need(r, 1)
    c = r.b[r.pos]
    if c <= 0x7F:
        r.pos += 1
        return PyLong_FromLong(c)
    if c >= 0xE0:
        r.pos += 1
        return PyLong_FromLong(<int8_t>c)
    if 0xCC <= c <= 0xCF or 0xD0 <= c <= 0xD3 or c == 0xCA or c == 0xCB:
        return _rd_number(r, True)
    return _FAIL


cdef object _rd_number(Rd* r, bint int_field):
    cdef uint8_t c = r.b[r.pos]
    cdef double d
    cdef float f
    cdef uint32_t u32
    cdef uint64_t u
    cdef int w
    if 0xCC <= c <= 0xCF:
        w = 1 << (c - 0xCC)
        _need(r, 1 + w)
        u = _be(r.b + r.pos + 1, w)
        r.pos += 1 + w
        return PyLong_FromUnsignedLongLong(u)
    if 0xD0 <= c <= 0xD3:
        w = 1 << (c - 0xD0)
        _need(r, 1 + w)
        u = _be(r.b + r.pos + 1, w)
        r.pos += 1 + w
        if w == 1:
            return PyLong_FromLong(<int8_t>u)
        if w == 2:
            return PyLong_FromLong(<int16_t>u)
        if w == 4:
            return PyLong_FromLong(<int32_t>u)
        return PyLong_FromLongLong(<int64_t>u)
    if c == 0xCA:
        _need(r, 5)
        u32 = <uint32_t>_be(r.b + r.pos + 1, 4)
        memcpy(&f, &u32, 4)
        d = f
        r.pos += 5
    else:
        _need(r, 9)
        u = _be(r.b + r.pos + 1, 8)
        memcpy(&d, &u, 8)
        r.pos += 9
    if not int_field:
        return PyFloat_FromDouble(d)
    if isfinite(d) and d == floor(d) and d >= -9223372036854775808.0 and d < 18446744073709551616.0:
        return PyLong_FromDouble(d)
    return _FAIL


cdef object _rd_value(Rd* r, Py_ssize_t depth):
    """One opaque value, built exactly as msgpack.unpackb(raw=False) builds it (``depth`` is the
    nesting it has if it is a container); abandons where the scan would refuse the frame."""
    cdef uint8_t c
    cdef Py_ssize_t n, i
    cdef object o, k
    cdef list lst
    cdef dict dct
    cdef int code
    if depth > 300:
        raise _Abandon()
    _need(r, 1)
    c = r.b[r.pos]
    if c <= 0x7F or c >= 0xE0 or (0xCA <= c <= 0xD3):
        if c <= 0x7F:
            r.pos += 1
            return PyLong_FromLong(c)
        if c >= 0xE0:
            r.pos += 1
            return PyLong_FromLong(<int8_t>c)
        return _rd_number(r, False)
    if c == 0xC0:
        r.pos += 1
        return None
    if c == 0xC2:
        r.pos += 1
        return False
    if c == 0xC3:
        r.pos += 1
        return True
    if (0xA0 <= c <= 0xBF) or (0xD9 <= c <= 0xDB):
        return _rd_str(r)
    if 0x90 <= c <= 0x9F or c == 0xDC or c == 0xDD:
        n = _arr_len(r)
        if n < 0 or depth > r.lim.max_depth:
            raise _Abandon()
        lst = PyList_New(n)
        for i in range(n):
            o = _rd_value(r, depth + 1)
            Py_INCREF(o)
            PyList_SET_ITEM(lst, i, o)
        return lst
    if 0x80 <= c <= 0x8F or c == 0xDE or c == 0xDF:
        n = _map_len(r)
        if n < 0 or depth > r.lim.max_depth:
            raise _Abandon()
        dct = {}
        for i in range(n):
            k = _rd_key(r)
            o = _rd_value(r, depth + 1)
            dct[k] = o
        return dct
    if 0xC4 <= c <= 0xC6:
        n = _bin_len(r, 1 << (c - 0xC4))
        _need(r, n)
        o = PyBytes_FromStringAndSize(<const char*>(r.b + r.pos), n)
        r.pos += n
        return o
    if (0xD4 <= c <= 0xD8) or (0xC7 <= c <= 0xC9):
        if c >= 0xD4:
            n = 1 << (c - 0xD4)
            r.pos += 1
        else:
            n = _bin_len(r, 1 << (c - 0xC7))
        _need(r, 1 + n)
        if r.b[r.pos] == 0x80:
            raise _Abandon()  # the reserved type -128: the scan refuses the frame
        code = <int8_t>r.b[r.pos]
        r.pos += 1
        o = PyBytes_FromStringAndSize(<const char*>(r.b + r.pos), n)
        r.pos += n
        return _ext2(code, o)
    raise _Abandon()


cdef object _ext2(int code, object data):
    cdef PyObject* o = PyType_GenericAlloc(_EXT_T, 2)
    cdef object c = PyLong_FromLong(code)
    Py_INCREF(c)
    Py_INCREF(data)
    PyTuple_SET_ITEM(o, 0, <PyObject*>c)
    PyTuple_SET_ITEM(o, 1, <PyObject*>data)
    return _steal(o)


class _Abandon(Exception):
    """Internal: leave the byte path, take the general one."""


cdef int _rd_ts_int(Rd* r, long long* out) except -1:
    """A timestamp part into ``out``: an integer (or integral float) in [0, 2**63), else _Abandon
    (what _rd_int followed by a signed 64-bit, non-negative check accepts, without the int)."""
    cdef uint8_t c
    cdef uint64_t u
    cdef uint32_t u32
    cdef float f
    cdef double d
    cdef int w
    _need(r, 1)
    c = r.b[r.pos]
    if c <= 0x7F:
        r.pos += 1
        out[0] = c
        return 0
    if 0xCC <= c <= 0xCF or 0xD0 <= c <= 0xD3:
        w = 1 << ((c - 0xCC) if c <= 0xCF else (c - 0xD0))
        _need(r, 1 + w)
        u = _be(r.b + r.pos + 1, w)
        if c >= 0xD0 and w < 8 and (u >> (8 * w - 1)):
            raise _Abandon()  # a negative int8/16/32
        if u >> 63:
            raise _Abandon()  # a negative int64, or a uint64 beyond the signed range
        r.pos += 1 + w
        out[0] = <long long>u
        return 0
    if c == 0xCA:
        _need(r, 5)
        u32 = <uint32_t>_be(r.b + r.pos + 1, 4)
        memcpy(&f, &u32, 4)
        d = f
        w = 4
    elif c == 0xCB:
        _need(r, 9)
        u = _be(r.b + r.pos + 1, 8)
        memcpy(&d, &u, 8)
        w = 8
    else:
        raise _Abandon()  # a negative fixint or no number at all
    if not (isfinite(d) and d == floor(d) and d >= 0.0 and d < 9223372036854775808.0):
        raise _Abandon()
    r.pos += 1 + w
    out[0] = <long long>d
    return 0


cdef int _rd_ts_parts(Rd* r, long long* millis, long long* counter, const uint8_t** node, Py_ssize_t* node_len,
                      Py_ssize_t depth) except -1:
    """Parse a Timestamp map (at nesting ``depth``) into C values; raise _Abandon unless plainly valid."""
    cdef Py_ssize_t n = _map_len(r), i, kn, sl
    cdef const uint8_t* ks
    cdef bint got_m = False, got_c = False, got_n = False
    if n < 0:
        raise _Abandon()
    for i in range(n):
        kn = _key_len(r)
        ks = r.b + r.pos
        r.pos += kn
        if _key_is(ks, kn, "millis", 6):
            _rd_ts_int(r, millis)
            got_m = True
        elif _key_is(ks, kn, "counter", 7):
            _rd_ts_int(r, counter)
            if counter[0] >= U32_END:
                raise _Abandon()
            got_c = True
        elif _key_is(ks, kn, "nodeId", 6):
            sl = _str_len(r)
            if sl <= 0 or memchr(r.b + r.pos, 0x3A, sl) != NULL:
                raise _Abandon()
            node[0] = r.b + r.pos
            node_len[0] = sl
            r.pos += sl
            got_n = True
        else:
            _skip_entry(r, ks, kn, depth)
    if not (got_m and got_c and got_n):
        raise _Abandon()
    return 0


# The last millis decoded: ops written in the same millisecond carry the same millis, so
# consecutive timestamps share it instead of each holding its own copy (as they share node
# ids through _node_cache). Equal values only, so what a caller sees is unchanged; the GIL
# serialises access.
cdef object _last_millis = None
cdef long long _last_millis_v = -1
# Likewise the last counter: consecutive equal counters (ops stamped with one clock reading,
# as the load generator stamps a whole batch) share one int; below 257 CPython's small ints
# already do.
cdef object _last_counter = None
cdef long long _last_counter_v = -1


cdef inline object _millis_int(long long millis):
    global _last_millis, _last_millis_v
    if _last_millis is not None and _last_millis_v == millis:
        return _last_millis
    o = PyLong_FromLongLong(millis)
    _last_millis = o
    _last_millis_v = millis
    return o


cdef inline object _counter_int(long long counter):
    global _last_counter, _last_counter_v
    if _last_counter is not None and _last_counter_v == counter:
        return _last_counter
    o = PyLong_FromLongLong(counter)
    _last_counter = o
    _last_counter_v = counter
    return o


cdef object _rd_ts(Rd* r, object like, Py_ssize_t depth):
    """A Timestamp (its map at nesting ``depth``); ``like`` (a Timestamp or None) is returned
    instead when equal."""
    cdef long long millis = 0, counter = 0
    cdef const uint8_t* node = NULL
    cdef Py_ssize_t node_len = 0, ln
    cdef const char* u
    cdef int overflow = 0
    _rd_ts_parts(r, &millis, &counter, &node, &node_len, depth)
    if like is not None:
        if (PyLong_AsLongLongAndOverflow(<object>PyTuple_GET_ITEM(like, 0), &overflow) == millis and not overflow
                and PyLong_AsLongLongAndOverflow(<object>PyTuple_GET_ITEM(like, 1), &overflow) == counter
                and not overflow):
            u = PyUnicode_AsUTF8AndSize(<object>PyTuple_GET_ITEM(like, 2), &ln)
            if ln == node_len and memcmp(u, node, ln) == 0:
                return like
    return _tuple3(_TS_T, _millis_int(millis), _counter_int(counter), _cached_str(_node_cache, NODE_CACHE_BITS, NAME_CACHE_MAX, node, node_len))


cdef object _rd_record(Rd* r, bint is_or, Py_ssize_t depth):
    """An LWWRecord (or ORMapRecord) map at nesting ``depth``; raise _Abandon unless plainly valid."""
    cdef Py_ssize_t n = _map_len(r), i, kn
    cdef const uint8_t* ks
    cdef object value = None, ts = None, ttl = None, tag = None
    if n < 0:
        raise _Abandon()
    for i in range(n):
        kn = _key_len(r)
        ks = r.b + r.pos
        r.pos += kn
        if _key_is(ks, kn, "value", 5):
            value = _rd_value(r, depth + 1)
        elif _key_is(ks, kn, "timestamp", 9):
            ts = _rd_ts(r, None, depth + 1)
        elif _key_is(ks, kn, "ttlMs", 5):
            if _peek(r) == 0xC0:
                r.pos += 1
                ttl = None
            else:
                ttl = _rd_int(r)
                if ttl is _FAIL:
                    raise _Abandon()
        elif is_or and _key_is(ks, kn, "tag", 3):
            tag = _rd_str(r)
            if tag is _FAIL or PyUnicode_GET_LENGTH(tag) == 0:
                raise _Abandon()
        else:
            _skip_entry(r, ks, kn, depth)
    if ts is None or (is_or and tag is None):
        raise _Abandon()
    if is_or:
        return _tuple4(_OR_T, value, ts, tag, ttl)
    return _tuple3(_LWW_T, value, ts, ttl)


cdef object _rd_opt_str(Rd* r):
    """nil -> None, str -> str, anything else abandons."""
    cdef object s
    if _peek(r) == 0xC0:
        r.pos += 1
        return None
    s = _rd_str(r)
    if s is _FAIL:
        raise _Abandon()
    return s


# The wire values of OpType and WriteConcern, matched on the bytes: every op names its kind
# (and maybe its write concern), and a str made only to look up its member is an allocation
# and a siphash per op.
cdef enum:
    MAX_MEMBERS = 8

cdef struct Members:
    int n
    Py_ssize_t lens[MAX_MEMBERS]
    const char* names[MAX_MEMBERS]
    PyObject* members[MAX_MEMBERS]

cdef list _members_keep = []  # the bytes and members the tables point into


cdef int _members_init(Members* t, object enum_cls) except -1:
    # members beyond the table (or with long values) are still found, by the dict lookup
    t.n = 0
    for m in enum_cls:
        raw = (<str>m.value).encode("utf-8")
        if t.n == MAX_MEMBERS or len(raw) > 31:
            continue
        _members_keep.append((raw, m))
        t.lens[t.n] = len(raw)
        t.names[t.n] = PyBytes_AS_STRING(raw)
        t.members[t.n] = <PyObject*>m
        t.n += 1
    return 0


cdef Members _op_types_raw
cdef Members _wcs_raw
_members_init(&_op_types_raw, OpType)
_members_init(&_wcs_raw, WriteConcern)


cdef object _rd_member(Rd* r, Members* t, dict by_value):
    """nil -> None; a str -> its member in ``by_value``, or _FAIL when it names none; anything
    else abandons (what _rd_opt_str and a lookup in ``by_value`` give). The values in ``t`` are
    recognised by their bytes, without making the str."""
    cdef int c = _peek(r)
    cdef Py_ssize_t n
    cdef int i
    cdef object s
    cdef PyObject* q
    if c == 0xC0:
        r.pos += 1
        return None
    if 0xA0 <= c <= 0xBF and (c & 0x1F) < r.n - r.pos:
        n = c & 0x1F
        for i in range(t.n):
            if t.lens[i] == n and memcmp(r.b + r.pos + 1, t.names[i], n) == 0:
                r.pos += 1 + n
                return <object>t.members[i]
    s = _rd_str(r)
    if s is _FAIL:
        raise _Abandon()
    q = PyDict_GetItem(by_value, s)
    if q == NULL:
        return _FAIL
    return <object>q


cdef object _rd_op(Rd* r, Py_ssize_t depth):
    """The ClientOp of the op map (at nesting ``depth``) at the cursor; _Abandon unless plainly valid."""
    cdef Py_ssize_t n = _map_len(r), i, kn, ts_pos = -1
    cdef const uint8_t* ks
    cdef object op_id = None, map_name = None, key = None, op_type = None, record = None
    cdef object or_record = None, or_tag = None, wc = None, timeout = None, ts = None, s
    cdef PyObject* q
    cdef bint rec_nil = False
    cdef object like
    cdef Rd sub
    if n < 0:
        raise _Abandon()
    for i in range(n):
        kn = _key_len(r)
        ks = r.b + r.pos
        r.pos += kn
        if kn == 2 and ks[0] == 0x69 and ks[1] == 0x64:  # "id"
            op_id = _rd_opt_cached(r, _id_cache, ID_CACHE_BITS, STR_CACHE_MAX)
        elif _key_is(ks, kn, "mapName", 7):
            map_name = _rd_opt_cached(r, _map_cache, MAP_CACHE_BITS, NAME_CACHE_MAX)
        elif _key_is(ks, kn, "key", 3):
            key = _rd_opt_str(r)
        elif _key_is(ks, kn, "opType", 6):
            op_type = _rd_member(r, &_op_types_raw, _OP_TYPES)
            if op_type is _FAIL:
                op_type = None  # an unknown kind: classified by the record fields
        elif _key_is(ks, kn, "record", 6):
            if _peek(r) == 0xC0:
                r.pos += 1
                record = None
                rec_nil = True
            else:
                record = _rd_record(r, False, depth + 1)
                rec_nil = False
        elif _key_is(ks, kn, "orRecord", 8):
            if _peek(r) == 0xC0:
                r.pos += 1
                or_record = None
            else:
                or_record = _rd_record(r, True, depth + 1)
        elif _key_is(ks, kn, "orTag", 5):
            or_tag = _rd_opt_str(r)
        elif _key_is(ks, kn, "writeConcern", 12):
            wc = _rd_wc(r)
        elif _key_is(ks, kn, "timeout", 7):
            timeout = _rd_timeout(r)
        elif _key_is(ks, kn, "timestamp", 9):
            # parsed after the loop, so it can share the record's Timestamp whatever the key order
            if _peek(r) == 0xC0:
                ts_pos = -1
                r.pos += 1
            else:
                ts_pos = r.pos
                _skip(r, depth, False)  # parsed (and so checked) below
        else:
            _skip_entry(r, ks, kn, depth)
    if map_name is None or PyUnicode_GET_LENGTH(map_name) == 0 or key is None:
        raise _Abandon()
    if ts_pos >= 0:
        sub.b = r.b
        sub.n = r.n
        sub.lim = r.lim
        sub.pos = ts_pos
        like = None
        if record is not None:
            like = <object>PyTuple_GET_ITEM(record, 1)
        elif or_record is not None:
            like = <object>PyTuple_GET_ITEM(or_record, 1)
        ts = _rd_ts(&sub, like, depth + 1)
    s = _finish_op(op_id, map_name, key, op_type, rec_nil, record, or_record, or_tag, wc, timeout, ts)
    if s is _FAIL:
        raise _Abandon()
    return s


cdef object _slice_op(const uint8_t* b, Py_ssize_t start, Py_ssize_t end, list ext_m1, Py_ssize_t index,
                      object lim):
    """One op the byte reader declined: unpack just its bytes and judge it like the general path
    (``index`` is its place in ``payload.ops``, or -1 for the payload of a ``CLIENT_OP``)."""
    cdef object raw = PyBytes_FromStringAndSize(<const char*>(b + start), end - start)
    cdef object op
    if ext_m1:
        buf = bytearray(raw)
        for p in ext_m1:
            if start <= p < end:
                buf[p - start] = 0x80
        raw = bytes(buf)
    obj = _unpackb(raw, raw=False, strict_map_key=False, ext_hook=_ext_hook)
    op = _fast_op(obj)
    if op is _FAIL:
        op = _py_decode_op(obj, "payload" if index < 0 else f"payload.ops[{index}]", lim)
    return op


cdef object _rd_op_or_slice(Rd* r, list ext_m1, Py_ssize_t index, object lim, Py_ssize_t depth):
    """The op at the cursor (its map at nesting ``depth``): read from the bytes, or, when the
    reader declines it, by the general way. Before the frame is scanned (``ext_m1`` None) a
    declined op abandons the frame instead: the caller scans it and reads it again."""
    cdef Py_ssize_t start = r.pos
    try:
        return _rd_op(r, depth)
    except _Abandon:
        if ext_m1 is None:
            raise
        # not plainly valid: this op alone goes the general way
        r.pos = start
        _skip(r, depth - 1, False)
        return _slice_op(r.b, start, r.pos, ext_m1, index, lim)


cdef object _bytes_op_batch(Rd* r, Py_ssize_t nk, list ext_m1, object lim):
    """The OpBatch of a frame whose ``type`` entry ``r`` has just passed; raises _Abandon to take
    the general path."""
    cdef Py_ssize_t i, kn, pk, j, no, k
    cdef const uint8_t* ks
    cdef object ops = None, wc = None, timeout = None, s
    cdef PyObject* q
    cdef list lst
    for i in range(1, nk):
        kn = _key_len(r)
        ks = r.b + r.pos
        r.pos += kn
        if _key_is(ks, kn, "payload", 7):
            pk = _map_len(r)
            if pk < 0:
                raise _Abandon()
            ops = None
            wc = None
            timeout = None
            for j in range(pk):
                kn = _key_len(r)
                ks = r.b + r.pos
                r.pos += kn
                if _key_is(ks, kn, "ops", 3):
                    no = _arr_len(r)
                    if no < 0:
                        raise _Abandon()
                    lst = PyList_New(no)
                    for k in range(no):
                        s = _rd_op_or_slice(r, ext_m1, k, lim, 4)
                        Py_INCREF(s)
                        PyList_SET_ITEM(lst, k, s)
                    ops = lst
                elif _key_is(ks, kn, "writeConcern", 12):
                    wc = _rd_wc(r)
                elif _key_is(ks, kn, "timeout", 7):
                    timeout = _rd_timeout(r)
                else:
                    _skip_entry(r, ks, kn, 2)
        elif _key_is(ks, kn, "type", 4):
            raise _Abandon()  # a second "type": let the general path apply dict semantics
        else:
            _skip_entry(r, ks, kn, 1)
    if ops is None:
        raise _Abandon()
    return _make_batch(ops, wc, timeout)


cdef object _bytes_client_op(Rd* r, Py_ssize_t nk, list ext_m1, object lim):
    """The ClientOpMessage of a frame whose ``type`` entry ``r`` has just passed; raises _Abandon
    to take the general path."""
    cdef Py_ssize_t i, kn
    cdef const uint8_t* ks
    cdef int c
    cdef object op = None
    for i in range(1, nk):
        kn = _key_len(r)
        ks = r.b + r.pos
        r.pos += kn
        if _key_is(ks, kn, "payload", 7):
            c = _peek(r)
            if not (0x80 <= c <= 0x8F or c == 0xDE or c == 0xDF):
                raise _Abandon()  # a payload that is no map fails the frame: the general path says how
            # a repeated payload replaces the earlier one, as in the dict msgpack builds
            op = _rd_op_or_slice(r, ext_m1, -1, lim, 2)
        elif _key_is(ks, kn, "type", 4):
            raise _Abandon()  # a second "type": let the general path apply dict semantics
        else:
            _skip_entry(r, ks, kn, 1)
    if op is None:
        raise _Abandon()
    return _make_cop(op)


cdef bytes _OP_BATCH_PREFIX = b"\xa4type\xa8OP_BATCH"
cdef enum:
    # the deepest fixed part the reader does not check itself: an OP_BATCH record's timestamp
    # (frame 1, payload 2, ops 3, op 4, record 5, timestamp 6)
    MIN_FUSED_DEPTH = 6
cdef bytes _CLIENT_OP_PREFIX = b"\xa4type\xa9CLIENT_OP"


cdef object _bytes_op_frame(const uint8_t* b, Py_ssize_t n, list ext_m1, object lim, const Lim* lm):
    """The OpBatch or ClientOpMessage read straight from the frame, or _FAIL to take the general
    path. Only frames whose first entry is the ``type`` (every encoder we know writes it first)
    take this path.

    ``ext_m1`` is what :func:`_scan` returned for the frame, or None when it has not been
    scanned: the reader then checks everything the scan checks as it goes (bounds, limits,
    key types, reserved bytes, trailing bytes, with ``lm.max_depth`` at least the nesting of
    the fixed parts, MIN_FUSED_DEPTH) and gives up (_FAIL) on anything the scan might refuse
    or on any op it declines, so a frame it returns is one the scan accepts, read exactly as
    after the scan."""
    cdef Rd r
    cdef Py_ssize_t nk
    cdef object msg
    r.b = b
    r.n = n
    r.pos = 0
    r.lim = lm
    nk = _map_len(&r)
    if nk < 1:
        return _FAIL
    try:
        if r.pos + 14 <= n and memcmp(b + r.pos, PyBytes_AS_STRING(_OP_BATCH_PREFIX), 14) == 0:
            r.pos += 14
            msg = _bytes_op_batch(&r, nk, ext_m1, lim)
        elif r.pos + 15 <= n and memcmp(b + r.pos, PyBytes_AS_STRING(_CLIENT_OP_PREFIX), 15) == 0:
            r.pos += 15
            msg = _bytes_client_op(&r, nk, ext_m1, lim)
        else:
            return _FAIL
    except (_Abandon, ValueError, TypeError, msgpack.UnpackException):
        # includes invalid UTF-8: the general path reports it for the whole frame
        return _FAIL
    if r.pos != n:
        return _FAIL  # trailing bytes (only possible before the scan): the scan says so
    return msg


def decode(frame, limits=None):
    """Decode one frame into a typed message (see :func:`topgun.protocol._codec_py.decode`)."""
    cdef object lim = limits if limits is not None else _DEFAULT_LIMITS
    cdef const uint8_t[::1] view
    cdef const uint8_t* b
    cdef Py_ssize_t n
    cdef object msg
    cdef list ext_m1
    cdef Lim lm
    cdef Py_ssize_t max_frame
    if PyBytes_CheckExact(frame):
        # the usual case: read the bytes in place (acquiring a typed memoryview costs more
        # than decoding a small op)
        b = <const uint8_t*>PyBytes_AS_STRING(frame)
        n = PyBytes_GET_SIZE(frame)
    else:
        if isinstance(frame, bytes):
            view = frame
        else:
            view = memoryview(frame).cast("B")
        n = view.shape[0]
        b = &view[0] if n else NULL
    if _lim_fast_of(lim, &lm, &max_frame):
        if n > max_frame:
            raise FrameTooLargeError(n, lim.max_frame_bytes)
        if lm.max_depth >= MIN_FUSED_DEPTH:
            # the write kinds in one pass: read while checking what the scan checks; anything
            # unusual (including every malformed frame) is scanned and read again below
            msg = _bytes_op_frame(b, n, None, lim, &lm)
            if msg is not _FAIL:
                return msg
    else:
        if n > lim.max_frame_bytes:
            raise FrameTooLargeError(n, lim.max_frame_bytes)
        _lim_of(lim, &lm)
    ext_m1 = _scan(b, n, &lm)
    msg = _bytes_op_frame(b, n, ext_m1, lim, &lm)
    if msg is not _FAIL:
        return msg
    return from_wire(_unpack_scanned(frame, ext_m1), lim)


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
        if v < U32_END:
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


cdef inline int _put_value_ts(Buf* b, object r) except -1:
    # value and timestamp lead both record shapes (LWWRecord and ORMapRecord)
    _put(b, b"\xa5value", 6)
    _put_value(b, <object>PyTuple_GET_ITEM(r, 0), 2)
    _put(b, b"\xa9timestamp", 10)
    _put_ts(b, <object>PyTuple_GET_ITEM(r, 1))
    return 0


cdef inline int _put_ttl(Buf* b, object ttl) except -1:
    if ttl is not None:
        _put(b, b"\xa5ttlMs", 6)
        _put_int(b, ttl)
    return 0


cdef int _put_lww(Buf* b, object r) except -1:
    cdef object ttl = <object>PyTuple_GET_ITEM(r, 2)
    _put1(b, 0x82 if ttl is None else 0x83)
    _put_value_ts(b, r)
    _put_ttl(b, ttl)
    return 0


cdef int _put_or(Buf* b, object r) except -1:
    cdef object ttl = <object>PyTuple_GET_ITEM(r, 3)
    _put1(b, 0x83 if ttl is None else 0x84)
    _put_value_ts(b, r)
    _put(b, b"\xa3tag", 4)
    _put_str(b, <object>PyTuple_GET_ITEM(r, 2))
    _put_ttl(b, ttl)
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
