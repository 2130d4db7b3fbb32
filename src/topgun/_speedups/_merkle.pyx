# cython: language_level=3
"""Compiled twin of :mod:`topgun.core._merkle_py` (same names, same results).

Node hashes and key counts live in fixed C arrays (16 + 256 + 4096 nodes);
each leaf's key -> item hash mapping is a dict in a 4096-slot list.
"""

from libc.stdint cimport uint32_t
from libc.string cimport memset
from libc.stdlib cimport malloc, calloc, free
from cpython.dict cimport PyDict_GetItem, PyDict_SetItem, PyDict_DelItem, PyDict_Size
from cpython.object cimport PyObject
from cpython.ref cimport Py_INCREF, Py_DECREF
from cpython.list cimport PyList_GET_ITEM
from cpython.tuple cimport PyTuple_Check, PyTuple_GET_SIZE, PyTuple_GET_ITEM

from topgun._speedups._hashing cimport FNV_OFFSET, c_mix, fnv_feed_str

cdef extern from *:
    """
    #if defined(__GNUC__) || defined(__clang__)
    #define TG_PREFETCH(p) __builtin_prefetch(p)
    #else
    #define TG_PREFETCH(p) ((void)0)
    #endif
    """
    void TG_PREFETCH(const void* p) noexcept nogil

cdef extern from "Python.h":
    unsigned long PyLong_AsUnsignedLongMask(object) except? <unsigned long>-1

__all__ = ["DEPTH", "MerkleTree"]

DEPTH = 3
cdef str _HEX = "0123456789abcdef"


cdef inline int _hexval(Py_UCS4 ch) noexcept:
    cdef int c = <int>ch
    if 48 <= c <= 57:
        return c - 48
    if 97 <= c <= 102:
        return c - 87
    return -1


cdef bint _parse_path(object path, int* depth, Py_ssize_t* idx) except -1:
    cdef str p
    cdef Py_ssize_t i, n
    cdef int v
    if type(path) is not str:
        p = str(path)
    else:
        p = <str>path
    n = len(p)
    if n > 3:
        return False
    idx[0] = 0
    for i in range(n):
        v = _hexval(p[i])
        if v < 0:
            return False
        idx[0] = (idx[0] << 4) | v
    depth[0] = <int>n
    return True


