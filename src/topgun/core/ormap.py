"""Observed-remove map (PROTOCOL.md §3.3, §2.4, §2.5).

Each key holds a set of records indexed by tag; one tombstone set of tags
covers the whole map. A tombstone remembers, when known, the key its record
was removed from and the removal time, so a server can answer per-key
tombstone listings and prune by removal time (§5.10) while a client prunes by
the time encoded in the tag.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any, NamedTuple

from topgun.core.hashing import or_entry_hash, utf16_sort_key
from topgun.core.hlc import wall_millis
from topgun.core.merkle import MerkleTree
from topgun.core.records import ORMapRecord, Timestamp
from topgun.errors import ClockError

__all__ = ["ORMap", "TombstoneInfo"]


class TombstoneInfo(NamedTuple):
    """What a replica knows about one removed tag."""

    key: str | None
    removed_at_ms: int | None


def _same_value(a: Any, b: Any) -> bool:
    # JavaScript never equates true with 1, so booleans only match booleans.
    return (type(a) is bool) == (type(b) is bool) and bool(a == b)


class ORMap:
    """One replica of an OR-Map with its Merkle tree (item hash per key, §3.5.4).

    ``hlc`` stamps local adds and is advanced by merged remote records;
    ``wall_clock`` (int ms) decides TTL expiry and local removal times.
    """

    def __init__(
        self,
        hlc: Any = None,
        *,
        wall_clock: Callable[[], int] | None = None,
        merkle: bool = True,
    ) -> None:
        self._hlc = hlc
        self._items: dict[str, dict[str, ORMapRecord]] = {}
        self._tag_key: dict[str, str] = {}
        self._tombstones: dict[str, TombstoneInfo] = {}
        self._tombs_by_key: dict[str, set[str]] = {}
        self._merkle: MerkleTree | None = MerkleTree() if merkle else None
        if wall_clock is None:
            wall_clock = getattr(hlc, "wall_clock", None) or wall_millis
        self._wall: Callable[[], int] = wall_clock

    # -- internals ---------------------------------------------------------------------------------

    def _refresh(self, key: str) -> None:
        recs = self._items.get(key)
        if not recs:
            self._items.pop(key, None)
            if self._merkle is not None:
                self._merkle.remove(key)
        elif self._merkle is not None:
            self._merkle.update(key, or_entry_hash(key, recs))

    def _put(self, key: str, record: ORMapRecord) -> None:
        """Store ``record`` under ``key``, moving its tag away from another key if needed."""
        old_key = self._tag_key.get(record.tag)
        if old_key is not None and old_key != key:
            del self._items[old_key][record.tag]
            self._refresh(old_key)
        self._items.setdefault(key, {})[record.tag] = record
        self._tag_key[record.tag] = key

    def _drop_tag(self, tag: str) -> str | None:
        """Remove the record carrying ``tag`` wherever it is; return its key (Merkle not refreshed)."""
        key = self._tag_key.pop(tag, None)
        if key is not None:
            del self._items[key][tag]
        return key

    def _tombstone(self, tag: str, key: str | None, removed_at_ms: int | None) -> bool:
        """Record ``tag`` as removed; True when it was not tombstoned before."""
        info = self._tombstones.get(tag)
        if info is None:
            self._tombstones[tag] = TombstoneInfo(key, removed_at_ms)
            if key is not None:
                self._tombs_by_key.setdefault(key, set()).add(tag)
            return True
        learn_key = info.key is None and key is not None
        if learn_key or (info.removed_at_ms is None and removed_at_ms is not None):
            new_key = info.key if info.key is not None else key
            self._tombstones[tag] = TombstoneInfo(
                new_key, info.removed_at_ms if info.removed_at_ms is not None else removed_at_ms
            )
            if info.key is None and new_key is not None:
                self._tombs_by_key.setdefault(new_key, set()).add(tag)
        return False

    def _forget_tombstone(self, tag: str) -> None:
        info = self._tombstones.pop(tag)
        if info.key is not None:
            tags = self._tombs_by_key.get(info.key)
            if tags is not None:
                tags.discard(tag)
                if not tags:
                    del self._tombs_by_key[info.key]

    # -- local operations --------------------------------------------------------------------------

    def add(self, key: str, value: Any, ttl_ms: int | None = None) -> ORMapRecord:
        """Add ``value`` under ``key`` with a fresh timestamp and tag; return the record."""
        if self._hlc is None:
            raise ClockError("this ORMap has no HLC, so it cannot stamp local adds")
        ts: Timestamp = self._hlc.now()
        record = ORMapRecord(value, ts, str(ts), ttl_ms)
        self._put(key, record)
        self._refresh(key)
        return record

    def remove(self, key: str, value: Any) -> list[str]:
        """Remove every record of ``key`` whose value equals ``value``; return their tags (sorted)."""
        recs = self._items.get(key)
        if not recs:
            return []
        tags = sorted((t for t, r in recs.items() if _same_value(r.value, value)), key=utf16_sort_key)
        if not tags:
            return []
        now = self._wall()
        for tag in tags:
            self._drop_tag(tag)
            self._tombstone(tag, key, now)
        self._refresh(key)
        return tags

    # -- remote operations -------------------------------------------------------------------------

    def apply(self, key: str, record: ORMapRecord) -> bool:
        """Apply a remote add; True when the stored state changed (tombstoned tags are ignored)."""
        if record.tag in self._tombstones:
            return False
        if self._hlc is not None:
            self._hlc.update(record.timestamp)
        cur = self._items.get(key, {}).get(record.tag)
        if cur is not None and cur == record:
            return False
        self._put(key, record)
        self._refresh(key)
        return True

    def apply_tombstone(
        self, tag: str, key: str | None = None, removed_at_ms: int | None = None
    ) -> str | None:
        """Apply a remote remove of ``tag``; return the key whose record was removed, if any.

        ``key`` and ``removed_at_ms`` are remembered with the tombstone (a server
        passes the op's key and its own wall time); when ``key`` is not given the
        key of the removed record is remembered instead.
        """
        found = self._drop_tag(tag)
        self._tombstone(tag, key if key is not None else found, removed_at_ms)
        if found is not None:
            self._refresh(found)
        return found

    def merge_key(
        self,
        key: str,
        records: Iterable[ORMapRecord],
        tombstones: Iterable[str],
        removed_at_ms: int | None = None,
    ) -> bool:
        """Merge one sync entry (§3.3 mergeKey); True when records or tombstones changed."""
        changed = False
        touched: set[str] = {key}
        for tag in tombstones:
            found = self._drop_tag(tag)
            if found is not None:
                touched.add(found)
                changed = True
            if self._tombstone(tag, found, removed_at_ms):
                changed = True
        for record in records:
            if record.tag in self._tombstones:
                continue
            old_key = self._tag_key.get(record.tag)
            if old_key is None:
                self._put(key, record)
                changed = True
            else:
                cur = self._items[old_key][record.tag]
                if (record.timestamp[0], record.timestamp[1], record.timestamp[2]) > (
                    cur.timestamp[0],
                    cur.timestamp[1],
                    cur.timestamp[2],
                ):
                    touched.add(old_key)
                    self._put(key, record)
                    changed = True
            if self._hlc is not None:
                self._hlc.update(record.timestamp)
        for k in touched:
            self._refresh(k)
        return changed

    def discard(self, tag: str) -> str | None:
        """Forget the record carrying ``tag`` *without* tombstoning it; return its key, if any.

        For a replica that learns the same add exists under another tag (a server
        that regenerates tags, PROTOCOL.md §8 item 34): the tag may still arrive
        again later and is then stored as usual.
        """
        key = self._drop_tag(tag)
        if key is not None:
            self._refresh(key)
        return key

    # -- reads -------------------------------------------------------------------------------------

    def get(self, key: str) -> list[Any]:
        """Visible values of ``key`` (neither tombstoned nor expired), in tag order."""
        recs = self._items.get(key)
        if not recs:
            return []
        now = self._wall()
        return [recs[t].value for t in sorted(recs, key=utf16_sort_key) if not recs[t].is_expired(now)]

    def get_records(self, key: str) -> list[ORMapRecord]:
        """Every record of ``key`` (expired ones included), in tag order."""
        recs = self._items.get(key)
        if not recs:
            return []
        return [recs[t] for t in sorted(recs, key=utf16_sort_key)]

    def tombstones_for(self, key: str) -> list[str]:
        """Tombstoned tags known to have been removed under ``key`` (sorted)."""
        return sorted(self._tombs_by_key.get(key, ()), key=utf16_sort_key)

    def tombstone_tags(self) -> list[str]:
        """Every tombstoned tag of the map (sorted)."""
        return sorted(self._tombstones, key=utf16_sort_key)

    def tombstone_info(self, tag: str) -> TombstoneInfo | None:
        """What is known about the removal of ``tag``, or None when it is not tombstoned."""
        return self._tombstones.get(tag)

    def is_tombstoned(self, tag: str) -> bool:
        """True when ``tag`` has been removed."""
        return tag in self._tombstones

    def key_of(self, tag: str) -> str | None:
        """The key holding the record with ``tag``, or None when no record carries it."""
        return self._tag_key.get(tag)

    def keys(self) -> list[str]:
        """Keys with at least one visible value."""
        now = self._wall()
        return [k for k, recs in self._items.items() if any(not r.is_expired(now) for r in recs.values())]

    def record_keys(self) -> list[str]:
        """Keys holding at least one record (expired ones count): the keys of the Merkle tree."""
        return list(self._items)

    def tombstone_keys(self) -> list[str]:
        """Keys under which tombstones are known."""
        return list(self._tombs_by_key)

    def entries(self) -> list[tuple[str, list[ORMapRecord]]]:
        """``(key, records)`` for every key holding records."""
        return [(k, self.get_records(k)) for k in self._items]

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and bool(self.get(key))

    def __len__(self) -> int:
        return len(self.keys())

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    @property
    def record_count(self) -> int:
        """Number of stored records over all keys."""
        return len(self._tag_key)

    @property
    def hlc(self) -> Any:
        """The attached clock, or None."""
        return self._hlc

    @property
    def merkle(self) -> MerkleTree | None:
        """The maintained Merkle tree (None when created with ``merkle=False``)."""
        return self._merkle

    @property
    def root_hash(self) -> int:
        """Merkle root over the keys that hold records."""
        if self._merkle is not None:
            return int(self._merkle.root_hash)
        tree = MerkleTree()
        tree.update_many((k, or_entry_hash(k, recs)) for k, recs in self._items.items())
        return int(tree.root_hash)

    # -- maintenance -------------------------------------------------------------------------------

    def prune(
        self, older_than: Timestamp | None = None, *, removed_before_ms: int | None = None
    ) -> list[str]:
        """Forget tombstones; return the forgotten tags (sorted).

        ``older_than`` (client rule, §3.3): tags whose parsed timestamp is before
        it; unparsable tags are kept. ``removed_before_ms`` (server rule, §5.10):
        tombstones whose recorded removal time is before it; tombstones without
        a removal time are kept. With both, a tag matching either is forgotten.
        """
        horizon = None if older_than is None else (older_than[0], older_than[1], older_than[2])
        doomed: list[str] = []
        for tag, info in self._tombstones.items():
            if removed_before_ms is not None and info.removed_at_ms is not None:
                if info.removed_at_ms < removed_before_ms:
                    doomed.append(tag)
                    continue
            if horizon is not None:
                try:
                    ts = Timestamp.parse(tag)
                except ValueError:
                    continue
                if (ts.millis, ts.counter, ts.node_id) < horizon:
                    doomed.append(tag)
        for tag in doomed:
            self._forget_tombstone(tag)
        doomed.sort(key=utf16_sort_key)
        return doomed

    def clear(self) -> None:
        """Drop every record and tombstone; the clock is left alone."""
        self._items.clear()
        self._tag_key.clear()
        self._tombstones.clear()
        self._tombs_by_key.clear()
        if self._merkle is not None:
            self._merkle.clear()

    def __repr__(self) -> str:
        return f"ORMap(keys={len(self._items)}, tombstones={len(self._tombstones)}, root={self.root_hash})"
