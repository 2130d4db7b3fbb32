from topgun._speedups._hlc cimport HLC
from topgun._speedups._merkle cimport MerkleTree


cdef class LWWMap:
    cdef dict _data
    cdef object _hlc
    cdef HLC _chlc
    cdef MerkleTree _merkle
    cdef object _wall

    cdef bint c_merge(self, str key, object record) except -1
    cdef bint _merge_data(self, str key, object record, object ts) except -1
    cdef bint _store_if_newer(self, str key, object record, object ts) except -1
    cdef int _store_winner(self, str key, object record, object ts) except -1
    cdef int _track(self, str key, object record) except -1
    cdef int _track_into(self, MerkleTree tree, str key, object record) except -1
    cdef object _stamp(self)
