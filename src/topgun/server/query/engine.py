"""The live-query engine: snapshots, windows and deltas (PROTOCOL §4.7, §5.11). No I/O.

::

    engine = QueryEngine(source=lambda name: grid.lww(name))
    snap = engine.subscribe(ctx, "q1", "todos", {"where": {"done": False}, "limit": 20})
    ...                                        # QUERY_RESP from snap
    for conn, update in engine.on_change("todos", key, old_value, new_value, origin=writer_id):
        conn.send(update)                      # QUERY_UPDATE

``source(map_name)`` returns the live view of a map (anything with ``get(key)`` and
``items()`` over live records, e.g. :class:`topgun.core.lww.LWWMap` or a dict) or ``None``.

Matching a write does not scan every subscription: subscriptions are indexed per map
by an equality field (``where`` entries, ``eq``/``in`` conjuncts), by range intervals
(``gt``/``gte``/``lt``/``lte``/``between`` conjuncts), and only the rest sit in a
per-map scan set. Snapshots use per-map record indexes (hash and sorted), declared
up front or built on demand the first time a query can use one.
"""

from __future__ import annotations

import heapq
import json
import logging
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

from topgun.core.predicates import (
    InvalidPredicateError,
    compile_filter,
    get_field,
    make_sort_key,
    normalize_sort,
    project,
)
from topgun.protocol.messages import ChangeType, CursorStatus, QueryUpdate
from topgun.server.query.cursor import decode_cursor, encode_cursor, fingerprint
from topgun.server.query.indexes import OTHER, HashIndex, SortedIndex, eq_key, range_key
from topgun.server.query.match import SubscriptionIndex

__all__ = ["DEFAULT_MAX_ROWS", "QueryEngine", "QuerySpec", "Snapshot", "Subscription"]

log = logging.getLogger("topgun.query")

#: Largest page of one QUERY_RESP and largest live window (Appendix B).
DEFAULT_MAX_ROWS = 10_000

_RANGE_OPS = frozenset({"gt", "gte", "lt", "lte", "between"})
_INCLUSIVE_OPS = frozenset({"gte", "lte", "between"})
_AGG_FUNCS = frozenset({"count", "sum", "min", "max", "avg"})


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class QuerySpec(NamedTuple):
    """A validated, normalised ``Query``."""

    where: dict[str, Any] | None
    predicate: dict[str, Any] | None
    sort: list[tuple[str, str]]
    limit: int | None
    cursor: str | None
    group_by: list[str] | None
    aggregations: list[tuple[str, str | None]]
    fields: list[str] | None

    @classmethod
    def parse(cls, query: Any, fields: Sequence[str] | None = None) -> QuerySpec:
        """From a wire dict (``groupBy`` spelling) or a :class:`topgun.protocol.messages.Query`."""
        if query is None:
            query = {}
        if isinstance(query, Mapping):
            get = query.get
            where, predicate = get("where"), get("predicate")
            sort, limit, cursor = get("sort"), get("limit"), get("cursor")
            group_by, aggs, qfields = get("groupBy", get("group_by")), get("aggregations"), get("fields")
        else:
            where, predicate = query.where, query.predicate
            sort, limit, cursor = query.sort, query.limit, query.cursor
            group_by, aggs, qfields = query.group_by, query.aggregations, query.fields
        if where is not None and not isinstance(where, Mapping):
            raise InvalidPredicateError("where must be a map")
        if predicate is not None and not isinstance(predicate, Mapping):
            raise InvalidPredicateError("predicate must be a map")
        if limit is not None:
            if isinstance(limit, float) and limit.is_integer():
                limit = int(limit)
            if not isinstance(limit, int) or isinstance(limit, bool) or limit <= 0:
                raise InvalidPredicateError("limit must be a positive integer")
        if cursor is not None and not isinstance(cursor, str):
            raise InvalidPredicateError("cursor must be a string")
        agg_list: list[tuple[str, str | None]] = []
        for a in aggs or []:
            func = a.get("func") if isinstance(a, Mapping) else getattr(a, "func", None)
            fld = a.get("field") if isinstance(a, Mapping) else getattr(a, "field", None)
            func = getattr(func, "value", func)
            if func not in _AGG_FUNCS or (fld is not None and not isinstance(fld, str)):
                raise InvalidPredicateError(f"invalid aggregation {a!r}")
            agg_list.append((str(func), fld))
        if group_by is not None and (
            not isinstance(group_by, (list, tuple)) or not all(isinstance(g, str) for g in group_by)
        ):
            raise InvalidPredicateError("groupBy must be an array of field names")
        proj = fields if fields is not None else qfields
        if proj is not None and (
            not isinstance(proj, (list, tuple)) or not all(isinstance(f, str) for f in proj)
        ):
            raise InvalidPredicateError("fields must be an array of field names")
        return cls(
            dict(where) if where else None,
            dict(predicate) if predicate is not None else None,
            normalize_sort(sort),
            limit,
            cursor,
            list(group_by) if group_by is not None else None,
            agg_list,
            list(proj) if proj else None,
        )


