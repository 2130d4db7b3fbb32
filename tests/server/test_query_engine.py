"""The in-process query engine (no I/O) against a brute-force oracle: snapshots, windows and
deltas (ENTER/UPDATE/LEAVE, displacement, refill), cursors, groupBy, indexes, writer exclusion."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from support.predicate_oracle import oracle_rows, predicates
from topgun.core.predicates import InvalidPredicateError, P
from topgun.protocol.messages import ChangeType, CursorStatus
from topgun.server.query import QueryEngine
from topgun.server.query.cursor import CURSOR_TTL_MS

PROPS = settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))


class Conn:
    def __init__(self, cid: int) -> None:
        self.connection_id = cid


class World:
    """A map store + engine; ``put``/``delete`` feed the engine like the grid listener does."""

    def __init__(self, **kw: Any) -> None:
        self.maps: dict[str, dict[str, Any]] = {}
        self.engine = QueryEngine(lambda name: self.maps.get(name), **kw)

    def put(self, m: str, key: str, value: Any, origin: int | None = None) -> list[Any]:
        data = self.maps.setdefault(m, {})
        old = data.get(key)
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
        return self.engine.on_change(m, key, old, value, origin)

    def delete(self, m: str, key: str, origin: int | None = None) -> list[Any]:
        return self.put(m, key, None, origin)


def apply_events(view: dict[str, Any], updates: list[Any]) -> None:
    for _conn, u in updates:
        if u.change_type is ChangeType.LEAVE:
            assert u.key in view, f"LEAVE of a key not in the view: {u.key}"
            assert u.value is None
            del view[u.key]
        elif u.change_type is ChangeType.ENTER:
            assert u.key not in view, f"ENTER of a key already in the view: {u.key}"
            view[u.key] = u.value
        else:
            assert u.key in view
            view[u.key] = u.value


# ---------------------------------------------------------------------------------------------
# Basics


def test_snapshot_then_enter_update_leave() -> None:
    w = World()
    w.put("todos", "a", {"done": False, "prio": 1})
    w.put("todos", "b", {"done": True, "prio": 5})
    c = Conn(1)
    snap = w.engine.subscribe(c, "q", "todos", {"where": {"done": False}})
    assert snap.results == [("a", {"done": False, "prio": 1})]
    assert snap.has_more is False and snap.next_cursor is None
    assert snap.cursor_status is CursorStatus.NONE
    ups = w.put("todos", "c", {"done": False, "prio": 3})
    got = [(u.key, u.change_type, u.value) for _, u in ups]
    assert got == [("c", ChangeType.ENTER, {"done": False, "prio": 3})]
    assert ups[0][0] is c and ups[0][1].query_id == "q"
    ups = w.put("todos", "c", {"done": False, "prio": 4})
    assert [(u.key, u.change_type) for _, u in ups] == [("c", ChangeType.UPDATE)]
    ups = w.put("todos", "c", {"done": True, "prio": 4})
    assert [(u.key, u.change_type, u.value) for _, u in ups] == [("c", ChangeType.LEAVE, None)]
    assert w.put("todos", "b", {"done": True, "prio": 9}) == []  # never matched: nothing
    ups = w.delete("todos", "a")
    assert [(u.key, u.change_type) for _, u in ups] == [("a", ChangeType.LEAVE)]


def test_writer_exclusion_still_updates_window() -> None:
    w = World()
    c1, c2 = Conn(1), Conn(2)
    w.engine.subscribe(c1, "q", "m", {"where": {"t": 1}})
    w.engine.subscribe(c2, "q", "m", {"where": {"t": 1}})
    ups = w.put("m", "k", {"t": 1}, origin=1)
    assert [c.connection_id for c, _ in ups] == [2]
    # c1's window took the row in silently: its deletion is a LEAVE for c1 too
    ups = w.delete("m", "k", origin=2)
    assert [(c.connection_id, u.change_type) for c, u in ups] == [(1, ChangeType.LEAVE)]


def test_projection_applies_to_snapshot_and_deltas() -> None:
    w = World()
    w.put("m", "a", {"x": 1, "y": 2, "z": 3})
    snap = w.engine.subscribe(Conn(1), "q", "m", {"fields": ["x"]})
    assert snap.results == [("a", {"x": 1})]
    ups = w.put("m", "a", {"x": 5, "y": 2})
    assert ups[0][1].value == {"x": 5}
    snap = w.engine.subscribe(Conn(1), "q2", "m", {}, fields=["y"])
    assert snap.results == [("a", {"y": 2})]


def test_top_n_displacement_is_leave_then_enter_and_refill() -> None:
    w = World()
    for i in range(6):
        w.put("m", f"k{i}", {"p": i * 10})
    snap = w.engine.subscribe(Conn(1), "q", "m", {"sort": [{"field": "p", "direction": "desc"}], "limit": 3})
    assert [k for k, _ in snap.results] == ["k5", "k4", "k3"]
    assert snap.has_more is True and snap.next_cursor
    ups = w.put("m", "new", {"p": 45})
    assert [(u.key, u.change_type) for _, u in ups] == [("k3", ChangeType.LEAVE), ("new", ChangeType.ENTER)]
    # a change ranking outside the window: nothing
    assert w.put("m", "low", {"p": 1}) == []
    # the leader leaves: refilled from a remembered row
    ups = w.delete("m", "k5")
    assert [(u.key, u.change_type, u.value) for _, u in ups] == [
        ("k5", ChangeType.LEAVE, None), ("k3", ChangeType.ENTER, {"p": 30}),
    ]
    # moving inside the window: UPDATE only
    ups = w.put("m", "k3", {"p": 41})
    assert [(u.key, u.change_type) for _, u in ups] == [("k3", ChangeType.UPDATE)]


def test_window_rebuilt_when_remembered_rows_run_out() -> None:
    w = World(reserve=1)
    for i in range(10):
        w.put("m", f"k{i}", {"p": i})
    snap = w.engine.subscribe(Conn(1), "q", "m", {"sort": [{"field": "p", "direction": "asc"}], "limit": 2})
    assert [k for k, _ in snap.results] == ["k0", "k1"]
    sub = w.engine.subscription(1, "q")
    assert sub is not None and len(sub.rows) == 4 and not sub.complete  # N + max(N, reserve)
    ups = w.delete("m", "k0")
    assert [(u.change_type, u.key) for _, u in ups] == [(ChangeType.LEAVE, "k0"), (ChangeType.ENTER, "k2")]
    ups = w.delete("m", "k1")
    assert [(u.change_type, u.key) for _, u in ups] == [(ChangeType.LEAVE, "k1"), (ChangeType.ENTER, "k3")]
    assert w.engine.stats["refreshes"] == 0
    ups = w.delete("m", "k2")  # the remembered rows are exhausted: rebuilt from the map
    assert [(u.change_type, u.key, u.value) for _, u in ups] == [
        (ChangeType.LEAVE, "k2", None), (ChangeType.ENTER, "k4", {"p": 4}),
    ]
    assert w.engine.stats["refreshes"] == 1
    ups = w.put("m", "k9", {"p": -1})  # beyond the old horizon before, now the leader
    assert [(u.change_type, u.key) for _, u in ups] == [(ChangeType.LEAVE, "k4"), (ChangeType.ENTER, "k9")]


def test_limit_is_clamped_to_max_rows() -> None:
    w = World(max_rows=5)
    for i in range(12):
        w.put("m", f"k{i:02d}", {"v": i})
    snap = w.engine.subscribe(Conn(1), "q", "m", {"limit": 100})
    assert len(snap.results) == 5 and snap.has_more
    snap = w.engine.subscribe(Conn(1), "q2", "m", {})
    assert [k for k, _ in snap.results] == [f"k{i:02d}" for i in range(5)] and snap.has_more


def test_invalid_queries_raise_and_register_nothing() -> None:
    w = World()
    for bad in (
        {"limit": 0},
        {"limit": "x"},
        {"predicate": {"op": "regex", "attribute": "a", "value": "(a)\\1"}},
        {"predicate": {"op": "between", "attribute": "a", "value": 1}},
        {"sort": [{"field": "a", "direction": "up"}]},
        {"aggregations": [{"func": "median", "field": "a"}], "groupBy": ["a"]},
        {"where": [1]},
    ):
        with pytest.raises(InvalidPredicateError):
            w.engine.subscribe(Conn(1), "q", "m", bad)
    assert len(w.engine) == 0


def test_unsubscribe_and_drop_connection() -> None:
    w = World()
    w.engine.subscribe(Conn(1), "a", "m", {"where": {"t": 1}})
    w.engine.subscribe(Conn(1), "b", "m", {"predicate": P.gt("n", 1)})
    w.engine.subscribe(Conn(2), "a", "m", {})
    assert w.engine.unsubscribe(1, "a") and not w.engine.unsubscribe(1, "a")
    assert w.engine.drop_connection(1) == 1
    ups = w.put("m", "k", {"t": 1, "n": 5})
    assert [(c.connection_id, u.query_id) for c, u in ups] == [(2, "a")]
    assert w.engine.drop_connection(2) == 1 and len(w.engine) == 0
    assert w.put("m", "k2", {"t": 1}) == []


def test_watched_maps_cover_every_map_the_engine_watches() -> None:
    # The grid skips a listener for batches naming no map in its watched_maps: every map a
    # change to which can matter (subscriptions, record indexes) must be in it, also later.
    w = World()
    assert not w.engine.watched_maps and not w.engine.watches("m")
    w.engine.subscribe(Conn(1), "a", "m", {"where": {"t": 1}})
    w.engine.ensure_index("idx", "n", "sorted")
    for name in ("m", "idx"):
        assert w.engine.watches(name) and name in w.engine.watched_maps
    assert not w.engine.watches("other") and "other" not in w.engine.watched_maps
    w.engine.drop_connection(1)
    assert not w.engine.watches("m")
    assert {n for n in ("m", "idx", "other") if w.engine.watches(n)} <= w.engine.watched_maps


def test_identical_queries_share_one_window() -> None:
    w = World()
    for i in range(5):
        w.put("m", f"k{i}", {"t": i % 2, "p": i})
    q = {"where": {"t": 1}, "sort": [{"field": "p", "direction": "desc"}], "limit": 1}
    s1 = w.engine.subscribe(Conn(1), "a", "m", q)
    s2 = w.engine.subscribe(Conn(2), "b", "m", q, fields=["p"])
    assert s1.results == [("k3", {"t": 1, "p": 3})] and s2.results == [("k3", {"p": 3})]
    assert s1.has_more and s2.has_more and s1.next_cursor and s2.next_cursor
    assert w.engine.windows() == 1 and len(w.engine) == 2
    w.engine.subscribe(Conn(3), "c", "m", dict(q, limit=2))  # another window size: another window
    assert w.engine.windows() == 2
    ups = w.put("m", "k9", {"t": 1, "p": 9}, origin=2)
    got = sorted((c.connection_id, u.query_id, u.change_type.value, u.key, u.value) for c, u in ups)
    assert got == [
        (1, "a", "ENTER", "k9", {"t": 1, "p": 9}), (1, "a", "LEAVE", "k3", None),
        (3, "c", "ENTER", "k9", {"t": 1, "p": 9}), (3, "c", "LEAVE", "k1", None),
    ]
    # the writer (2) was skipped but shares the window: its next delta reflects k9 as the leader
    ups = w.delete("m", "k9")
    by = {(c.connection_id, u.change_type.value, u.key): u.value for c, u in ups}
    assert by[(2, "LEAVE", "k9")] is None and by[(2, "ENTER", "k3")] == {"p": 3}
    w.engine.unsubscribe(1, "a")
    w.engine.unsubscribe(2, "b")
    assert w.engine.windows() == 1
    w.engine.drop_connection(3)
    assert w.engine.windows() == 0 and w.put("m", "kx", {"t": 1, "p": 99}) == []


def test_resubscribe_replaces() -> None:
    w = World()
    w.engine.subscribe(Conn(1), "q", "m", {"where": {"t": 1}})
    w.engine.subscribe(Conn(1), "q", "m", {"where": {"t": 1}})  # same window: kept, member swapped
    assert w.engine.windows() == 1 and len(w.put("m", "z", {"t": 1})) == 1
    w.engine.subscribe(Conn(1), "q", "m", {"where": {"t": 2}})
    assert w.engine.windows() == 1
    assert len(w.engine) == 1
    assert w.put("m", "a", {"t": 1}) == []
    assert len(w.put("m", "b", {"t": 2})) == 1


# ---------------------------------------------------------------------------------------------
# Indexes


def test_snapshot_uses_indexes_not_scans() -> None:
    w = World()
    data = w.maps.setdefault("m", {})
    for i in range(2000):
        data[f"k{i}"] = {"g": i % 50, "n": i}
    snap = w.engine.subscribe(Conn(1), "q", "m", {"where": {"g": 7}})
    assert len(snap.results) == 40
    assert w.engine.stats["full_scans"] == 0
    assert "g" in w.engine.indexes("m")["hash"]
    snap = w.engine.subscribe(Conn(1), "r", "m", {"predicate": P.between("n", 100, 109)})
    assert [k for k, _ in snap.results] == sorted(f"k{i}" for i in range(100, 110))
    assert w.engine.stats["full_scans"] == 0
    assert "n" in w.engine.indexes("m")["sorted"]
    # the indexes follow writes
    w.put("m", "new", {"g": 7, "n": 105})
    snap = w.engine.subscribe(Conn(1), "q2", "m", {"where": {"g": 7}})
    assert "new" in dict(snap.results)
    w.put("m", "k105", {"g": 1, "n": 5000})
    snap = w.engine.subscribe(Conn(1), "r2", "m", {"predicate": P.between("n", 100, 109)})
    assert "k105" not in dict(snap.results) and "new" in dict(snap.results)


def test_declared_indexes_are_built_up_front() -> None:
    w = World(declared_indexes={"m": ["g"]}, auto_index=False)
    w.maps["m"] = {"a": {"g": 1}, "b": {"g": 2}}
    w.engine.build_declared()
    assert w.engine.indexes("m") == {"hash": ["g"], "sorted": ["g"]}
    w.engine.subscribe(Conn(1), "q", "m", {"where": {"g": 2}})
    assert w.engine.stats["full_scans"] == 0
    w.engine.subscribe(Conn(1), "q2", "m", {"where": {"other": 2}})
    assert w.engine.stats["full_scans"] == 1  # no index, no auto-index


def test_write_matching_does_not_scan_every_subscription() -> None:
    w = World()
    for i in range(1000):
        w.engine.subscribe(Conn(i), "q", "m", {"where": {"owner": f"u{i}"}})
    for i in range(200):
        w.engine.subscribe(Conn(5000 + i), "r", "m", {"predicate": P.between("price", i * 10, i * 10 + 5)})
    def conns(cands: Any) -> set[int]:
        return {cid for win in cands for cid, _ in win.members}

    cands = w.engine.candidates("m", None, {"owner": "u17", "price": 42})
    assert conns(cands) == {17, 5004}
    cands = w.engine.candidates("m", {"owner": "u3", "price": 0}, {"owner": "u4", "price": 7})
    assert conns(cands) == {3, 4, 5000}
    ups = w.put("m", "x", {"owner": "u17", "price": 42})
    assert sorted(c.connection_id for c, _ in ups) == [17, 5004]


def test_in_predicates_match_array_fields() -> None:
    w = World()
    w.engine.subscribe(Conn(1), "q", "m", {"predicate": {"op": "in", "attribute": "t", "value": ["a", "b"]}})
    assert len(w.put("m", "k1", {"t": "a"})) == 1
    assert w.put("m", "k2", {"t": "z"}) == []
    assert len(w.put("m", "k3", {"t": [["a", "b"]]})) == 1  # v an array containing x


# ---------------------------------------------------------------------------------------------
# Cursors


def test_cursor_pagination_walks_every_row_once() -> None:
    w = World()
    for i in range(25):
        w.put("m", f"k{i:02d}", {"p": i % 7, "n": i})
    q: dict[str, Any] = {
        "sort": [{"field": "p", "direction": "desc"}], "limit": 4, "predicate": P.gte("n", 2),
    }
    seen: list[str] = []
    cursor = None
    status = []
    for _ in range(20):
        snap = w.engine.subscribe(Conn(1), "q", "m", dict(q, cursor=cursor) if cursor else q)
        status.append(snap.cursor_status)
        seen += [k for k, _ in snap.results]
        if not snap.has_more:
            assert snap.next_cursor is None
            break
        cursor = snap.next_cursor
    expected = [k for k, _ in oracle_rows(w.maps["m"], {"sort": q["sort"], "predicate": q["predicate"]})]
    assert seen == expected
    assert status[0] is CursorStatus.NONE and all(s is CursorStatus.VALID for s in status[1:])


def test_cursor_expired_invalid_and_foreign() -> None:
    now = [1_000_000]
    w = World(clock=lambda: now[0])
    for i in range(10):
        w.put("m", f"k{i}", {"n": i})
    q: dict[str, Any] = {"sort": [{"field": "n", "direction": "asc"}], "limit": 3}
    first = w.engine.subscribe(Conn(1), "q", "m", q)
    cur = first.next_cursor
    assert cur is not None and "=" not in cur
    body = json.loads(base64.urlsafe_b64decode(cur + "=" * (-len(cur) % 4)))
    assert body["t"] == now[0] and body["k"] == "k2"
    page2 = w.engine.subscribe(Conn(1), "q", "m", dict(q, cursor=cur))
    assert page2.cursor_status is CursorStatus.VALID and [k for k, _ in page2.results] == ["k3", "k4", "k5"]
    now[0] += CURSOR_TTL_MS + 1
    exp = w.engine.subscribe(Conn(1), "q", "m", dict(q, cursor=cur))
    assert exp.cursor_status is CursorStatus.EXPIRED and exp.results == first.results
    bad = w.engine.subscribe(Conn(1), "q", "m", dict(q, cursor="%%%not-a-cursor"))
    assert bad.cursor_status is CursorStatus.INVALID and bad.results[0][0] == "k0"
    other = w.engine.subscribe(Conn(1), "q", "m", {"sort": [{"field": "n", "direction": "desc"}], "limit": 3,
                                                   "cursor": page2.next_cursor})
    assert other.cursor_status is CursorStatus.INVALID


def test_cursor_subscription_suppresses_rows_before_cursor() -> None:
    w = World()
    for i in range(10):
        w.put("m", f"k{i}", {"n": i * 10})
    q: dict[str, Any] = {"sort": [{"field": "n", "direction": "asc"}], "limit": 3}
    cur = w.engine.subscribe(Conn(1), "p1", "m", q).next_cursor
    w.engine.subscribe(Conn(1), "p2", "m", dict(q, cursor=cur))  # rows k3.. (n >= 30)
    ups = [(u.query_id, u.key, u.change_type) for _, u in w.put("m", "early", {"n": 5})]
    assert ("p2", "early", ChangeType.ENTER) not in ups
    assert ("p1", "early", ChangeType.ENTER) in ups
    ups = [(u.query_id, u.key, u.change_type) for _, u in w.put("m", "mid", {"n": 35})]
    assert ("p2", "mid", ChangeType.ENTER) in ups


# ---------------------------------------------------------------------------------------------
# groupBy


def test_group_by_aggregates() -> None:
    w = World()
    rows = [("a", "x", 1), ("b", "x", 2.5), ("c", "y", 3), ("d", "x", "n/a"), ("e", None, 4)]
    for k, g, v in rows:
        val: dict[str, Any] = {"v": v}
        if g is not None:
            val["g"] = g
        w.put("m", k, val)
    snap = w.engine.subscribe(Conn(1), "q", "m", {
        "groupBy": ["g"],
        "aggregations": [{"func": "count"}, {"func": "sum", "field": "v"}, {"func": "avg", "field": "v"},
                         {"func": "min", "field": "v"}, {"func": "max", "field": "v"}],
    })
    groups = {v["g"]: v for _, v in snap.results}
    assert set(groups) == {"x", "y", None}
    x = groups["x"]
    assert x["__count"] == 3 and x["__sum_v"] == 3.5 and x["__min_v"] == 1 and x["__max_v"] == 2.5
    assert x["__avg_v"] == pytest.approx(1.75)
    y = groups["y"]
    assert y["__sum_v"] == 3 and isinstance(y["__sum_v"], int) and y["__avg_v"] == 3.0
    for k, v in snap.results:
        assert v["__key"] == k
    # integral float sums are sent as integers
    w.put("m", "f", {"g": "z", "v": 1.5})
    w.put("m", "h", {"g": "z", "v": 0.5})
    snap = w.engine.subscribe(Conn(1), "q", "m", {
        "groupBy": ["g"], "aggregations": [{"func": "sum", "field": "v"}], "where": {"g": "z"},
    })
    assert snap.results[0][1]["__sum_v"] == 2 and isinstance(snap.results[0][1]["__sum_v"], int)


# ---------------------------------------------------------------------------------------------
# Hypothesis: windows stay an exact prefix of the oracle order under arbitrary changes

values = st.fixed_dictionaries({}, optional={
    "a": st.one_of(st.none(), st.integers(-3, 3), st.sampled_from(["a", "ab", "b"]), st.booleans()),
    "b": st.one_of(st.integers(-3, 3), st.sampled_from(["", "a", "ba"])),
    "c": st.one_of(st.integers(0, 2), st.lists(st.integers(0, 2), max_size=2)),
})
keys = st.sampled_from([f"k{i}" for i in range(10)])
sorts = st.lists(
    st.fixed_dictionaries({"field": st.sampled_from(["a", "b", "_key"]),
                           "direction": st.sampled_from(["asc", "desc"])}),
    max_size=2,
)
queries = st.fixed_dictionaries(
    {},
    optional={
        "where": st.dictionaries(st.sampled_from(["a", "c"]), st.integers(-1, 2), max_size=1),
        "predicate": predicates,
        "sort": sorts,
        "limit": st.integers(1, 5),
    },
)
ops = st.lists(st.tuples(keys, st.one_of(st.none(), values)), max_size=25)


@PROPS
@given(st.dictionaries(keys, values, max_size=10), queries, ops, st.sampled_from([1, 2, 50]))
def test_live_window_matches_oracle(
    initial: dict[str, Any], query: dict[str, Any], changes: list[Any], reserve: int
) -> None:
    """With ``reserve`` 1 the remembered rows run out, exercising the horizon and refresh rules."""
    w = World(max_rows=50, reserve=reserve)
    w.maps["m"] = dict(initial)
    if reserve < 50:
        query = dict(query, limit=query.get("limit") or 3)
    limit = query.get("limit") or 50
    try:
        snap = w.engine.subscribe(Conn(1), "q", "m", query)
    except InvalidPredicateError:
        return
    expected = oracle_rows(w.maps["m"], query)
    assert snap.results == expected[:limit]
    assert snap.has_more == (len(expected) > limit)
    view = dict(snap.results)
    view2: dict[str, Any] | None = None
    for i, (key, value) in enumerate(changes):
        ups = w.put("m", key, value)
        apply_events(view, [u for u in ups if u[0].connection_id == 1])
        if view2 is not None:
            apply_events(view2, [u for u in ups if u[0].connection_id == 2])
        full = oracle_rows(w.maps["m"], query)
        expected = full[:limit]
        # the client's view is always exactly the oracle's top N, with current values
        assert view == dict(expected)
        if view2 is not None:
            assert view2 == dict(expected)
        if i == len(changes) // 2:
            # a second, identical subscription joins the existing window midway
            snap2 = w.engine.subscribe(Conn(2), "q", "m", query)
            assert w.engine.windows() == 1
            assert snap2.results == expected
            assert snap2.has_more == (len(full) > limit)
            view2 = dict(snap2.results)


@pytest.mark.parametrize("direction", ["asc", "desc"])
@pytest.mark.parametrize("with_nil", [False, True])
def test_sorted_index_walk_for_top_n_matches_oracle(direction: str, with_nil: bool) -> None:
    import random

    rng = random.Random(f"{direction}{with_nil}")
    w = World(reserve=4)
    data = w.maps.setdefault("m", {})
    pool: list[Any] = [1, 2, 2.0, 3.5, -1, "a", "b", "ab", True, False, [1], {"x": 1}, b"z"]
    for i in range(3000):
        v: dict[str, Any] = {"t": rng.choice(["x", "y", "z"]), "n": i}
        r = rng.random()
        if r < 0.8:
            v["p"] = rng.randrange(200)
        elif r < 0.95 or not with_nil:
            v["p"] = rng.choice(pool)
        data[f"k{i:04d}"] = v
    q = {"predicate": P.like("t", "x"), "sort": [{"field": "p", "direction": direction}], "limit": 7}
    snap = w.engine.subscribe(Conn(1), "q", "m", q)
    expected = oracle_rows(data, q)
    assert snap.results == expected[:7]
    walked = w.engine.stats["full_scans"] == 0
    # descending with nil fields cannot walk (nil first); everything else must walk the index
    assert walked is not (direction == "desc" and with_nil)
    view = dict(snap.results)
    for step in range(120):
        k = f"k{rng.randrange(3000):04d}"
        if step % 5 == 0:
            apply_events(view, w.delete("m", k))
        else:
            val = {"t": rng.choice(["x", "y"]), "p": rng.choice([*pool, rng.randrange(200), -5, 500])}
            apply_events(view, w.put("m", k, val))
        assert view == dict(oracle_rows(data, q)[:7]), step


def test_watches_only_maps_with_subscriptions_or_record_indexes() -> None:
    w = World(auto_index=False)
    w.put("todos", "a", {"prio": 1})
    w.put("logs", "x", {"level": "info"})
    assert not w.engine.watches("todos") and not w.engine.watches("logs")
    c = Conn(1)
    w.engine.subscribe(c, "q", "todos", {"predicate": P.gt("prio", 0)}, conn_id=1)
    assert w.engine.watches("todos")
    assert not w.engine.watches("logs")
    assert w.engine.unsubscribe(1, "q")
    assert not w.engine.watches("todos")
    w.engine.ensure_index("logs", "level")
    assert w.engine.watches("logs")
