"""OR-Map sync (PROTOCOL §5.9): walk, push-diff, diff request; ``CLIENT_APPLY_ACK`` ignored.

Epoch mode is not implemented: ``coveringEpoch`` is never sent and
``CLIENT_APPLY_ACK`` is accepted and ignored. OR tombstones are bounded by
time instead (§5.10): ``fullResync: true`` when the client's
``lastSyncTimestamp`` is older than the map's prune horizon.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from topgun.core.hashing import route
from topgun.core.merkle import DEPTH
from topgun.core.ormap import ORMap
from topgun.protocol.messages import (
    ClientApplyAck,
    ORMapDiffRequest,
    ORMapDiffResponse,
    ORMapEntry,
    ORMapMerkleReqBucket,
    ORMapPushDiff,
    ORMapSyncInit,
    ORMapSyncRespBuckets,
    ORMapSyncRespLeaf,
    ORMapSyncRespRoot,
)
from topgun.server.grid import Change, Origin
from topgun.server.handlers.sync import check_path
from topgun.server.interfaces import RequestContext
from topgun.server.storage.base import MapKind

if TYPE_CHECKING:
    from topgun.server.handlers import CoreServices

__all__ = ["ClientApplyAckHandler", "ORMapSyncHandler", "entry_of"]


def entry_of(orm: ORMap | None, key: str) -> ORMapEntry:
    """The server's sync entry of ``key``: its records and the tags tombstoned under it."""
    if orm is None:
        return ORMapEntry(key=key, records=[], tombstones=[])
    return ORMapEntry(key=key, records=orm.get_records(key), tombstones=orm.tombstones_for(key))


class ORMapSyncHandler:
    """Processor of ``ORMAP_SYNC_INIT``, ``ORMAP_MERKLE_REQ_BUCKET``, ``ORMAP_PUSH_DIFF`` and
    ``ORMAP_DIFF_REQUEST``."""

    def __init__(self, core: CoreServices) -> None:
        self.core = core

    def handle(self, ctx: RequestContext, msg: Any) -> None:
        if isinstance(msg, ORMapSyncInit):
            self.sync_init(ctx, msg)
        elif isinstance(msg, ORMapMerkleReqBucket):
            self.bucket(ctx, msg)
        elif isinstance(msg, ORMapPushDiff):
            self.push_diff(ctx, msg)
        elif isinstance(msg, ORMapDiffRequest):
            self.diff_request(ctx, msg)

    def _admit(self, ctx: RequestContext, map_name: str, kind_name: str, *, write: bool = False) -> bool:
        core = self.core
        details = {"type": kind_name, "mapName": map_name}
        allowed = core.acl.can_write(ctx, map_name) if write else core.acl.can_read(ctx, map_name)
        if not allowed:
            verb = "write" if write else "read"
            ctx.send_error(403, f"no permission to {verb} map {map_name!r}", details)
            return False
        if core.grid.kind(map_name) is MapKind.LWW:
            ctx.send_error(409, f"map {map_name!r} is an LWW map", details)
            return False
        core.push.add_interest(ctx, map_name)
        return True

    def sync_init(self, ctx: RequestContext, msg: ORMapSyncInit) -> None:
        name = msg.map_name
        if not self._admit(ctx, name, "ORMAP_SYNC_INIT"):
            return
        grid = self.core.grid
        horizon = grid.prune_horizon(name)
        full = horizon is not None and (msg.last_sync_timestamp or 0) < horizon.millis
        orm = grid.ormap(name)
        ctx.send(
            ORMapSyncRespRoot(
                map_name=name,
                root_hash=orm.root_hash if orm is not None else 0,
                timestamp=grid.hlc.now(),
                full_resync=True if full else None,
            )
        )

    def bucket(self, ctx: RequestContext, msg: ORMapMerkleReqBucket) -> None:
        name = msg.map_name
        path = msg.path
        check_path(path)
        if not self._admit(ctx, name, "ORMAP_MERKLE_REQ_BUCKET"):
            return
        orm = self.core.grid.ormap(name)
        tree = orm.merkle if orm is not None else None
        if len(path) < DEPTH:
            buckets = tree.buckets(path) if tree is not None else {}
            ctx.send(ORMapSyncRespBuckets(map_name=name, path=path, buckets=dict(buckets)))
            return
        entries: list[ORMapEntry] = []
        if orm is not None:
            keys = set(tree.leaf(path)) if tree is not None else set()
            # Keys emptied by removes have no tree node but must still deliver their tombstones.
            keys.update(k for k in orm.tombstone_keys() if route(k).startswith(path))
            entries = [entry_of(orm, k) for k in sorted(keys)]
        ctx.send(ORMapSyncRespLeaf(map_name=name, path=path, entries=entries))

    def diff_request(self, ctx: RequestContext, msg: ORMapDiffRequest) -> None:
        name = msg.map_name
        if not self._admit(ctx, name, "ORMAP_DIFF_REQUEST"):
            return
        orm = self.core.grid.ormap(name)
        ctx.send(ORMapDiffResponse(map_name=name, entries=[entry_of(orm, k) for k in msg.keys]))

    def push_diff(self, ctx: RequestContext, msg: ORMapPushDiff) -> None:
        name = msg.map_name
        if not self._admit(ctx, name, "ORMAP_PUSH_DIFF", write=True):
            return
        changes: list[Change] = []
        seen_tags: set[str] = set()
        for entry in msg.entries:
            for tag in entry.tombstones:
                if tag and tag not in seen_tags:
                    seen_tags.add(tag)
                    # The key is unknown (the TS client repeats the map's tombstones in every entry):
                    # an empty key lets the grid file the tombstone under the key where it finds the tag.
                    changes.append(Change.or_remove(name, "", tag))
        for entry in msg.entries:
            for rec in entry.records:
                if rec.tag:
                    changes.append(Change.or_add(name, entry.key, rec, replace=False))
        grid = self.core.grid
        if changes:
            grid.apply(changes, Origin.sync(ctx.connection_id))
        orm = grid.ormap(name)
        differing: list[ORMapEntry] = []
        for entry in msg.entries:
            server = entry_of(orm, entry.key)
            pushed = {r.tag: r.timestamp for r in entry.records}
            held = {r.tag: r.timestamp for r in server.records}
            if (
                pushed.keys() != held.keys()
                or any(held[t] != pushed[t] for t in held)
                or not set(server.tombstones).issubset(entry.tombstones)
            ):
                differing.append(server)
        if differing:
            ctx.send(ORMapDiffResponse(map_name=name, entries=differing))


class ClientApplyAckHandler:
    """``CLIENT_APPLY_ACK`` without epoch mode: accepted and ignored, no reply (§5.9)."""

    def handle(self, ctx: RequestContext, msg: ClientApplyAck) -> None:
        return None
