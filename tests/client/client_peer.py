"""A test-side protocol peer: server replicas (core LWWMap/ORMap) answering sync requests per §5.8/§5.9.

It lets the sans-I/O engine be exercised message by message without a socket;
every message in both directions goes through the real wire codec, so shapes
are checked too. The integration tests use the real server instead.
"""

from __future__ import annotations

from typing import Any

from topgun.client.engine import SyncEngine
from topgun.core.hashing import route
from topgun.core.hlc import HLC
from topgun.core.lww import LWWMap
from topgun.core.ormap import ORMap
from topgun.protocol import codec
from topgun.protocol.messages import (
    LeafRecord,
    MerkleReqBucket,
    OpAck,
    OpBatch,
    OpType,
    ORMapEntry,
    ORMapMerkleReqBucket,
    ORMapPushDiff,
    ORMapSyncInit,
    ORMapSyncRespBuckets,
    ORMapSyncRespLeaf,
    ORMapSyncRespRoot,
    SyncInit,
    SyncRespBuckets,
    SyncRespLeaf,
    SyncRespRoot,
)


def wire(msg: Any) -> Any:
    """Round-trip a message through the codec (checks it is encodable and decodes the same)."""
    return codec.decode(codec.encode(msg))


class Peer:
    def __init__(self) -> None:
        self.hlc = HLC("server")
        self.lww: dict[str, LWWMap] = {}
        self.ors: dict[str, ORMap] = {}
        self.received: list[Any] = []
        self.auto_ack = True

    def lmap(self, name: str) -> LWWMap:
        return self.lww.setdefault(name, LWWMap(self.hlc))

    def omap(self, name: str) -> ORMap:
        return self.ors.setdefault(name, ORMap(self.hlc))

    def answer(self, msg: Any) -> list[Any]:
        msg = wire(msg)
        self.received.append(msg)
        if isinstance(msg, OpBatch):
            for op in msg.ops:
                if op.op_type in (OpType.PUT, OpType.REMOVE):
                    self.lmap(op.map_name).merge(op.key, op.record)
                elif op.op_type is OpType.OR_ADD:
                    self.omap(op.map_name).apply(op.key, op.or_record)
                else:
                    self.omap(op.map_name).apply_tombstone(op.or_tag, op.key)
            return [OpAck(last_id=msg.ops[-1].id)] if self.auto_ack else []
        if isinstance(msg, SyncInit):
            return [SyncRespRoot(map_name=msg.map_name, root_hash=self.lmap(msg.map_name).root_hash,
                                 timestamp=self.hlc.now())]
        if isinstance(msg, MerkleReqBucket):
            m = self.lmap(msg.map_name)
            if len(msg.path) < 3:
                buckets = m.merkle.buckets(msg.path)
                return [SyncRespBuckets(map_name=msg.map_name, path=msg.path, buckets=buckets)]
            keys = m.merkle.keys_under(msg.path)
            return [SyncRespLeaf(map_name=msg.map_name, path=msg.path,
                                 records=[LeafRecord(key=k, record=m.get_record(k)) for k in keys])]
        if isinstance(msg, ORMapSyncInit):
            return [ORMapSyncRespRoot(map_name=msg.map_name, root_hash=self.omap(msg.map_name).root_hash,
                                      timestamp=self.hlc.now())]
        if isinstance(msg, ORMapMerkleReqBucket):
            m = self.omap(msg.map_name)
            if len(msg.path) < 3:
                return [ORMapSyncRespBuckets(map_name=msg.map_name, path=msg.path,
                                             buckets=m.merkle.buckets(msg.path))]
            keys = set(m.merkle.keys_under(msg.path))
            keys |= {k for k in m.tombstone_keys() if route(k)[:3] == msg.path}
            return [ORMapSyncRespLeaf(map_name=msg.map_name, path=msg.path, entries=[
                ORMapEntry(key=k, records=m.get_records(k), tombstones=m.tombstones_for(k))
                for k in sorted(keys)])]
        if isinstance(msg, ORMapPushDiff):
            m = self.omap(msg.map_name)
            for e in msg.entries:
                m.merge_key(e.key, e.records, e.tombstones)
            return []
        return []


def converse(engine: SyncEngine, peer: Peer, first: list[Any], limit: int = 100_000) -> int:
    """Deliver messages back and forth until both sides are quiet; return how many were exchanged."""
    queue = list(first)
    n = 0
    while queue:
        msg = queue.pop(0)
        n += 1
        assert n < limit, "conversation does not end"
        for reply in peer.answer(msg):
            queue.extend(engine.receive(wire(reply)))
    return n