class Snapshot(NamedTuple):
    """What ``QUERY_RESP`` carries."""

    results: list[tuple[str, Any]]
    has_more: bool
    next_cursor: str | None
    cursor_status: CursorStatus


class Window:
    """The shared state of identical live queries: the ordered rows the query currently
    remembers, and the subscriptions (members) that receive its deltas.

    Subscriptions with the same map, filter, sort, window size, cursor position (and, for
    ``auth.`` operands, the same claims) share one window: a write is matched and the window
    maintained once, and the deltas fan out to every member.
    """

    __slots__ = (
        "after",
        "complete",
        "fanout",
        "filter",
        "horizon",
        "keep",
        "key",
        "key_fn",
        "limit",
        "map_name",
        "members",
        "pos",
        "rows",
        "spec",
    )

    def __init__(self, key: Any, map_name: str, spec: QuerySpec) -> None:
        self.key = key
        self.map_name = map_name
        self.spec = spec
        self.filter: Callable[[Any], bool] = lambda v: False
        self.key_fn = make_sort_key(spec.sort)
        self.limit = 0
        self.keep = 0
        #: remembered rows: ascending full sort keys (last element = record key); an exact prefix of the
        #: query's order among rows after ``after``
        self.rows: list[tuple[Any, ...]] = []
        self.pos: dict[str, tuple[Any, ...]] = {}
        #: True when ``rows`` holds every matching row; else every unknown matching row sorts >= horizon
        self.complete = True
        self.horizon: tuple[Any, ...] | None = None
        #: cursor position: only rows sorting after it belong to the query
        self.after: tuple[Any, ...] | None = None
        self.members: dict[tuple[int, str], Subscription] = {}
        #: the sender's cache of what it needs per member (None whenever ``members`` changes)
        self.fanout: Any = None

    def __repr__(self) -> str:
        return f"Window({self.map_name!r}, members={len(self.members)}, rows={len(self.rows)})"


class Subscription:
    """One live query of one connection (``window`` is ``None`` for aggregate queries)."""

    __slots__ = ("conn", "conn_id", "fields", "map_name", "query_id", "spec", "window", "wire")

    def __init__(
        self, conn: Any, conn_id: int, query_id: str, map_name: str, spec: QuerySpec, window: Window | None
    ) -> None:
        self.conn = conn
        self.conn_id = conn_id
        self.query_id = query_id
        self.map_name = map_name
        self.spec = spec
        self.fields = spec.fields
        self.window = window
        #: the sender's cache for this subscription (the encoded ``queryId`` head of its frames)
        self.wire: Any = None

    @property
    def rows(self) -> list[tuple[Any, ...]]:
        """The window's remembered rows (empty for aggregates)."""
        return self.window.rows if self.window is not None else []

    @property
    def complete(self) -> bool:
        return self.window.complete if self.window is not None else True

    def __repr__(self) -> str:
        return f"Subscription({self.conn_id}:{self.query_id} on {self.map_name!r})"


def _window_key(map_name: str, spec: QuerySpec, n: int, after: Any, auth: Mapping[str, Any] | None) -> Any:
    blob = json.dumps([spec.where, spec.predicate], sort_keys=True, default=repr, separators=(",", ":"))
    claims = None
    if auth is not None and '"valueRef"' in blob:
        claims = json.dumps(dict(auth), sort_keys=True, default=repr)
    return (map_name, blob, tuple(spec.sort), n, repr(after), claims)


def _conjuncts(spec: QuerySpec) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for f, v in (spec.where or {}).items():
        out.append({"op": "eq", "attribute": f, "value": v})

    def walk(node: Any) -> None:
        if not isinstance(node, Mapping):
            return
        if node.get("op") == "and":
            for c in node.get("children") or []:
                walk(c)
        else:
            out.append(dict(node))

    if spec.predicate is not None:
        walk(spec.predicate)
    return out


