"""OR-Map semantics (PROTOCOL.md §3.3, §3.5.4) and CRDT properties."""

from __future__ import annotations

import random

from core_strategies import FEW, PROPS, or_ops
from hypothesis import given
from hypothesis import strategies as st

from support.clocks import Wall
from topgun.core.hashing import or_entry_hash
from topgun.core.hlc import HLC
from topgun.core.merkle import MerkleTree
from topgun.core.ormap import ORMap
from topgun.core.records import ORMapRecord, Timestamp

T = Timestamp


def new_map(t=1_000_000, node="me"):
    wall = Wall(t)
    return ORMap(HLC(node, wall_clock=wall)), wall


def rec(value, ts, ttl=None):
    return ORMapRecord(value, ts, str(ts), ttl)


def test_add_get_remove():
    m, _ = new_map()
    r1 = m.add("k", "x")
    r2 = m.add("k", "y")
    r3 = m.add("k", "x")
    assert r1.tag == str(r1.timestamp) == "1000000:0:me"
    assert m.get("k") == ["x", "y", "x"]
    removed = m.remove("k", "x")
    assert removed == sorted([r1.tag, r3.tag])
    assert m.get("k") == ["y"]
    assert m.tombstones_for("k") == removed
    assert m.is_tombstoned(r1.tag) and not m.is_tombstoned(r2.tag)
    assert m.tombstone_info(r1.tag).key == "k"
    assert m.tombstone_info(r1.tag).removed_at_ms == 1_000_000
    assert m.remove("k", "nothing") == []
    assert m.remove("k", "y") == [r2.tag]
    assert m.get("k") == [] and "k" not in m and m.record_keys() == []
    assert m.root_hash == 0  # a key without records leaves the tree


def test_remove_then_readd():
    m, _ = new_map()
    first = m.add("k", "v")
    m.remove("k", "v")
    again = m.add("k", "v")  # a new add has a new tag: visible again
    assert again.tag != first.tag
    assert m.get("k") == ["v"]
    assert not m.apply("k", first)  # the removed tag can never come back
    assert m.get_records("k") == [again]


def test_remove_matches_js_equality():
    m, _ = new_map()
    m.add("k", 1)
    m.add("k", True)
    assert len(m.remove("k", True)) == 1
    assert m.get("k") == [1]


def test_apply_and_tombstone():
    m, _ = new_map(t=10)
    r = rec("v", T(500, 2, "other"))
    assert m.apply("k", r)
    assert not m.apply("k", r)  # idempotent for the data; the clock still merges the timestamp
    assert m.hlc.state() == (500, 4)
    assert m.get("k") == ["v"]
    assert m.apply_tombstone(r.tag) == "k"
    assert m.get("k") == [] and m.tombstones_for("k") == [r.tag]
    assert m.apply_tombstone(r.tag) is None
    assert not m.apply("k", r)
    # tombstone before the add arrives: the add is ignored
    r2 = rec("w", T(600, 0, "other"))
    assert m.apply_tombstone(r2.tag, key="j", removed_at_ms=77) is None
    assert m.tombstone_info(r2.tag) == ("j", 77)
    assert not m.apply("j", r2)
    assert m.record_count == 0


def test_or_tree_vector():
    m = ORMap()
    r0 = ORMapRecord({"b": 1, "a": {"c": 2, "a": 3}}, T(1700000000000, 0, "n1"), "1700000000000:0:n1", 5000)
    r1 = rec(42, T(1700000000000, 1, "n1"))
    m.apply("k", r0)
    m.apply("k", r1)
    assert m.merkle.get("k") == 2416844057
    assert m.root_hash == 4287590825


def test_expired_records_hidden_but_hashed():
    m, wall = new_map(t=1000)
    r = m.add("k", "v", ttl_ms=10)
    root = m.root_hash
    wall.t = 1011
    assert m.get("k") == [] and m.keys() == [] and len(m) == 0
    assert m.get_records("k") == [r]
    assert m.root_hash == root != 0


def test_merge_key():
    m, _ = new_map(t=1)
    a = rec("a", T(10, 0, "x"))
    b = rec("b", T(11, 0, "x"))
    m.apply("k", a)
    m.apply("k", b)
    c = rec("c", T(12, 0, "x"))
    assert m.merge_key("k", [c, a], [b.tag])
    assert [r.value for r in m.get_records("k")] == ["a", "c"]
    assert not m.merge_key("k", [c, a], [b.tag])
    newer_a = ORMapRecord("a2", T(13, 0, "x"), a.tag)
    older_a = ORMapRecord("a0", T(9, 0, "x"), a.tag)
    assert not m.merge_key("k", [older_a], [])
    assert m.merge_key("k", [newer_a], [])
    assert m.get("k") == ["a2", "c"]
    assert m.hlc.state()[0] == 13
    # the entry's tombstones empty the key: it leaves the tree
    assert m.merge_key("k", [], [a.tag, c.tag])
    assert m.record_keys() == [] and m.root_hash == 0
    assert set(m.tombstone_tags()) == {a.tag, b.tag, c.tag}


