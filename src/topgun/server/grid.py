"""The in-memory data grid of the server: every map by name, one server HLC, one merge entry point.

Every source of changes goes through :meth:`Grid.apply` — client ops today,
other nodes and storage change feeds later::

    result = grid.apply([Change.put("todos", "k1", record)], Origin.client(ctx.connection_id))
    result.outcomes[0].status      # APPLIED / UNCHANGED / REJECTED (with code and reason)
    result.changes                 # the effective changes (also handed to every ChangeListener)
    await result.commit            # resolves once the storage transaction holding them committed

``apply`` is synchronous: it validates (map kind 409, clock drift 422, retention
horizon 409), merges into the CRDTs (Merkle trees kept up to date), stages the
effective changes into the group committer's open :class:`WriteBatch` without
any ``await``, then calls every registered :class:`ChangeListener` with the
effective changes and their :class:`Origin`. Authorization and shape checks are
the caller's job (they depend on the connection); everything that depends only
on the grid's state lives here so every source is judged the same way.

Live queries, the push notifier and later replication plug in as listeners
(``grid.add_listener(listener)``) and read maps through the :class:`MapProvider`
protocol, which :class:`Grid` implements.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections.abc import Callable, Container, Iterator, Sequence
from typing import Any, NamedTuple, Protocol, runtime_checkable

from topgun.core.hlc import HLC, wall_millis
from topgun.core.lww import LWWMap
from topgun.core.ormap import ORMap
from topgun.core.records import ORMapRecord, Timestamp
from topgun.server.changes import (
    APPLIED,
    SERVER_ORIGIN,
    UNCHANGED,
    ApplyResult,
    Change,
    ChangeKind,
    ChangeSource,
    Origin,
    Outcome,
    OutcomeStatus,
    drift_outcome,
)
from topgun.server.persistence import GroupCommitter
from topgun.server.storage.base import MapKind, Snapshot, Storage, StorageKind, WriteBatch
from topgun.server.writepath import apply_changes, apply_state

__all__ = [
    "DEFAULT_MAX_DRIFT_MS",
    "DEFAULT_RETENTION_MS",
    "NODE_ID_META_KEY",
    "SERVER_ORIGIN",
    "ApplyResult",
    "Change",
    "ChangeKind",
    "ChangeListener",
    "ChangeSource",
    "GcReport",
    "Grid",
    "MapProvider",
    "Origin",
    "Outcome",
    "OutcomeStatus",
    "make_node_id",
    "valid_node_id",
]

log = logging.getLogger("topgun.grid")

#: Default drift limit (ms) for incoming timestamps (PROTOCOL §5.6 step 4).
DEFAULT_MAX_DRIFT_MS = 60_000
#: Default tombstone retention R (ms): 30 days (§5.10).
DEFAULT_RETENTION_MS = 30 * 24 * 3600 * 1000
#: Storage meta key holding the server's node id.
NODE_ID_META_KEY = "node_id"

_NODE_ID_RE = re.compile(r"^[a-z0-9-]+$")


def valid_node_id(node_id: str) -> bool:
    """True for a non-empty node id made of lowercase ASCII letters, digits and ``-`` (§2.2)."""
    return bool(_NODE_ID_RE.match(node_id))


def make_node_id() -> str:
    """A fresh random server node id (``srv-`` + 12 lowercase hex digits)."""
    return "srv-" + uuid.uuid4().hex[:12]


# Module-level aliases: enum attribute access goes through a descriptor, too slow per op.
_OR_ADD = ChangeKind.OR_ADD
_LWW_MAP = MapKind.LWW
_OR_MAP = MapKind.OR
_APPLIED = APPLIED
_UNCHANGED = UNCHANGED


class GcReport(NamedTuple):
    """Result of one tombstone GC pass."""

    horizon: Timestamp
    #: map -> number of tombstones deleted
    pruned: dict[str, int]
    commit: asyncio.Future[None] | None


@runtime_checkable
class ChangeListener(Protocol):
    """Told, synchronously inside :meth:`Grid.apply`, about every effective change.

    A listener that only ever acts on some maps may also have a ``watched_maps``
    attribute: a live container of map names (a set or dict it keeps up to date)
    that holds at least every map it acts on. The grid then skips the call for a
    batch none of whose effective changes names a map in it; a batch that touches
    one still brings every change of the batch, as without the attribute. A dict
    says more: its value for a map is the collection of connection ids the
    listener acts for on that map, and a map whose only such connection is the
    origin's (``origin.connection_id``) does not count — a listener that never
    tells a connection about its own writes is not called for them.
    """

    def on_changes(self, changes: Sequence[Change], origin: Origin) -> None:
        """``changes`` are already merged and staged for persistence; do not mutate the grid here."""
        ...


@runtime_checkable
class MapProvider(Protocol):
    """Read access to the grid's maps (what handlers and the query engine depend on)."""

    @property
    def hlc(self) -> Any:
        """The server clock (``now()`` for server timestamps)."""
        ...

    def kind(self, map_name: str) -> MapKind | None:
        """The kind of ``map_name`` (fixed by its first write), ``None`` for an unknown map."""
        ...

    def lww(self, map_name: str) -> LWWMap | None:
        """The LWW-Map called ``map_name``, ``None`` when absent or of the other kind."""
        ...

    def ormap(self, map_name: str) -> ORMap | None:
        """The OR-Map called ``map_name``, ``None`` when absent or of the other kind."""
        ...

    def map_names(self) -> list[str]:
        """Names of every map with a kind."""
        ...

    def prune_horizon(self, map_name: str) -> Timestamp | None:
        """``P(M)``, or ``None`` when no tombstone of the map was ever pruned."""
        ...

    def add_listener(self, listener: ChangeListener) -> None:
        """Register ``listener`` for every future effective change."""
        ...


