"""Hybrid Logical Clock: the table of PROTOCOL.md §3.7 and the rules of §3.1/§2.2, on both twins."""

from __future__ import annotations

import itertools
import random
import time

import pytest
from core_strategies import PROPS, timestamps
from hypothesis import given
from hypothesis import strategies as st

from support.clocks import Wall
from topgun.core.records import Timestamp
from topgun.errors import ClockDriftError

T = Timestamp


def clock(twin, t, **kw):
    wall = Wall(t)
    return twin.hlc.HLC("local", wall_clock=wall, **kw), wall


def test_now_same_millis_increments_counter(twin):
    h, _ = clock(twin, 1000000)
    assert [tuple(h.now())[:2] for _ in range(3)] == [(1000000, 0), (1000000, 1), (1000000, 2)]


def test_now_wall_advances_resets_counter(twin):
    h, wall = clock(twin, 1000000)
    assert tuple(h.now())[:2] == (1000000, 0)
    wall.t = 1000001
    assert tuple(h.now())[:2] == (1000001, 0)


def test_update_remote_ahead(twin):
    h, _ = clock(twin, 1000000)
    h.update(T(1000100, 5, "remote"))
    assert h.now() == T(1000100, 7, "local")


def test_update_equal_millis_takes_max_counter(twin):
    h, _ = clock(twin, 1000000)
    h.now()
    h.update(T(1000000, 5, "remote"))
    assert h.now() == T(1000000, 7, "local")


def test_update_remote_behind(twin):
    h, _ = clock(twin, 1000100)
    h.now()
    h.update(T(1000000, 10, "remote"))
    ts = h.now()
    assert (ts.millis, ts.counter) == (1000100, 2)


def test_update_wall_ahead_of_both(twin):
    h, _ = clock(twin, 1000200)
    h.update(T(1000100, 5, "remote"))
    assert h.now() == T(1000200, 1, "local")


def test_now_returns_shared_timestamp_type(twin):
    h, _ = clock(twin, 5)
    ts = h.now()
    assert type(ts) is Timestamp
    assert str(ts) == "5:0:local"
    assert h.node_id == "local"


def test_counter_overflow_in_now_advances_millis(twin):
    h, _ = clock(twin, 1000)
    h.update(T(1000, 2**32 - 2, "r"))  # counter becomes 2^32 - 1
    assert h.state() == (1000, 2**32 - 1)
    assert h.now() == T(1001, 0, "local")
    assert h.now() == T(1001, 1, "local")


def test_counter_overflow_in_update_advances_millis(twin):
    h, _ = clock(twin, 10)
    h.update(T(50, 2**32 - 1, "r"))
    assert h.state() == (51, 0)
    h2, _ = clock(twin, 10)
    h2.update(T(10, 2**32 - 2, "r"))
    h2.update(T(10, 0, "r"))  # m = last = remote: max(c, 0) + 1 reaches 2^32
    assert h2.state() == (11, 0)


def test_update_ignores_non_integer_fields(twin):
    h, _ = clock(twin, 100)
    h.update(T(1.5, 0, "r"))  # type: ignore[arg-type]
    h.update(T(float("nan"), 0, "r"))  # type: ignore[arg-type]
    h.update(T(200, float("inf"), "r"))  # type: ignore[arg-type]
    h.update(T(True, 0, "r"))  # type: ignore[arg-type]
    assert h.state() == (0, 0)
    h.update(T(200.0, 3.0, "r"))  # type: ignore[arg-type]
    assert h.state() == (200, 4)


def test_drift_non_strict_merges_and_logs(twin, caplog):
    h, _ = clock(twin, 1_000_000, max_drift_ms=1000)
    with caplog.at_level("WARNING", logger="topgun.core.hlc"):
        h.update(T(1_005_000, 0, "r"))
    assert h.state() == (1_005_000, 1)
    assert any("ahead of the wall clock" in r.getMessage() for r in caplog.records)