def test_merkle_matches_rebuild():
    m, _ = new_map()
    for i in range(30):
        m.add(f"k{i % 7}", i)
    for i in range(0, 30, 4):
        m.remove(f"k{i % 7}", i)
    tree = MerkleTree()
    for key, records in m.entries():
        tree.update(key, or_entry_hash(key, records))
    assert tree.root_hash == m.root_hash
    assert sorted(m.merkle.keys_under("")) == sorted(m.record_keys())


def test_prune_client_and_server_rules():
    m, wall = new_map(t=100)
    r1 = m.add("k", 1)  # tag time 100
    wall.t = 200
    r2 = m.add("k", 2)  # tag time 200
    m.remove("k", 1)  # removed at 200
    wall.t = 300
    m.remove("k", 2)  # removed at 300
    m.apply_tombstone("not-a-timestamp", key="k", removed_at_ms=50)
    assert m.prune(T(150, 0, "z")) == [r1.tag]  # by tag time; unparsable tags are kept
    assert m.is_tombstoned("not-a-timestamp")
    assert m.prune(removed_before_ms=301) == sorted(["not-a-timestamp", r2.tag])
    assert m.tombstone_tags() == [] and m.tombstones_for("k") == [] and m.tombstone_keys() == []


def snapshot(m: ORMap):
    return (
        tuple(sorted((k, tuple(rs)) for k, rs in m.entries())),
        tuple(m.tombstone_tags()),
        m.root_hash,
    )


def deliver(m: ORMap, ops):
    for kind, key, r in ops:
        if kind == "add":
            m.apply(key, r)
        else:
            m.apply_tombstone(r.tag, key=key)


@FEW
@given(ops=or_ops(), seed=st.integers(0, 2**32 - 1))
def test_replicas_converge_any_order_with_duplicates(ops, seed):
    rng = random.Random(seed)
    snaps = set()
    for _ in range(4):
        delivery = ops + rng.sample(ops, k=min(len(ops), 4))
        rng.shuffle(delivery)
        m = ORMap(HLC("r", wall_clock=Wall(0)))
        deliver(m, delivery)
        snaps.add(repr(snapshot(m)))
    assert len(snaps) == 1
    m = ORMap()
    deliver(m, ops)
    removed = {r.tag for kind, _, r in ops if kind == "remove"}
    expected = {r.tag for kind, _, r in ops if kind == "add"} - removed
    assert {r.tag for _, rs in m.entries() for r in rs} == expected


def merge_state(into: ORMap, other: ORMap) -> None:
    tombs = other.tombstone_tags()
    for key, records in other.entries():
        into.merge_key(key, records, tombs)
    into.merge_key("\x00none", [], tombs)


@PROPS
@given(ops=or_ops(max_size=24), cut=st.tuples(st.integers(0, 30), st.integers(0, 30)))
def test_merge_key_commutative_associative_idempotent(ops, cut):
    i, j = sorted(cut)
    parts = [ops[:i], ops[i:j], ops[j:]]
    a, b, c = (ORMap() for _ in range(3))
    for m, part in zip((a, b, c), parts, strict=True):
        deliver(m, part)

    def merged(*maps):
        out = ORMap()
        for m in maps:
            merge_state(out, m)
        return out

    assert snapshot(merged(a, b)) == snapshot(merged(b, a))
    assert snapshot(merged(merged(a, b), c)) == snapshot(merged(a, merged(b, c)))
    aa = merged(a, a)
    assert snapshot(aa) == snapshot(merged(a))


def test_discard_forgets_a_record_without_tombstone():
    m, _ = new_map()
    mine = m.add("k", "v")
    other = m.add("k", "w")
    assert m.discard(mine.tag) == "k"
    assert m.get("k") == ["w"] and not m.is_tombstoned(mine.tag)
    assert m.tombstones_for("k") == [] and m.key_of(mine.tag) is None
    fresh, _ = new_map()
    fresh.apply("k", other)
    assert m.root_hash == fresh.root_hash  # the Merkle entry follows
    assert m.discard(mine.tag) is None  # unknown tag: nothing happens
    assert m.apply("k", mine)  # not tombstoned, so it can come back
    assert m.discard(other.tag) == "k" and m.discard(mine.tag) == "k"
    assert "k" not in m.record_keys() and m.root_hash == 0