# --------------------------------------------------------------------------------------------- grid


class _TimedStorage:
    """Wraps a storage to report the duration of every ``write`` (commit latency metric)."""

    def __init__(self, inner: Storage, observe: Callable[[float], None]) -> None:
        self._inner = inner
        self._observe = observe

    @property
    def kind(self) -> StorageKind:
        return self._inner.kind

    @property
    def write_concurrency(self) -> int:
        return int(getattr(self._inner, "write_concurrency", 1))

    async def open(self) -> None:
        await self._inner.open()

    async def close(self) -> None:
        await self._inner.close()

    async def ping(self) -> bool:
        return await self._inner.ping()

    async def load(self) -> Snapshot:
        return await self._inner.load()

    async def write(self, batch: WriteBatch) -> None:
        t0 = time.perf_counter()
        await self._inner.write(batch)
        self._observe(time.perf_counter() - t0)


class Grid:
    """Every map of the server in memory, its clock, its prune horizons, and the merge entry point.

    ``storage`` is the opened backend; ``start()`` loads it and starts the group
    committer (it needs a running loop). ``wall_clock`` (int ms) is injectable
    for tests. ``retention_ms`` is the tombstone retention R (§5.10).
    ``commit_observer`` receives the duration (s) of every storage transaction.
    """

    def __init__(
        self,
        storage: Storage,
        *,
        max_drift_ms: int = DEFAULT_MAX_DRIFT_MS,
        retention_ms: int = DEFAULT_RETENTION_MS,
        wall_clock: Callable[[], int] | None = None,
        node_id: str | None = None,
        commit_observer: Callable[[float], None] | None = None,
        max_batch_ops: int = 10_000,
    ) -> None:
        if node_id is not None and not valid_node_id(node_id):
            raise ValueError(f"invalid server node id {node_id!r}: use lowercase ascii letters, digits, '-'")
        self.storage = storage
        self.max_drift_ms = int(max_drift_ms)
        self.retention_ms = int(retention_ms)
        self._wall: Callable[[], int] = wall_clock if wall_clock is not None else wall_millis
        self._node_id_override = node_id
        self._commit_observer = commit_observer
        self._max_batch_ops = int(max_batch_ops)
        self._hlc: Any = None
        self._kinds: dict[str, MapKind] = {}
        self._lww: dict[str, LWWMap] = {}
        self._or: dict[str, ORMap] = {}
        self._horizons: dict[str, Timestamp] = {}
        # (listener, its watched_maps or None): what apply_changes walks after every batch
        self._listeners: list[tuple[ChangeListener, Container[str] | None]] = []
        self.committer: GroupCommitter | None = None
        #: Counter states and lock fencing counters read by ``start()``, for the coordination
        #: handlers, so that start-up reads storage once.
        self.loaded_counters: dict[str, Any] = {}
        self.loaded_fencing: dict[str, int] = {}
        #: ``True`` when the storage is durable (``PERSISTED`` is reachable)
        self.durable = storage.kind is not StorageKind.MEMORY
        # A store that keeps no rows (private memory://) gets no LWW rows staged at all.
        self._keeps_rows = bool(getattr(storage, "keeps_rows", True))
        # What the merge step keeps of this grid once started (see writepath.apply_state).
        self._apply_state: Any = None

    # -- lifecycle ---------------------------------------------------------------------------------
    async def start(self) -> None:
        """Load everything from storage, fix the node id, start the group committer."""
        t0 = time.perf_counter()
        snapshot = await self.storage.load()
        node_id = self._node_id_override or snapshot.meta.get(NODE_ID_META_KEY)
        fresh = node_id is None or not valid_node_id(node_id)
        if fresh:
            node_id = make_node_id()
        assert node_id is not None
        self._hlc = HLC(node_id, max_drift_ms=self.max_drift_ms, wall_clock=self._wall)
        self._load(snapshot)
        self.loaded_counters = dict(snapshot.counters)
        self.loaded_fencing = dict(snapshot.fencing)
        target: Storage = self.storage
        if self._commit_observer is not None:
            target = _TimedStorage(self.storage, self._commit_observer)
        self.committer = GroupCommitter(target, max_batch_ops=self._max_batch_ops)
        self.committer.start()
        self._apply_state = apply_state(self)
        if fresh or snapshot.meta.get(NODE_ID_META_KEY) != node_id:
            self.committer.batch.set_meta(NODE_ID_META_KEY, node_id)
            await self.committer.commit_future()
        log.info(
            "grid loaded: %d maps, node id %s, in %.3f s", len(self._kinds), node_id, time.perf_counter() - t0
        )

    async def close(self) -> None:
        """Commit everything accepted so far, then stop the committer."""
        if self.committer is not None:
            await self.committer.close()

    def _load(self, snapshot: Snapshot) -> None:
        # merge_many/apply run hlc.update() per record, so the clock ends past every stored timestamp.
        for m in snapshot:
            if m.kind is None:
                continue
            self._kinds[m.name] = m.kind
            if m.prune_horizon is not None:
                self._horizons[m.name] = m.prune_horizon
            if m.kind is MapKind.LWW:
                lww = self._new_lww()
                lww.merge_many(m.lww.items())
                self._lww[m.name] = lww
            else:
                orm = self._new_or()
                for key, recs in m.or_records.items():
                    orm.merge_key(key, recs, ())  # one Merkle refresh per key, not per record
                for tag, (key, removed_at) in m.or_tombstones.items():
                    orm.apply_tombstone(tag, key or None, removed_at)
                self._or[m.name] = orm

    def _new_lww(self) -> LWWMap:
        return LWWMap(self._hlc, wall_clock=self._wall)

    def _new_or(self) -> ORMap:
        return ORMap(self._hlc, wall_clock=self._wall)

    # -- MapProvider -------------------------------------------------------------------------------
    @property
    def hlc(self) -> Any:
        if self._hlc is None:
            raise RuntimeError("grid not started")
        return self._hlc

    @property
    def node_id(self) -> str:
        """The server's node id (stable across restarts: persisted in storage meta)."""
        return str(self.hlc.node_id)

    def wall(self) -> int:
        """The grid's wall clock (ms)."""
        return self._wall()

    def kind(self, map_name: str) -> MapKind | None:
        return self._kinds.get(map_name)

    def lww(self, map_name: str) -> LWWMap | None:
        return self._lww.get(map_name)

    def ormap(self, map_name: str) -> ORMap | None:
        return self._or.get(map_name)

    def map_names(self) -> list[str]:
        return list(self._kinds)

    def prune_horizon(self, map_name: str) -> Timestamp | None:
        return self._horizons.get(map_name)

    def add_listener(self, listener: ChangeListener) -> None:
        self._listeners.append((listener, getattr(listener, "watched_maps", None)))

    def remove_listener(self, listener: ChangeListener) -> None:
        """Stop telling ``listener`` about changes."""
        for i, (known, _watched) in enumerate(self._listeners):
            if known is listener:
                del self._listeners[i]
                return
        raise ValueError(f"{listener!r} is not a listener of this grid")

    def map_sizes(self) -> Iterator[tuple[str, int]]:
        """``(map, live entries)`` for metrics."""
        for name, lww in self._lww.items():
            yield name, len(lww)
        for name, orm in self._or.items():
            yield name, len(orm)

    # -- the merge entry point ---------------------------------------------------------------------
    #: ``apply(changes, origin) -> ApplyResult``: validate, merge, stage for persistence and
    #: announce ``changes``, one by one, in order. Per change (PROTOCOL §5.6 steps 3-8): map kind
    #: (409), clock drift (422), retention horizon (409), clock update, merge; then the listeners
    #: hear of the effective changes. Never awaits. The merge step's twins are the method itself
    #: (no Python frame in between); its rule is :func:`topgun.server._writepath_py.apply_changes`.
    apply = apply_changes

    def _register(self, name: str, m: LWWMap | ORMap, batch: WriteBatch) -> None:
        """Make ``m`` the map called ``name``: its kind is fixed from now on (and stored)."""
        if isinstance(m, LWWMap):
            kind = _LWW_MAP
            self._lww[name] = m
        else:
            kind = _OR_MAP
            self._or[name] = m
        self._kinds[name] = kind
        batch.set_map_kind(name, kind)

    def _ensure_or(self, name: str, have: MapKind | None, batch: WriteBatch) -> None:
        if have is None:
            self._register(name, self._new_or(), batch)

    def _apply_or_add(
        self,
        ch: Change,
        have: MapKind | None,
        wall: int,
        max_drift: int,
        batch: WriteBatch,
        effective: list[Change],
    ) -> Outcome:
        record = ch.or_record
        if record is None or not record.tag:
            return Outcome(OutcomeStatus.REJECTED, 400, "OR_ADD without a tagged record")
        ts = record.timestamp
        if ts[0] - wall > max_drift:
            return drift_outcome(ts[0], wall)
        name = ch.map_name
        orm = self._or.get(name)
        horizon = self._horizons.get(name)
        if horizon is not None and (ts[0], ts[1], ts[2]) < (horizon[0], horizon[1], horizon[2]):
            present = orm is not None and any(r.tag == record.tag for r in orm.get_records(ch.key))
            if not present:
                return Outcome(
                    OutcomeStatus.REJECTED, 409, f"add is older than the retention horizon {horizon}"
                )
        self._ensure_or(name, have, batch)
        if orm is None:
            orm = self._or[name]
        if orm.is_tombstoned(record.tag):
            return _UNCHANGED
        moved_from = orm.key_of(record.tag)
        if ch.replace:
            changed = orm.apply(ch.key, record)
        else:
            changed = orm.merge_key(ch.key, (record,), ())
        if not changed:
            return _UNCHANGED
        if moved_from is not None and moved_from != ch.key:
            # The same tag under another key (a misbehaving client): the record moved, so its old
            # row must go or a reload would find the tag twice.
            batch.or_delete(name, moved_from, record.tag)
        batch.or_put(name, ch.key, record)
        effective.append(Change(name, ch.key, _OR_ADD, or_record=record))
        return _APPLIED

    def _apply_or_remove(
        self,
        ch: Change,
        have: MapKind | None,
        wall: int,
        max_drift: int,
        batch: WriteBatch,
        effective: list[Change],
    ) -> Outcome:
        tag = ch.or_tag
        if not tag:
            return Outcome(OutcomeStatus.REJECTED, 400, "OR_REMOVE without a tag")
        ts = ch.timestamp
        if ts is not None and ts[0] - wall > max_drift:
            return drift_outcome(ts[0], wall)
        name = ch.map_name
        self._ensure_or(name, have, batch)
        orm = self._or[name]
        if ts is not None:
            self._hlc.update(ts)
        if orm.is_tombstoned(tag):
            return _UNCHANGED
        key = ch.key
        removed: ORMapRecord | None = None
        if key:
            # Keep the record carrying the tag for listeners (a query may need its value).
            for rec in orm.get_records(key):
                if rec.tag == tag:
                    removed = rec
                    break
        # The tombstone is filed under the key where the tag was found; else under the op's key
        # (an empty key means "unknown": push-diff tombstones are not tied to one entry).
        found = orm.apply_tombstone(tag, None, wall)
        if found is not None:
            owner = found
            batch.or_delete(name, found, tag)
        else:
            owner = key
            if key:
                orm.apply_tombstone(tag, key, wall)
        batch.or_tombstone_put(name, tag, owner, wall)
        effective.append(Change(name, owner, ChangeKind.OR_REMOVE, or_record=removed, or_tag=tag))
        return _APPLIED

    # -- tombstone GC ------------------------------------------------------------------------------
    def gc(self, now_ms: int | None = None) -> GcReport:
        """One GC pass (§5.10 item 2): prune tombstones older than ``wall - R``, record ``P(M)``."""
        committer = self.committer
        if committer is None:
            raise RuntimeError("grid not started")
        now = self._wall() if now_ms is None else int(now_ms)
        horizon = Timestamp(now - self.retention_ms, 0, self.node_id)
        batch = committer.batch
        pruned: dict[str, int] = {}
        for name, lww in self._lww.items():
            keys = lww.prune(horizon)
            if keys:
                for key in keys:
                    batch.lww_delete(name, key)
                pruned[name] = len(keys)
        for name, orm in self._or.items():
            tags = orm.prune(removed_before_ms=horizon.millis)
            if tags:
                for tag in tags:
                    batch.or_tombstone_delete(name, tag)
                pruned[name] = len(tags)
        for name in pruned:
            self._horizons[name] = horizon
            batch.set_prune_horizon(name, horizon)
        commit = committer.commit_future() if batch else None
        if pruned:
            log.info("tombstone GC: pruned %d tombstones in %d maps (horizon %s)",
                     sum(pruned.values()), len(pruned), horizon)
        return GcReport(horizon, pruned, commit)