def _range_bounds(leaves: list[dict[str, Any]]) -> dict[str, tuple[int, Any, Any]]:
    """Per attribute, the tightest closed interval (class, low, high) implied by range conjuncts."""
    out: dict[str, tuple[int, Any, Any]] = {}
    for leaf in leaves:
        op = leaf.get("op")
        attr = leaf.get("attribute")
        if op not in _RANGE_OPS or not isinstance(attr, str) or "valueRef" in leaf:
            continue
        x = leaf.get("value")
        if op == "between":
            if not isinstance(x, (list, tuple)) or len(x) != 2:
                continue
            lo_k, hi_k = range_key(x[0]), range_key(x[1])
            if lo_k is None or hi_k is None or lo_k[0] != hi_k[0]:
                continue
            cls, lo, hi = lo_k[0], lo_k[1], hi_k[1]
        else:
            k = range_key(x)
            if k is None:
                continue
            cls = k[0]
            lo, hi = (k[1], None) if op in ("gt", "gte") else (None, k[1])
        prev = out.get(attr)
        if prev is not None:
            if prev[0] != cls:
                continue
            plo, phi = prev[1], prev[2]
            lo = plo if lo is None else (lo if plo is None else max(lo, plo))
            hi = phi if hi is None else (hi if phi is None else min(hi, phi))
        out[attr] = (cls, lo, hi)
    return out


def _eq_leaves(leaves: list[dict[str, Any]]) -> list[tuple[str, Any]]:
    out = []
    for leaf in leaves:
        if leaf.get("op") == "eq" and isinstance(leaf.get("attribute"), str) and "valueRef" not in leaf:
            k = eq_key(leaf.get("value"))
            if k is not None and k is not OTHER:
                out.append((leaf["attribute"], leaf.get("value")))
    return out


def _in_leaves(leaves: list[dict[str, Any]]) -> list[tuple[str, list[Any]]]:
    out = []
    for leaf in leaves:
        x = leaf.get("value")
        if (
            leaf.get("op") == "in" and isinstance(leaf.get("attribute"), str) and "valueRef" not in leaf
            and isinstance(x, (list, tuple))
        ):
            keys = [eq_key(e) for e in x]
            if all(k is not OTHER for k in keys):
                out.append((leaf["attribute"], [e for e, k in zip(x, keys, strict=True) if k is not None]))
    return out


def _exact_scalar(x: Any) -> bool:
    """A string or non-NaN number of exactly those types (what the fused filter leaves test)."""
    t = type(x)
    return t is str or t is int or (t is float and x == x)


def _exact_eq(leaves: list[dict[str, Any]]) -> bool:
    """The whole filter is one ``eq`` on a string or number: an eq-bucket hit is a match."""
    if len(leaves) != 1:
        return False
    leaf = leaves[0]
    return leaf.get("op") == "eq" and "valueRef" not in leaf and _exact_scalar(leaf.get("value"))


def _exact_range(leaves: list[dict[str, Any]], field: str, cls: int) -> bool:
    """The whole filter is inclusive bounds of type class ``cls`` on ``field``: an interval hit
    is a match."""
    for leaf in leaves:
        if leaf.get("op") not in _INCLUSIVE_OPS or leaf.get("attribute") != field or "valueRef" in leaf:
            return False
        x = leaf.get("value")
        bounds = x if leaf.get("op") == "between" else [x]
        if not isinstance(bounds, (list, tuple)) or len(bounds) != (2 if leaf.get("op") == "between" else 1):
            return False
        for b in bounds:
            if not _exact_scalar(b) or (type(b) is str) != (cls == 1):
                return False
    return bool(leaves)


def _settle(sub: Window, matched: list[tuple[Any, ...]]) -> None:
    """Make the ``sub.keep`` smallest sort keys of ``matched`` the window's rows; when more
    matched, the next smallest becomes the horizon and the window is incomplete."""
    if len(matched) > sub.keep:
        keep = heapq.nsmallest(sub.keep + 1, matched)
        sub.horizon = keep.pop()
        sub.complete = False
    else:
        keep = sorted(matched)
        sub.horizon = None
        sub.complete = True
    sub.rows = keep
    sub.pos = {sk[-1]: sk for sk in keep}


