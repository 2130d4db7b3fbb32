"""Matching writes against live queries (``topgun.server.query.match``): both twins against
each other (same windows, same flags, same order) and against the windows' own filters."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from support.predicate_oracle import predicates, records, scalars
from topgun.core.predicates import InvalidPredicateError, P, compile_filter
from topgun.server.query import QueryEngine

PROPS = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))


class Conn:
    def __init__(self, cid: int) -> None:
        self.connection_id = cid


class Counting:
    """A filter that counts its calls (to see which matches needed no predicate call)."""

    def __init__(self, where: Any = None, predicate: Any = None) -> None:
        self.f = compile_filter(where, predicate)
        self.calls = 0

    def __call__(self, v: Any) -> bool:
        self.calls += 1
        return self.f(v)


def test_exact_plans_match_without_calling_filters(twin: Any) -> None:
    idx = twin.match.SubscriptionIndex()
    eq, rng, inexact, scan = Counting({"o": "u1"}), Counting(None, P.between("p", 10, 20)), \
        Counting({"o": "u1", "z": 1}), Counting(None, P.like("t", "a%"))
    idx.add_eq("eq", "o", ["u1"], eq, True)
    idx.add_range("rng", "p", 0, 10, 20, rng, True)
    idx.add_eq("inexact", "o", ["u1"], inexact, False)
    idx.add_scan("scan", scan)
    assert len(idx) == 4
    got = idx.match(None, {"o": "u1", "p": 15, "t": "ab"})
    assert list(got.items()) == [("eq", True), ("inexact", False), ("rng", True), ("scan", True)]
    assert (eq.calls, rng.calls, inexact.calls, scan.calls) == (0, 0, 1, 1)
    # a float field value and an int bound are the same number; the boundary is inclusive
    got = idx.match(None, {"o": "u2", "p": 20.0})
    assert list(got.items()) == [("rng", True), ("scan", False)]
    assert rng.calls == 0
    # the old value's lookup adds what the record may leave, never calling a filter
    got = idx.match({"o": "u1", "p": 10}, {"o": "u2", "p": 21})
    assert list(got.items()) == [("scan", False), ("eq", False), ("inexact", False), ("rng", False)]
    assert (eq.calls, rng.calls, inexact.calls) == (0, 0, 1)
    # a field value of another type (bool, int subclass) falls back to the filter
    got = idx.match(None, {"o": True, "p": True})
    assert list(got.items()) == [("scan", False)]
    assert idx.remove("rng") and not idx.remove("rng")
    assert list(idx.match(None, {"o": "u1", "p": 15})) == ["eq", "inexact", "scan"]
    for p in ("eq", "inexact", "scan"):
        assert idx.remove(p)
    assert len(idx) == 0 and idx.match({"o": "u1"}, {"o": "u1", "p": 15}) == {}


def test_in_plans_see_array_fields(twin: Any) -> None:
    idx = twin.match.SubscriptionIndex()
    f = compile_filter(None, P.in_("t", ["a", 1]))
    idx.add_eq("in", "t", ["a", 1, "a"], f, False, True)
    assert idx.match(None, {"t": "a"}) == {"in": True}
    assert idx.match(None, {"t": 1.0}) == {"in": True}
    assert idx.match(None, {"t": "b"}) == {}
    assert idx.match(None, {"t": [["a", 1]]}) == {"in": True}  # an array containing the operand
    assert idx.match(None, {"t": ["z"]}) == {"in": False}
    assert idx.match({"t": ["z"]}, None) == {"in": False}


@pytest.mark.parametrize("budget", [0, 64])
def test_stabbing_open_and_empty_intervals(twin: Any, budget: int) -> None:
    idx = twin.match.SubscriptionIndex(cover_budget=budget)
    for name, lo, hi in [("ge5", 5, None), ("le5", None, 5), ("all", None, None), ("empty", 7, 6),
                         ("5to9", 5, 9.5), ("str", "b", "d")]:
        idx.add_range(name, "p", 1 if name == "str" else 0, lo, hi, lambda v: True, False)

    def stab(x: Any) -> list[str]:
        return sorted(idx.match(None, {"p": x}))

    assert stab(4) == ["all", "le5"]
    assert stab(5) == ["5to9", "all", "ge5", "le5"]
    assert stab(9.5) == ["5to9", "all", "ge5"]
    assert stab(10**30) == ["all", "ge5"]
    assert stab(float("nan")) == [] and stab(True) == [] and stab(None) == []
    assert stab("c") == ["str"] and stab("d") == ["str"] and stab("da") == []


# ---------------------------------------------------------------------------------------------
# Differential: compiled == pure, and both == the windows' filters

edge = st.sampled_from([float("nan"), 2**60 + 1, float(2**60), -0.0, 10**20, "é", b"a"])
# a small pool, so that record fields often hit interval ends and eq operands exactly
values = st.one_of(st.integers(-2, 2), st.sampled_from(["a", "b", 1.0, 2.5]), scalars, edge)
fields = st.sampled_from(["a", "b", "a.x"])


def _range_leaf(a: str) -> st.SearchStrategy[dict[str, Any]]:
    return st.one_of(
        st.builds(lambda op, v: {"op": op, "attribute": a, "value": v},
                  st.sampled_from(["gt", "gte", "lt", "lte"]), values),
        st.builds(lambda lo, hi: P.between(a, lo, hi), values, values),
    )


indexable = st.one_of(
    st.builds(lambda a, v: {"where": {a: v}}, fields, values),
    st.builds(lambda a, v: {"predicate": P.eq(a, v)}, fields, values),
    fields.flatmap(lambda a: st.lists(_range_leaf(a), min_size=1, max_size=3).map(
        lambda ls: {"predicate": ls[0] if len(ls) == 1 else P.and_(*ls)})),
    st.builds(lambda a, vs: {"predicate": P.in_(a, vs)}, fields, st.lists(values, max_size=3)),
    st.builds(lambda a, v, p: {"where": {a: v}, "predicate": p}, fields, values, predicates),
    st.builds(lambda p: {"predicate": p}, predicates),
)
record_values = st.one_of(
    st.fixed_dictionaries({}, optional={"a": values, "b": values, "a.x": values}), st.none(), records
)


def _engine(index_cls: Any, queries: list[dict[str, Any]], budget: int) -> QueryEngine:
    engine = QueryEngine(lambda m: {}, subscription_index=lambda: index_cls(cover_budget=budget))
    for i, q in enumerate(queries):
        try:
            engine.subscribe(Conn(1), f"q{i}", "m", q)
        except InvalidPredicateError:
            pass
    return engine


@PROPS
@given(st.lists(indexable, min_size=1, max_size=12),
       st.lists(st.tuples(record_values, record_values), max_size=20), st.sampled_from([0, 64]), st.data())
def test_twins_agree_with_each_other_and_the_filters(
    queries: list[dict[str, Any]], writes: list[tuple[Any, Any]], budget: int, data: st.DataObject
) -> None:
    from support.twins import require_extensions
    from topgun import _ext
    from topgun.server.query import _match_py

    twins: list[Any] = [_match_py]
    if not _ext.NO_EXTENSIONS:
        try:
            from topgun._speedups import _match
        except ImportError:
            assert not require_extensions(), "compiled twin topgun._speedups._match is not built"
        else:
            twins.append(_match)
    engines = [_engine(t.SubscriptionIndex, queries, budget) for t in twins]
    for step, (old, new) in enumerate(writes):
        if step == len(writes) // 2 and len(queries) > 1:
            drop = data.draw(st.integers(0, len(queries) - 1))
            for e in engines:
                e.unsubscribe(1, f"q{drop}")
        results = [[(w.key, r) for w, r in e.match("m", old, new).items()] for e in engines]
        assert all(r == results[0] for r in results[1:])
        for e in engines:
            got = e.match("m", old, new)
            assert set(got) == e.candidates("m", old, new)
            for win in e._windows.values():
                new_in = new is not None and bool(win.filter(new))
                if win in got:
                    assert bool(got[win]) == new_in, (win.spec, old, new)
                else:
                    assert not new_in, (win.spec, new)
                    assert old is None or not win.filter(old), (win.spec, old)
