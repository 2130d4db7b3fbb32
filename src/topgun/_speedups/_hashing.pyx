# cython: language_level=3
"""Compiled twin of :mod:`topgun.core._hashing_py` (same names, same results).

Strings are hashed straight from CPython's internal representation (1, 2 or
4 bytes per code point), producing UTF-16 code units on the fly, without
encoding. The OR-Map value rendering is not a hot path and is shared with the
specification module, so both twins render identically by construction.
"""

from libc.stdint cimport uint32_t, uint64_t
from cpython.long cimport PyLong_CheckExact
from cpython.list cimport PyList_New, PyList_SET_ITEM
from cpython.ref cimport Py_INCREF
from cpython.tuple cimport PyTuple_Check, PyTuple_GET_SIZE, PyTuple_GET_ITEM

from topgun.core._hashing_py import (
    number_to_string,
    or_entry_string,
    render_value,
    utf16_sort_key,
)

cdef extern from "Python.h":
    unsigned long long PyLong_AsUnsignedLongLong(object) except? <unsigned long long>-1
    unsigned long PyLong_AsUnsignedLongMask(object) except? <unsigned long>-1
    ctypedef struct PyObject

__all__ = [
    "PARTITION_COUNT",
    "combine",
    "fnv1a",
    "fnv1a_many",
    "lww_item_hash",
    "mix",
    "number_to_string",
    "or_entry_hash",
    "or_entry_string",
    "partition",
    "render_value",
    "route",
    "utf16_sort_key",
]

PARTITION_COUNT = 271


cdef inline uint32_t _u32(object h) except? 0:
    return <uint32_t>(PyLong_AsUnsignedLongMask(h) & 0xFFFFFFFF)


cdef bint _u64(object v, uint64_t* out):
    """Exact non-negative int below 2^64 -> True and ``out``; anything else -> False."""
    if not PyLong_CheckExact(v) or v < 0:
        return False
    try:
        out[0] = PyLong_AsUnsignedLongLong(v)
    except OverflowError:
        return False
    return True


cdef int c_item_hash(str key, object ts, uint32_t* key_hash, uint32_t* item_hash) except -1:
    """fnv1a(key) and the LWW item hash of ``key`` at ``ts`` in one pass over the key."""
    cdef uint32_t h = fnv_feed_str(FNV_OFFSET, key)
    cdef uint64_t m, c
    cdef object om, oc, node
    key_hash[0] = h
    if PyTuple_Check(ts) and PyTuple_GET_SIZE(ts) >= 3:
        om = <object>PyTuple_GET_ITEM(ts, 0)
        oc = <object>PyTuple_GET_ITEM(ts, 1)
        node = <object>PyTuple_GET_ITEM(ts, 2)
        if type(node) is str and _u64(om, &m) and _u64(oc, &c):
            h = fnv_unit(h, 58)
            h = fnv_feed_u64(h, m)
            h = fnv_unit(h, 58)
            h = fnv_feed_u64(h, c)
            h = fnv_unit(h, 58)
            item_hash[0] = fnv_feed_str(h, <str>node)
            return 0
    # Unusual field types: format exactly as the specification does.
    item_hash[0] = fnv_feed_str(FNV_OFFSET, f"{key}:{ts[0]}:{ts[1]}:{ts[2]}")
    return 0


def fnv1a(str s not None):
    """FNV-1a 32-bit over the UTF-16 code units of ``s``."""
    return fnv_feed_str(FNV_OFFSET, s)


def fnv1a_many(keys):
    """``[fnv1a(k) for k in keys]``."""
    cdef list src = keys if type(keys) is list else list(keys)
    cdef Py_ssize_t i, n = len(src)
    cdef list out = PyList_New(n)
    cdef object k, v
    for i in range(n):
        k = src[i]
        if type(k) is not str:
            raise TypeError(f"keys must be str, not {type(k).__name__}")
        v = fnv_feed_str(FNV_OFFSET, <str>k)
        Py_INCREF(v)
        PyList_SET_ITEM(out, i, v)
    return out


def mix(h):
    """The MurmurHash3 ``fmix32`` finalizer on an unsigned 32-bit value."""
    return c_mix(_u32(h))


def combine(hashes):
    """Order-independent combination: the sum of ``mix(h)`` mod 2^32 (0 for no hashes)."""
    cdef uint32_t total = 0
    for h in hashes:
        total += c_mix(_u32(h))
    return total


def route(str key not None):
    """The key's Merkle route: ``fnv1a(key)`` as 8 lowercase hex digits."""
    return "%08x" % fnv_feed_str(FNV_OFFSET, key)


def partition(str key not None):
    """The cluster partition id of ``key`` (``fnv1a(key) mod 271``)."""
    return fnv_feed_str(FNV_OFFSET, key) % 271


def lww_item_hash(str key not None, ts):
    """Merkle item hash of an LWW record: ``fnv1a("key:millis:counter:nodeId")``."""
    cdef uint32_t kh, ih
    c_item_hash(key, ts, &kh, &ih)
    return ih


def or_entry_hash(str key not None, records):
    """Merkle item hash of one OR-Map key from its records (tag -> record, or records with tags)."""
    cdef str s = or_entry_string(key, records)
    return fnv_feed_str(FNV_OFFSET, s)
