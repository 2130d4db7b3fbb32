"""Predicates (§4.7): builder shape, every operator, null rule, dotted paths, ordering,
LIKE, the linear-time regex engine, and Hypothesis oracle tests.

``oracle_match`` (in ``predicate_oracle``) is an independent, deliberately naive restatement of the §4.7
operator table (no compilation, no fast paths); the library must agree with it.
"""

from __future__ import annotations

import re
import time
from functools import cmp_to_key
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from support.predicate_oracle import (
    attrs,
    field_values,
    o_cmp_sort,
    o_like,
    oracle_match,
    predicates,
    records,
)
from topgun.core.predicates import (
    InvalidPredicateError,
    P,
    SafeRegex,
    compile_filter,
    compile_predicate,
    get_field,
    like_match,
    make_sort_key,
    matches,
    normalize_sort,
    project,
    values_equal,
)

PROPS = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))

# ---------------------------------------------------------------------------------------------
# Builder


def test_builder_produces_wire_nodes() -> None:
    assert P.eq("a", 1) == {"op": "eq", "attribute": "a", "value": 1}
    assert P.between("p", 1, 5) == {"op": "between", "attribute": "p", "value": [1, 5]}
    assert P.is_null("x") == {"op": "isNull", "attribute": "x"}
    assert P.isNotNull("x") == {"op": "isNotNull", "attribute": "x"}
    assert P.in_("s", ("a", "b")) == {"op": "in", "attribute": "s", "value": ["a", "b"]}
    assert P.contains_all("t", ["x"])["op"] == "containsAll"
    assert P.contains_any("t", ["x"])["op"] == "containsAny"
    assert P.starts_with("t", "x")["op"] == "startsWith"
    assert P.ends_with("t", "x")["op"] == "endsWith"
    tree = P.and_(P.eq("done", False), P.not_(P.gt("prio", 2)))
    assert tree == {
        "op": "and",
        "children": [
            {"op": "eq", "attribute": "done", "value": False},
            {"op": "not", "children": [{"op": "gt", "attribute": "prio", "value": 2}]},
        ],
    }
    assert P.or_()["children"] == []


def test_topgun_reexports_p() -> None:
    import topgun

    assert topgun.P is P


# ---------------------------------------------------------------------------------------------
# Operators, one by one

REC = {
    "n": 5,
    "f": 2.5,
    "s": "Hello World",
    "b": True,
    "z": None,
    "tags": ["red", "green", 3],
    "nested": {"deep": {"x": 7}},
    "a.b": "top",
    "a": {"b": "nested"},
}


