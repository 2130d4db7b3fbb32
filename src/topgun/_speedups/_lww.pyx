# cython: language_level=3
"""Compiled twin of :mod:`topgun.core._lww_py` (same names, same results).

A merge compares timestamps in C, advances a compiled HLC through its C
method and updates the compiled Merkle tree with an item hash computed in the
same pass that yields the key's route, so ``merge_many`` runs without Python
calls per record.
"""

from libc.stdint cimport uint32_t
from libc.stdlib cimport malloc, free
from cpython.dict cimport PyDict_GetItem, PyDict_SetItem, PyDict_SetDefault

from cpython.object cimport PyObject
from cpython.ref cimport Py_INCREF, Py_DECREF
from cpython.list cimport PyList_GET_ITEM, PyList_GET_SIZE
from cpython.tuple cimport PyTuple_Check, PyTuple_GET_SIZE, PyTuple_GET_ITEM

from topgun._speedups._hashing cimport c_item_hash
from topgun._speedups._hlc cimport HLC, ts_cmp, ts_fields

from topgun._speedups._hlc import wall_millis
from topgun.core.records import LWWRecord
from topgun.errors import ClockError

cdef extern from "Python.h":
    Py_ssize_t PyDict_GET_SIZE(object)
    int PyDict_Update(object, object) except -1

cdef extern from *:
    """
    #if PY_VERSION_HEX < 0x030D0000 && !defined(PYPY_VERSION)
    #define TG_DICT_PRESIZED(n) _PyDict_NewPresized(n)
    #else
    #define TG_DICT_PRESIZED(n) PyDict_New()
    #endif
    """
    dict TG_DICT_PRESIZED(Py_ssize_t n)

cdef extern from *:
    """
    /* Software prefetch of the hash-table memory a dict insert of an upcoming key
       will touch. A bulk merge of fresh keys into a large dict is bound by cache
       misses on the index slot and the entry it points to, one dependent chain per
       record; issuing them a few records ahead overlaps the chains. The layout of
       the keys object is CPython's (Include/internal/pycore_dict.h, 3.11-3.13,
       GIL builds); elsewhere this is a no-op. Only the current table is read, and
       only within its bounds: a stale guess merely wastes a prefetch. */
    #if (defined(__GNUC__) || defined(__clang__)) && !defined(PYPY_VERSION) \
        && PY_VERSION_HEX >= 0x030B0000 && PY_VERSION_HEX < 0x030E0000 && !defined(Py_GIL_DISABLED)
    typedef struct {
        Py_ssize_t dk_refcnt;
        uint8_t dk_log2_size;
        uint8_t dk_log2_index_bytes;
        uint8_t dk_kind;
        uint32_t dk_version;
        Py_ssize_t dk_usable;
        Py_ssize_t dk_nentries;
        char dk_indices[];
    } tg_dictkeys;

    static inline Py_ssize_t tg_slot_get(tg_dictkeys *dk, size_t i) {
        switch (dk->dk_log2_index_bytes - dk->dk_log2_size) {
        case 0: return ((int8_t *)dk->dk_indices)[i];
        case 1: return ((int16_t *)dk->dk_indices)[i];
        case 2: return ((int32_t *)dk->dk_indices)[i];
        default: return ((int64_t *)dk->dk_indices)[i];
        }
    }

    static inline void tg_slot_prefetch(tg_dictkeys *dk, size_t i) {
        __builtin_prefetch(dk->dk_indices + (i << (dk->dk_log2_index_bytes - dk->dk_log2_size)), 0, 3);
    }

    static inline PyObject *tg_pair_at(PyObject *lst, Py_ssize_t j) {
        PyObject *p;
        if (j >= PyList_GET_SIZE(lst)) return NULL;
        p = PyList_GET_ITEM(lst, j);
        return (PyTuple_CheckExact(p) && PyTuple_GET_SIZE(p) == 2) ? p : NULL;
    }

    /* One dependent load per stage, each stage `dist` pairs nearer than the last,
       so every load finds the object the previous stage prefetched: the pair, then
       its key and record, then the key's hash (first probe slot) and the record's
       timestamp, then the entry that slot names (and the second probe slot) and
       the timestamp's millis. */
    static inline void tg_prefetch_merge(PyObject *d, PyObject *lst, Py_ssize_t i, Py_ssize_t dist) {
        tg_dictkeys *dk = (tg_dictkeys *)((PyDictObject *)d)->ma_keys;
        size_t mask = ((size_t)1 << dk->dk_log2_size) - 1;
        PyObject *p, *key, *rec;
        Py_hash_t h;
        size_t slot;
        Py_ssize_t ix;
        if (i + 4 * dist < PyList_GET_SIZE(lst))
            __builtin_prefetch(PyList_GET_ITEM(lst, i + 4 * dist), 0, 3);
        if ((p = tg_pair_at(lst, i + 3 * dist)) != NULL) {
            __builtin_prefetch(PyTuple_GET_ITEM(p, 0), 0, 3);
            __builtin_prefetch(PyTuple_GET_ITEM(p, 1), 0, 3);
        }
        if ((p = tg_pair_at(lst, i + 2 * dist)) != NULL) {
            key = PyTuple_GET_ITEM(p, 0);
            rec = PyTuple_GET_ITEM(p, 1);
            if (PyUnicode_CheckExact(key)) {
                h = PyObject_Hash(key);  /* cached on the str; cannot fail */
                tg_slot_prefetch(dk, (size_t)h & mask);
            }
            if (PyTuple_CheckExact(rec) && PyTuple_GET_SIZE(rec) >= 2)
                __builtin_prefetch(PyTuple_GET_ITEM(rec, 1), 0, 3);
        }
        if ((p = tg_pair_at(lst, i + dist)) != NULL) {
            key = PyTuple_GET_ITEM(p, 0);
            rec = PyTuple_GET_ITEM(p, 1);
            if (PyTuple_CheckExact(rec) && PyTuple_GET_SIZE(rec) >= 2) {
                PyObject *ts = PyTuple_GET_ITEM(rec, 1);
                if (PyTuple_CheckExact(ts) && PyTuple_GET_SIZE(ts) >= 2)
                    __builtin_prefetch(PyTuple_GET_ITEM(ts, 0), 0, 3);
            }
            if (PyUnicode_CheckExact(key) && (h = ((PyASCIIObject *)key)->hash) != -1) {
                slot = (size_t)h & mask;
                ix = tg_slot_get(dk, slot);
                if (ix >= 0) {
                    __builtin_prefetch(dk->dk_indices + ((size_t)1 << dk->dk_log2_index_bytes)
                                       + (size_t)ix * (dk->dk_kind == 0 ? 3 * sizeof(void *) : 2 * sizeof(void *)),
                                       0, 3);
                    tg_slot_prefetch(dk, (slot * 5 + ((size_t)h >> 5) + 1) & mask);
                }
            }
        }
    }
    #else
    #define tg_prefetch_merge(d, lst, i, dist) ((void)0)
    #endif
    """
    void tg_prefetch_merge(dict d, list lst, Py_ssize_t i, Py_ssize_t dist) noexcept

