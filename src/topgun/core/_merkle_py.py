"""Merkle tree over key routes (PROTOCOL.md §3.5), pure-Python specification.

The tree has a fixed depth of 3: a key's leaf is given by the first three hex
digits of its route, i.e. the top 12 bits of ``fnv1a(key)``. Node hashes are
sums of ``mix`` of child hashes, so a change is applied as a delta along the
path to the root (O(depth)), without revisiting siblings.

The compiled twin is :mod:`topgun._speedups._merkle`.
"""

from __future__ import annotations

from collections.abc import Iterable

from topgun.core._hashing_py import fnv1a, mix

__all__ = ["DEPTH", "MerkleTree"]

DEPTH = 3
_MASK = 0xFFFFFFFF
_HEX = "0123456789abcdef"
_HEX_VALUE = {c: i for i, c in enumerate(_HEX)}


def _parse_path(path: str) -> tuple[int, int] | None:
    """``(depth, node index within that depth)`` of a path, or None when it is not a valid path."""
    if len(path) > DEPTH:
        return None
    idx = 0
    for c in path:
        v = _HEX_VALUE.get(c)
        if v is None:
            return None
        idx = (idx << 4) | v
    return len(path), idx


class MerkleTree:
    """Fixed-depth (3) hex prefix trie of key -> item hash with incrementally maintained node hashes."""

    DEPTH = DEPTH

    def __init__(self) -> None:
        # Per depth d (1..3): node hash and number of keys below, indexed by the node's prefix value.
        self._hash: list[list[int]] = [[0], [0] * 16, [0] * 256, [0] * 4096]
        self._count: list[list[int]] = [[0], [0] * 16, [0] * 256, [0] * 4096]
        # Leaf index -> {key: item hash}; only non-empty leaves are present.
        self._leaves: dict[int, dict[str, int]] = {}
        self._size = 0

    # -- maintenance -------------------------------------------------------------------------------

    def _apply(self, leaf: int, old_item: int | None, new_item: int | None) -> None:
        """Replace one item's contribution in ``leaf`` and propagate the delta to the root."""
        h3 = self._hash[3]
        old_leaf = h3[leaf]
        new_leaf = old_leaf
        if old_item is not None:
            new_leaf -= mix(old_item)
        if new_item is not None:
            new_leaf += mix(new_item)
        new_leaf &= _MASK
        h3[leaf] = new_leaf
        dcount = (new_item is not None) - (old_item is not None)
        self._count[3][leaf] += dcount
        i = leaf
        old_child, new_child = old_leaf, new_leaf
        for depth in (2, 1, 0):
            i >>= 4
            hd = self._hash[depth]
            old_node = hd[i]
            new_node = (old_node - mix(old_child) + mix(new_child)) & _MASK
            hd[i] = new_node
            self._count[depth][i] += dcount
            old_child, new_child = old_node, new_node

    def update(self, key: str, item_hash: int) -> None:
        """Set the item hash of ``key`` (inserting the key if new)."""
        item_hash &= _MASK
        leaf = fnv1a(key) >> 20
        bucket = self._leaves.get(leaf)
        if bucket is None:
            bucket = self._leaves[leaf] = {}
        old = bucket.get(key)
        if old == item_hash:
            return
        bucket[key] = item_hash
        if old is None:
            self._size += 1
        self._apply(leaf, old, item_hash)

    def update_many(self, pairs: Iterable[tuple[str, int]]) -> None:
        """``update(key, item_hash)`` for every pair, in order."""
        for key, item_hash in pairs:
            self.update(key, item_hash)

    def remove(self, key: str) -> bool:
        """Drop ``key`` from the tree; False if it was not there."""
        leaf = fnv1a(key) >> 20
        bucket = self._leaves.get(leaf)
        if bucket is None or key not in bucket:
            return False
        old = bucket.pop(key)
        if not bucket:
            del self._leaves[leaf]
        self._size -= 1
        self._apply(leaf, old, None)
        return True

    def clear(self) -> None:
        """Remove every key."""
        self.__init__()  # type: ignore[misc]

    # -- queries -----------------------------------------------------------------------------------

    @property
    def root_hash(self) -> int:
        """Hash of the root node (0 for an empty tree)."""
        return self._hash[0][0]

    def node_hash(self, path: str) -> int:
        """Hash of the node at ``path`` (0 for a node without keys or an invalid path)."""
        parsed = _parse_path(path)
        if parsed is None:
            return 0
        depth, idx = parsed
        return self._hash[depth][idx]

    def buckets(self, path: str) -> dict[str, int]:
        """Hex digit -> child hash for every child of ``path`` holding at least one key.

        Empty for leaves, nodes without keys and invalid paths.
        """
        parsed = _parse_path(path)
        if parsed is None:
            return {}
        depth, idx = parsed
        if depth >= DEPTH or self._count[depth][idx] == 0:
            return {}
        child_hash = self._hash[depth + 1]
        child_count = self._count[depth + 1]
        base = idx << 4
        return {_HEX[c]: child_hash[base + c] for c in range(16) if child_count[base + c]}

    def leaf(self, path: str) -> dict[str, int]:
        """Key -> item hash of every key in the leaf at ``path`` (a 3-digit path), else empty."""
        parsed = _parse_path(path)
        if parsed is None or parsed[0] != DEPTH:
            return {}
        return dict(self._leaves.get(parsed[1], {}))

    def keys_under(self, path: str) -> list[str]:
        """Sorted keys whose route starts with ``path`` (any depth 0..3)."""
        parsed = _parse_path(path)
        if parsed is None:
            return []
        depth, idx = parsed
        shift = 4 * (DEPTH - depth)
        lo = idx << shift
        hi = (idx + 1) << shift
        keys: list[str] = []
        for leaf, bucket in self._leaves.items():
            if lo <= leaf < hi:
                keys.extend(bucket)
        keys.sort()
        return keys

    def get(self, key: str) -> int | None:
        """The item hash of ``key``, or None."""
        bucket = self._leaves.get(fnv1a(key) >> 20)
        return None if bucket is None else bucket.get(key)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.get(key) is not None

    def __len__(self) -> int:
        return self._size

    def __repr__(self) -> str:
        return f"MerkleTree(keys={self._size}, root={self.root_hash})"
