"""Map handles returned by :meth:`TopGunClient.get_map` and :meth:`TopGunClient.get_or_map`.

Reads and writes are local and synchronous: a write is applied to the replica
and committed to local storage with its op-log entry before it returns; the
sync engine sends it when there is a connection.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from topgun.client.state import MapEvent, ORMapEvent
from topgun.core.lww import LWWMap
from topgun.core.ormap import ORMap
from topgun.core.records import LWWRecord, ORMapRecord

if TYPE_CHECKING:
    from topgun.client.store import LocalStore

__all__ = ["LWWMapHandle", "ORMapHandle"]

_Replica = TypeVar("_Replica", LWWMap, ORMap)


class _MapHandle(Generic[_Replica]):
    """What both handles share: the map's name, its local replica and the read-only container
    protocol over the replica's live keys."""

    __slots__ = ("_map", "_store", "name")

    def __init__(self, store: LocalStore, name: str, replica: _Replica) -> None:
        self._store = store
        self.name = name
        self._map: _Replica = replica

    def __contains__(self, key: object) -> bool:
        return key in self._map

    def __len__(self) -> int:
        return len(self._map)

    def __iter__(self) -> Iterator[str]:
        return iter(self._map.keys())

    def keys(self) -> list[str]:
        """Keys with a live (visible) value."""
        return self._map.keys()

    @property
    def root_hash(self) -> int:
        """The Merkle root of this replica (equal to the server's when in sync)."""
        return int(self._map.root_hash)


class LWWMapHandle(_MapHandle[LWWMap]):
    """A last-writer-wins map: one value per key."""

    __slots__ = ("get",)

    def __init__(self, store: LocalStore, name: str) -> None:
        super().__init__(store, name, store.lww(name))
        # Reads go straight to the replica: no wrapper call on the hot path.
        self.get: Callable[[str], Any] = self._map.get

    def set(self, key: str, value: Any, ttl_ms: int | None = None) -> LWWRecord:
        """Write ``value`` (not None) under ``key``; raises ``BackpressureError`` at the op-log cap."""
        return self._store.lww_set(self.name, key, value, ttl_ms)

    async def aset(self, key: str, value: Any, ttl_ms: int | None = None) -> LWWRecord:
        """Like :meth:`set`, but waits for room in the op log instead of raising at the cap."""
        await self._store.wait_for_room()
        return self._store.lww_set(self.name, key, value, ttl_ms)

    async def aremove(self, key: str) -> LWWRecord:
        """Like :meth:`remove`, but waits for room in the op log."""
        await self._store.wait_for_room()
        return self._store.lww_remove(self.name, key)

    def remove(self, key: str) -> LWWRecord:
        """Delete ``key`` (stores a tombstone that syncs like any write)."""
        return self._store.lww_remove(self.name, key)

    def get_record(self, key: str) -> LWWRecord | None:
        """The raw stored record (tombstones and expired records included)."""
        return self._map.get_record(key)

    def __getitem__(self, key: str) -> Any:
        v = self._map.get(key)
        if v is None:
            raise KeyError(key)
        return v

    def __setitem__(self, key: str, value: Any) -> None:
        self.set(key, value)

    def __delitem__(self, key: str) -> None:
        self.remove(key)

    def values(self) -> list[Any]:
        """Values of live keys."""
        return self._map.values()

    def items(self) -> list[tuple[str, Any]]:
        """``(key, value)`` of live keys."""
        return self._map.items()

    def records(self) -> list[tuple[str, LWWRecord]]:
        """Every stored ``(key, record)``, tombstones included."""
        return self._map.records()

    def subscribe(self, callback: Callable[[MapEvent], None]) -> Callable[[], None]:
        """Call ``callback(MapEvent)`` on every local and remote change; returns the unsubscribe callable."""
        return self._store.subscribe(self.name, callback)

    def __repr__(self) -> str:
        return f"LWWMapHandle({self.name!r}, records={self._map.record_count})"


class ORMapHandle(_MapHandle[ORMap]):
    """An observed-remove map: a set of values per key; concurrent adds survive removes."""

    __slots__ = ()

    def __init__(self, store: LocalStore, name: str) -> None:
        super().__init__(store, name, store.ormap(name))

    def add(self, key: str, value: Any, ttl_ms: int | None = None) -> ORMapRecord:
        """Add ``value`` under ``key`` (a new tagged record)."""
        return self._store.or_add(self.name, key, value, ttl_ms)

    def remove(self, key: str, value: Any) -> list[str]:
        """Remove every observed record of ``key`` equal to ``value``; return the removed tags."""
        return self._store.or_remove(self.name, key, value)

    async def aadd(self, key: str, value: Any, ttl_ms: int | None = None) -> ORMapRecord:
        """Like :meth:`add`, but waits for room in the op log instead of raising at the cap."""
        await self._store.wait_for_room()
        return self._store.or_add(self.name, key, value, ttl_ms)

    def get(self, key: str) -> list[Any]:
        """Visible values of ``key`` (empty list when none)."""
        return self._map.get(key)

    def get_records(self, key: str) -> list[ORMapRecord]:
        """Every record of ``key`` (expired ones included), in tag order."""
        return self._map.get_records(key)

    def items(self) -> list[tuple[str, list[Any]]]:
        """``(key, values)`` of keys with visible values."""
        return [(k, self._map.get(k)) for k in self._map.keys()]

    def subscribe(self, callback: Callable[[ORMapEvent], None]) -> Callable[[], None]:
        """Call ``callback(ORMapEvent)`` on every local and remote change; returns an unsubscriber."""
        return self._store.subscribe(self.name, callback)

    def __repr__(self) -> str:
        return f"ORMapHandle({self.name!r}, keys={len(self._map.record_keys())})"