__all__ = ["LWWMap"]

cdef object _LWWRecord = LWWRecord
# Pairs between prefetch stages (tg_prefetch_merge); 2-8 measured alike at 1M records.
cdef enum:
    PREFETCH_DIST = 4
cdef object _tuple_new = tuple.__new__


cdef inline object _ts_of(object record):
    if PyTuple_Check(record) and PyTuple_GET_SIZE(record) >= 2:
        return <object>PyTuple_GET_ITEM(record, 1)
    return record[1]


cdef inline bint _is_live(object record, object now) except -1:
    cdef object value = record[0]
    cdef object ttl
    if value is None:
        return False
    ttl = record[2]
    return ttl is None or not (record[1][0] + ttl < now)


cdef class LWWMap:
    """One replica of an LWW-Map (see :class:`topgun.core._lww_py.LWWMap`)."""

    def __init__(self, hlc=None, *, merkle=True, wall_clock=None):
        self._hlc = hlc
        self._chlc = hlc if isinstance(hlc, HLC) else None
        self._data = {}
        self._merkle = MerkleTree() if merkle else None
        if wall_clock is None:
            wall_clock = getattr(hlc, "wall_clock", None) or wall_millis
        self._wall = wall_clock

    @property
    def hlc(self):
        """The attached clock, or None."""
        return self._hlc

    @property
    def merkle(self):
        """The maintained Merkle tree, or None when created with ``merkle=False``."""
        return self._merkle

    @property
    def root_hash(self):
        """Merkle root over every record, tombstones and expired records included."""
        cdef MerkleTree tree
        if self._merkle is not None:
            return self._merkle.root_hash
        tree = MerkleTree()
        for k, r in self._data.items():
            self._track_into(tree, k, r)
        return tree.root_hash

    cdef int _track_into(self, MerkleTree tree, str key, object record) except -1:
        cdef uint32_t kh, ih
        c_item_hash(key, _ts_of(record), &kh, &ih)
        tree.c_update(key, kh, ih)
        return 0

    cdef int _track(self, str key, object record) except -1:
        if self._merkle is not None:
            self._track_into(self._merkle, key, record)
        return 0

    # -- local writes ------------------------------------------------------------------------------

    cdef object _stamp(self):
        if self._chlc is not None:
            return self._chlc.c_now()
        if self._hlc is None:
            raise ClockError("this LWWMap has no HLC, so it cannot stamp local writes")
        return self._hlc.now()

    def set(self, str key not None, value, ttl_ms=None):
        """Write ``value`` under ``key`` with a fresh timestamp; return the stored record."""
        record = _tuple_new(_LWWRecord, (value, self._stamp(), ttl_ms))
        self._data[key] = record
        self._track(key, record)
        return record

    def remove(self, str key not None):
        """Store a tombstone for ``key`` with a fresh timestamp; return it."""
        record = _tuple_new(_LWWRecord, (None, self._stamp(), None))
        self._data[key] = record
        self._track(key, record)
        return record

    # -- remote merges -----------------------------------------------------------------------------

    cdef bint _merge_data(self, str key, object record, object ts) except -1:
        """Clock update and LWW decision for one record; the Merkle tree is left to the caller."""
        if self._chlc is not None:
            self._chlc.c_update(ts)
        elif self._hlc is not None:
            self._hlc.update(ts)
        return self._store_if_newer(key, record, ts)

    cdef int _store_winner(self, str key, object record, object ts) except -1:
        """``_merge_data`` for a record the caller has already compared with the stored one (it
        wins, or nothing is stored): the clock sees it, then one dict store, no second compare."""
        if self._chlc is not None:
            self._chlc.c_update(ts)
        elif self._hlc is not None:
            self._hlc.update(ts)
        PyDict_SetItem(self._data, key, record)
        return 0

    cdef bint _store_if_newer(self, str key, object record, object ts) except -1:
        """§3.2 steps 2-3 for a record whose timestamp the clock has already seen."""
        cdef PyObject* local
        cdef Py_ssize_t size
        # One probe for the common case (a new key); the size tells an insert apart
        # from finding the very same record object already stored.
        size = PyDict_GET_SIZE(self._data)
        local = PyDict_SetDefault(self._data, key, record)
        if PyDict_GET_SIZE(self._data) == size:
            if ts_cmp(ts, _ts_of(<object>local)) <= 0:
                return False
            PyDict_SetItem(self._data, key, record)
        return True

    cdef bint c_merge(self, str key, object record) except -1:
        if not self._merge_data(key, record, _ts_of(record)):
            return False
        if self._merkle is not None:
            self._track_into(self._merkle, key, record)
        return True

    def merge(self, str key not None, record):
        """Merge a remote record; True when it replaced the local one."""
        return self.c_merge(key, record)

    def merge_many(self, pairs):
        """Merge ``(key, record)`` pairs in order; return the keys that changed, in order."""
        cdef list lst = pairs if type(pairs) is list else list(pairs)
        cdef Py_ssize_t i, n = len(lst)
        cdef list changed = []
        cdef object key, record, ts, pair
        cdef PyObject** bkeys = NULL
        cdef uint32_t* bkh = NULL
        cdef uint32_t* bih = NULL
        cdef Py_ssize_t nb = 0
        cdef dict grown
        cdef HLC chlc = self._chlc
        cdef object hlc = self._hlc
        cdef long long rm, rc, t = 0
        cdef bint have_t = False
        cdef object wall = None
        if n > PyDict_GET_SIZE(self._data) and n >= 1024:
            # A bulk load: start from a presized table (insertion order is kept).
            # CPython caps the presize (2**17 slots on 3.11), so a 1M-key load still
            # grows a few times; what matters more is that a presized table stores
            # each entry's hash, so a probe that meets another key compares hashes
            # in the entry instead of loading that key object (a second random miss
            # per collision: without this a 1M-record merge is ~1.6x slower).
            grown = TG_DICT_PRESIZED(PyDict_GET_SIZE(self._data) + n)
            PyDict_Update(grown, self._data)
            self._data = grown
        if self._merkle is not None and n > 0:
            bkeys = <PyObject**>malloc(n * sizeof(PyObject*))
            bkh = <uint32_t*>malloc(n * sizeof(uint32_t))
            bih = <uint32_t*>malloc(n * sizeof(uint32_t))
            if bkeys == NULL or bkh == NULL or bih == NULL:
                free(bkeys)
                free(bkh)
                free(bih)
                raise MemoryError()
        try:
            # Bounded by the live size: a Python callback (a pure clock, a custom
            # wall clock) could shrink the caller's list while we iterate.
            for i in range(n):
                if i >= PyList_GET_SIZE(lst):
                    break
                tg_prefetch_merge(self._data, lst, i, PREFETCH_DIST)
                pair = <object>PyList_GET_ITEM(lst, i)
                if PyTuple_Check(pair) and PyTuple_GET_SIZE(pair) == 2:
                    key = <object>PyTuple_GET_ITEM(pair, 0)
                    record = <object>PyTuple_GET_ITEM(pair, 1)
                else:
                    key, record = pair
                if type(key) is not str:
                    raise TypeError(f"keys must be str, not {type(key).__name__}")
                ts = _ts_of(record)
                # One wall-clock reading for the whole batch (see the pure twin): a
                # clock read per record costs more than the rest of the merge, as
                # the vDSO's ordered TSC read also stalls the overlapping dict misses.
                if chlc is not None:
                    if not have_t:
                        t = chlc._now_ms()
                        have_t = True
                    if ts_fields(ts, &rm, &rc):
                        chlc.c_advance(rm, rc, t)
                elif hlc is not None:
                    if wall is None:
                        wall = hlc.wall_clock()
                    hlc.update(ts, wall)
                if self._store_if_newer(<str>key, record, ts):
                    changed.append(key)
                    if bkeys != NULL:
                        c_item_hash(<str>key, ts, &bkh[nb], &bih[nb])
                        Py_INCREF(key)  # owned by the batch until it is applied
                        bkeys[nb] = <PyObject*>key
                        nb += 1
        finally:
            # The tree catches up with every record already stored, even when a
            # record further on raised (for example a strict clock's drift error).
            if bkeys != NULL:
                try:
                    if nb:
                        self._merkle.c_apply_batch(bkeys, bkh, bih, nb)
                finally:
                    for i in range(nb):
                        Py_DECREF(<object>bkeys[i])
                    free(bkeys)
                    free(bkh)
                    free(bih)
        return changed

    def adopt(self, str key not None, record):
        """Store ``record`` under ``key`` even when it is not newer; True when the record changed."""
        cdef object ts = _ts_of(record)
        cdef object local
        if self._chlc is not None:
            self._chlc.c_update(ts)
        elif self._hlc is not None:
            self._hlc.update(ts)
        local = self._data.get(key)
        if local is not None and (local is record or local == record):
            return False
        self._data[key] = record
        self._track(key, record)
        return True

    # -- reads -------------------------------------------------------------------------------------

    def get(self, key):
        """The live value of ``key``; None for absent keys, tombstones and expired records."""
        r = self._data.get(key)
        if r is None or not _is_live(r, self._wall()):
            return None
        return r[0]

    def get_record(self, key):
        """The stored record of ``key`` (tombstones and expired records included), or None."""
        return self._data.get(key)

    def __contains__(self, key):
        r = self._data.get(key) if type(key) is str else None
        return r is not None and _is_live(r, self._wall())

    def __len__(self):
        now = self._wall()
        cdef Py_ssize_t n = 0
        for r in self._data.values():
            if _is_live(r, now):
                n += 1
        return n

    def __iter__(self):
        return iter(self.keys())

    def keys(self):
        """Keys of live records."""
        now = self._wall()
        return [k for k, r in self._data.items() if _is_live(r, now)]

    def values(self):
        """Values of live records."""
        now = self._wall()
        return [r[0] for r in self._data.values() if _is_live(r, now)]

    def items(self):
        """``(key, value)`` of live records."""
        now = self._wall()
        return [(k, r[0]) for k, r in self._data.items() if _is_live(r, now)]

    def records(self):
        """Every ``(key, record)``, tombstones and expired records included."""
        return list(self._data.items())

    @property
    def record_count(self):
        """Number of stored records, tombstones and expired records included."""
        return len(self._data)

    # -- maintenance -------------------------------------------------------------------------------

    def prune(self, older_than):
        """Delete tombstones whose timestamp is before ``older_than``; return their keys."""
        cdef list doomed = []
        cdef uint32_t kh, ih
        for k, r in self._data.items():
            if r[0] is None and ts_cmp(_ts_of(r), older_than) < 0:
                doomed.append(k)
        for k in doomed:
            del self._data[k]
            if self._merkle is not None:
                self._merkle.remove(k)
        return doomed

    def clear(self):
        """Drop every record (and the Merkle contents); the clock is left alone."""
        self._data.clear()
        if self._merkle is not None:
            self._merkle.clear()

    def __repr__(self):
        return f"LWWMap(records={len(self._data)}, root={self.root_hash})"
