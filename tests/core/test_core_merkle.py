"""Merkle tree: derived vectors of PROTOCOL.md §3.7 and the shape/maintenance rules of §3.5."""

from __future__ import annotations

from core_strategies import PROPS
from hypothesis import given
from hypothesis import strategies as st

from topgun.core.records import Timestamp

T = Timestamp
HEX = "0123456789abcdef"


def lww_tree(twin, entries):
    tree = twin.merkle.MerkleTree()
    for key, ts in entries:
        tree.update(key, twin.hashing.lww_item_hash(key, ts))
    return tree


def test_one_record(twin):
    tree = lww_tree(twin, [("key1", T(100, 0, "test"))])
    assert tree.leaf("374") == {"key1": 3988528110}
    assert tree.node_hash("374") == 3907692941
    assert tree.buckets("") == {"3": 901871431}
    assert tree.buckets("3") == {"7": 1873562393}
    assert tree.buckets("37") == {"4": 3907692941}
    assert tree.buckets("374") == {}
    assert tree.root_hash == 2138087518
    assert len(tree) == 1
    assert tree.get("key1") == 3988528110
    assert tree.get("nope") is None
    assert "key1" in tree and "nope" not in tree


def test_two_records(twin):
    tree = lww_tree(twin, [("key1", T(100, 0, "test")), ("key2", T(200, 1, "test"))])
    assert tree.buckets("") == {"3": 2048485329}
    assert tree.root_hash == 472775975
    assert set(tree.buckets("3")) == {"7", "8"}


def test_two_users(twin):
    tree = lww_tree(
        twin, [("user-1", T(1700000000000, 1, "node-1")), ("user-2", T(1700000000001, 0, "node-2"))]
    )
    assert tree.buckets("") == {"f": 2223527217}
    assert tree.root_hash == 556092027
    assert tree.keys_under("f") == ["user-1", "user-2"]
    assert tree.keys_under("f5") == ["user-1"]
    assert tree.keys_under("f55") == ["user-1"]
    assert tree.keys_under("f8") == ["user-2"]
    assert tree.keys_under("0") == []


def test_empty_tree_and_invalid_paths(twin):
    tree = twin.merkle.MerkleTree()
    assert tree.root_hash == 0
    assert tree.buckets("") == {}
    assert len(tree) == 0
    assert twin.merkle.DEPTH == 3 == tree.DEPTH
    tree.update("key1", 5)
    for bad in ("A", "g", "3741", "37/4", "0/1/2"):
        assert tree.buckets(bad) == {}
        assert tree.leaf(bad) == {}
        assert tree.keys_under(bad) == []
        assert tree.node_hash(bad) == 0
    assert tree.leaf("37") == {}  # not a leaf path


def test_remove_restores_previous_hashes(twin):
    tree = lww_tree(twin, [("key1", T(100, 0, "test"))])
    root1 = tree.root_hash
    tree.update("key2", 12345)
    assert tree.root_hash != root1
    assert tree.remove("key2") is True
    assert tree.remove("key2") is False
    assert tree.root_hash == root1
    assert tree.buckets("3") == {"7": 1873562393}  # the emptied child is not listed
    assert tree.remove("key1")
    assert tree.root_hash == 0 and len(tree) == 0 and tree.buckets("") == {}


def test_update_same_hash_is_noop_and_replace(twin):
    tree = twin.merkle.MerkleTree()
    tree.update("a", 1)
    r = tree.root_hash
    tree.update("a", 1)
    assert tree.root_hash == r and len(tree) == 1
    tree.update("a", 2)
    assert tree.get("a") == 2 and len(tree) == 1
    tree.update("a", 1)
    assert tree.root_hash == r
    tree.clear()
    assert tree.root_hash == 0 and len(tree) == 0 and tree.get("a") is None


def reference_root(twin, items):
    """Root recomputed from scratch by the formula of §3.5.2."""
    h = twin.hashing
    leaves: dict[str, list[int]] = {}
    for k, v in items.items():
        leaves.setdefault(h.route(k)[:3], []).append(v)
    l2: dict[str, list[int]] = {}
    for p, vs in leaves.items():
        l2.setdefault(p[:2], []).append(h.combine(vs))
    l1: dict[str, list[int]] = {}
    for p, vs in l2.items():
        l1.setdefault(p[:1], []).append(h.combine(vs))
    return h.combine(h.combine(vs) for vs in l1.values()), leaves


@PROPS
@given(
    ops=st.lists(
        st.tuples(st.booleans(), st.text(max_size=4), st.integers(0, 2**32 - 1)),
        max_size=60,
    )
)
def test_incremental_equals_rebuild(twin, ops):
    tree = twin.merkle.MerkleTree()
    model: dict[str, int] = {}
    for is_update, key, item in ops:
        if is_update:
            tree.update(key, item)
            model[key] = item
        else:
            assert tree.remove(key) == (key in model)
            model.pop(key, None)
    root, leaves = reference_root(twin, model)
    assert tree.root_hash == root
    assert len(tree) == len(model)
    for path, vs in leaves.items():
        assert tree.node_hash(path) == twin.hashing.combine(vs)
        assert tree.leaf(path) == {k: v for k, v in model.items() if twin.hashing.route(k).startswith(path)}
    assert tree.keys_under("") == sorted(model)
    listed = tree.buckets("")
    assert set(listed) == {p[0] for p in leaves}
    rebuilt = twin.merkle.MerkleTree()
    rebuilt.update_many(list(reversed(list(model.items()))))
    assert rebuilt.root_hash == tree.root_hash
    for c in HEX:
        assert rebuilt.buckets(c) == tree.buckets(c)
