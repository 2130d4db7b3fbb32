"""The storage seam of the server: one ``Storage`` protocol, one ``WriteBatch``, one ``Snapshot``.

The server keeps the whole grid in memory and uses storage for durability
only: at start it calls :meth:`Storage.load` once to rebuild every map (and its
Merkle tree), and from then on it writes one :class:`WriteBatch` per
transaction through the group committer (``topgun.server.persistence``).

A ``WriteBatch`` is filled synchronously on the event loop. It coalesces: only
the last change per row survives (per ``(map, key)`` for LWW records, per
``(map, key, tag)`` for OR records, per ``(map, tag)`` for OR tombstones, per
name for counters, fencing counters, map kinds, horizons and meta entries), so a
hot key written a thousand times between two commits costs one row write.

Values are encoded to MsgPack bytes when they are recorded (not when they are
written), so a value object mutated after it was staged cannot change what is
stored. Everything a backend could refuse (an unencodable value, a NUL
character in a text column, an integer beyond 64 bits) is refused when it is
recorded, with a :class:`~topgun.errors.StorageError` raised to the caller:
a row that can never be written must not reach a transaction, because the
group committer retries failed transactions until they succeed.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import msgpack

from topgun.core.records import LWWRecord, ORMapRecord, Timestamp
from topgun.errors import StorageError

__all__ = [
    "SCHEMA_VERSION",
    "CounterState",
    "LWWRow",
    "MapKind",
    "MapSnapshot",
    "ORRow",
    "Snapshot",
    "Storage",
    "StorageKind",
    "WriteBatch",
    "batches_overlap",
    "check_lww_row",
    "decode_value",
    "encode_value",
]

#: Version of the relational schema written by the SQL backends (both use the same numbering).
SCHEMA_VERSION = 1

#: A PN-counter state as persisted: ``{"p": {node: n}, "n": {node: n}}``.
CounterState = dict[str, dict[str, Any]]


class StorageKind(str, enum.Enum):
    """Which backend a :class:`Storage` is."""

    MEMORY = "memory"
    SQLITE = "sqlite"
    POSTGRESQL = "postgresql"


class MapKind(str, enum.Enum):
    """The CRDT kind of a map, fixed by its first write (PROTOCOL §5.6 step 3)."""

    LWW = "lww"
    OR = "or"


# One packer for every call: ``msgpack.packb`` builds a new ``Packer`` per value, which cost more
# than packing a small value. Safe to share: values are encoded on the event loop thread only, the
# packer resets its buffer when packing fails, and it runs no Python code for the built-in types.
_pack = msgpack.Packer(use_bin_type=True).pack


def encode_value(value: Any) -> bytes:
    """Encode one user value as MsgPack bytes (``bin`` kept distinct from ``str``)."""
    try:
        return _pack(value)
    except (TypeError, ValueError, OverflowError) as exc:
        raise StorageError(f"value cannot be encoded as MsgPack: {exc}") from exc


def decode_value(data: bytes) -> Any:
    """Decode bytes written by :func:`encode_value`.

    ``timestamp=0`` keeps the MsgPack timestamp extension (type -1) as a
    ``msgpack.Timestamp``, which re-encodes to the same bytes; the other
    choices (float, int ns, datetime) would turn a user's value into another
    type. Other extension types come back as ``msgpack.ExtType`` unchanged.
    ``strict_map_key=False`` because storage must never refuse to load what it
    accepted.
    """
    return msgpack.unpackb(data, raw=False, timestamp=0, strict_map_key=False)


_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1


def _nul_error(what: str) -> StorageError:
    return StorageError(f"{what} contains a NUL character, which storage cannot hold (PostgreSQL text)")


def _int64(n: int, what: str) -> int:
    n = int(n)
    if not _INT64_MIN <= n <= _INT64_MAX:
        raise StorageError(f"{what} {n} does not fit a signed 64-bit integer column")
    return n


def _ts_row(ts: Timestamp) -> tuple[int, int, str]:
    millis = int(ts.millis)
    counter = int(ts.counter)
    if not (0 <= millis <= _INT64_MAX and 0 <= counter <= _INT64_MAX):
        raise StorageError(f"timestamp {ts!s} does not fit signed 64-bit integer columns")
    node = ts.node_id
    if "\x00" in node:
        raise _nul_error("timestamp node id")
    return millis, counter, node


def _ttl(ttl_ms: int | None) -> int | None:
    return None if ttl_ms is None else _int64(ttl_ms, "ttl_ms")


def check_lww_row(map_name: str, key: str, record: LWWRecord) -> None:
    """Raise :class:`StorageError` when storage columns could not hold this LWW row.

    The checks of :meth:`WriteBatch.lww_put`, in its order, except encoding the
    value: for a store that keeps no rows, which still refuses what the others would.
    """
    if "\x00" in map_name or "\x00" in key:
        raise _nul_error("map name or key")
    _ts_row(record[1])
    _ttl(record[2])


# Row shapes held by a WriteBatch (values already encoded; ``None`` value = LWW tombstone).
#: ``(value bytes or None, millis, counter, node_id, ttl_ms)``
LWWRow = tuple["bytes | None", int, int, str, "int | None"]
#: ``(value bytes, millis, counter, node_id, ttl_ms)``
ORRow = tuple[bytes, int, int, str, "int | None"]


class WriteBatch:
    """A mutable, coalescing set of changes applied by :meth:`Storage.write` in one transaction.

    Every ``*_put``/``*_set`` replaces any earlier change to the same row in this
    batch, and every ``*_delete`` replaces an earlier put (and vice versa): the
    last call per row wins. The attributes are the coalesced rows; backends read
    them, callers use the methods.
    """

    __slots__ = (
        "counters",
        "fencing",
        "horizons",
        "lww",
        "map_kinds",
        "meta",
        "or_records",
        "or_tombstones",
        "recorded",
    )

    def __init__(self) -> None:
        #: (map, key) -> LWWRow, or None to delete the row (a pruned tombstone)
        self.lww: dict[tuple[str, str], LWWRow | None] = {}
        #: (map, key, tag) -> ORRow, or None to delete the record
        self.or_records: dict[tuple[str, str, str], ORRow | None] = {}
        #: (map, tag) -> (key, removed_at_ms), or None to forget the tombstone
        self.or_tombstones: dict[tuple[str, str], tuple[str, int] | None] = {}
        #: map -> kind
        self.map_kinds: dict[str, MapKind] = {}
        #: map -> prune horizon P(M)
        self.horizons: dict[str, Timestamp] = {}
        #: counter name -> encoded state
        self.counters: dict[str, bytes] = {}
        #: lock name -> last fencing token issued
        self.fencing: dict[str, int] = {}
        #: meta key -> value
        self.meta: dict[str, str] = {}
        #: number of recording calls (before coalescing)
        self.recorded = 0

    # -- LWW ---------------------------------------------------------------------------------
    def lww_put(self, map_name: str, key: str, record: LWWRecord) -> None:
        """Store ``record`` (a tombstone when ``record.value is None``) as the row of ``(map, key)``."""
        if "\x00" in map_name or "\x00" in key:
            raise _nul_error("map name or key")
        value, ts, ttl = record
        millis, counter, node = ts
        # _ts_row and _ttl inlined: this runs once per written op.
        if (
            type(millis) is not int
            or type(counter) is not int
            or not (0 <= millis <= _INT64_MAX and 0 <= counter <= _INT64_MAX)
            or "\x00" in node
            or (ttl is not None and (type(ttl) is not int or not _INT64_MIN <= ttl <= _INT64_MAX))
        ):
            millis, counter, node = _ts_row(ts)
            ttl = _ttl(ttl)
        self.lww[(map_name, key)] = (
            None if value is None else encode_value(value),
            millis,
            counter,
            node,
            ttl,
        )
        self.recorded += 1

    def lww_delete(self, map_name: str, key: str) -> None:
        """Remove the row of ``(map, key)`` entirely (tombstone GC)."""
        self.lww[(map_name, key)] = None
        self.recorded += 1

    # -- OR ----------------------------------------------------------------------------------
    def or_put(self, map_name: str, key: str, record: ORMapRecord) -> None:
        """Store the OR record ``record`` under ``key`` (identified by ``(map, key, record.tag)``)."""
        tag = record.tag
        if "\x00" in map_name or "\x00" in key or "\x00" in tag:
            raise _nul_error("map name, key or tag")
        millis, counter, node = _ts_row(record.timestamp)
        self.or_records[(map_name, key, tag)] = (
            encode_value(record.value),
            millis,
            counter,
            node,
            _ttl(record.ttl_ms),
        )
        self.recorded += 1

    def or_delete(self, map_name: str, key: str, tag: str) -> None:
        """Remove the OR record with ``tag`` under ``key``."""
        self.or_records[(map_name, key, tag)] = None
        self.recorded += 1

    def or_tombstone_put(self, map_name: str, tag: str, key: str, removed_at_ms: int) -> None:
        """Record that ``tag`` (of ``key``) was removed at server time ``removed_at_ms``."""
        if "\x00" in map_name or "\x00" in key or "\x00" in tag:
            raise _nul_error("map name, key or tag")
        self.or_tombstones[(map_name, tag)] = (key, _int64(removed_at_ms, "removed_at_ms"))
        self.recorded += 1

    def or_tombstone_delete(self, map_name: str, tag: str) -> None:
        """Forget the tombstone of ``tag`` (OR tombstone GC)."""
        self.or_tombstones[(map_name, tag)] = None
        self.recorded += 1

    # -- per map -----------------------------------------------------------------------------
    def set_map_kind(self, map_name: str, kind: MapKind) -> None:
        """Persist the kind of ``map_name``."""
        if "\x00" in map_name:
            raise _nul_error("map name")
        self.map_kinds[map_name] = MapKind(kind)
        self.recorded += 1

    def set_prune_horizon(self, map_name: str, horizon: Timestamp) -> None:
        """Persist the prune horizon ``P(M)`` of ``map_name`` (PROTOCOL §5.10)."""
        if "\x00" in map_name:
            raise _nul_error("map name")
        self.horizons[map_name] = Timestamp(*_ts_row(horizon))
        self.recorded += 1

    # -- server-wide -------------------------------------------------------------------------
    def set_counter(self, name: str, state: CounterState) -> None:
        """Persist the full PN-counter state of ``name`` (``{"p": {...}, "n": {...}}``)."""
        if "\x00" in name:
            raise _nul_error("counter name")
        self.counters[name] = encode_value({"p": dict(state.get("p", {})), "n": dict(state.get("n", {}))})
        self.recorded += 1

    def set_fencing(self, name: str, token: int) -> None:
        """Persist the last fencing token issued for lock ``name``."""
        if "\x00" in name:
            raise _nul_error("lock name")
        self.fencing[name] = _int64(token, "fencing token")
        self.recorded += 1

    def set_meta(self, key: str, value: str) -> None:
        """Persist a small server-wide setting (e.g. ``"node_id"``)."""
        value = str(value)
        if "\x00" in key or "\x00" in value:
            raise _nul_error("meta key or value")
        self.meta[key] = value
        self.recorded += 1

    # -- bookkeeping -------------------------------------------------------------------------
    def __len__(self) -> int:
        """Number of distinct rows this batch will write or delete."""
        return (
            len(self.lww)
            + len(self.or_records)
            + len(self.or_tombstones)
            + len(self.map_kinds)
            + len(self.horizons)
            + len(self.counters)
            + len(self.fencing)
            + len(self.meta)
        )

    def __bool__(self) -> bool:
        # Every recording call leaves at least one row (a delete is a row too), so a batch holds
        # rows exactly when something was recorded.
        return self.recorded > 0

    def or_split(self) -> tuple[list[tuple[str, str, str, ORRow]], list[tuple[str, str, str]]]:
        """``(upserts, deletes)`` of OR records: upserts as ``(map, key, tag, row)``."""
        ups: list[tuple[str, str, str, ORRow]] = []
        dels: list[tuple[str, str, str]] = []
        for (m, k, t), row in self.or_records.items():
            if row is None:
                dels.append((m, k, t))
            else:
                ups.append((m, k, t, row))
        return ups, dels

    def tombstone_split(self) -> tuple[list[tuple[str, str, str, int]], list[tuple[str, str]]]:
        """``(upserts, deletes)`` of OR tombstones: upserts as ``(map, tag, key, removed_at_ms)``."""
        ups: list[tuple[str, str, str, int]] = []
        dels: list[tuple[str, str]] = []
        for (m, t), v in self.or_tombstones.items():
            if v is None:
                dels.append((m, t))
            else:
                ups.append((m, t, v[0], v[1]))
        return ups, dels

    def __repr__(self) -> str:
        return f"WriteBatch(rows={len(self)}, recorded={self.recorded})"


def batches_overlap(a: WriteBatch, b: WriteBatch) -> bool:
    """Whether two batches must not be written at the same time.

    ``False`` only when both hold nothing but LWW rows and map kinds and share no row: then
    the order in which their transactions commit cannot change what is stored.
    """
    # Every other kind of row (OR records and tombstones, horizons, counters...) goes through the
    # storage one transaction at a time, so what a crash can leave of them stays a prefix of the
    # batches.
    if a.or_records or a.or_tombstones or a.horizons or a.counters or a.fencing or a.meta:
        return True
    if b.or_records or b.or_tombstones or b.horizons or b.counters or b.fencing or b.meta:
        return True
    return not (
        a.lww.keys().isdisjoint(b.lww.keys()) and a.map_kinds.keys().isdisjoint(b.map_kinds.keys())
    )


@dataclass
class MapSnapshot:
    """Everything stored for one map."""

    name: str
    #: the persisted kind; inferred from the data when no kind row exists; None for a map with neither
    kind: MapKind | None = None
    #: key -> record, tombstones and expired records included
    lww: dict[str, LWWRecord] = field(default_factory=dict)
    #: key -> records of that key
    or_records: dict[str, list[ORMapRecord]] = field(default_factory=dict)
    #: tag -> (key, removed_at_ms)
    or_tombstones: dict[str, tuple[str, int]] = field(default_factory=dict)
    #: P(M), or None when no tombstone of the map was ever pruned
    prune_horizon: Timestamp | None = None


@dataclass
class Snapshot:
    """Everything needed to rebuild the server state, as returned by :meth:`Storage.load`."""

    maps: dict[str, MapSnapshot] = field(default_factory=dict)
    #: counter name -> ``{"p": {node: n}, "n": {node: n}}``
    counters: dict[str, CounterState] = field(default_factory=dict)
    #: lock name -> last fencing token issued
    fencing: dict[str, int] = field(default_factory=dict)
    meta: dict[str, str] = field(default_factory=dict)

    def map(self, name: str) -> MapSnapshot:
        """The snapshot of ``name``, created empty if absent."""
        m = self.maps.get(name)
        if m is None:
            m = self.maps[name] = MapSnapshot(name)
        return m

    def __iter__(self) -> Iterator[MapSnapshot]:
        return iter(self.maps.values())

    def finish(self) -> Snapshot:
        """Infer missing map kinds from the data (backends call this once after filling)."""
        for m in self.maps.values():
            if m.kind is None:
                if m.lww:
                    m.kind = MapKind.LWW
                elif m.or_records or m.or_tombstones:
                    m.kind = MapKind.OR
        return self


class SnapshotBuilder:
    """Helper for backends: turns stored rows back into records."""

    def __init__(self) -> None:
        self.snapshot = Snapshot()

    def kind(self, map_name: str, kind: str) -> None:
        self.snapshot.map(map_name).kind = MapKind(kind)

    def horizon(self, map_name: str, millis: int, counter: int, node_id: str) -> None:
        self.snapshot.map(map_name).prune_horizon = Timestamp(int(millis), int(counter), node_id)

    def lww(
        self,
        map_name: str,
        key: str,
        value: bytes | None,
        millis: int,
        counter: int,
        node_id: str,
        ttl_ms: int | None,
    ) -> None:
        self.snapshot.map(map_name).lww[key] = LWWRecord(
            None if value is None else decode_value(value),
            Timestamp(int(millis), int(counter), node_id),
            None if ttl_ms is None else int(ttl_ms),
        )

    def or_record(
        self,
        map_name: str,
        key: str,
        tag: str,
        value: bytes,
        millis: int,
        counter: int,
        node_id: str,
        ttl_ms: int | None,
    ) -> None:
        recs = self.snapshot.map(map_name).or_records.setdefault(key, [])
        recs.append(
            ORMapRecord(
                decode_value(value),
                Timestamp(int(millis), int(counter), node_id),
                tag,
                None if ttl_ms is None else int(ttl_ms),
            )
        )

    def or_tombstone(self, map_name: str, tag: str, key: str, removed_at_ms: int) -> None:
        self.snapshot.map(map_name).or_tombstones[tag] = (key, int(removed_at_ms))

    def counter(self, name: str, state: bytes) -> None:
        self.snapshot.counters[name] = decode_value(state)

    def fencing(self, name: str, token: int) -> None:
        self.snapshot.fencing[name] = int(token)

    def meta(self, key: str, value: str) -> None:
        self.snapshot.meta[key] = value

    def build(self) -> Snapshot:
        return self.snapshot.finish()


@runtime_checkable
class Storage(Protocol):
    """Durable server state. Every method is a coroutine except ``kind``.

    Contract: ``open()`` creates or migrates the schema (idempotent); ``load()``
    returns everything stored; ``write(batch)`` applies the whole batch in one
    transaction (all or nothing) and returns only after it is durable;
    concurrent ``write`` calls are applied one after the other, in call order.
    Every failure is raised as :class:`topgun.errors.StorageError`.

    Optional: a backend that keeps no rows at all (a private ``memory://`` store,
    whose ``load()`` is always empty) sets ``keeps_rows = False``; the grid then
    stages no LWW rows for it (it still refuses rows the others could not hold).

    Optional: a backend whose transactions may overlap declares an ``int``
    attribute ``write_concurrency`` above 1 (PostgreSQL, SQLite: 2). The group committer
    then keeps up to that many ``write`` calls in flight, but only for batches
    that share no row with any uncommitted earlier batch (see
    :func:`batches_overlap`), so the outcome is still
    that of call order. Without the attribute, one call at a time.
    """

    @property
    def kind(self) -> StorageKind:
        """Which backend this is."""
        ...

    async def open(self) -> None:
        """Connect, create or migrate the schema."""
        ...

    async def close(self) -> None:
        """Release connections and threads; further writes raise ``StorageError``."""
        ...

    async def ping(self) -> bool:
        """True when the backend answers (for readiness probes); never raises."""
        ...

    async def load(self) -> Snapshot:
        """Read everything stored."""
        ...

    async def write(self, batch: WriteBatch) -> None:
        """Apply ``batch`` in one transaction; return once it is committed."""
        ...
