"""LWW-Map semantics (PROTOCOL.md §3.2, §2.3) and CRDT properties, on both twins."""

from __future__ import annotations

import itertools
import random

import pytest
from core_strategies import FEW, PROPS, lww_ops
from hypothesis import given
from hypothesis import strategies as st

from support.clocks import Wall
from topgun.core.records import LWWRecord, Timestamp
from topgun.errors import ClockDriftError, ClockError

T = Timestamp
R = LWWRecord


def new_map(twin, t=1_000_000, node="me", **kw):
    wall = Wall(t)
    hlc = twin.hlc.HLC(node, wall_clock=wall)
    return twin.lww.LWWMap(hlc, **kw), wall


def test_set_get_remove(twin):
    m, _ = new_map(twin)
    rec = m.set("a", {"x": 1})
    assert type(rec) is LWWRecord and rec.timestamp == T(1_000_000, 0, "me")
    assert m.get("a") == {"x": 1}
    assert "a" in m and len(m) == 1
    tomb = m.remove("a")
    assert tomb.value is None and tomb.timestamp == T(1_000_000, 1, "me")
    assert m.get("a") is None and "a" not in m and len(m) == 0
    assert m.get_record("a") == tomb
    assert m.record_count == 1
    assert m.records() == [("a", tomb)]
    # remove then re-add: the new write is later, so it wins
    again = m.set("a", 2)
    assert m.get("a") == 2 and again.timestamp > tomb.timestamp


def test_merge_rules(twin):
    m, _ = new_map(twin)
    assert m.merge("k", R("v1", T(10, 0, "b")))
    assert not m.merge("k", R("older", T(9, 9, "z")))
    assert not m.merge("k", R("same-ts-other-value", T(10, 0, "b")))  # equal keeps local
    assert m.get("k") == "v1"
    assert m.merge("k", R("v2", T(10, 0, "c")))  # node id breaks the tie
    assert m.merge("k", R(None, T(11, 0, "a")))  # a tombstone wins like any record
    assert m.get("k") is None and m.get_record("k").value is None
    assert not m.merge("k", R("late", T(10, 5, "z")))


def test_merge_advances_clock(twin):
    m, _ = new_map(twin, t=1000)
    m.merge("k", R(1, T(5000, 3, "other")))
    assert m.hlc.state() == (5000, 4)
    assert m.set("k2", 1).timestamp == T(5000, 5, "me")


def test_strict_drift_rejects_without_touching(twin):
    wall = Wall(1000)
    hlc = twin.hlc.HLC("me", wall_clock=wall, strict=True, max_drift_ms=10)
    m = twin.lww.LWWMap(hlc)
    with pytest.raises(ClockDriftError):
        m.merge("k", R(1, T(2000, 0, "x")))
    assert hlc.state() == (0, 0)
    assert m.get_record("k") is None and m.root_hash == 0


def test_map_without_hlc(twin):
    m = twin.lww.LWWMap()
    assert m.merge("k", R(1, T(1, 0, "x")))
    assert m.hlc is None
    with pytest.raises(ClockError):
        m.set("k", 2)
    with pytest.raises(ClockError):
        m.remove("k")


def test_ttl_expiry_hides_but_keeps(twin):
    m, wall = new_map(twin, t=1000)
    rec = m.set("k", "v", ttl_ms=100)
    assert rec.ttl_ms == 100
    wall.t = 1100
    assert m.get("k") == "v"  # millis + ttl == now: not yet expired (strictly less)
    wall.t = 1101
    assert m.get("k") is None and "k" not in m and len(m) == 0
    assert m.keys() == [] and m.values() == [] and m.items() == []
    assert m.get_record("k") == rec and m.record_count == 1
    root = m.root_hash
    assert root != 0
    assert m.prune(T(10**15, 0, "z")) == []  # expired records are not tombstones
    assert m.root_hash == root


