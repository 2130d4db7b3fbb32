"""PN-counter (PROTOCOL.md §2.8)."""

from __future__ import annotations

import pytest
from core_strategies import PROPS
from hypothesis import given
from hypothesis import strategies as st

from topgun.core.counter import PNCounter, normalize_state
from topgun.errors import ProtocolError


def test_increment_decrement_value():
    c = PNCounter("a")
    assert c.increment() == 1
    assert c.increment(4) == 5
    assert c.decrement(2) == 3
    assert c.value == 3
    assert c.state() == {"p": {"a": 5}, "n": {"a": 2}}
    with pytest.raises(ValueError):
        c.increment(-1)
    with pytest.raises(ValueError):
        c.decrement(-1)


def test_wire_spellings():
    c = PNCounter("a")
    c.increment(3)
    c.decrement(1)
    wire = c.to_wire()
    assert wire == {"p": {"a": 3}, "n": {"a": 1}, "positive": {"a": 3}, "negative": {"a": 1}}
    assert wire["p"] is not wire["positive"]
    ts_client = PNCounter.from_wire({"positive": {"x": 2}, "negative": {"x": 1}}, "me")
    schema = PNCounter.from_wire({"p": {"x": 2}, "n": {"x": 1}}, "me")
    assert ts_client == schema and ts_client.value == 1 and ts_client.node_id == "me"
    both = normalize_state({"p": {"x": 2, "y": 1}, "positive": {"x": 5}, "n": {}, "negative": {"y": 0.5}})
    assert both == {"p": {"x": 5, "y": 1}, "n": {"y": 0.5}}


def test_merge_takes_per_node_max():
    c = PNCounter("a")
    c.increment(2)
    assert c.merge({"p": {"a": 1, "b": 4}, "n": {"b": 1}})
    assert c.state() == {"p": {"a": 2, "b": 4}, "n": {"b": 1}}
    assert not c.merge({"positive": {"a": 2}, "negative": {"b": 1}})
    assert c.value == 5
    other = PNCounter("b")
    other.decrement(10)
    assert c.merge(other)
    assert c.value == 6 - 10


@pytest.mark.parametrize(
    "bad",
    [[], {"p": []}, {"p": {"a": -1}}, {"n": {"a": "1"}}, {"p": {"a": float("nan")}}, {"p": {"a": True}}],
)
def test_invalid_states(bad):
    with pytest.raises(ProtocolError):
        PNCounter("a").merge(bad)


totals = st.dictionaries(st.sampled_from(["a", "b", "c", "d"]), st.integers(0, 50), max_size=4)
states = st.builds(lambda p, n: {"p": p, "n": n}, totals, totals)


@PROPS
@given(a=states, b=states, c=states)
def test_merge_commutative_associative_idempotent(a, b, c):
    def merged(*ss):
        out = PNCounter("z")
        for s in ss:
            out.merge(s)
        return out

    assert merged(a, b) == merged(b, a)
    assert merged(merged(a, b).state(), c) == merged(a, merged(b, c).state())
    assert merged(a, a) == merged(a)
    assert merged(a, b).value == merged(b, a).value