@pytest.mark.parametrize(
    ("node", "expected"),
    [
        (P.eq("n", 5), True),
        (P.eq("n", 5.0), True),
        (P.eq("n", "5"), False),
        (P.eq("b", 1), False),
        (P.eq("b", True), True),
        (P.eq("tags", ["red", "green", 3.0]), True),
        (P.eq("nested", {"deep": {"x": 7}}), True),
        (P.eq("missing", None), False),
        (P.neq("n", 4), True),
        (P.neq("n", 5), False),
        (P.neq("missing", 1), False),
        (P.neq("z", 1), False),
        (P.gt("n", 4), True),
        (P.gt("n", 5), False),
        (P.gte("n", 5), True),
        (P.lt("f", 3), True),
        (P.lte("f", 2.5), True),
        (P.gt("s", "A"), True),
        (P.gt("s", 1), False),
        (P.lt("n", "9"), False),
        (P.gt("b", False), False),
        (P.like("s", "hello%"), True),
        (P.like("s", "h_llo world"), True),
        (P.like("s", "hello"), False),
        (P.like("s", "%WORLD"), True),
        (P.like("s", "%o w%"), True),
        (P.like("n", "5"), False),
        (P.regex("s", "W.r"), True),
        (P.regex("s", "^World"), False),
        (P.regex("s", "d$"), True),
        (P.in_("n", [1, 5]), True),
        (P.in_("n", [1, 2]), False),
        ({"op": "in", "attribute": "tags", "value": "red"}, True),
        (P.between("n", 5, 6), True),
        (P.between("n", 6, 7), False),
        (P.between("s", "A", "Z"), True),
        (P.is_null("missing"), True),
        (P.is_null("z"), True),
        (P.is_null("n"), False),
        (P.is_not_null("n"), True),
        (P.is_not_null("z"), False),
        (P.contains("s", "WORLD"), True),
        (P.contains("tags", "red"), True),
        (P.contains("tags", "RED"), False),
        (P.contains("n", 5), False),
        (P.contains_all("s", ["hello", "WORLD"]), True),
        (P.contains_all("s", ["hello", "mars"]), False),
        (P.contains_any("s", ["mars", "world"]), True),
        (P.contains_all("tags", ["red", 3]), True),
        (P.contains_any("tags", ["blue"]), False),
        ({"op": "containsAll", "attribute": "s", "value": "hello"}, True),
        (P.starts_with("s", "Hello"), True),
        (P.starts_with("s", "hello"), False),
        (P.ends_with("s", "World"), True),
        (P.ends_with("s", "world"), False),
        (P.eq("nested.deep.x", 7), True),
        (P.eq("a.b", "top"), True),  # a top-level key with the dotted name wins
        (P.eq("nested.nope.x", 7), False),
        (P.and_(), True),
        (P.or_(), False),
        ({"op": "not", "children": []}, True),
        (P.not_(P.eq("n", 5)), False),
        (P.and_(P.eq("n", 5), P.or_(P.eq("b", False), P.gt("f", 2))), True),
        ({"op": "match", "attribute": "s", "value": "hello"}, False),
    ],
)
def test_operator_table(node: dict[str, Any], expected: bool) -> None:
    assert matches(REC, predicate=node) is expected
    assert oracle_match(REC, node) is expected


def test_where_is_equality_and_combines_with_predicate() -> None:
    assert matches(REC, where={"n": 5, "b": True})
    assert not matches(REC, where={"n": 5, "missing": None})
    assert not matches(REC, where={"n": {"$gt": 1}})  # operator objects are literals (§8 item 11)
    assert matches(REC, where={"n": 5}, predicate=P.gt("f", 2))
    assert not matches(REC, where={"n": 5}, predicate=P.gt("f", 3))
    assert not matches(None, where=None)  # a tombstone matches nothing
    assert matches("scalar")  # no filter at all: every live record
    assert not matches("scalar", where={"a": 1})


def test_value_ref() -> None:
    rec = {"owner": "u1", "a": 3, "b": 3, "c": 4}
    ref = {"op": "eq", "attribute": "owner", "valueRef": "auth.sub"}
    assert matches(rec, predicate=ref, auth={"sub": "u1"})
    assert not matches(rec, predicate={"op": "eq", "attribute": "owner", "valueRef": "auth.sub"},
                       auth={"sub": "u2"})
    assert not matches(rec, predicate={"op": "eq", "attribute": "owner", "valueRef": "auth.sub"})
    assert matches(rec, predicate={"op": "eq", "attribute": "a", "valueRef": "data.b", "value": 99})
    assert matches(rec, predicate={"op": "lt", "attribute": "a", "valueRef": "data.c"})


def test_strict_mode_rejects_malformed() -> None:
    with pytest.raises(InvalidPredicateError):
        compile_predicate({"op": "between", "attribute": "a", "value": 3}, strict=True)
    with pytest.raises(InvalidPredicateError):
        compile_predicate({"op": "and", "children": 3}, strict=True)
    with pytest.raises(InvalidPredicateError):
        compile_predicate(P.regex("a", "(a)\\1"), strict=True)
    # non-strict: false leaves instead
    assert compile_predicate({"op": "between", "attribute": "a", "value": 3})({"a": 3}) is False
    assert compile_predicate(P.regex("a", "(a)\\1"))({"a": "aa"}) is False


def test_field_and_projection_helpers() -> None:
    assert get_field({"a": {"b": {"c": 1}}}, "a.b.c") == 1
    assert get_field({"a": 1}, "a.b") is None
    assert get_field([1], "a") is None
    assert project({"a": 1, "b": 2, "c": 3}, ["a", "c", "zz"]) == {"a": 1, "c": 3}
    assert project({"a": 1}, None) == {"a": 1}
    assert project(7, ["a"]) == 7