def test_views_over_live_records(twin):
    m, _ = new_map(twin)
    m.set("a", 1)
    m.set("b", 2)
    m.remove("c")
    m.set("d", 3, ttl_ms=0)  # millis + 0 < now once the wall moves; still live now
    assert sorted(m.keys()) == ["a", "b", "d"]
    assert sorted(m.values()) == [1, 2, 3]
    assert sorted(m.items()) == [("a", 1), ("b", 2), ("d", 3)]
    assert sorted(m) == ["a", "b", "d"]
    assert m.record_count == 4


def test_merkle_upkeep_and_item_hashes(twin):
    m = twin.lww.LWWMap()
    m.merge("key1", R("v", T(100, 0, "test")))
    assert m.root_hash == 2138087518
    m.merge("key2", R(None, T(200, 1, "test")))
    assert m.root_hash == 472775975  # tombstones hash like records; value is not hashed
    assert m.merkle.get("key2") == twin.hashing.lww_item_hash("key2", T(200, 1, "test"))
    plain = twin.lww.LWWMap(merkle=False)
    plain.merge_many(m.records())
    assert plain.merkle is None
    assert plain.root_hash == m.root_hash


def test_merge_many_returns_changed_in_order(twin):
    m, _ = new_map(twin)
    pairs = [
        ("a", R(1, T(5, 0, "x"))),
        ("b", R(1, T(5, 0, "x"))),
        ("a", R(0, T(4, 0, "x"))),
        ("a", R(2, T(6, 0, "x"))),
        ("c", R(None, T(1, 0, "x"))),
    ]
    assert m.merge_many(pairs) == ["a", "b", "a", "c"]
    assert m.merge_many(iter(pairs)) == []
    assert m.get("a") == 2


def test_merge_many_is_one_receive_event_for_the_clock(twin):
    # The wall clock moves on every read; a batch reads it once and merges every
    # timestamp against that reading, while single merges read it per call.
    reads: list[int] = []

    def wall() -> int:
        reads.append(1000 + 50 * len(reads))
        return reads[-1]

    m = twin.lww.LWWMap(twin.hlc.HLC("me", wall_clock=wall), merkle=False)
    assert m.merge_many([]) == [] and reads == []
    pairs = [("a", R(1, T(900, 0, "o"))), ("b", R(2, T(950, 3, "o"))), ("c", R(3, T(999, 7, "o")))]
    assert m.merge_many(pairs) == ["a", "b", "c"]
    assert reads == [1000]
    # t = 1000 ahead of both, then lastMillis = 1000 ahead of each remote: counter 0, 1, 2.
    assert m.hlc.state() == (1000, 2)
    assert m.merge("d", R(4, T(1001, 9, "o"))) is True
    assert reads == [1000, 1050]
    assert m.hlc.state() == (1050, 0)
    assert m.merge_many(iter([("e", R(5, T(1200, 1, "o"))), ("f", R(6, T(1100, 0, "o")))])) == ["e", "f"]
    assert reads == [1000, 1050, 1100]
    assert m.hlc.state() == (1200, 3)


def test_prune_tombstones_only(twin):
    m = twin.lww.LWWMap()
    m.merge_many(
        [
            ("live", R(1, T(1, 0, "x"))),
            ("old-tomb", R(None, T(5, 0, "x"))),
            ("edge-tomb", R(None, T(10, 0, "x"))),
            ("new-tomb", R(None, T(20, 0, "x"))),
        ]
    )
    pruned = m.prune(T(10, 0, "x"))
    assert pruned == ["old-tomb"]
    assert m.get_record("old-tomb") is None and m.get_record("edge-tomb") is not None
    assert m.get("live") == 1
    rebuilt = twin.lww.LWWMap()
    rebuilt.merge_many(m.records())
    assert rebuilt.root_hash == m.root_hash
    assert m.merkle.get("old-tomb") is None
    m.clear()
    assert m.record_count == 0 and m.root_hash == 0


def state_of(m):
    return sorted(m.records()), m.root_hash


