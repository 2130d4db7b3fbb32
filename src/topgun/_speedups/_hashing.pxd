# C-level hashing primitives shared by the compiled twins (_merkle, _lww cimport these).
from libc.stdint cimport uint32_t, uint64_t
from cpython.unicode cimport PyUnicode_KIND, PyUnicode_DATA, PyUnicode_GET_LENGTH

cdef extern from *:
    """
    #define TG_FNV_OFFSET 0x811C9DC5u
    #define TG_FNV_PRIME 0x01000193u
    """
    # Macros rather than a C enum: enum constants must fit in an int.
    const uint32_t FNV_OFFSET "TG_FNV_OFFSET"
    const uint32_t FNV_PRIME "TG_FNV_PRIME"


cdef inline uint32_t c_mix(uint32_t h) noexcept nogil:
    h ^= h >> 16
    h *= <uint32_t>0x85EBCA6BU
    h ^= h >> 13
    h *= <uint32_t>0xC2B2AE35U
    h ^= h >> 16
    return h


cdef inline uint32_t fnv_unit(uint32_t h, uint32_t u) noexcept nogil:
    return (h ^ u) * <uint32_t>FNV_PRIME


cdef inline uint32_t fnv_feed_str(uint32_t h, str s) noexcept:
    """Feed the UTF-16 code units of ``s`` (must not be None) into ``h``."""
    cdef Py_ssize_t i, n = PyUnicode_GET_LENGTH(s)
    cdef unsigned int kind = PyUnicode_KIND(s)
    cdef void* data = PyUnicode_DATA(s)
    cdef const unsigned char* d1
    cdef const unsigned short* d2
    cdef const uint32_t* d4
    cdef uint32_t cp
    if kind == 1:
        d1 = <const unsigned char*>data
        for i in range(n):
            h = (h ^ d1[i]) * <uint32_t>FNV_PRIME
    elif kind == 2:
        d2 = <const unsigned short*>data
        for i in range(n):
            h = (h ^ d2[i]) * <uint32_t>FNV_PRIME
    else:
        d4 = <const uint32_t*>data
        for i in range(n):
            cp = d4[i]
            if cp > 0xFFFF:
                cp -= 0x10000
                h = (h ^ (0xD800 | (cp >> 10))) * <uint32_t>FNV_PRIME
                h = (h ^ (0xDC00 | (cp & 0x3FF))) * <uint32_t>FNV_PRIME
            else:
                h = (h ^ cp) * <uint32_t>FNV_PRIME
    return h


cdef inline uint32_t fnv_feed_u64(uint32_t h, uint64_t v) noexcept nogil:
    """Feed the decimal digits of ``v`` (ASCII, one unit per digit) into ``h``."""
    cdef char buf[24]
    cdef int n = 0
    if v == 0:
        return (h ^ 48) * <uint32_t>FNV_PRIME
    while v:
        buf[n] = <char>(48 + v % 10)
        v //= 10
        n += 1
    while n:
        n -= 1
        h = (h ^ <uint32_t>buf[n]) * <uint32_t>FNV_PRIME
    return h


cdef int c_item_hash(str key, object ts, uint32_t* key_hash, uint32_t* item_hash) except -1