cdef class MerkleTree:
    """Fixed-depth (3) hex prefix trie of key -> item hash with incrementally maintained node hashes."""

    DEPTH = 3

    def __cinit__(self):
        self._leaves = [None] * 4096
        self._reset()

    cdef void _reset(self) noexcept:
        self._h0 = 0
        self._c0 = 0
        memset(self._h1, 0, sizeof(self._h1))
        memset(self._h2, 0, sizeof(self._h2))
        memset(self._h3, 0, sizeof(self._h3))
        memset(self._c1, 0, sizeof(self._c1))
        memset(self._c2, 0, sizeof(self._c2))
        memset(self._c3, 0, sizeof(self._c3))
        self._size = 0

    cdef void _apply(self, Py_ssize_t leaf, bint has_old, uint32_t old, bint has_new, uint32_t new) noexcept:
        cdef uint32_t o3 = self._h3[leaf]
        cdef uint32_t n3 = o3
        cdef Py_ssize_t d = <Py_ssize_t>has_new - <Py_ssize_t>has_old
        cdef Py_ssize_t i2 = leaf >> 4
        cdef Py_ssize_t i1 = leaf >> 8
        cdef uint32_t o2, n2, o1, n1
        if has_old:
            n3 -= c_mix(old)
        if has_new:
            n3 += c_mix(new)
        self._h3[leaf] = n3
        self._c3[leaf] += d
        o2 = self._h2[i2]
        n2 = o2 - c_mix(o3) + c_mix(n3)
        self._h2[i2] = n2
        self._c2[i2] += d
        o1 = self._h1[i1]
        n1 = o1 - c_mix(o2) + c_mix(n2)
        self._h1[i1] = n1
        self._c1[i1] += d
        self._h0 = self._h0 - c_mix(o1) + c_mix(n1)
        self._c0 += d

    cdef int c_update(self, str key, uint32_t key_hash, uint32_t item) except -1:
        cdef Py_ssize_t leaf = key_hash >> 20
        cdef object bucket = <object>PyList_GET_ITEM(self._leaves, leaf)
        cdef PyObject* old
        cdef uint32_t old_item
        if bucket is None:
            bucket = {}
            self._leaves[leaf] = bucket
            old = NULL
        else:
            old = PyDict_GetItem(bucket, key)
        if old != NULL:
            old_item = <uint32_t>PyLong_AsUnsignedLongMask(<object>old)
            if old_item == item:
                return 0
            PyDict_SetItem(bucket, key, item)
            self._apply(leaf, True, old_item, True, item)
        else:
            PyDict_SetItem(bucket, key, item)
            self._size += 1
            self._apply(leaf, False, 0, True, item)
        return 0

    cdef int c_apply_batch(self, PyObject** keys, uint32_t* key_hashes, uint32_t* items, Py_ssize_t n) except -1:
        """``c_update`` for n entries, visiting them grouped by leaf.

        Grouping (a stable counting sort on the 12-bit leaf index) keeps each
        leaf's dict hot in cache while its keys are applied; the final state is
        the same as applying in input order because node sums commute and the
        entries of one key keep their relative order.
        """
        cdef Py_ssize_t i, j, leaf
        cdef Py_ssize_t* starts
        cdef Py_ssize_t* order
        if n < 4096:
            for i in range(n):
                self.c_update(<str>keys[i], key_hashes[i], items[i])
            return 0
        starts = <Py_ssize_t*>calloc(4097, sizeof(Py_ssize_t))
        order = <Py_ssize_t*>malloc(n * sizeof(Py_ssize_t))
        if starts == NULL or order == NULL:
            free(starts)
            free(order)
            raise MemoryError()
        try:
            for i in range(n):
                starts[(key_hashes[i] >> 20) + 1] += 1
            for j in range(1, 4097):
                starts[j] += starts[j - 1]
            for i in range(n):
                leaf = key_hashes[i] >> 20
                order[starts[leaf]] = i
                starts[leaf] += 1
            # Visiting by leaf scatters the key objects, whose headers (refcount,
            # cached hash) every dict operation touches: fetch them ahead.
            for j in range(n):
                if j + 16 < n:
                    TG_PREFETCH(keys[order[j + 16]])
                i = order[j]
                self.c_update(<str>keys[i], key_hashes[i], items[i])
        finally:
            free(starts)
            free(order)
        return 0

    cdef bint c_remove(self, str key, uint32_t key_hash) except -1:
        cdef Py_ssize_t leaf = key_hash >> 20
        cdef object bucket = <object>PyList_GET_ITEM(self._leaves, leaf)
        cdef PyObject* old
        cdef uint32_t old_item
        if bucket is None:
            return False
        old = PyDict_GetItem(bucket, key)
        if old == NULL:
            return False
        old_item = <uint32_t>PyLong_AsUnsignedLongMask(<object>old)
        PyDict_DelItem(bucket, key)
        if PyDict_Size(bucket) == 0:
            self._leaves[leaf] = None
        self._size -= 1
        self._apply(leaf, True, old_item, False, 0)
        return True

    def update(self, str key not None, item_hash):
        """Set the item hash of ``key`` (inserting the key if new)."""
        cdef uint32_t item = <uint32_t>(PyLong_AsUnsignedLongMask(item_hash) & 0xFFFFFFFF)
        self.c_update(key, fnv_feed_str(FNV_OFFSET, key), item)

    def update_many(self, pairs):
        """``update(key, item_hash)`` for every pair, in order."""
        cdef list lst = pairs if type(pairs) is list else list(pairs)
        cdef Py_ssize_t i, n = len(lst)
        cdef object key, ih, pair
        cdef PyObject** keys
        cdef uint32_t* khs
        cdef uint32_t* ihs
        cdef Py_ssize_t filled = 0
        if n == 0:
            return
        keys = <PyObject**>malloc(n * sizeof(PyObject*))
        khs = <uint32_t*>malloc(n * sizeof(uint32_t))
        ihs = <uint32_t*>malloc(n * sizeof(uint32_t))
        try:
            if keys == NULL or khs == NULL or ihs == NULL:
                raise MemoryError()
            # Bounded by the live size: ``__index__`` of an item hash is Python code.
            for i in range(n):
                if i >= len(lst):
                    break
                pair = lst[i]
                if PyTuple_Check(pair) and PyTuple_GET_SIZE(pair) == 2:
                    key = <object>PyTuple_GET_ITEM(pair, 0)
                    ih = <object>PyTuple_GET_ITEM(pair, 1)
                else:
                    key, ih = pair
                if type(key) is not str:
                    raise TypeError(f"keys must be str, not {type(key).__name__}")
                khs[filled] = fnv_feed_str(FNV_OFFSET, <str>key)
                ihs[filled] = <uint32_t>(PyLong_AsUnsignedLongMask(ih) & 0xFFFFFFFF)
                Py_INCREF(key)  # owned by the batch until it is applied
                keys[filled] = <PyObject*>key
                filled += 1
            self.c_apply_batch(keys, khs, ihs, filled)
        finally:
            for i in range(filled):
                Py_DECREF(<object>keys[i])
            free(keys)
            free(khs)
            free(ihs)

    def remove(self, str key not None):
        """Drop ``key`` from the tree; False if it was not there."""
        return self.c_remove(key, fnv_feed_str(FNV_OFFSET, key))

    def clear(self):
        """Remove every key."""
        self._leaves = [None] * 4096
        self._reset()

    @property
    def root_hash(self):
        """Hash of the root node (0 for an empty tree)."""
        return self._h0

    cdef uint32_t _node(self, int depth, Py_ssize_t idx) noexcept:
        if depth == 0:
            return self._h0
        if depth == 1:
            return self._h1[idx]
        if depth == 2:
            return self._h2[idx]
        return self._h3[idx]

    cdef Py_ssize_t _count(self, int depth, Py_ssize_t idx) noexcept:
        if depth == 0:
            return self._c0
        if depth == 1:
            return self._c1[idx]
        if depth == 2:
            return self._c2[idx]
        return self._c3[idx]

    def node_hash(self, path):
        """Hash of the node at ``path`` (0 for a node without keys or an invalid path)."""
        cdef int depth
        cdef Py_ssize_t idx
        if not _parse_path(path, &depth, &idx):
            return 0
        return self._node(depth, idx)

    def buckets(self, path):
        """Hex digit -> child hash for every child of ``path`` holding at least one key."""
        cdef int depth
        cdef Py_ssize_t idx, base, c
        cdef dict out = {}
        if not _parse_path(path, &depth, &idx) or depth >= 3 or self._count(depth, idx) == 0:
            return out
        base = idx << 4
        for c in range(16):
            if self._count(depth + 1, base + c):
                out[_HEX[c]] = self._node(depth + 1, base + c)
        return out

    def leaf(self, path):
        """Key -> item hash of every key in the leaf at ``path`` (a 3-digit path), else empty."""
        cdef int depth
        cdef Py_ssize_t idx
        if not _parse_path(path, &depth, &idx) or depth != 3:
            return {}
        bucket = self._leaves[idx]
        return {} if bucket is None else dict(bucket)

    def keys_under(self, path):
        """Sorted keys whose route starts with ``path`` (any depth 0..3)."""
        cdef int depth
        cdef Py_ssize_t idx, lo, hi, i
        cdef list keys = []
        if not _parse_path(path, &depth, &idx):
            return keys
        lo = idx << (4 * (3 - depth))
        hi = (idx + 1) << (4 * (3 - depth))
        for i in range(lo, hi):
            bucket = <object>PyList_GET_ITEM(self._leaves, i)
            if bucket is not None:
                keys.extend(bucket)
        keys.sort()
        return keys

    def get(self, str key not None):
        """The item hash of ``key``, or None."""
        bucket = <object>PyList_GET_ITEM(self._leaves, fnv_feed_str(FNV_OFFSET, key) >> 20)
        return None if bucket is None else bucket.get(key)

    def __contains__(self, key):
        return type(key) is str and self.get(key) is not None

    def __len__(self):
        return self._size

    def __repr__(self):
        return f"MerkleTree(keys={self._size}, root={self._h0})"
