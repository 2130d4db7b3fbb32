"""An independent, deliberately naive restatement of the §4.7 operator table and the §5.11
ordering rules, used as the oracle by predicate, engine and integration tests."""

from __future__ import annotations

import re
from functools import cmp_to_key
from typing import Any

from hypothesis import strategies as st

from topgun.core.predicates import P, like_to_regex


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def o_eq(a: Any, b: Any) -> bool:
    if _num(a) and _num(b):
        return float(a) == float(b) if isinstance(a, float) or isinstance(b, float) else a == b
    if type(a) is not type(b):
        if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
            pass
        else:
            return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(o_eq(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(o_eq(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def o_cmp(a: Any, b: Any) -> int | None:
    if _num(a) and _num(b) and a == a and b == b:
        return (a > b) - (a < b)
    if isinstance(a, str) and isinstance(b, str):
        ca, cb = [ord(c) for c in a], [ord(c) for c in b]
        return (ca > cb) - (ca < cb)
    return None


def o_field(value: Any, attr: str) -> Any:
    if not isinstance(value, dict):
        return None
    if attr in value:
        return value[attr]
    cur = value
    for part in attr.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return None
        cur = cur[part]
    return cur


def o_like(s: str, pat: str) -> bool:
    return re.fullmatch(like_to_regex(pat), s, re.IGNORECASE | re.DOTALL) is not None


def oracle_match(value: Any, node: dict[str, Any]) -> bool:
    op = node["op"]
    if op == "and":
        return all(oracle_match(value, c) for c in node.get("children", []))
    if op == "or":
        return any(oracle_match(value, c) for c in node.get("children", []))
    if op == "not":
        kids = node.get("children", [])
        return True if not kids else not oracle_match(value, kids[0])
    v = o_field(value, node["attribute"])
    if op == "isNull":
        return v is None
    if op == "isNotNull":
        return v is not None
    if v is None:
        return False
    x = node.get("value")
    if op == "eq":
        return x is not None and o_eq(v, x)
    if op == "neq":
        return x is not None and not o_eq(v, x)
    if op in ("gt", "gte", "lt", "lte"):
        c = o_cmp(v, x)
        return c is not None and {"gt": c > 0, "gte": c >= 0, "lt": c < 0, "lte": c <= 0}[op]
    if op == "between":
        lo, hi = x
        c1, c2 = o_cmp(v, lo), o_cmp(v, hi)
        return c1 is not None and c2 is not None and c1 >= 0 and c2 <= 0
    if op == "like":
        return isinstance(v, str) and isinstance(x, str) and o_like(v, x)
    if op == "regex":
        return isinstance(v, str) and re.search(x, v) is not None
    if op == "in":
        if isinstance(x, list) and any(o_eq(v, e) for e in x):
            return True
        return isinstance(v, list) and any(o_eq(e, x) for e in v)
    if op == "contains":
        if isinstance(v, str):
            return isinstance(x, str) and x.lower() in v.lower()
        return isinstance(v, list) and any(o_eq(e, x) for e in v)
    if op in ("containsAll", "containsAny"):
        items = x if isinstance(x, list) else [x]
        agg = all if op == "containsAll" else any
        if isinstance(v, str):
            return agg(isinstance(i, str) and i.lower() in v.lower() for i in items)
        if isinstance(v, list):
            return agg(any(o_eq(e, i) for e in v) for i in items)
        return False
    if op == "startsWith":
        return isinstance(v, str) and isinstance(x, str) and v[: len(x)] == x
    if op == "endsWith":
        return isinstance(v, str) and isinstance(x, str) and len(x) <= len(v) and v[len(v) - len(x):] == x
    return False



def o_cmp_sort(a: tuple[str, Any], b: tuple[str, Any], spec: list[tuple[str, str]]) -> int:
    rank = {"array": 0, "binary": 1, "bool": 2, "ext": 3, "map": 4, "number": 5, "string": 6}

    def tn(v: Any) -> str:
        if isinstance(v, bool):
            return "bool"
        if _num(v):
            return "number"
        if isinstance(v, str):
            return "string"
        if isinstance(v, list):
            return "array"
        if isinstance(v, dict):
            return "map"
        return "binary"

    for f, d in spec:
        va = a[0] if f == "_key" else o_field(a[1], f)
        vb = b[0] if f == "_key" else o_field(b[1], f)
        if va is None and vb is None:
            c = 0
        elif va is None:
            c = 1
        elif vb is None:
            c = -1
        else:
            ta, tb = tn(va), tn(vb)
            if ta != tb:
                c = (rank[ta] > rank[tb]) - (rank[ta] < rank[tb])
            elif ta in ("number", "string", "bool"):
                c = (va > vb) - (va < vb)
            else:
                c = 0
        if d == "desc":
            c = -c
        if c:
            return c
    return (a[0] > b[0]) - (a[0] < b[0])


# Hypothesis strategies for records and predicate trees

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 3), st.sampled_from([1.0, 2.5, -0.5]),
    st.sampled_from(["", "a", "ab", "Ab", "b", "ba", "abc"]),
)
field_values = st.one_of(scalars, st.lists(scalars, max_size=3), st.fixed_dictionaries({"x": scalars}))
records = st.fixed_dictionaries({}, optional={"a": field_values, "b": field_values, "c": field_values})
attrs = st.sampled_from(["a", "b", "c", "a.x", "zz"])


def leaf_strategy() -> st.SearchStrategy[dict[str, Any]]:
    cmp_ops = st.sampled_from(["eq", "neq", "gt", "gte", "lt", "lte", "contains", "startsWith", "endsWith",
                               "like"])
    simple = st.builds(lambda op, a, v: {"op": op, "attribute": a, "value": v}, cmp_ops, attrs, field_values)
    like = st.builds(P.like, attrs, st.text(alphabet="ab%_", max_size=4))
    regex = st.builds(P.regex, attrs, st.sampled_from(["a", "^a", "b$", "a.?b", "(a|b)+", "[^a]", "\\w"]))
    inn = st.builds(lambda a, v: {"op": "in", "attribute": a, "value": v}, attrs,
                    st.one_of(st.lists(scalars, max_size=3), scalars))
    btw = st.builds(P.between, attrs, scalars, scalars)
    nulls = st.builds(lambda op, a: {"op": op, "attribute": a},
                      st.sampled_from(["isNull", "isNotNull"]), attrs)
    many = st.builds(lambda op, a, v: {"op": op, "attribute": a, "value": v},
                     st.sampled_from(["containsAll", "containsAny"]), attrs,
                     st.one_of(scalars, st.lists(scalars, max_size=3)))
    return st.one_of(simple, like, regex, inn, btw, nulls, many)


predicates = st.recursive(
    leaf_strategy(),
    lambda kids: st.one_of(
        st.builds(lambda c: {"op": "and", "children": c}, st.lists(kids, max_size=3)),
        st.builds(lambda c: {"op": "or", "children": c}, st.lists(kids, max_size=3)),
        st.builds(lambda c: {"op": "not", "children": c}, st.lists(kids, max_size=1)),
    ),
    max_leaves=6,
)


def oracle_rows(data: dict[str, Any], query: dict[str, Any]) -> list[tuple[str, Any]]:
    """The rows a §5.11 query selects from ``data`` (``where`` equalities, ``predicate``), in its
    ``sort`` order — no limit, no cursor."""
    where = query.get("where") or {}
    pred = query.get("predicate")
    sort = [(s["field"], s["direction"]) for s in query.get("sort", [])]
    rows = []
    for k, v in data.items():
        ok = all(oracle_match(v, {"op": "eq", "attribute": f, "value": x}) for f, x in where.items())
        if ok and pred is not None:
            ok = oracle_match(v, pred)
        if ok:
            rows.append((k, v))
    rows.sort(key=cmp_to_key(lambda a, b: o_cmp_sort(a, b, sort)))
    return rows
