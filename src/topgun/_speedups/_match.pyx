# cython: language_level=3
"""Compiled twin of :mod:`topgun.server.query._match_py` (same names, same results, same order).

The lookups of one write run in C: dictionary walks with ``PyDict_Next``, the eq-bucket and
field lookups with borrowed references, the segment-table bisection with rich comparisons.
Only the filters of non-exact subscriptions are Python calls.
"""

from cpython.dict cimport PyDict_GetItem, PyDict_SetItem, PyDict_Next, PyDict_Contains
from cpython.object cimport PyObject, PyObject_RichCompareBool, Py_LT, Py_EQ
from cpython.list cimport PyList_GET_ITEM, PyList_GET_SIZE
from cpython.tuple cimport PyTuple_GET_ITEM, PyTuple_GET_SIZE

from topgun.core.predicates import get_field

__all__ = ["COVER_BUDGET", "SubscriptionIndex"]

COVER_BUDGET = 64

cdef object _MISSING = object()
cdef object _EMPTY = ()
# ``topgun.server.query.indexes`` cannot be imported here: that package imports the dispatcher
# that imports this module. Keys are only compared with keys made by the same functions, so a
# private ``OTHER`` works; ``eq_key``/``range_key`` mirror the ones in indexes exactly.
cdef object _OTHER = ("__other__",)


cdef object eq_key(object v):
    if v is None:
        return None
    if isinstance(v, bool):
        return ("b", v)
    if isinstance(v, (int, float)):
        if v != v:
            return _OTHER
        return v
    if isinstance(v, str):
        return v
    if isinstance(v, (bytes, bytearray)):
        return ("y", bytes(v))
    return _OTHER


cdef object range_key(object v):
    if isinstance(v, bool) or v is None:
        return None
    if isinstance(v, (int, float)):
        if v != v:
            return None
        return (0, v)
    if isinstance(v, str):
        return (1, v)
    return None


cdef inline object _field(object value, str f):
    cdef PyObject* fv
    if type(value) is dict:
        fv = PyDict_GetItem(value, f)
        if fv != NULL:
            return <object>fv
        if "." not in f:
            return None
    return get_field(value, f)


cdef inline object _eq_key(object v):
    """``eq_key`` of :mod:`topgun.server.query.indexes`, with the exact scalar types inline."""
    cdef type t = type(v)
    if t is str or t is int:
        return v
    if t is float:
        return v if v == v else _OTHER
    if v is None:
        return None
    return eq_key(v)


cdef inline bint _exact(object fv):
    cdef type t = type(fv)
    if t is str or t is int:
        return True
    if t is float:
        return fv == fv
    return False


cdef class _Node:
    cdef public object center
    cdef public list by_low
    cdef public list by_high
    cdef public _Node left
    cdef public _Node right

    def __init__(self, center):
        self.center = center
        self.by_low = []
        self.by_high = []
        self.left = None
        self.right = None


def _low(t):
    return t[0]


def _high(t):
    return t[1]