def test_values_equal_edges() -> None:
    assert values_equal(1, 1.0)
    assert not values_equal(True, 1)
    assert not values_equal(0, False)
    assert values_equal({"a": [1, {"b": 2.0}]}, {"a": [1.0, {"b": 2}]})
    assert not values_equal({"a": 1}, {"a": 1, "b": None})
    assert not values_equal(float("nan"), float("nan"))
    assert values_equal(b"x", b"x")


# ---------------------------------------------------------------------------------------------
# LIKE


def test_like_edge_cases() -> None:
    assert like_match("", "")
    assert like_match("", "%")
    assert not like_match("", "_")
    assert like_match("abc", "a%c")
    assert like_match("ac", "a%c")
    assert not like_match("ab", "a%c")
    assert like_match("aXbXc", "a%b%c")
    assert like_match("a.c", "a.c") and not like_match("abc", "a.c")  # regex metachars are literal
    assert like_match("aaa", "a%a")
    assert not like_match("a", "a%a")
    assert like_match("x(y)*z", "%(y)*%")


@PROPS
@given(st.text(alphabet="ab%_.", max_size=8), st.text(alphabet="abAB.", max_size=10))
def test_like_agrees_with_regex_translation(pattern: str, text: str) -> None:
    assert like_match(text, pattern) == o_like(text, pattern)


# ---------------------------------------------------------------------------------------------
# Regex


def _regex_strategy() -> st.SearchStrategy[str]:
    atom = st.sampled_from(["a", "b", ".", "[ab]", "[^a]", "\\d", "\\w", "\\s", "x", "(?:ab)", "(a|b)"])
    quant = st.sampled_from(["", "", "*", "+", "?", "{1,2}", "{2}", "*?"])
    piece = st.tuples(atom, quant).map("".join)
    body = st.lists(piece, min_size=0, max_size=5).map("".join)
    return st.tuples(st.sampled_from(["", "^", "\\b"]), body, st.sampled_from(["", "$", "\\b"])).map("".join)


@PROPS
@given(_regex_strategy(), st.text(alphabet="abx1 _-", max_size=12))
def test_safe_regex_agrees_with_re(pattern: str, text: str) -> None:
    assert SafeRegex(pattern).search(text) == (re.search(pattern, text) is not None), pattern


def test_safe_regex_case_insensitive_and_alternation() -> None:
    assert SafeRegex("(?i)hello").search("Say HELLO")
    assert SafeRegex("cat|dog").search("hotdog")
    assert not SafeRegex("^(cat|dog)$").search("hotdog")
    assert SafeRegex("[A-Z][a-z]+").search("xx Yes")
    assert SafeRegex("a.c").search("a\u00e9c")
    assert not SafeRegex("a.c").search("a\nc")
    assert SafeRegex("(?s)a.c").search("a\nc")


@pytest.mark.parametrize("pattern", ["(a)\\1", "(?=a)b", "(?!a)b", "(?<=a)b", "(?m)^a", "(?>a+)b", "a++b"])
def test_regex_refuses_backtracking_constructs(pattern: str) -> None:
    with pytest.raises(InvalidPredicateError):
        SafeRegex(pattern)


def test_regex_limits() -> None:
    with pytest.raises(InvalidPredicateError):
        SafeRegex("a" * 10_000)
    with pytest.raises(InvalidPredicateError):
        SafeRegex("(a{100}){100}")  # expands beyond the NFA cap
    with pytest.raises(InvalidPredicateError):
        SafeRegex("(unclosed")


@pytest.mark.parametrize("pattern", ["(a+)+$", "(a|aa)*b", "(a*)*b", "(a|a)*c$", "(.*a){12}b"])
def test_catastrophic_patterns_run_in_linear_time(pattern: str) -> None:
    """These take exponential (or high-polynomial) time with backtracking; here they stay linear."""
    rx = SafeRegex(pattern)
    small = "a" * 2_000 + "!"
    big = "a" * 40_000 + "!"
    t0 = time.perf_counter()
    assert rx.search(small) is False
    t_small = time.perf_counter() - t0
    t0 = time.perf_counter()
    assert rx.search(big) is False
    t_big = time.perf_counter() - t0
    assert t_big < 0.5, f"{pattern}: {t_big:.3f}s on 40k chars"
    # 20x the input must cost about 20x the time, not 400x (allow generous noise)
    assert t_big < max(t_small, 1e-3) * 80


