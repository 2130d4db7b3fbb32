"""Per-map secondary indexes of records, for query snapshots.

They answer "which keys may match" for a snapshot:

* :class:`HashIndex` — field value → keys, for ``eq``/``in``/``where``;
* :class:`SortedIndex` — ordered (value, key) pairs of numbers and strings, for
  ``gt``/``gte``/``lt``/``lte``/``between``.

Both keep a reverse map key → indexed value, so an update never needs the old
record, and an index is always a *superset* filter: callers still evaluate the
full predicate on each candidate.

Matching writes against subscriptions is the job of :mod:`topgun.server.query.match`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from sortedcontainers import SortedList

from topgun.core.predicates import get_field

__all__ = ["OTHER", "HashIndex", "SortedIndex", "eq_key", "range_key"]

#: ``eq_key`` of values that cannot be hashed (maps, arrays, ext): never indexed by value.
OTHER: Any = ("__other__",)


def eq_key(v: Any) -> Any:
    """A hashable key equal for exactly the values the protocol calls equal (``None``: nil/missing,
    :data:`OTHER`: not indexable). Booleans are kept apart from the numbers 0 and 1."""
    if v is None:
        return None
    if isinstance(v, bool):
        return ("b", v)
    if isinstance(v, (int, float)):
        if v != v:
            return OTHER
        return v  # 1 == 1.0 and hash(1) == hash(1.0): int/float equality for free
    if isinstance(v, str):
        return v
    if isinstance(v, (bytes, bytearray)):
        return ("y", bytes(v))
    return OTHER


def range_key(v: Any) -> tuple[int, Any] | None:
    """Orderable key of a number (class 0) or string (class 1); ``None`` for anything else."""
    if isinstance(v, bool) or v is None:
        return None
    if isinstance(v, (int, float)):
        if v != v:
            return None
        return (0, v)
    if isinstance(v, str):
        return (1, v)
    return None


class HashIndex:
    """``field`` value → set of record keys."""

    __slots__ = ("buckets", "by_key", "field")

    def __init__(self, field: str) -> None:
        self.field = field
        self.buckets: dict[Any, set[str]] = {}
        self.by_key: dict[str, Any] = {}

    def update(self, key: str, value: Any) -> None:
        """Index the record ``key`` with live ``value`` (``None``: the record is gone)."""
        new = eq_key(get_field(value, self.field)) if value is not None else None
        if new is OTHER:
            new = None
        by_key = self.by_key
        if key in by_key:
            old = by_key[key]
            if new is not None and old == new:
                return
            bucket = self.buckets[old]
            bucket.discard(key)
            if not bucket:
                del self.buckets[old]
            del by_key[key]
        if new is not None:
            by_key[key] = new
            nb = self.buckets.get(new)
            if nb is None:
                self.buckets[new] = {key}
            else:
                nb.add(key)

    def lookup(self, value: Any) -> set[str]:
        """Keys whose field may equal ``value`` (empty for nil or non-indexable values)."""
        k = eq_key(value)
        if k is None or k is OTHER:
            return set()
        return self.buckets.get(k, set())

    def __len__(self) -> int:
        return len(self.by_key)


class SortedIndex:
    """Ordered ``((class, value), key)`` pairs of the numeric and string values of ``field``,
    plus the keys whose field holds any other non-nil value (``others``: booleans, arrays,
    maps, binary, ext, NaN). Keys absent from both have a missing or nil field."""

    __slots__ = ("by_key", "field", "items", "others")

    def __init__(self, field: str) -> None:
        self.field = field
        self.items: SortedList = SortedList()
        self.by_key: dict[str, tuple[int, Any]] = {}
        self.others: set[str] = set()

    def update(self, key: str, value: Any) -> None:
        """Index the record ``key`` with live ``value`` (``None``: the record is gone)."""
        fv = get_field(value, self.field) if value is not None else None
        new = range_key(fv) if fv is not None else None
        if new is None and fv is not None:
            self.others.add(key)
        else:
            self.others.discard(key)
        old = self.by_key.get(key)
        if old is not None:
            if new is not None and old == new and type(old[1]) is type(new[1]):
                return
            self.items.remove((old, key))
            del self.by_key[key]
        if new is not None:
            self.by_key[key] = new
            self.items.add((new, key))

    def range(self, low: Any = None, high: Any = None) -> Iterator[str]:
        """Keys with ``low <= value <= high`` (either bound optional, both of one type class).

        Inclusive on both ends: a superset for strict comparisons, which callers re-check.
        """
        lo_k = range_key(low) if low is not None else None
        hi_k = range_key(high) if high is not None else None
        if lo_k is None and hi_k is None:
            return
        if lo_k is not None and hi_k is not None and lo_k[0] != hi_k[0]:
            return
        cls = lo_k[0] if lo_k is not None else hi_k[0]  # type: ignore[index]
        start = (lo_k,) if lo_k is not None else (((cls,)),)
        for rk, key in self.items.irange(start, None):
            if rk[0] != cls or (hi_k is not None and rk[1] > hi_k[1]):
                return
            yield key

    def __len__(self) -> int:
        return len(self.by_key)

