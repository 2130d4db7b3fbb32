"""Last-writer-wins map (PROTOCOL.md §3.2, §2.3), pure-Python specification.

The compiled twin is :mod:`topgun._speedups._lww`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from topgun.core._hashing_py import lww_item_hash
from topgun.core._hlc_py import wall_millis
from topgun.core._merkle_py import MerkleTree
from topgun.core.records import LWWRecord, Timestamp
from topgun.errors import ClockError

__all__ = ["LWWMap"]


class LWWMap:
    """One replica of an LWW-Map: at most one :class:`LWWRecord` per key.

    ``hlc`` (an ``HLC`` of either twin) stamps local writes and is advanced by
    every merged remote timestamp; without it the map only accepts merges.
    ``merkle=False`` skips the Merkle upkeep (``root_hash`` is then computed on
    demand). ``wall_clock`` (int ms) decides TTL expiry; it defaults to the
    HLC's wall clock, else the system clock.
    """

    def __init__(
        self,
        hlc: Any = None,
        *,
        merkle: bool = True,
        wall_clock: Callable[[], int] | None = None,
    ) -> None:
        self._hlc = hlc
        self._data: dict[str, LWWRecord] = {}
        self._merkle: MerkleTree | None = MerkleTree() if merkle else None
        if wall_clock is None:
            wall_clock = getattr(hlc, "wall_clock", None) or wall_millis
        self._wall: Callable[[], int] = wall_clock

    @property
    def hlc(self) -> Any:
        """The attached clock, or None."""
        return self._hlc

    @property
    def merkle(self) -> MerkleTree | None:
        """The maintained Merkle tree, or None when created with ``merkle=False``."""
        return self._merkle

    @property
    def root_hash(self) -> int:
        """Merkle root over every record, tombstones and expired records included."""
        if self._merkle is not None:
            return self._merkle.root_hash
        tree = MerkleTree()
        tree.update_many((k, lww_item_hash(k, r.timestamp)) for k, r in self._data.items())
        return tree.root_hash

    # -- local writes ------------------------------------------------------------------------------

    def _stamp(self) -> Timestamp:
        if self._hlc is None:
            raise ClockError("this LWWMap has no HLC, so it cannot stamp local writes")
        ts: Timestamp = self._hlc.now()
        return ts

    def _store(self, key: str, record: LWWRecord) -> None:
        self._data[key] = record
        if self._merkle is not None:
            self._merkle.update(key, lww_item_hash(key, record.timestamp))

    def set(self, key: str, value: Any, ttl_ms: int | None = None) -> LWWRecord:
        """Write ``value`` under ``key`` with a fresh timestamp; return the stored record."""
        record = LWWRecord(value, self._stamp(), ttl_ms)
        self._store(key, record)
        return record

    def remove(self, key: str) -> LWWRecord:
        """Store a tombstone for ``key`` with a fresh timestamp; return it."""
        record = LWWRecord(None, self._stamp(), None)
        self._store(key, record)
        return record

    # -- remote merges -----------------------------------------------------------------------------

    def merge(self, key: str, record: LWWRecord) -> bool:
        """Merge a remote record (§3.2); True when it replaced the local one."""
        if self._hlc is not None:
            self._hlc.update(record.timestamp)
        return self._merge_record(key, record)

    def _merge_record(self, key: str, record: LWWRecord) -> bool:
        # §3.2 steps 2-3, once the clock has seen the record's timestamp.
        ts = record.timestamp
        local = self._data.get(key)
        if local is not None and not (
            (ts[0], ts[1], ts[2]) > (local.timestamp[0], local.timestamp[1], local.timestamp[2])
        ):
            return False
        self._store(key, record)
        return True

    def merge_many(self, pairs: Iterable[tuple[str, LWWRecord]]) -> list[str]:
        """Merge ``(key, record)`` pairs in order; return the keys that changed, in order.

        The pairs arrived together, so for the clock they are one receive event: the
        wall clock is read once, when the first pair is merged, and every timestamp of
        the batch is merged against that reading (``HLC.update(ts, wall)``). Reading it
        again per record would only measure this loop's own progress; the compiled twin
        would spend more time in the clock read than in the merge.
        """
        changed: list[str] = []
        hlc = self._hlc
        wall: int | None = None
        for key, record in pairs:
            if hlc is not None:
                if wall is None:
                    wall = hlc.wall_clock()
                hlc.update(record.timestamp, wall)
            if self._merge_record(key, record):
                changed.append(key)
        return changed

    def adopt(self, key: str, record: LWWRecord) -> bool:
        """Store ``record`` under ``key`` even when it is not newer; True when the record changed.

        For a server that re-stamps writes with its own clock (PROTOCOL.md §8 items
        28 and 34): its record for a value this replica already holds may carry an
        older timestamp, and only adopting it keeps later LWW decisions in step with
        the server's. The clock sees the timestamp as in :meth:`merge`; the Merkle
        tree follows the new record. Storing an equal record changes nothing.
        """
        if self._hlc is not None:
            self._hlc.update(record.timestamp)
        local = self._data.get(key)
        if local is not None and (local is record or local == record):
            return False
        self._store(key, record)
        return True

    # -- reads -------------------------------------------------------------------------------------

    def get(self, key: str) -> Any:
        """The live value of ``key``; None for absent keys, tombstones and expired records."""
        r = self._data.get(key)
        if r is None or not r.is_live(self._wall()):
            return None
        return r.value

    def get_record(self, key: str) -> LWWRecord | None:
        """The stored record of ``key`` (tombstones and expired records included), or None."""
        return self._data.get(key)

    def __contains__(self, key: object) -> bool:
        r = self._data.get(key) if isinstance(key, str) else None
        return r is not None and r.is_live(self._wall())

    def __len__(self) -> int:
        now = self._wall()
        return sum(1 for r in self._data.values() if r.is_live(now))

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def keys(self) -> list[str]:
        """Keys of live records."""
        now = self._wall()
        return [k for k, r in self._data.items() if r.is_live(now)]

    def values(self) -> list[Any]:
        """Values of live records."""
        now = self._wall()
        return [r.value for r in self._data.values() if r.is_live(now)]

    def items(self) -> list[tuple[str, Any]]:
        """``(key, value)`` of live records."""
        now = self._wall()
        return [(k, r.value) for k, r in self._data.items() if r.is_live(now)]

    def records(self) -> list[tuple[str, LWWRecord]]:
        """Every ``(key, record)``, tombstones and expired records included."""
        return list(self._data.items())

    @property
    def record_count(self) -> int:
        """Number of stored records, tombstones and expired records included."""
        return len(self._data)

    # -- maintenance -------------------------------------------------------------------------------

    def prune(self, older_than: Timestamp) -> list[str]:
        """Delete tombstones whose timestamp is before ``older_than``; return their keys."""
        horizon = (older_than[0], older_than[1], older_than[2])
        doomed = [
            k
            for k, r in self._data.items()
            if r.value is None and (r.timestamp[0], r.timestamp[1], r.timestamp[2]) < horizon
        ]
        for k in doomed:
            del self._data[k]
            if self._merkle is not None:
                self._merkle.remove(k)
        return doomed

    def clear(self) -> None:
        """Drop every record (and the Merkle contents); the clock is left alone."""
        self._data.clear()
        if self._merkle is not None:
            self._merkle.clear()

    def __repr__(self) -> str:
        return f"LWWMap(records={len(self._data)}, root={self.root_hash})"
