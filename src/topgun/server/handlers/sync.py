"""LWW-Map Merkle sync walk (PROTOCOL §5.8) and the reset rule of §5.10 item 4.

``SYNC_INIT`` → ``SYNC_RESP_ROOT`` (or ``SYNC_RESET_REQUIRED`` once per
connection and map when the client's ``lastSyncTimestamp`` is older than the
map's prune horizon); ``MERKLE_REQ_BUCKET`` → ``SYNC_RESP_BUCKETS`` for paths of
length 0-2, ``SYNC_RESP_LEAF`` (every record, tombstones included) for length 3,
``ERROR`` 400 for anything else.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from topgun.core.merkle import DEPTH
from topgun.errors import ProtocolError
from topgun.protocol.messages import (
    LeafRecord,
    MerkleReqBucket,
    SyncInit,
    SyncResetRequired,
    SyncRespBuckets,
    SyncRespLeaf,
    SyncRespRoot,
)
from topgun.server.interfaces import RequestContext
from topgun.server.storage.base import MapKind

if TYPE_CHECKING:
    from topgun.server.handlers import CoreServices

__all__ = ["RESET_SENT_KEY", "SyncHandler", "check_path"]

#: ``ctx.data`` key: maps for which this connection already got SYNC_RESET_REQUIRED.
RESET_SENT_KEY = "sync.reset_sent"

_HEX = frozenset("0123456789abcdef")


def check_path(path: str) -> None:
    """Raise ``ProtocolError`` (400) unless ``path`` is 0-3 lowercase hex characters (§3.5.1)."""
    if len(path) > DEPTH or not _HEX.issuperset(path):
        raise ProtocolError(f"invalid Merkle path {path!r}: expected 0-3 lowercase hex digits", field="path")


class SyncHandler:
    """Processor of ``SYNC_INIT`` and ``MERKLE_REQ_BUCKET``."""

    def __init__(self, core: CoreServices) -> None:
        self.core = core

    def _admit(self, ctx: RequestContext, map_name: str, kind_name: str) -> bool:
        """Read permission and map kind; sends ``ERROR`` and returns False when refused."""
        core = self.core
        if not core.acl.can_read(ctx, map_name):
            details = {"type": kind_name, "mapName": map_name}
            ctx.send_error(403, f"no permission to read map {map_name!r}", details)
            return False
        if core.grid.kind(map_name) is MapKind.OR:
            ctx.send_error(409, f"map {map_name!r} is an OR map", {"type": kind_name, "mapName": map_name})
            return False
        core.push.add_interest(ctx, map_name)
        return True

    def handle(self, ctx: RequestContext, msg: SyncInit | MerkleReqBucket) -> None:
        if isinstance(msg, SyncInit):
            self.sync_init(ctx, msg)
        else:
            self.bucket(ctx, msg)

    def sync_init(self, ctx: RequestContext, msg: SyncInit) -> None:
        name = msg.map_name
        if not self._admit(ctx, name, "SYNC_INIT"):
            return
        grid = self.core.grid
        horizon = grid.prune_horizon(name)
        if horizon is not None and (msg.last_sync_timestamp or 0) < horizon.millis:
            sent: set[str] | None = ctx.data.get(RESET_SENT_KEY)
            if sent is None:
                sent = ctx.data[RESET_SENT_KEY] = set()
            if name not in sent:
                sent.add(name)
                ctx.send(
                    SyncResetRequired(
                        map_name=name,
                        reason=f"tombstones older than {horizon} were pruned after the client's last sync",
                    )
                )
                return
        lww = grid.lww(name)
        root = int(lww.root_hash) if lww is not None else 0
        ctx.send(SyncRespRoot(map_name=name, root_hash=root, timestamp=grid.hlc.now()))

    def bucket(self, ctx: RequestContext, msg: MerkleReqBucket) -> None:
        name = msg.map_name
        path = msg.path
        check_path(path)
        if not self._admit(ctx, name, "MERKLE_REQ_BUCKET"):
            return
        lww = self.core.grid.lww(name)
        tree = lww.merkle if lww is not None else None
        if len(path) < DEPTH:
            buckets = tree.buckets(path) if tree is not None else {}
            ctx.send(SyncRespBuckets(map_name=name, path=path, buckets=dict(buckets)))
            return
        records: list[LeafRecord] = []
        if lww is not None and tree is not None:
            get = lww.get_record
            for key in tree.leaf(path):
                rec = get(key)
                if rec is not None:
                    records.append(LeafRecord(key=key, record=rec))
        ctx.send(SyncRespLeaf(map_name=name, path=path, records=records))
