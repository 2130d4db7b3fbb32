"""In-process storage: the full :class:`~topgun.server.storage.base.Storage` contract, no durability.

Rows are kept exactly as the SQL backends keep them (encoded value bytes plus
timestamp columns), so a test that passes on memory exercises the same
encode/decode path. Instances opened with the same non-empty name
(``memory://name``) share one store for the life of the process, which lets a
test "restart" a server without a database.

``memory://`` is private, and a private store keeps no rows at all: no later
opener can ever load it, and the server's grid already holds every record in
memory, so a second copy would only double the process's memory. Its
``write()`` accepts and discards batches and its ``load()`` is always empty.
"""

from __future__ import annotations

import threading

from topgun.errors import StorageError

from .base import SCHEMA_VERSION, LWWRow, ORRow, Snapshot, SnapshotBuilder, StorageKind, WriteBatch

__all__ = ["MemoryStorage"]


class _Store:
    def __init__(self) -> None:
        self.lww: dict[tuple[str, str], LWWRow] = {}
        self.or_records: dict[tuple[str, str, str], ORRow] = {}
        self.or_tombstones: dict[tuple[str, str], tuple[str, int]] = {}
        self.map_kinds: dict[str, str] = {}
        self.horizons: dict[str, tuple[int, int, str]] = {}
        self.counters: dict[str, bytes] = {}
        self.fencing: dict[str, int] = {}
        self.meta: dict[str, str] = {}
        self.schema_version = SCHEMA_VERSION


_shared: dict[str, _Store] = {}
_shared_lock = threading.Lock()


class MemoryStorage:
    """Storage kept in this process only (``memory://`` or ``memory://name``)."""

    def __init__(self, name: str = "") -> None:
        self.name = name
        self._store: _Store | None = None

    @property
    def kind(self) -> StorageKind:
        return StorageKind.MEMORY

    @property
    def keeps_rows(self) -> bool:
        """False for a private store: its ``write()`` discards every batch (see the module doc)."""
        return bool(self.name)

    @property
    def schema_version(self) -> int:
        """The schema version of the store (constant; present for parity with the SQL backends)."""
        return self._require().schema_version

    async def open(self) -> None:
        if self._store is not None:
            return
        if self.name:
            with _shared_lock:
                store = _shared.get(self.name)
                if store is None:
                    store = _shared[self.name] = _Store()
        else:
            store = _Store()
        self._store = store

    async def close(self) -> None:
        # A private store dies with the instance; a named one lives on for the next opener.
        self._store = None

    async def ping(self) -> bool:
        return self._store is not None

    def _require(self) -> _Store:
        if self._store is None:
            raise StorageError("memory storage is not open")
        return self._store

    async def load(self) -> Snapshot:
        s = self._require()
        b = SnapshotBuilder()
        for name, kind in s.map_kinds.items():
            b.kind(name, kind)
        for name, (hm, hc, hn) in s.horizons.items():
            b.horizon(name, hm, hc, hn)
        for (m, k), (v, ms, ct, node, ttl) in s.lww.items():
            b.lww(m, k, v, ms, ct, node, ttl)
        for (m, k, t), (v, ms, ct, node, ttl) in s.or_records.items():
            b.or_record(m, k, t, v, ms, ct, node, ttl)
        for (m, t), (k, at) in s.or_tombstones.items():
            b.or_tombstone(m, t, k, at)
        for name, state in s.counters.items():
            b.counter(name, state)
        for name, token in s.fencing.items():
            b.fencing(name, token)
        for key, value in s.meta.items():
            b.meta(key, value)
        return b.build()

    async def write(self, batch: WriteBatch) -> None:
        s = self._require()
        if not self.name:
            return
        # Nothing below can fail half way (plain dict operations on validated rows),
        # so the batch is applied atomically from the event loop's point of view.
        for lk, lrow in batch.lww.items():
            if lrow is None:
                s.lww.pop(lk, None)
            else:
                s.lww[lk] = lrow
        for ok, orow in batch.or_records.items():
            if orow is None:
                s.or_records.pop(ok, None)
            else:
                s.or_records[ok] = orow
        for tk, tomb in batch.or_tombstones.items():
            if tomb is None:
                s.or_tombstones.pop(tk, None)
            else:
                s.or_tombstones[tk] = tomb
        for name, kind in batch.map_kinds.items():
            s.map_kinds[name] = kind.value
        for name, ts in batch.horizons.items():
            s.horizons[name] = (ts.millis, ts.counter, ts.node_id)
        s.counters.update(batch.counters)
        s.fencing.update(batch.fencing)
        s.meta.update(batch.meta)

    def __repr__(self) -> str:
        return f"MemoryStorage(name={self.name!r}, open={self._store is not None})"