class QueryEngine:
    """Secondary indexes + subscription registry + windows. Pure, synchronous, single-threaded.

    ``declared_indexes``: ``{map: [field, ...]}`` built eagerly (hash and sorted) by
    :meth:`build_declared`; ``auto_index``: build an index the first time a snapshot can use it.
    A window of N rows remembers ``N + max(N, reserve)`` rows to refill freed slots.
    ``subscription_index`` makes the per-map subscription index (default: the compiled twin
    of :mod:`topgun.server.query._match_py` when built).
    """

    def __init__(
        self,
        source: Callable[[str], Any],
        *,
        max_rows: int = DEFAULT_MAX_ROWS,
        declared_indexes: Mapping[str, Iterable[str]] | None = None,
        auto_index: bool = True,
        reserve: int = 16,
        clock: Callable[[], int] = _now_ms,
        subscription_index: Callable[[], SubscriptionIndex] = SubscriptionIndex,
    ) -> None:
        if max_rows <= 0:
            raise ValueError("max_rows must be positive")
        self._source = source
        self.max_rows = int(max_rows)
        self.auto_index = auto_index
        self.reserve = max(1, int(reserve))
        self._clock = clock
        self._new_index = subscription_index
        self._declared = {m: list(fs) for m, fs in (declared_indexes or {}).items()}
        self._hash: dict[str, dict[str, HashIndex]] = {}
        self._sorted: dict[str, dict[str, SortedIndex]] = {}
        self._subs: dict[tuple[int, str], Subscription] = {}
        self._windows: dict[Any, Window] = {}
        self._by_conn: dict[int, dict[str, Subscription]] = {}
        self._by_map: dict[str, SubscriptionIndex] = {}
        #: every map that ever had a subscription or a record index (never shrinks): a superset of
        #: the maps :meth:`watches` is true for, so the grid may skip batches touching none of them
        self.watched_maps: set[str] = set()
        #: counters for tests and metrics
        self.stats = {"snapshots": 0, "index_builds": 0, "full_scans": 0, "refreshes": 0}

    # -- record indexes ---------------------------------------------------------------------------
    def build_declared(self) -> None:
        """Build every declared index now (call after the grid loaded)."""
        for m, fields in self._declared.items():
            for f in fields:
                self.ensure_index(m, f, "hash")
                self.ensure_index(m, f, "sorted")

    def ensure_index(self, map_name: str, field: str, kind: str = "hash") -> HashIndex | SortedIndex:
        """The ``kind`` (``hash`` or ``sorted``) index of ``map_name.field``, built from the source if new."""
        table: dict[str, dict[str, Any]] = self._hash if kind == "hash" else self._sorted  # type: ignore[assignment]
        per = table.setdefault(map_name, {})
        self.watched_maps.add(map_name)
        idx = per.get(field)
        if idx is None:
            idx = HashIndex(field) if kind == "hash" else SortedIndex(field)
            view = self._source(map_name)
            if view is not None:
                for k, v in view.items():
                    if v is not None:
                        idx.update(k, v)
            per[field] = idx
            self.stats["index_builds"] += 1
        return idx

    def indexes(self, map_name: str) -> dict[str, list[str]]:
        """Existing indexes of a map: ``{"hash": [...], "sorted": [...]}``."""
        return {
            "hash": sorted(self._hash.get(map_name, {})),
            "sorted": sorted(self._sorted.get(map_name, {})),
        }

    # -- subscriptions ----------------------------------------------------------------------------
    def subscribe(
        self,
        conn: Any,
        query_id: str,
        map_name: str,
        query: Any,
        fields: Sequence[str] | None = None,
        *,
        conn_id: int | None = None,
        auth: Mapping[str, Any] | None = None,
    ) -> Snapshot:
        """Register (or replace) a subscription and return its snapshot, with no suspension point.

        Raises :class:`InvalidPredicateError` for a malformed query (nothing is registered then).
        """
        spec = query if isinstance(query, QuerySpec) else QuerySpec.parse(query, fields)
        cid = int(conn_id if conn_id is not None else getattr(conn, "connection_id", id(conn)))
        self.stats["snapshots"] += 1
        now = self._clock()
        fp = fingerprint(spec.where, spec.predicate, spec.sort)
        cur = decode_cursor(spec.cursor, fp, spec.sort, now)
        n = min(spec.limit or self.max_rows, self.max_rows)
        if spec.group_by is not None:
            win = Window(None, map_name, spec)
            win.filter = compile_filter(spec.where, spec.predicate, auth=auth, strict=True)
            snap = self._aggregate_snapshot(win, cur.status)
            self.unsubscribe(cid, query_id)
            sub = Subscription(conn, cid, query_id, map_name, spec, None)
        else:
            wkey = _window_key(map_name, spec, n, cur.position, auth)
            win = self._windows.get(wkey)  # type: ignore[assignment]
            fresh = win is None
            if win is None:
                win = Window(wkey, map_name, spec)
                win.filter = compile_filter(spec.where, spec.predicate, auth=auth, strict=True)
                win.after = cur.position
                win.limit = n
                win.keep = n + min(max(n, self.reserve), self.max_rows)
            snap = self._window_snapshot(win, fresh, fp, now, cur.status, spec.fields)
            old = self._subs.get((cid, query_id))
            if old is not None and old.window is win:
                # re-subscribing to the same window: swap the member in place, keep the window
                self._subs.pop((cid, query_id))
                self._by_conn[cid].pop(query_id, None)
            else:
                self.unsubscribe(cid, query_id)
            if fresh:
                self._windows[wkey] = win
                self._register(win)
            sub = Subscription(conn, cid, query_id, map_name, spec, win)
            win.members[(cid, query_id)] = sub
            win.fanout = None
        self._subs[(cid, query_id)] = sub
        self._by_conn.setdefault(cid, {})[query_id] = sub
        return snap

    def unsubscribe(self, conn_id: int, query_id: str) -> bool:
        """Remove one subscription; True when it existed."""
        sub = self._subs.pop((conn_id, query_id), None)
        if sub is None:
            return False
        per = self._by_conn.get(conn_id)
        if per is not None:
            per.pop(query_id, None)
            if not per:
                del self._by_conn[conn_id]
        win = sub.window
        if win is not None:
            win.members.pop((conn_id, query_id), None)
            win.fanout = None
            if not win.members:
                del self._windows[win.key]
                self._unregister(win)
        return True

    def drop_connection(self, conn_id: int) -> int:
        """Remove every subscription of a connection; returns how many."""
        per = self._by_conn.get(conn_id)
        if not per:
            return 0
        n = 0
        for qid in list(per):
            n += self.unsubscribe(conn_id, qid)
        return n

    def subscription(self, conn_id: int, query_id: str) -> Subscription | None:
        return self._subs.get((conn_id, query_id))

    def __len__(self) -> int:
        return len(self._subs)

    def windows(self) -> int:
        """Number of distinct live windows (identical queries share one)."""
        return len(self._windows)

    def _register(self, sub: Window) -> None:
        ms = self._by_map.get(sub.map_name)
        if ms is None:
            ms = self._by_map[sub.map_name] = self._new_index()
            self.watched_maps.add(sub.map_name)
        leaves = _conjuncts(sub.spec)
        eqs = _eq_leaves(leaves)
        if eqs:
            f, v = eqs[0]
            ms.add_eq(sub, f, [eq_key(v)], sub.filter, _exact_eq(leaves))
            return
        ins = _in_leaves(leaves)
        if ins:
            f, vals = ins[0]
            ms.add_eq(sub, f, list({eq_key(v) for v in vals}), sub.filter, False, True)
            return
        ranges = _range_bounds(leaves)
        if ranges:
            f, (cls, lo, hi) = next(iter(ranges.items()))
            ms.add_range(sub, f, cls, lo, hi, sub.filter, _exact_range(leaves, f, cls))
            return
        ms.add_scan(sub, sub.filter)

    def _unregister(self, sub: Window) -> None:
        ms = self._by_map.get(sub.map_name)
        if ms is None:
            return
        ms.remove(sub)
        if not len(ms):
            del self._by_map[sub.map_name]

    # -- snapshot ---------------------------------------------------------------------------------
    def _candidates(self, map_name: str, spec: QuerySpec, view: Any) -> Iterable[str] | None:
        """Keys that may match, from a record index; ``None`` means scan everything."""
        leaves = _conjuncts(spec)
        best: set[str] | None = None
        hashes = self._hash.get(map_name, {})
        for f, v in _eq_leaves(leaves):
            idx = hashes.get(f)
            if idx is None and self.auto_index:
                idx = self.ensure_index(map_name, f, "hash")  # type: ignore[assignment]
            if idx is not None:
                keys = idx.lookup(v)
                if best is None or len(keys) < len(best):
                    best = keys
        if best is not None:
            return best
        ranges = _range_bounds(leaves)
        sorted_ = self._sorted.get(map_name, {})
        for f, (_cls, lo, hi) in ranges.items():
            sidx = sorted_.get(f)
            if sidx is None and self.auto_index:
                sidx = self.ensure_index(map_name, f, "sorted")  # type: ignore[assignment]
            if sidx is not None:
                return list(sidx.range(lo, hi))
        for f, vals in _in_leaves(leaves):
            idx = hashes.get(f)
            if idx is None and self.auto_index:
                idx = self.ensure_index(map_name, f, "hash")  # type: ignore[assignment]
            if idx is not None:
                out: set[str] = set()
                for v in vals:
                    out |= idx.lookup(v)
                # records whose field is an array may still match ``in`` (v an array containing x)
                for k, v in view.items():
                    fv = get_field(v, f)
                    if isinstance(fv, (list, tuple)):
                        out.add(k)
                return out
        return None

    def _window_snapshot(
        self, win: Window, fresh: bool, fp: str, now: int, status: CursorStatus, fields: list[str] | None
    ) -> Snapshot:
        view = self._source(win.map_name)
        if view is None:
            if fresh:
                win.rows, win.pos, win.complete, win.horizon = [], {}, True, None
            return Snapshot([], False, None, status)
        n = win.limit
        if fresh or (not win.complete and len(win.rows) <= n):
            total = self._fill(win, view)
        else:
            total = len(win.rows)  # complete, or more rows remembered than the page: exact enough
        page = win.rows[:n]
        has_more = total > n
        next_cursor = encode_cursor(fp, page[-1], now) if has_more and page else None
        get = view.get
        results = [(sk[-1], project(get(sk[-1]), fields)) for sk in page]
        return Snapshot(results, has_more, next_cursor, status)

    def _aggregate_snapshot(self, win: Window, status: CursorStatus) -> Snapshot:
        view = self._source(win.map_name)
        if view is None:
            return Snapshot([], False, None, status)
        pairs = self._pairs(view, self._candidates(win.map_name, win.spec, view))
        filt = win.filter
        rows = [(k, v) for k, v in pairs if v is not None and filt(v)]
        return self._aggregate(win, rows, status)

    def _pairs(self, view: Any, cand: Iterable[str] | None) -> Iterable[tuple[str, Any]]:
        if cand is None:
            self.stats["full_scans"] += 1
            return view.items()  # type: ignore[no-any-return]
        get = view.get
        return ((k, get(k)) for k in cand)

    def _fill(self, sub: Window, view: Any, values: dict[str, Any] | None = None) -> int:
        """(Re)build the remembered rows of ``sub`` from the map; returns how many rows match
        (a lower bound greater than the window when the rows came from an ordered index walk)."""
        cand = self._candidates(sub.map_name, sub.spec, view)
        if cand is None and sub.spec.sort:
            total = self._fill_ordered(sub, view, values)
            if total is not None:
                return total
        filt, key_fn, after = sub.filter, sub.key_fn, sub.after
        matched: list[tuple[Any, ...]] = []
        for k, v in self._pairs(view, cand):
            if v is None or not filt(v):
                continue
            sk = key_fn(k, v)
            if after is not None and not sk > after:
                continue
            matched.append(sk)
            if values is not None:
                values[k] = v
        _settle(sub, matched)
        return len(matched)

    def _fill_ordered(self, sub: Window, view: Any, values: dict[str, Any] | None) -> int | None:
        """Fill the window by walking the sorted index of the first sort field in query order and
        stopping once the window and its reserve are certain; ``None`` when that is not possible
        (small map, no index, ``_key`` sort, or nil fields that would have to come first)."""
        field, direction = sub.spec.sort[0]
        size = len(view)
        if field == "_key" or size < 2 * sub.keep or size < 1024:
            return None
        sidx = self._sorted.get(sub.map_name, {}).get(field)
        if sidx is None:
            if not self.auto_index:
                return None
            sidx = self.ensure_index(sub.map_name, field, "sorted")  # type: ignore[assignment]
        assert isinstance(sidx, SortedIndex)
        n_nil = size - len(sidx.by_key) - len(sidx.others)
        desc = direction == "desc"
        if desc and n_nil > 0:
            return None  # nil sorts first in descending order: a scan is needed anyway
        filt, key_fn, after, get = sub.filter, sub.key_fn, sub.after, view.get
        pool: list[tuple[Any, ...]] = []

        def take(k: str) -> bool:
            v = get(k)
            if v is None or not filt(v):
                return False
            sk = key_fn(k, v)
            if after is not None and not sk > after:
                return False
            pool.append(sk)
            if values is not None:
                values[k] = v
            return True

        for k in sidx.others:  # ranked by type around the indexed values: always in the pool
            take(k)
        need = sub.keep + 1
        found = 0
        last_rk: Any = None
        stopped = False
        walk = reversed(sidx.items) if desc else iter(sidx.items)
        for rk, k in walk:
            if found >= need and rk != last_rk:
                stopped = True
                break
            if take(k):
                found += 1
                last_rk = rk
        if not stopped and n_nil > 0:
            return None  # the nil rows (last in ascending order) may be needed
        # A stopped walk took at least ``need`` rows, so the window is never complete then.
        _settle(sub, pool)
        return len(pool)

    def _aggregate(self, sub: Window, rows: list[tuple[str, Any]], status: CursorStatus) -> Snapshot:
        spec = sub.spec
        group_by = spec.group_by or []
        groups: dict[str, dict[str, Any]] = {}
        members: dict[str, list[Any]] = {}
        for _k, v in rows:
            gvals = [get_field(v, g) for g in group_by]
            gkey = json.dumps(gvals, sort_keys=True, default=repr, separators=(",", ":"))
            g = groups.get(gkey)
            if g is None:
                g = groups[gkey] = {"__key": gkey, "__count": 0}
                for name, gv in zip(group_by, gvals, strict=True):
                    g[name] = gv
                members[gkey] = []
            g["__count"] += 1
            members[gkey].append(v)
        for gkey, g in groups.items():
            for func, fld in spec.aggregations:
                if fld is None or func == "count":
                    continue
                nums = [
                    x for x in (get_field(v, fld) for v in members[gkey])
                    if isinstance(x, (int, float)) and not isinstance(x, bool) and x == x
                ]
                if func == "sum":
                    s = sum(nums)
                    g[f"__sum_{fld}"] = int(s) if isinstance(s, float) and s.is_integer() else s
                elif func == "min":
                    g[f"__min_{fld}"] = min(nums) if nums else None
                elif func == "max":
                    g[f"__max_{fld}"] = max(nums) if nums else None
                else:
                    g[f"__avg_{fld}"] = (float(sum(nums)) / len(nums)) if nums else None
        ordered = sorted(groups)
        n = min(spec.limit or self.max_rows, self.max_rows)
        page = ordered[:n]
        return Snapshot([(k, groups[k]) for k in page], len(ordered) > n, None, status)

    # -- deltas -----------------------------------------------------------------------------------
    def candidates(self, map_name: str, old_value: Any, new_value: Any) -> set[Window]:
        """Windows of ``map_name`` that a change from ``old_value`` to ``new_value`` may affect."""
        ms = self._by_map.get(map_name)
        if ms is None:
            return set()
        return set(ms.match(old_value, new_value))

    def match(self, map_name: str, old_value: Any, new_value: Any) -> dict[Window, bool]:
        """The matching step of :meth:`on_change`: ``{window: new value matches its filter}`` for
        every window the change may affect (``new_value`` matches, or ``old_value`` may have)."""
        ms = self._by_map.get(map_name)
        if ms is None:
            return {}
        return ms.match(old_value, new_value)

    def watches(self, map_name: str) -> bool:
        """True when a change to ``map_name`` can matter here: it has subscriptions or record indexes."""
        return map_name in self._by_map or bool(self._hash.get(map_name)) or bool(self._sorted.get(map_name))

    def on_change(
        self, map_name: str, key: str, old_value: Any, new_value: Any, origin: int | None = None
    ) -> list[tuple[Any, QueryUpdate]]:
        """Apply one committed change (values are live values, ``None`` = absent/tombstone).

        Call it after the change is visible in the source: a window whose remembered rows ran
        out is rebuilt from the source (§5.11 item 4 allows refilling; this refills exactly).

        Updates record indexes and every affected window; returns the ``QUERY_UPDATE``s to send,
        leaving out those of subscriptions owned by connection ``origin`` (§5.7 item 4).
        """
        out: list[tuple[Any, QueryUpdate]] = []
        for win, events in self.window_changes(map_name, key, old_value, new_value):
            for sub in win.members.values():
                if sub.conn_id == origin:
                    continue
                fields = sub.fields
                qid, conn = sub.query_id, sub.conn
                for ct, k, v in events:
                    pv = project(v, fields) if fields and v is not None else v
                    out.append((conn, QueryUpdate(query_id=qid, key=k, value=pv, change_type=ct)))
        return out

    def window_changes(
        self, map_name: str, key: str, old_value: Any, new_value: Any
    ) -> list[tuple[Window, list[tuple[ChangeType, str, Any]]]]:
        """The state-changing half of :meth:`on_change`, one entry per affected window.

        Updates record indexes and windows exactly like :meth:`on_change` and returns
        ``(window, events)`` pairs, ``events`` being ``(change type, key, unprojected value)``
        for every member of ``window`` (the caller projects ``fields`` and leaves out the
        writer's own subscriptions). A window with a thousand identical subscribers is one
        entry, so the caller can encode each event once instead of once per subscriber.
        """
        per = self._hash.get(map_name)
        if per:
            for idx in per.values():
                idx.update(key, new_value)
        sper = self._sorted.get(map_name)
        if sper:
            for sidx in sper.values():
                sidx.update(key, new_value)
        ms = self._by_map.get(map_name)
        if ms is None:
            return []
        out: list[tuple[Window, list[tuple[ChangeType, str, Any]]]] = []
        for win, new_in in ms.match(old_value, new_value).items():
            events = self._apply(win, key, new_value, new_in)
            if events:
                out.append((win, events))
        return out

    def _apply_refreshing(
        self, sub: Window, key: str, new_value: Any
    ) -> list[tuple[ChangeType, str, Any]]:
        """The remembered rows ran out (more rows than were remembered left the window): rebuild
        them from the map (the change is already applied there) and diff the top N."""
        n = sub.limit
        before = [sk[-1] for sk in sub.rows[:n]]
        view = self._source(sub.map_name)
        if view is None:
            sub.rows, sub.pos, sub.complete, sub.horizon = [], {}, True, None
        else:
            self.stats["refreshes"] += 1
            self._fill(sub, view)
        after = [sk[-1] for sk in sub.rows[:n]]
        before_set, after_set = set(before), set(after)
        events: list[tuple[ChangeType, str, Any]] = [
            (ChangeType.LEAVE, k, None) for k in before if k not in after_set
        ]
        for k in after:
            if k not in before_set:
                v = new_value if k == key else self._value(sub.map_name, k)
                events.append((ChangeType.ENTER, k, v))
            elif k == key:
                events.append((ChangeType.UPDATE, k, new_value))
        return events

    def _value(self, map_name: str, key: str) -> Any:
        view = self._source(map_name)
        return view.get(key) if view is not None else None

    def _apply(
        self, sub: Window, key: str, new_value: Any, new_in: bool
    ) -> list[tuple[ChangeType, str, Any]]:
        """Update one window for one change (``new_in``: ``new_value`` satisfies the filter); the
        events carry unprojected values."""
        rows, pos, n = sub.rows, sub.pos, sub.limit
        old_sk = pos.get(key)
        new_sk = None
        if new_in:
            sk = sub.key_fn(key, new_value)
            if sub.after is None or sk > sub.after:
                new_sk = sk
        if old_sk is None and new_sk is None:
            return []
        if not sub.complete and len(rows) - (old_sk is not None) < n:
            return self._apply_refreshing(sub, key, new_value)
        before_in = False
        if old_sk is not None:
            old_rank = bisect_left(rows, old_sk)
            before_in = old_rank < n
            del rows[old_rank]
            del pos[key]
        after_in = False
        if new_sk is not None and (sub.complete or sub.horizon is None or new_sk < sub.horizon):
            i = bisect_left(rows, new_sk)
            rows.insert(i, new_sk)
            pos[key] = new_sk
            after_in = i < n
            if len(rows) > sub.keep:
                evicted = rows.pop()
                del pos[evicted[-1]]
                sub.horizon = evicted if sub.horizon is None or evicted < sub.horizon else sub.horizon
                sub.complete = False
        if before_in and after_in:
            return [(ChangeType.UPDATE, key, new_value)]
        if before_in:
            events = [(ChangeType.LEAVE, key, None)]
            if len(rows) >= n:
                k2 = rows[n - 1][-1]
                if k2 != key:
                    events.append((ChangeType.ENTER, k2, self._value(sub.map_name, k2)))
            return events
        if after_in:
            events = []
            if len(rows) > n:
                k2 = rows[n][-1]
                events.append((ChangeType.LEAVE, k2, None))
            events.append((ChangeType.ENTER, key, new_value))
            return events
        return []