def test_drift_strict_raises_and_leaves_clock(twin):
    h, _ = clock(twin, 1_000_000, max_drift_ms=1000, strict=True)
    h.now()
    before = h.state()
    with pytest.raises(ClockDriftError) as info:
        h.update(T(1_001_001, 0, "r"))
    assert info.value.remote_millis == 1_001_001
    assert info.value.wall_millis == 1_000_000
    assert info.value.max_drift_ms == 1000
    assert h.state() == before
    h.update(T(1_001_000, 0, "r"))  # exactly at the limit is fine
    assert h.state() == (1_001_000, 1)


def test_drift_exceeded(twin):
    h, wall = clock(twin, 1000, max_drift_ms=60_000)
    assert not h.drift_exceeded(T(61_000, 0, "r"))
    assert h.drift_exceeded(T(61_001, 0, "r"))
    wall.t = 2000
    assert not h.drift_exceeded(T(61_001, 0, "r"))
    assert h.max_drift_ms == 60_000


def test_default_wall_clock_is_system_time(twin):
    h = twin.hlc.HLC("n")
    before = time.time_ns() // 1_000_000
    ts = h.now()
    after = time.time_ns() // 1_000_000
    assert before <= ts.millis <= after
    assert before <= twin.hlc.wall_millis() <= after + 1000
    assert h.wall_clock() >= before


def test_invalid_node_id(twin):
    for bad in ("", "a:b"):
        with pytest.raises(ValueError):
            twin.hlc.HLC(bad)


@PROPS
@given(remotes=st.lists(timestamps, max_size=10), walls=st.lists(st.integers(0, 10), min_size=1, max_size=10))
def test_now_after_update_is_greater(twin, remotes, walls):
    wall = Wall(0)
    h = twin.hlc.HLC("m", wall_clock=wall)
    last = None
    for i, r in enumerate(remotes):
        wall.t = walls[i % len(walls)]
        h.update(r)
        ts = h.now()
        assert twin.hlc.compare(ts, r) > 0
        if last is not None:
            assert twin.hlc.compare(ts, last) > 0
        last = ts


def test_compare_order(twin):
    cmp = twin.hlc.compare
    assert cmp(T(1, 0, "a"), T(2, 0, "a")) == -1
    assert cmp(T(2, 0, "a"), T(1, 5, "z")) == 1
    assert cmp(T(1, 1, "a"), T(1, 2, "a")) == -1
    assert cmp(T(1, 1, "b"), T(1, 1, "a")) == 1
    assert cmp(T(1, 1, "a"), T(1, 1, "a")) == 0
    assert cmp(T(1, 1, "B"), T(1, 1, "a")) == -1  # code point, not locale
    assert cmp(T(1, 1, "a1"), T(1, 1, "a_")) == -1
    assert cmp(T(1, 1, "\uff5e"), T(1, 1, "🚀")) == -1  # code point order (UTF-8 bytes)
    assert cmp(T(2**70, 0, "a"), T(2**70 + 1, 0, "a")) == -1  # beyond 64 bits


@PROPS
@given(st.lists(timestamps, max_size=40))
def test_max_and_sort_match_tuple_order(twin, stamps):
    hlc = twin.hlc
    assert hlc.sort_timestamps(stamps) == sorted(stamps)
    assert hlc.sort_timestamps(iter(stamps)) == sorted(stamps)
    assert hlc.max_timestamp(stamps) == (max(stamps) if stamps else None)
    for a, b in itertools.pairwise(stamps):
        assert hlc.compare(a, b) == (a > b) - (a < b)


def test_sort_is_stable_for_equal_timestamps(twin):
    a = T(5, 1, "n")
    b = T(5, 1, "n")
    c = T(1, 0, "n")
    out = twin.hlc.sort_timestamps([a, c, b])
    assert out == [c, a, b]
    assert out[1] is a and out[2] is b
    assert twin.hlc.max_timestamp([a, b]) is a


def test_sort_large_batch(twin):
    rng = random.Random(7)
    stamps = [T(rng.randint(0, 50), rng.randint(0, 3), rng.choice("abcd")) for _ in range(5000)]
    assert twin.hlc.sort_timestamps(stamps) == sorted(stamps)
    assert twin.hlc.max_timestamp(stamps) == max(stamps)
    assert twin.hlc.max_timestamp([]) is None
    assert twin.hlc.sort_timestamps([]) == []
