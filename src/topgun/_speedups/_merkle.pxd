# C-level Merkle tree shared by the compiled twins (_lww updates it without Python calls).
from libc.stdint cimport uint32_t
from cpython.object cimport PyObject


cdef class MerkleTree:
    cdef uint32_t _h0
    cdef uint32_t _h1[16]
    cdef uint32_t _h2[256]
    cdef uint32_t _h3[4096]
    cdef Py_ssize_t _c0
    cdef Py_ssize_t _c1[16]
    cdef Py_ssize_t _c2[256]
    cdef Py_ssize_t _c3[4096]
    cdef list _leaves
    cdef Py_ssize_t _size

    cdef void _apply(self, Py_ssize_t leaf, bint has_old, uint32_t old, bint has_new, uint32_t new) noexcept
    cdef int c_update(self, str key, uint32_t key_hash, uint32_t item) except -1
    cdef int c_apply_batch(self, PyObject** keys, uint32_t* key_hashes, uint32_t* items, Py_ssize_t n) except -1
    cdef bint c_remove(self, str key, uint32_t key_hash) except -1
    cdef void _reset(self) noexcept
    cdef uint32_t _node(self, int depth, Py_ssize_t idx) noexcept
    cdef Py_ssize_t _count(self, int depth, Py_ssize_t idx) noexcept