cdef _Node _build_tree(list items):
    if not items:
        return None
    points = sorted([it[0] for it in items] + [it[1] for it in items])
    center = points[len(points) // 2]
    cdef _Node node = _Node(center)
    cdef list left = [], right = [], mid = []
    for it in items:
        if it[1] < center:
            left.append(it)
        elif it[0] > center:
            right.append(it)
        else:
            mid.append(it)
    node.by_low = sorted(mid, key=_low)
    node.by_high = sorted(mid, key=_high, reverse=True)
    node.left = _build_tree(left)
    node.right = _build_tree(right)
    return node


cdef list _tree_stab(_Node node, object x):
    cdef tuple v = (0, x)
    cdef list out = []
    cdef tuple it
    while node is not None:
        if v < node.center:
            for it in node.by_low:
                if it[0] > v:
                    break
                out.append((it[2], it[3]))
            node = node.left
        elif node.center < v:
            for it in node.by_high:
                if it[1] < v:
                    break
                out.append((it[2], it[3]))
            node = node.right
        else:
            for it in node.by_low:
                out.append((it[2], it[3]))
            break
    return out


cdef class _Table:
    cdef public list points
    cdef public list covers
    cdef public _Node tree

    def __init__(self, list entries, Py_ssize_t budget):
        ends = {e[0] for e in entries if e[0] is not None} | {e[1] for e in entries if e[1] is not None}
        cdef list pts = sorted(ends)
        self.points = pts
        self.tree = None
        cdef Py_ssize_t m = len(pts), i, r0, r1, r, total = 0
        cdef dict at = {p: i for i, p in enumerate(pts)}
        cdef list spans = []
        for lo, hi, p, f in entries:
            r0 = 0 if lo is None else 2 * <Py_ssize_t>at[lo] + 1
            r1 = 2 * m if hi is None else 2 * <Py_ssize_t>at[hi] + 1
            if r0 > r1:
                continue
            total += r1 - r0 + 1
            spans.append((r0, r1, p, f))
        if total > budget * max(len(entries), 1024):
            self.covers = None
            self.tree = _build_tree([
                ((-1,) if lo is None else (0, lo), (1,) if hi is None else (0, hi), p, f)
                for lo, hi, p, f in entries
                if lo is None or hi is None or not lo > hi
            ])
            return
        cdef list regions = [[] for _ in range(2 * m + 1)]
        for r0, r1, p, f in spans:
            pair = (p, f)
            for r in range(r0, r1 + 1):
                (<list>regions[r]).append(pair)
        self.covers = [tuple(reg) for reg in regions]

    cdef object stab(self, object x):
        if self.covers is None:
            return _tree_stab(self.tree, x)
        cdef list pts = self.points
        cdef Py_ssize_t lo = 0, hi = PyList_GET_SIZE(pts), mid
        while lo < hi:
            mid = (lo + hi) >> 1
            if PyObject_RichCompareBool(<object>PyList_GET_ITEM(pts, mid), x, Py_LT):
                lo = mid + 1
            else:
                hi = mid
        if lo < PyList_GET_SIZE(pts) and PyObject_RichCompareBool(<object>PyList_GET_ITEM(pts, lo), x, Py_EQ):
            return <object>PyList_GET_ITEM(self.covers, 2 * lo + 1)
        return <object>PyList_GET_ITEM(self.covers, 2 * lo)


cdef class _Intervals:
    cdef public dict entries
    cdef _Table num
    cdef _Table text
    cdef public bint dirty
    cdef Py_ssize_t budget

    def __init__(self, Py_ssize_t budget):
        self.budget = budget
        self.entries = {}
        self.num = None
        self.text = None
        self.dirty = False

    cdef object stab(self, object fv):
        cdef type t = type(fv)
        cdef _Table table
        if self.dirty:
            self.rebuild()
        if t is int:
            table = self.num
        elif t is str:
            table = self.text
        elif t is float:
            if fv != fv:
                return _EMPTY
            table = self.num
        else:
            rk = range_key(fv) if fv is not None else None
            if rk is None:
                return _EMPTY
            table = self.num if rk[0] == 0 else self.text
            fv = rk[1]
        if table is None:
            return _EMPTY
        return table.stab(fv)

    cdef int rebuild(self) except -1:
        cdef dict per = {}
        for p, (cls, lo, hi, f) in self.entries.items():
            per.setdefault(cls, []).append((lo, hi, p, f))
        self.num = _Table(per[0], self.budget) if 0 in per else None
        self.text = _Table(per[1], self.budget) if 1 in per else None
        self.dirty = False
        return 0


cdef class SubscriptionIndex:
    """The live queries of one map, indexed for matching writes (see the pure module)."""

    cdef dict _eq
    cdef dict _in_other
    cdef dict _ranges
    cdef dict _scan
    cdef dict _filters
    cdef dict _plans
    cdef Py_ssize_t _budget

    def __init__(self, Py_ssize_t cover_budget=COVER_BUDGET):
        self._budget = cover_budget
        self._eq = {}
        self._in_other = {}
        self._ranges = {}
        self._scan = {}
        self._filters = {}
        self._plans = {}

    def __len__(self):
        return len(self._plans)

    def add_eq(self, payload, str field, list keys, filt, bint exact, bint in_op=False):
        self.remove(payload)
        buckets = self._eq.setdefault(field, {})
        ks = list(dict.fromkeys(keys))
        for k in ks:
            buckets.setdefault(k, {})[payload] = None if exact else filt
        if in_op:
            self._in_other.setdefault(field, {})[payload] = filt
        self._filters[payload] = filt
        self._plans[payload] = ("in" if in_op else "eq", field, ks)

    def add_range(self, payload, str field, int cls, low, high, filt, bint exact):
        self.remove(payload)
        cdef _Intervals iv = self._ranges.get(field)
        if iv is None:
            iv = _Intervals(self._budget)
            self._ranges[field] = iv
        iv.entries[payload] = (cls, low, high, None if exact else filt)
        iv.dirty = True
        self._filters[payload] = filt
        self._plans[payload] = ("range", field, None)

    def add_scan(self, payload, filt):
        self.remove(payload)
        self._scan[payload] = filt
        self._filters[payload] = filt
        self._plans[payload] = ("scan", None, None)

    def remove(self, payload):
        plan = self._plans.pop(payload, None)
        if plan is None:
            return False
        del self._filters[payload]
        kind, field, keys = plan
        cdef _Intervals iv
        if kind == "eq" or kind == "in":
            buckets = self._eq[field]
            for k in keys:
                b = buckets[k]
                del b[payload]
                if not b:
                    del buckets[k]
            if not buckets:
                del self._eq[field]
            if kind == "in":
                other = self._in_other[field]
                del other[payload]
                if not other:
                    del self._in_other[field]
        elif kind == "range":
            iv = self._ranges[field]
            del iv.entries[payload]
            iv.dirty = True
            if not iv.entries:
                del self._ranges[field]
        else:
            del self._scan[payload]
        return True

    def match(self, old, new):
        cdef dict out = {}
        cdef dict filters = self._filters
        cdef Py_ssize_t i, j, n
        cdef PyObject* fk
        cdef PyObject* fval
        cdef PyObject* pk
        cdef PyObject* pval
        cdef PyObject* bp
        cdef bint exact
        cdef object fv, k, cover, pair, p, filt
        if new is not None:
            i = 0
            while PyDict_Next(self._eq, &i, &fk, &fval):
                fv = _field(new, <str>fk)
                exact = _exact(fv)
                k = fv if exact else _eq_key(fv)
                if k is None:
                    continue
                if k is _OTHER:
                    bp = PyDict_GetItem(self._in_other, <object>fk)
                    if bp != NULL:
                        j = 0
                        while PyDict_Next(<dict>bp, &j, &pk, &pval):
                            PyDict_SetItem(out, <object>pk, (<object>pval)(new))
                    continue
                bp = PyDict_GetItem(<dict>fval, k)
                if bp != NULL:
                    j = 0
                    while PyDict_Next(<dict>bp, &j, &pk, &pval):
                        if <object>pval is None:
                            if exact:
                                PyDict_SetItem(out, <object>pk, True)
                            else:
                                PyDict_SetItem(out, <object>pk, (<object>PyDict_GetItem(filters, <object>pk))(new))
                        else:
                            PyDict_SetItem(out, <object>pk, (<object>pval)(new))
            i = 0
            while PyDict_Next(self._ranges, &i, &fk, &fval):
                fv = _field(new, <str>fk)
                exact = _exact(fv)
                cover = (<_Intervals>fval).stab(fv)
                for pair in cover:
                    p = (<tuple>pair)[0]
                    filt = (<tuple>pair)[1]
                    if filt is None:
                        if exact:
                            PyDict_SetItem(out, p, True)
                        else:
                            PyDict_SetItem(out, p, (<object>PyDict_GetItem(filters, p))(new))
                    else:
                        PyDict_SetItem(out, p, filt(new))
            j = 0
            while PyDict_Next(self._scan, &j, &pk, &pval):
                PyDict_SetItem(out, <object>pk, (<object>pval)(new))
        if old is not None:
            i = 0
            while PyDict_Next(self._eq, &i, &fk, &fval):
                k = _eq_key(_field(old, <str>fk))
                if k is None:
                    continue
                if k is _OTHER:
                    bp = PyDict_GetItem(self._in_other, <object>fk)
                    if bp != NULL:
                        j = 0
                        while PyDict_Next(<dict>bp, &j, &pk, &pval):
                            if not PyDict_Contains(out, <object>pk):
                                PyDict_SetItem(out, <object>pk, False)
                    continue
                bp = PyDict_GetItem(<dict>fval, k)
                if bp != NULL:
                    j = 0
                    while PyDict_Next(<dict>bp, &j, &pk, &pval):
                        if not PyDict_Contains(out, <object>pk):
                            PyDict_SetItem(out, <object>pk, False)
            i = 0
            while PyDict_Next(self._ranges, &i, &fk, &fval):
                cover = (<_Intervals>fval).stab(_field(old, <str>fk))
                for pair in cover:
                    p = (<tuple>pair)[0]
                    if not PyDict_Contains(out, p):
                        PyDict_SetItem(out, p, False)
            j = 0
            while PyDict_Next(self._scan, &j, &pk, &pval):
                if not PyDict_Contains(out, <object>pk):
                    PyDict_SetItem(out, <object>pk, False)
        return out