def test_regex_in_predicate_is_guarded() -> None:
    f = compile_filter(None, P.regex("s", "(a+)+$"))
    t0 = time.perf_counter()
    assert f({"s": "a" * 30_000 + "!"}) is False
    assert time.perf_counter() - t0 < 0.5


# ---------------------------------------------------------------------------------------------
# Ordering


sort_values = st.one_of(
    st.none(), st.integers(-5, 5), st.floats(-5, 5, allow_nan=False),
    st.text(alphabet="aBz\u00e9", max_size=3),
    st.booleans(), st.lists(st.integers(0, 2), max_size=2), st.dictionaries(st.just("k"), st.integers(0, 2)),
)


@PROPS
@given(
    st.dictionaries(st.text(alphabet="kK9", min_size=1, max_size=3),
                    st.fixed_dictionaries({}, optional={"a": sort_values, "b": sort_values}), max_size=12),
    st.lists(st.tuples(st.sampled_from(["a", "b", "_key"]), st.sampled_from(["asc", "desc"])),
             max_size=3),
)
def test_sort_key_agrees_with_comparator_oracle(rows: dict[str, Any], spec: list[tuple[str, str]]) -> None:
    key = make_sort_key(spec)
    ours = sorted(rows.items(), key=lambda kv: key(kv[0], kv[1]))
    oracle = sorted(rows.items(), key=cmp_to_key(lambda x, y: o_cmp_sort(x, y, spec)))
    assert [k for k, _ in ours] == [k for k, _ in oracle]


def test_sort_nil_placement_and_forms() -> None:
    rows = {"a": {"p": 2}, "b": {}, "c": {"p": 1}, "d": {"p": "x"}}
    asc = make_sort_key([("p", "asc")])
    desc = make_sort_key({"p": "desc"})
    assert sorted(rows, key=lambda k: asc(k, rows[k])) == ["c", "a", "d", "b"]
    assert sorted(rows, key=lambda k: desc(k, rows[k])) == ["b", "d", "a", "c"]
    assert normalize_sort([{"field": "p", "direction": "desc"}]) == [("p", "desc")]
    assert normalize_sort({"p": "asc", "q": "desc"}) == [("p", "asc"), ("q", "desc")]
    with pytest.raises(InvalidPredicateError):
        normalize_sort([{"field": "p", "direction": "sideways"}])


# ---------------------------------------------------------------------------------------------
# Hypothesis: whole predicate trees against the oracle

@PROPS
@given(records, predicates)
def test_predicate_trees_agree_with_oracle(record: dict[str, Any], pred: dict[str, Any]) -> None:
    assert matches(record, predicate=pred) == oracle_match(record, pred)


@PROPS
@given(records, st.dictionaries(attrs, field_values, max_size=2))
def test_where_agrees_with_oracle(record: dict[str, Any], where: dict[str, Any]) -> None:
    expected = all(oracle_match(record, {"op": "eq", "attribute": k, "value": v}) for k, v in where.items())
    assert matches(record, where=where) == expected


@pytest.mark.parametrize("field_value", [1, 1.0, True, False, 0, float("nan"), "1", "a", None, [1], {"x": 1}])
@pytest.mark.parametrize(
    "node",
    [P.eq("a", 1), P.eq("a", 1.0), P.eq("a", True), P.eq("a", "a"), P.gt("a", 0), P.lte("a", 1.0),
     P.gte("a", "a"), P.lt("a", "b"), P.between("a", 0, 1), P.between("a", "a", "b"),
     P.eq("a", float("nan"))],
)
def test_fused_leaves_agree_with_the_oracle_on_edge_values(field_value: Any, node: dict[str, Any]) -> None:
    rec = {"a": field_value}
    assert matches(rec, predicate=node) == oracle_match(rec, node)
    # the dotted spelling takes the general path: both paths must agree
    nested = {"o": {"a": field_value}}
    assert matches(nested, predicate=dict(node, attribute="o.a")) == matches(rec, predicate=node)
