"""Matching one write against the live queries of one map: the readable specification.

The compiled twin ``topgun._speedups._match`` must agree with this module exactly (same
results, same order); :mod:`topgun.server.query.match` picks one of the two.

A :class:`SubscriptionIndex` holds *payloads* (the engine's windows), each registered under
one plan:

* ``eq`` — the payload is a candidate when the record's field has one of a few
  :func:`~topgun.server.query.indexes.eq_key` keys (``where`` entries, ``eq``/``in`` leaves);
  ``in`` plans are also candidates when the field holds a value without a key (an array
  may contain the operand);
* ``range`` — a closed interval of one type class (numbers or strings) on one field;
* ``scan`` — every write is a candidate.

Each payload comes with its compiled filter and an *exact* flag: the engine sets it when
the whole filter is the plan's own condition (a single ``eq`` on a string or number, or only
inclusive range bounds on the plan's field). An exact payload found by the lookup of a field
value of exactly type ``str``/``int``/``float`` matches without calling its filter, which is
what makes matching cheap: in the common cases no predicate runs at all.

:meth:`SubscriptionIndex.match` returns ``{payload: new_matches}`` for every payload the
change may affect: those found by the lookup of the new value (with whether the new value
satisfies the filter) followed by those found only by the lookup of the old value (``False``:
the new value cannot match them, since every lookup is a superset of the matches).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable
from typing import Any

from topgun.core.predicates import get_field
from topgun.server.query.indexes import OTHER, eq_key, range_key

__all__ = ["COVER_BUDGET", "SubscriptionIndex"]

Filter = Callable[[Any], bool]

#: A segment table may hold at most ``COVER_BUDGET * max(intervals, 1024)`` (payload, filter)
#: references; beyond that (many wide, overlapping intervals) a centered interval tree
#: answers the stabbing queries instead, in linear memory. A budget of 0 always uses the tree.
COVER_BUDGET = 64

_MISSING: Any = object()
_LOW_OPEN: Any = (-1,)
_HIGH_OPEN: Any = (1,)


def _field(value: Any, f: str) -> Any:
    """:func:`topgun.core.predicates.get_field`, with the top-level lookup of a plain dict inline."""
    if type(value) is dict:
        fv = value.get(f, _MISSING)
        if fv is not _MISSING:
            return fv
        if "." not in f:
            return None
    return get_field(value, f)


class _Node:
    """A node of the centered interval tree (the fallback when a segment table is too large)."""

    __slots__ = ("by_high", "by_low", "center", "left", "right")

    def __init__(self, center: Any) -> None:
        self.center = center
        #: (low, high, payload, filter) of the intervals containing ``center``
        self.by_low: list[tuple[Any, Any, Any, Any]] = []
        self.by_high: list[tuple[Any, Any, Any, Any]] = []
        self.left: _Node | None = None
        self.right: _Node | None = None


def _build_tree(items: list[tuple[Any, Any, Any, Any]]) -> _Node | None:
    if not items:
        return None
    points = sorted([it[0] for it in items] + [it[1] for it in items])
    center = points[len(points) // 2]
    node = _Node(center)
    left: list[tuple[Any, Any, Any, Any]] = []
    right: list[tuple[Any, Any, Any, Any]] = []
    mid: list[tuple[Any, Any, Any, Any]] = []
    for it in items:
        if it[1] < center:
            left.append(it)
        elif it[0] > center:
            right.append(it)
        else:
            mid.append(it)
    node.by_low = sorted(mid, key=lambda t: t[0])
    node.by_high = sorted(mid, key=lambda t: t[1], reverse=True)
    node.left = _build_tree(left)
    node.right = _build_tree(right)
    return node


def _tree_stab(node: _Node | None, x: Any) -> list[tuple[Any, Any]]:
    v = (0, x)
    out: list[tuple[Any, Any]] = []
    while node is not None:
        if v < node.center:
            for lo, _, p, f in node.by_low:
                if lo > v:
                    break
                out.append((p, f))
            node = node.left
        elif node.center < v:
            for _, hi, p, f in node.by_high:
                if hi < v:
                    break
                out.append((p, f))
            node = node.right
        else:
            out.extend((p, f) for _, _, p, f in node.by_low)
            break
    return out


class _Table:
    """Stabbing structure of one type class: sorted distinct interval ends ``points`` and, for
    each of the ``2 * len(points) + 1`` elementary regions (below the first point, each point,
    between two points, above the last), the (payload, filter) pairs covering it. ``covers``
    is ``None`` when the table would exceed the budget: ``tree`` answers then."""

    __slots__ = ("covers", "points", "tree")

    def __init__(self, entries: list[tuple[Any, Any, Any, Any]], budget: int) -> None:
        ends = {e[0] for e in entries if e[0] is not None} | {e[1] for e in entries if e[1] is not None}
        pts = sorted(ends)
        self.points: list[Any] = pts
        self.tree: _Node | None = None
        m = len(pts)
        at = {p: i for i, p in enumerate(pts)}
        spans: list[tuple[int, int, Any, Any]] = []
        total = 0
        for lo, hi, p, f in entries:
            r0 = 0 if lo is None else 2 * at[lo] + 1
            r1 = 2 * m if hi is None else 2 * at[hi] + 1
            if r0 > r1:
                continue  # empty interval: the filter can never hold
            total += r1 - r0 + 1
            spans.append((r0, r1, p, f))
        if total > budget * max(len(entries), 1024):
            self.covers: list[tuple[tuple[Any, Any], ...]] | None = None
            self.tree = _build_tree([
                ((-1,) if lo is None else (0, lo), (1,) if hi is None else (0, hi), p, f)
                for lo, hi, p, f in entries
                if lo is None or hi is None or not lo > hi
            ])
            return
        regions: list[list[tuple[Any, Any]]] = [[] for _ in range(2 * m + 1)]
        for r0, r1, p, f in spans:
            pair = (p, f)
            for r in range(r0, r1 + 1):
                regions[r].append(pair)
        self.covers = [tuple(r) for r in regions]

    def stab(self, x: Any) -> Any:
        """(payload, filter) pairs of the intervals containing ``x`` (of this type class)."""
        covers = self.covers
        if covers is None:
            return _tree_stab(self.tree, x)
        pts = self.points
        i = bisect_left(pts, x)
        if i < len(pts) and pts[i] == x:
            return covers[2 * i + 1]
        return covers[2 * i]


class _Intervals:
    """The range plans on one field: payload -> (class, low, high, filter); tables rebuilt lazily
    (subscriptions change far less often than records)."""

    __slots__ = ("budget", "dirty", "entries", "tables")

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.entries: dict[Any, tuple[int, Any, Any, Any]] = {}
        self.tables: dict[int, _Table] = {}
        self.dirty = False

    def stab(self, fv: Any) -> Any:
        rk = range_key(fv)
        if rk is None:
            return ()
        if self.dirty:
            per: dict[int, list[tuple[Any, Any, Any, Any]]] = {}
            for p, (cls, lo, hi, f) in self.entries.items():
                per.setdefault(cls, []).append((lo, hi, p, f))
            self.tables = {cls: _Table(items, self.budget) for cls, items in per.items()}
            self.dirty = False
        table = self.tables.get(rk[0])
        if table is None:
            return ()
        return table.stab(rk[1])


class SubscriptionIndex:
    """The live queries of one map, indexed for matching writes (see the module docstring).

    ``cover_budget``: references per range plan a segment table may use before the centered
    tree takes over (see :data:`COVER_BUDGET`).
    """

    __slots__ = ("_budget", "_eq", "_filters", "_in_other", "_plans", "_ranges", "_scan")

    def __init__(self, cover_budget: int = COVER_BUDGET) -> None:
        self._budget = cover_budget
        #: field -> eq_key -> {payload: filter, or None when exact}
        self._eq: dict[str, dict[Any, dict[Any, Any]]] = {}
        #: field -> {payload: filter} of ``in`` plans (candidates for keyless field values)
        self._in_other: dict[str, dict[Any, Any]] = {}
        self._ranges: dict[str, _Intervals] = {}
        self._scan: dict[Any, Any] = {}
        self._filters: dict[Any, Filter] = {}
        self._plans: dict[Any, tuple[str, Any, Any]] = {}

    def __len__(self) -> int:
        return len(self._plans)

    def add_eq(
        self, payload: Any, field: str, keys: list[Any], filt: Filter, exact: bool, in_op: bool = False
    ) -> None:
        """Register ``payload`` as a candidate for records whose ``field`` has an eq_key in ``keys``."""
        self.remove(payload)
        buckets = self._eq.setdefault(field, {})
        ks = list(dict.fromkeys(keys))
        for k in ks:
            buckets.setdefault(k, {})[payload] = None if exact else filt
        if in_op:
            self._in_other.setdefault(field, {})[payload] = filt
        self._filters[payload] = filt
        self._plans[payload] = ("in" if in_op else "eq", field, ks)

    def add_range(
        self, payload: Any, field: str, cls: int, low: Any, high: Any, filt: Filter, exact: bool
    ) -> None:
        """Register ``payload`` for ``low <= field <= high`` in type class ``cls`` (``None``: open)."""
        self.remove(payload)
        iv = self._ranges.get(field)
        if iv is None:
            iv = self._ranges[field] = _Intervals(self._budget)
        iv.entries[payload] = (cls, low, high, None if exact else filt)
        iv.dirty = True
        self._filters[payload] = filt
        self._plans[payload] = ("range", field, None)

    def add_scan(self, payload: Any, filt: Filter) -> None:
        """Register ``payload`` as a candidate for every write."""
        self.remove(payload)
        self._scan[payload] = filt
        self._filters[payload] = filt
        self._plans[payload] = ("scan", None, None)

    def remove(self, payload: Any) -> bool:
        """Unregister ``payload``; True when it was registered."""
        plan = self._plans.pop(payload, None)
        if plan is None:
            return False
        del self._filters[payload]
        kind, field, keys = plan
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

    def match(self, old: Any, new: Any) -> dict[Any, bool]:
        """``{payload: new value matches}`` for every payload a change ``old`` -> ``new`` may
        affect (``None`` = absent); payloads from the new value's lookup first."""
        out: dict[Any, bool] = {}
        if new is not None:
            filters = self._filters
            for f, buckets in self._eq.items():
                fv = _field(new, f)
                t = type(fv)
                exact = t is str or t is int or (t is float and fv == fv)
                k = fv if exact else eq_key(fv)
                if k is None:
                    continue
                if k is OTHER:
                    other = self._in_other.get(f)
                    if other:
                        for p, filt in other.items():
                            out[p] = filt(new)
                    continue
                b = buckets.get(k)
                if b:
                    for p, filt in b.items():
                        if filt is None:
                            out[p] = True if exact else filters[p](new)
                        else:
                            out[p] = filt(new)
            for f, iv in self._ranges.items():
                fv = _field(new, f)
                t = type(fv)
                exact = t is str or t is int or t is float
                for p, filt in iv.stab(fv):
                    if filt is None:
                        out[p] = True if exact else filters[p](new)
                    else:
                        out[p] = filt(new)
            for p, filt in self._scan.items():
                out[p] = filt(new)
        if old is not None:
            for f, buckets in self._eq.items():
                k = eq_key(_field(old, f))
                if k is None:
                    continue
                if k is OTHER:
                    other = self._in_other.get(f)
                    if other:
                        for p in other:
                            if p not in out:
                                out[p] = False
                    continue
                b = buckets.get(k)
                if b:
                    for p in b:
                        if p not in out:
                            out[p] = False
            for f, iv in self._ranges.items():
                for p, _ in iv.stab(_field(old, f)):
                    if p not in out:
                        out[p] = False
            for p in self._scan:
                if p not in out:
                    out[p] = False
        return out
