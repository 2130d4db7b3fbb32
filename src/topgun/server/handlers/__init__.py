"""The core message handlers: writes, push, LWW and OR-Map sync, tombstone GC.

:func:`register_core_handlers` wires them into a :class:`~topgun.server.app.TopGunServer`
(``TopGunServer`` calls it by default): it registers the processors, builds the
:class:`~topgun.server.grid.Grid` at start-up (after storage opened), and
commits everything accepted at shutdown. The shared pieces are reachable as
``server.core`` (:class:`CoreServices`): ``grid`` (a
:class:`~topgun.server.grid.MapProvider` with ``apply``), ``push`` (interest
tracking, ``add_interest(ctx, map)``), ``acl`` (:class:`SchemaProvider`),
``gc``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from topgun.errors import ConfigError
from topgun.protocol.messages import MessageType, WriteConcern
from topgun.server.grid import ChangeListener, Grid
from topgun.server.handlers.acl import AllowAll, MapAcl, SchemaProvider, acl_from_config
from topgun.server.handlers.gc import GcTask
from topgun.server.handlers.ormap_sync import ClientApplyAckHandler, ORMapSyncHandler
from topgun.server.handlers.push import PushNotifier
from topgun.server.handlers.sync import SyncHandler
from topgun.server.handlers.write import WriteHandler
from topgun.server.metrics import ServerMetrics
from topgun.server.persistence import GroupCommitter

if TYPE_CHECKING:
    from topgun.server.app import TopGunServer

__all__ = [
    "AllowAll",
    "CoreServices",
    "MapAcl",
    "SchemaProvider",
    "register_core_handlers",
]

log = logging.getLogger("topgun.server")


class CoreServices:
    """What the core handlers share: the grid, the push notifier, the ACL, metrics and settings."""

    def __init__(self, server: TopGunServer) -> None:
        cfg = server.config
        self.server = server
        self.metrics: ServerMetrics = server.metrics
        self.acl: SchemaProvider = acl_from_config(getattr(cfg, "map_acl", None))
        self.push = PushNotifier(self.acl)
        raw_wc = str(getattr(cfg, "write_concern", "PERSISTED")).upper()
        try:
            self.default_concern = WriteConcern(raw_wc)
        except ValueError:
            raise ConfigError(f"write_concern must be one of {[w.value for w in WriteConcern]}") from None
        self.max_drift_ms = int(getattr(cfg, "max_drift_ms", 60_000))
        self.retention_ms = int(float(getattr(cfg, "tombstone_retention", 30 * 86400.0)) * 1000)
        self.gc_interval_s = float(getattr(cfg, "gc_interval", 3600.0))
        self.node_id: str | None = getattr(cfg, "node_id", None) or None
        self._grid: Grid | None = None
        self._listeners: list[ChangeListener] = [self.push]
        self.gc: GcTask | None = None

    def add_listener(self, listener: ChangeListener) -> None:
        """Register a grid :class:`~topgun.server.grid.ChangeListener`, also before start-up.

        Listeners are called in registration order; the push notifier is first.
        """
        self._listeners.append(listener)
        if self._grid is not None:
            self._grid.add_listener(listener)

    @property
    def grid(self) -> Grid:
        """The grid (after start-up)."""
        grid = self._grid
        if grid is None:
            raise RuntimeError("the grid is not loaded yet (server not started)")
        return grid

    @property
    def loaded_grid(self) -> Grid | None:
        """The grid, or ``None`` before start-up (for code that may run earlier)."""
        return self._grid

    @property
    def committer(self) -> GroupCommitter | None:
        return self._grid.committer if self._grid is not None else None

    @property
    def durable(self) -> bool:
        """True when acknowledged writes can reach ``PERSISTED`` (not on ``memory://``)."""
        return self._grid is not None and self._grid.durable

    async def start(self, server: TopGunServer) -> None:
        grid = Grid(
            server.storage,
            max_drift_ms=self.max_drift_ms,
            retention_ms=self.retention_ms,
            node_id=self.node_id,
        )
        await grid.start()
        for listener in self._listeners:
            grid.add_listener(listener)
        self._grid = grid
        self.metrics.add_map_size_collector(grid.map_sizes)
        if grid.committer is not None:
            # The committer already times every transaction: attach its histogram, no second timer.
            self.metrics.storage_commit_seconds.add_source(grid.committer.stats.latency)
        self.gc = GcTask(grid, lambda: list(server.sessions.values()), self.gc_interval_s)
        self.gc.start()

    async def stop(self, server: TopGunServer) -> None:
        if self.gc is not None:
            await self.gc.stop()
        grid = self._grid
        if grid is not None:
            try:
                await grid.close()
            except Exception:
                log.exception("committing the last accepted writes failed")
            # Let the ack callbacks of the last commits run before the connections close.
            for _ in range(3):
                await asyncio.sleep(0)


def register_core_handlers(server: TopGunServer) -> CoreServices:
    """Register the write, sync and OR-sync processors plus grid start/stop hooks on ``server``."""
    core = CoreServices(server)
    write = WriteHandler(core)
    sync = SyncHandler(core)
    orsync = ORMapSyncHandler(core)
    reg = server.processors
    reg.register(MessageType.OP_BATCH, write)
    reg.register(MessageType.CLIENT_OP, write)
    reg.register(MessageType.SYNC_INIT, sync)
    reg.register(MessageType.MERKLE_REQ_BUCKET, sync)
    for kind in (
        MessageType.ORMAP_SYNC_INIT,
        MessageType.ORMAP_MERKLE_REQ_BUCKET,
        MessageType.ORMAP_PUSH_DIFF,
        MessageType.ORMAP_DIFF_REQUEST,
    ):
        reg.register(kind, orsync)
    reg.register(MessageType.CLIENT_APPLY_ACK, ClientApplyAckHandler())
    server.on_startup(core.start)
    server.on_shutdown(core.stop)
    server.core = core
    return core