@PROPS
@given(ops=lww_ops(max_size=45), cut=st.tuples(st.integers(0, 45), st.integers(0, 45)))
def test_merge_commutative_associative_idempotent(twin, ops, cut):
    # One pool of distinct writes (a timestamp names one write) split into three replicas' sets.
    i, j = sorted(cut)
    a, b, c = ops[:i], ops[i:j], ops[j:]

    def build(*batches):
        m = twin.lww.LWWMap()
        for batch in batches:
            m.merge_many(batch)
        return m

    assert state_of(build(a, b)) == state_of(build(b, a))
    abc = build(a, b, c)
    a_bc = build(a, build(b, c).records())
    ab_c = build(build(a, b).records(), c)
    assert state_of(a_bc) == state_of(ab_c) == state_of(abc)
    aa = build(a, a)
    assert state_of(aa) == state_of(build(a))
    assert aa.merge_many(a) == []


@FEW
@given(ops=lww_ops(max_size=30), seed=st.integers(0, 2**32 - 1))
def test_replicas_converge_any_order_with_duplicates(twin, ops, seed):
    rng = random.Random(seed)
    states = set()
    for _ in range(4):
        delivery = ops + rng.sample(ops, k=min(len(ops), 5))
        rng.shuffle(delivery)
        m, _ = new_map(twin, node="r")
        for key, rec in delivery:
            m.merge(key, rec)
        states.add((tuple(sorted(m.records())), m.root_hash))
    assert len(states) == 1
    ((records, _root),) = states
    winners = {}
    for key, rec in ops:
        if key not in winners or rec.timestamp > winners[key].timestamp:
            winners[key] = rec
    assert dict(records) == winners


def test_small_exhaustive_orders(twin):
    ops = [("k", R(i, T(i // 2, i % 2, "n"))) for i in range(4)] + [("k", R(None, T(1, 0, "m")))]
    results = set()
    for perm in itertools.permutations(ops):
        m = twin.lww.LWWMap()
        m.merge_many(list(perm))
        results.add((m.get_record("k"), m.root_hash))
    assert len(results) == 1
    assert next(iter(results))[0] == R(3, T(1, 1, "n"))


def test_adopt_replaces_with_an_older_record(twin):
    m, _ = new_map(twin, t=1000)
    newer = R("same", T(5000, 0, "me"))
    assert m.merge("k", newer)
    older = R("same", T(4000, 2, "server"), 60_000)
    assert not m.merge("k", older)  # the LWW rule keeps the newer record ...
    assert m.adopt("k", older)  # ... adopt stores the older one anyway
    assert m.get_record("k") == older and m.get("k") == "same"
    assert m.record_count == 1
    rebuilt, _ = new_map(twin, t=1000)
    rebuilt.merge("k", older)
    assert m.root_hash == rebuilt.root_hash != 0  # Merkle tree follows the adopted record
    assert not m.adopt("k", R("same", T(4000, 2, "server"), 60_000))  # an equal record: no change
    assert m.adopt("new", R(None, T(10, 0, "s")))  # a new key (even a tombstone) is stored
    assert m.get_record("new") == R(None, T(10, 0, "s"))
    # a later merge is decided against the adopted timestamp
    assert m.merge("k", R("later", T(4500, 0, "x")))
    assert m.get_record("k") == R("later", T(4500, 0, "x"))


def test_adopt_advances_clock_and_honours_drift(twin):
    m, _ = new_map(twin, t=1000)
    m.adopt("k", R(1, T(3000, 7, "other")))
    assert m.hlc.state() == (3000, 8)
    wall = Wall(1000)
    strict = twin.lww.LWWMap(twin.hlc.HLC("me", wall_clock=wall, strict=True, max_drift_ms=10))
    with pytest.raises(ClockDriftError):
        strict.adopt("k", R(1, T(2000, 0, "x")))
    assert strict.get_record("k") is None and strict.root_hash == 0


def test_adopt_without_merkle_or_clock(twin):
    plain = twin.lww.LWWMap(merkle=False)
    tracked = twin.lww.LWWMap()
    for m in (plain, tracked):
        assert m.adopt("a", R("v", T(9, 0, "n")))
        assert m.adopt("a", R("v", T(3, 0, "n")))
    assert plain.root_hash == tracked.root_hash
    assert plain.get_record("a") == R("v", T(3, 0, "n"))
