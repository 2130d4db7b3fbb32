"""The client against a scripted TopGun v2 (reference) server (PROTOCOL.md §8 items 33-39).

:class:`RefServer` plays the reference server's observable behaviour over the
sans-I/O engine: it re-stamps every write with its own clock and regenerates OR
tags (item 34), refuses a whole ``OP_BATCH`` with ``ERROR`` when told to (35),
acks ``ORMAP_PUSH_DIFF`` with an internal call number and an empty batch with
``"unknown"`` (36), reports roots and bucket hashes that never equal the
client's, deletes LWW keys instead of keeping tombstones and sends ``REMOVE``
events without a record (37), and refuses ``BATCH`` frames (38). Every message
in both directions goes through the real codec.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgpack
import pytest
from client_peer import converse, wire
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from support.clocks import Wall
from topgun.client.counter import CounterHandle, CounterManager
from topgun.client.engine import SyncEngine
from topgun.client.state import ChangeOrigin
from topgun.client.storage import MemoryStorage, SQLiteStorage
from topgun.client.store import LocalStore
from topgun.core.counter import PNCounter
from topgun.core.hashing import lww_item_hash, route
from topgun.core.hlc import HLC
from topgun.core.merkle import MerkleTree
from topgun.core.ormap import ORMap
from topgun.core.records import LWWRecord, ORMapRecord, Timestamp
from topgun.protocol import codec
from topgun.protocol.messages import (
    AuthAck,
    Batch,
    Error,
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
    ServerBatchEvent,
    ServerEvent,
    ServerEventType,
    SyncInit,
    SyncRespBuckets,
    SyncRespLeaf,
    SyncRespRoot,
)

CLIENT_T0 = 1_700_000_600_000
#: The reference server's wall clock runs 10 minutes behind the client's: its re-stamped
#: timestamps are older than the client's own (the case where the LWW rule alone keeps ours).
SERVER_T0 = 1_700_000_000_000


def _mangle(h: int) -> int:
    # The reference combines its per-partition trees once more: never our value for a non-empty node.
    return (h ^ 0xA5A5A5A5) or 1 if h else 0


class RefServer:
    """A scripted reference server holding LWW maps (no tombstones) and OR maps (regenerated tags)."""

    def __init__(self) -> None:
        self.wall = Wall(SERVER_T0)
        self.hlc = HLC("refsrv", wall_clock=self.wall)
        self.lww: dict[str, dict[str, LWWRecord]] = {}
        self.ors: dict[str, ORMap] = {}
        self.received: list[Any] = []
        self.refuse_batches = False
        # Internal call counter for the push-diff OP_ACK (item 36). Were it ever equal to the last id
        # of one of our unacknowledged batches, the exact-match rule could not tell them apart.
        self.calls = 7_000
        self.processed_ops = 0

    def lmap(self, name: str) -> dict[str, LWWRecord]:
        return self.lww.setdefault(name, {})

    def omap(self, name: str) -> ORMap:
        return self.ors.setdefault(name, ORMap(None))

    def _lww_tree(self, name: str) -> MerkleTree:
        tree = MerkleTree()
        tree.update_many((k, lww_item_hash(k, r.timestamp)) for k, r in self.lmap(name).items())
        return tree

    # -- writes coming from elsewhere (another connection) --------------------------------------

    def other_put(self, name: str, key: str, value: Any) -> ServerEvent:
        rec = LWWRecord(value, self.hlc.now(), None)
        self.lmap(name)[key] = rec
        return ServerEvent(map_name=name, event_type=ServerEventType.PUT, key=key, record=rec)

    def other_remove(self, name: str, key: str) -> ServerEvent:
        self.lmap(name).pop(key, None)
        return ServerEvent(map_name=name, event_type=ServerEventType.REMOVE, key=key)

    def other_or_add(self, name: str, key: str, value: Any) -> ServerEvent:
        ts = self.hlc.now()
        rec = ORMapRecord(value, ts, str(ts), None)
        self.omap(name).apply(key, rec)
        return ServerEvent(map_name=name, event_type=ServerEventType.OR_ADD, key=key, or_record=rec)

    # -- the protocol ----------------------------------------------------------------------------

    def answer(self, msg: Any) -> list[Any]:
        msg = wire(msg)
        assert not isinstance(msg, Batch), "the client must not send BATCH to a reference server"
        self.received.append(msg)
        if isinstance(msg, OpBatch):
            self.calls += 1
            if self.refuse_batches:
                return [Error(code=400, message="Invalid message format")]
            if not msg.ops:
                return [OpAck(last_id="unknown")]
            for op in msg.ops:
                self.processed_ops += 1
                ts = self.hlc.now()  # arrival time replaces the client's timestamp
                if op.op_type is OpType.PUT:
                    self.lmap(op.map_name)[op.key] = LWWRecord(op.record.value, ts, op.record.ttl_ms)
                elif op.op_type is OpType.REMOVE:
                    self.lmap(op.map_name).pop(op.key, None)
                elif op.op_type is OpType.OR_ADD:
                    r = op.or_record
                    self.omap(op.map_name).apply(op.key, ORMapRecord(r.value, ts, str(ts), r.ttl_ms))
                else:
                    self.omap(op.map_name).apply_tombstone(op.or_tag, op.key)
            return [OpAck(last_id=msg.ops[-1].id)]
        if isinstance(msg, SyncInit):
            root = _mangle(self._lww_tree(msg.map_name).root_hash)
            return [SyncRespRoot(map_name=msg.map_name, root_hash=root, timestamp=self.hlc.now())]
        if isinstance(msg, MerkleReqBucket):
            assert len(msg.path) <= 3
            tree = self._lww_tree(msg.map_name)
            if len(msg.path) < 3:
                return [SyncRespBuckets(map_name=msg.map_name, path=msg.path,
                                        buckets={c: _mangle(h) for c, h in tree.buckets(msg.path).items()})]
            data = self.lmap(msg.map_name)
            leaf = [LeafRecord(key=k, record=data[k]) for k in tree.keys_under(msg.path)]
            return [SyncRespLeaf(map_name=msg.map_name, path=msg.path, records=leaf)]
        if isinstance(msg, ORMapSyncInit):
            root = _mangle(self.omap(msg.map_name).root_hash)
            return [ORMapSyncRespRoot(map_name=msg.map_name, root_hash=root, timestamp=self.hlc.now())]
        if isinstance(msg, ORMapMerkleReqBucket):
            assert len(msg.path) <= 3
            m = self.omap(msg.map_name)
            assert m.merkle is not None
            if len(msg.path) < 3:
                return [ORMapSyncRespBuckets(
                    map_name=msg.map_name, path=msg.path,
                    buckets={c: _mangle(h) for c, h in m.merkle.buckets(msg.path).items()})]
            tombs = m.tombstone_tags()  # every tombstone of the map, in each entry
            return [ORMapSyncRespLeaf(map_name=msg.map_name, path=msg.path, entries=[
                ORMapEntry(key=k, records=m.get_records(k), tombstones=tombs)
                for k in m.merkle.keys_under(msg.path)])]
        if isinstance(msg, ORMapPushDiff):
            self.calls += 1
            m = self.omap(msg.map_name)
            events: list[Any] = []
            for e in msg.entries:
                m.merge_key(e.key, e.records, e.tombstones)  # tags kept as pushed
                events.extend(ServerEvent(map_name=msg.map_name, event_type=ServerEventType.OR_ADD,
                                          key=e.key, or_record=r) for r in e.records)
            # An OP_ACK with an internal call number, and OR_ADD events to the pusher too.
            return [OpAck(last_id=str(self.calls)), *events]
        return []

    def sent(self, kind: type) -> list[Any]:
        return [m for m in self.received if isinstance(m, kind)]


@pytest.fixture(params=["memory", "sqlite"])
def storage_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    if request.param == "memory":
        mem = MemoryStorage()
        return lambda: mem
    return lambda: SQLiteStorage(tmp_path / "ref.db")


@pytest.fixture
def client_wall() -> Wall:
    return Wall(CLIENT_T0)


@pytest.fixture
def store(storage_factory: Any, client_wall: Wall) -> LocalStore:
    s = LocalStore(storage_factory(), node_id="client-a", wall_clock=client_wall)
    s.open()
    return s


def reopen(store: LocalStore, storage_factory: Any, client_wall: Wall) -> LocalStore:
    store.close()
    s = LocalStore(storage_factory(), node_id="client-a", wall_clock=client_wall)
    s.open()
    return s


def connect(engine: SyncEngine, ref: RefServer) -> int:
    """Authenticate a new session and run every exchange until both sides are quiet."""
    engine.start_session("jwt")
    first = engine.receive(wire(AuthAck(user_id="u")))
    n = converse(engine, ref, first)
    assert not engine.syncing
    return n


def put_event(name: str, key: str, record: LWWRecord) -> ServerEvent:
    return ServerEvent(map_name=name, event_type=ServerEventType.PUT, key=key, record=record)


def deliver(engine: SyncEngine, ref: RefServer, *events: ServerEvent) -> None:
    for ev in events:
        converse(engine, ref, engine.receive(wire(ev)))


# -- item 34: re-stamped LWW records -----------------------------------------------------------


def test_event_with_restamped_record_of_our_value_is_adopted(store, storage_factory, client_wall) -> None:
    engine = SyncEngine(store)
    ref = RefServer()
    mine = store.lww_set("todos", "t1", {"text": "milk"})
    store.lww_set("todos", "t2", "other")
    connect(engine, ref)
    assert store.pending_count == 0  # acked by the exact last id of our batch
    server_rec = ref.lmap("todos")["t1"]
    assert server_rec.timestamp < mine.timestamp  # the reference re-stamped it, older than ours
    events = []
    store.subscribe("todos", events.append)
    # The server pushes its record for t1 (as the TS client would adopt it, item 28).
    deliver(engine, ref, ServerEvent(map_name="todos", event_type=ServerEventType.PUT, key="t1",
                                     record=server_rec))
    lw = store.lww_maps["todos"]
    assert lw.get_record("t1") == server_rec
    assert events == []  # the value did not change: no event
    # Another client's later write (server time after the re-stamp, before our old stamp) now wins.
    ref.wall.t += 5
    ev = ref.other_put("todos", "t1", {"text": "oat milk"})
    assert ev.record.timestamp < mine.timestamp
    deliver(engine, ref, ev)
    assert lw.get("t1") == {"text": "oat milk"}
    assert [(e.key, e.value, e.origin) for e in events] == [("t1", {"text": "oat milk"}, ChangeOrigin.REMOTE)]
    # Persisted: a restarted client holds the server's record.
    again = reopen(store, storage_factory, client_wall)
    assert again.lww("todos").get_record("t1") == ref.lmap("todos")["t1"]
    assert again.lww("todos").get_record("t2") == store.lww_maps["todos"].get_record("t2")


def test_sync_leaf_adopts_restamped_records_and_persists(store, storage_factory, client_wall) -> None:
    engine = SyncEngine(store)
    ref = RefServer()
    for i in range(40):
        store.lww_set("m", f"k{i}", i)
    connect(engine, ref)  # ops first, then the walk: leaves carry the re-stamped records
    lw = store.lww_maps["m"]
    server = ref.lmap("m")
    assert {k: r for k, r in lw.records()} == server
    assert store.pending_count == 0
    # The walk went down to every leaf that has records (roots never match, item 37).
    leaves = [m.path for m in ref.sent(MerkleReqBucket) if len(m.path) == 3]
    assert sorted(leaves) == sorted({p for p in (route(k)[:3] for k in server)})
    assert len(leaves) == len(set(leaves))
    again = reopen(store, storage_factory, client_wall)
    assert dict(again.lww("m").records()) == server


def test_not_adopted_when_value_differs_or_our_write_is_pending(store) -> None:
    engine = SyncEngine(store)
    ref = RefServer()
    mine = store.lww_set("m", "a", "mine")
    connect(engine, ref)
    lw = store.lww_maps["m"]
    older_other = LWWRecord("theirs", Timestamp(SERVER_T0 - 1, 0, "zz"), None)
    deliver(engine, ref, put_event("m", "a", older_other))
    assert lw.get_record("a").value == "mine"  # an older *different* value loses as usual
    # A write of ours still waiting for its ack keeps our record even when the values match.
    ref.refuse_batches = True
    pending = store.lww_set("m", "b", "x")
    converse(engine, ref, engine.pump())
    assert store.pending_count == 1
    same_older = LWWRecord("x", Timestamp(SERVER_T0 + 1, 0, "refsrv"), None)
    deliver(engine, ref, put_event("m", "b", same_older))
    assert lw.get_record("b") == pending
    assert lw.get_record("a").timestamp != mine.timestamp  # "a" was adopted on the walk already
    assert lw.get_record("a") == ref.lmap("m")["a"]


def test_adopt_in_a_server_batch_event_with_listeners(store) -> None:
    engine = SyncEngine(store)
    ref = RefServer()
    store.lww_set("m", "a", [1, True])
    store.lww_set("m", "b", [1, 1])
    connect(engine, ref)
    seen = []
    store.subscribe("m", seen.append)
    lw = store.lww_maps["m"]
    a_srv = LWWRecord([1, True], Timestamp(SERVER_T0 - 50, 0, "refsrv"), None)
    b_srv = LWWRecord([1, True], Timestamp(SERVER_T0 - 50, 1, "refsrv"), None)  # True is not 1
    before_b = lw.get_record("b")
    converse(engine, ref, engine.receive(wire(ServerBatchEvent(events=[
        ServerEvent(map_name="m", event_type=ServerEventType.PUT, key="a", record=a_srv),
        ServerEvent(map_name="m", event_type=ServerEventType.PUT, key="b", record=b_srv),
    ]))))
    assert lw.get_record("a") == a_srv
    assert lw.get_record("b") == before_b
    assert seen == []


# -- item 34: regenerated OR tags --------------------------------------------------------------


def test_or_add_retagged_by_server_converges_without_duplicates(store, storage_factory, client_wall) -> None:
    engine = SyncEngine(store)
    ref = RefServer()
    mine = store.or_add("tags", "t1", "shopping")
    store.or_add("tags", "t2", "work")
    connect(engine, ref)
    om = store.or_maps["tags"]
    server = ref.omap("tags")
    assert store.pending_count == 0
    # The server holds our adds under its own tags; after the walk so do we, once each.
    assert server.get_records("t1")[0].tag != mine.tag
    for key in ("t1", "t2"):
        assert om.get_records(key) == server.get_records(key)
    assert om.get("t1") == ["shopping"] and om.get("t2") == ["work"]
    assert not om.is_tombstoned(mine.tag)  # dropped, not removed: no tombstone to push around
    # Nothing of ours was pushed back: the server still has one record per add.
    assert ref.sent(ORMapPushDiff) == []
    assert len(server.get_records("t1")) == 1
    # A second connection changes nothing and pushes nothing.
    engine.end_session()
    connect(engine, ref)
    assert ref.sent(ORMapPushDiff) == []
    assert om.get_records("t1") == server.get_records("t1")
    # A remove now names the server's tag, so it reaches the server's record.
    tags = store.or_remove("tags", "t1", "shopping")
    assert tags == [server.get_records("t1")[0].tag]
    converse(engine, ref, engine.pump())
    assert server.get("t1") == [] and om.get("t1") == []
    assert store.pending_count == 0
    again = reopen(store, storage_factory, client_wall)
    assert again.ormap("tags").get_records("t2") == server.get_records("t2")
    assert again.ormap("tags").get("t1") == []


def test_other_clients_equal_value_is_kept(store) -> None:
    engine = SyncEngine(store)
    ref = RefServer()
    connect(engine, ref)
    om = store.ormap("tags")
    converse(engine, ref, engine.sync_map("tags"))
    # Someone else added "x" under k; we add "x" too: two adds, both visible everywhere.
    deliver(engine, ref, ref.other_or_add("tags", "k", "x"))
    store.or_add("tags", "k", "x")
    converse(engine, ref, engine.pump())
    engine.end_session()
    connect(engine, ref)
    assert om.get("k") == ["x", "x"]
    assert om.get_records("k") == ref.omap("tags").get_records("k")


def test_pending_or_add_is_not_pushed_and_dedupes_once_accepted(store) -> None:
    engine = SyncEngine(store)
    ref = RefServer()
    ref.refuse_batches = True
    ref.other_or_add("tags", "k", "theirs")
    mine = store.or_add("tags", "k", "mine")
    connect(engine, ref)
    om = store.or_maps["tags"]
    assert store.pending_count == 1  # item 35: the refused batch stays in the op log
    assert sorted(om.get("k")) == ["mine", "theirs"]
    # The leaf lacked our pending add, but the op log carries it: it was not pushed.
    pushed = [r.tag for p in ref.sent(ORMapPushDiff) for e in p.entries for r in e.records]
    assert mine.tag not in pushed
    assert ref.omap("tags").get("k") == ["theirs"]
    ref.refuse_batches = False
    engine.end_session()
    connect(engine, ref)
    assert store.pending_count == 0
    assert sorted(ref.omap("tags").get("k")) == ["mine", "theirs"]
    assert sorted(om.get("k")) == ["mine", "theirs"]
    assert om.get_records("k") == ref.omap("tags").get_records("k")


# -- item 35: a whole batch refused with ERROR -------------------------------------------------


def test_batch_refused_with_error_keeps_ops_pending(store) -> None:
    engine = SyncEngine(store)
    ref = RefServer()
    ref.refuse_batches = True
    store.lww_set("m", "a", 1)
    store.or_add("o", "k", "v")
    rejected = []
    engine.on_rejected.append(rejected.append)
    connect(engine, ref)
    assert [op.id for b in ref.sent(OpBatch) for op in b.ops] == ["1", "2"]
    assert [i for i, _ in store.pending_ops()] == [1, 2]
    assert rejected == [] and engine.rejected == []
    assert ref.processed_ops == 0
    # The next authentication re-sends them; accepted this time, they leave the op log.
    ref.refuse_batches = False
    engine.end_session()
    connect(engine, ref)
    assert [op.id for op in ref.sent(OpBatch)[-1].ops] == ["1", "2"]
    assert store.pending_count == 0
    assert ref.lmap("m")["a"].value == 1 and ref.omap("o").get("k") == ["v"]


# -- item 36: foreign OP_ACKs ------------------------------------------------------------------


def test_push_diff_and_empty_batch_acks_are_ignored(store) -> None:
    engine = SyncEngine(store)
    ref = RefServer()
    ref.refuse_batches = True
    store.lww_set("m", "a", 1)
    store.lww_set("m", "b", 2)
    store.lww_set("m", "c", 3)
    connect(engine, ref)
    assert [i for i, _ in store.pending_ops()] == [1, 2, 3]
    # A push-diff ack with an internal number that is one of our op ids (but not a batch's last id),
    # and the empty-batch ack "unknown": both ignored.
    assert engine.receive(wire(OpAck(last_id="1"))) == []
    assert engine.receive(wire(OpAck(last_id="2"))) == []
    assert engine.receive(wire(OpAck(last_id="unknown"))) == []
    assert [i for i, _ in store.pending_ops()] == [1, 2, 3]
    # A later batch is accepted: its ack clears its own op, not the refused ones before it.
    ref.refuse_batches = False
    store.or_add("o", "k", "v")
    converse(engine, ref, engine.pump())  # only op 4 is sent (each new op once)
    assert [op.id for op in ref.sent(OpBatch)[-1].ops] == ["4"]
    assert [i for i, _ in store.pending_ops()] == [1, 2, 3]
    assert "a" not in ref.lmap("m")
    # A push diff on the next walk: the reference's OP_ACK for it does not touch the op log either.
    ref.other_or_add("o", "k2", "w")
    mine_only = ORMapRecord("z", Timestamp(CLIENT_T0, 99, "client-a"), f"{CLIENT_T0}:99:client-a", None)
    store.or_maps["o"].apply("k3", mine_only)
    engine.end_session()
    ref.refuse_batches = True
    connect(engine, ref)
    assert ref.sent(ORMapPushDiff), "the walk pushed the key the server lacked"
    assert [i for i, _ in store.pending_ops()] == [1, 2, 3]
    assert ref.omap("o").get("k3") == ["z"]
    # Accepted after the next authentication: nothing was lost.
    ref.refuse_batches = False
    engine.end_session()
    connect(engine, ref)
    assert store.pending_count == 0
    assert {k: r.value for k, r in ref.lmap("m").items()} == {"a": 1, "b": 2, "c": 3}


def test_refused_ops_survive_a_later_ack_and_a_restart(store, storage_factory, client_wall) -> None:
    engine = SyncEngine(store)
    ref = RefServer()
    connect(engine, ref)
    ref.refuse_batches = True
    store.lww_set("m", "a", 1)
    store.or_add("o", "k", "v")
    converse(engine, ref, engine.pump())
    ref.refuse_batches = False
    store.lww_set("m", "b", 2)
    converse(engine, ref, engine.pump())
    assert [i for i, _ in store.pending_ops()] == [1, 2]
    assert ref.lmap("m").keys() == {"b"}
    engine.end_session()
    again = reopen(store, storage_factory, client_wall)
    assert [(i, op.key) for i, op in again.pending_ops()] == [(1, "a"), (2, "k")]
    engine = SyncEngine(again)
    connect(engine, ref)
    assert again.pending_count == 0
    assert ref.lmap("m").keys() == {"a", "b"} and ref.omap("o").get("k") == ["v"]


def test_error_for_another_message_does_not_lose_acks(store) -> None:
    """An ERROR that was not a batch refusal: every batch's own ack still clears it."""
    engine = SyncEngine(store, batch_size=2)
    ref = RefServer()
    connect(engine, ref)
    for i in range(5):
        store.lww_set("m", f"k{i}", i)
    out = engine.pump()
    assert [len(b.ops) for b in out] == [2, 2, 1]
    assert engine.receive(wire(Error(code=403, message="Access Denied for map x"))) == []
    replies = [r for b in out for r in ref.answer(b)]
    for r in replies:
        engine.receive(wire(r))
    assert store.pending_count == 0


# -- item 37: roots never equal, deleted keys, REMOVE without record -----------------------------


def test_walk_terminates_when_roots_never_match(store) -> None:
    engine = SyncEngine(store)
    ref = RefServer()
    for i in range(500):
        ref.other_put("big", f"key-{i}", i)
        ref.other_or_add("bag", f"key-{i % 97}", i)
    store.lww("big")
    store.ormap("bag")
    connect(engine, ref)
    reqs = [m.path for m in ref.sent(MerkleReqBucket)]
    assert len(reqs) == len(set(reqs)) and all(len(p) <= 3 for p in reqs)
    assert dict(store.lww_maps["big"].records()) == ref.lmap("big")
    om, sm = store.or_maps["bag"], ref.omap("bag")
    assert sorted(om.keys()) == sorted(sm.keys())
    assert all(om.get_records(k) == sm.get_records(k) for k in sm.keys())
    # In sync, yet the roots still differ: a second connection walks again, and ends again.
    n_before = len(ref.received)
    engine.end_session()
    n = connect(engine, ref)
    assert 0 < n < 10_000 and len(ref.received) > n_before
    assert ref.sent(ORMapPushDiff) == []  # identical contents: nothing to push
    assert dict(store.lww_maps["big"].records()) == ref.lmap("big")


def test_remove_event_without_record_is_ignored(store) -> None:
    engine = SyncEngine(store)
    ref = RefServer()
    connect(engine, ref)
    store.lww("m")
    converse(engine, ref, engine.sync_map("m"))
    deliver(engine, ref, ref.other_put("m", "k", "v"))
    lw = store.lww_maps["m"]
    assert lw.get("k") == "v"
    deliver(engine, ref, ref.other_remove("m", "k"))
    # Like the TS client (item 21): no record, nothing to merge. The key stays until overwritten.
    assert lw.get("k") == "v"
    assert "k" not in ref.lmap("m")
    # The reference keeps no tombstone, so a later sync does not deliver the delete either.
    engine.end_session()
    connect(engine, ref)
    assert lw.get("k") == "v"
    deliver(engine, ref, ref.other_put("m", "k", "again"))
    assert lw.get("k") == "again"


def test_our_remove_reaches_a_deleting_server(store) -> None:
    engine = SyncEngine(store)
    ref = RefServer()
    store.lww_set("m", "k", "v")
    connect(engine, ref)
    tomb = store.lww_remove("m", "k")
    converse(engine, ref, engine.pump())
    assert "k" not in ref.lmap("m") and store.pending_count == 0
    engine.end_session()
    connect(engine, ref)  # the server lists no record for k: our tombstone stays
    assert store.lww_maps["m"].get_record("k") == tomb


# -- items 38 and 39 ---------------------------------------------------------------------------


def test_no_batch_frames_and_flat_op_batches(store) -> None:
    engine = SyncEngine(store, batch_size=3)
    ref = RefServer()
    for i in range(10):
        store.lww_set("m", f"k{i}", i)
    connect(engine, ref)
    assert not any(isinstance(m, Batch) for m in ref.received)
    assert [len(b.ops) for b in ref.sent(OpBatch)] == [3, 3, 3, 1]
    assert store.pending_count == 0


def test_counter_state_is_sent_with_both_spellings() -> None:
    replica = PNCounter("client-a")
    replica.increment(5)
    replica.decrement(2)
    handle = CounterHandle(None, "likes", replica)  # type: ignore[arg-type]
    msg = CounterManager._sync_message(handle)
    raw = msgpack.unpackb(codec.encode(msg), raw=False, strict_map_key=False)
    state = raw["payload"]["state"]
    assert state["p"] == state["positive"] == {"client-a": 5}
    assert state["n"] == state["negative"] == {"client-a": 2}


# -- convergence over random scripts -----------------------------------------------------------

_step = st.one_of(
    st.tuples(st.just("set"), st.sampled_from(["a", "b", "c"]), st.integers(0, 2)),
    st.tuples(st.just("add"), st.sampled_from(["x", "y"]), st.integers(0, 2)),
    st.tuples(st.just("or_remove"), st.sampled_from(["x", "y"]), st.integers(0, 2)),
    st.tuples(st.just("other_add"), st.sampled_from(["x", "y"]), st.integers(0, 2)),
    st.tuples(st.just("pump"), st.just(""), st.just(0)),
    st.tuples(st.just("reconnect"), st.just(""), st.just(0)),
    st.tuples(st.just("refuse"), st.just(""), st.integers(0, 1)),
    st.tuples(st.just("tick"), st.just(""), st.integers(1, 50)),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(script=st.lists(_step, max_size=25))
def test_replica_converges_to_the_reference_servers_view(script) -> None:
    """Own writes only on LWW (other writers would need a newer server clock, see docs/client.md)."""
    client_wall = Wall(CLIENT_T0)
    store = LocalStore(MemoryStorage(), node_id="client-a", wall_clock=client_wall)
    store.open()
    store.lww("m")
    store.ormap("o")
    engine = SyncEngine(store, batch_size=2)
    ref = RefServer()
    connect(engine, ref)
    adds: dict[tuple[str, int], int] = {}  # (key, value) -> add operations, ours and others'
    for kind, key, arg in script:
        if kind == "set":
            store.lww_set("m", key, arg)
        elif kind == "add":
            store.or_add("o", key, arg)
            adds[key, arg] = adds.get((key, arg), 0) + 1
        elif kind == "or_remove":
            store.or_remove("o", key, arg)
        elif kind == "other_add":
            deliver(engine, ref, ref.other_or_add("o", key, arg))
            adds[key, arg] = adds.get((key, arg), 0) + 1
        elif kind == "pump":
            converse(engine, ref, engine.pump())
        elif kind == "reconnect":
            engine.end_session()
            connect(engine, ref)
        elif kind == "refuse":
            ref.refuse_batches = bool(arg)
        else:
            client_wall.t += arg
            ref.wall.t += arg
    ref.refuse_batches = False
    for _ in range(2):
        engine.end_session()
        connect(engine, ref)
    assert store.pending_count == 0
    assert dict(store.lww_maps["m"].records()) == ref.lmap("m")
    om, sm = store.or_maps["o"], ref.omap("o")
    for key in ("x", "y"):
        assert sorted(om.get(key)) == sorted(sm.get(key))
        assert om.get_records(key) == sm.get_records(key)
        # Never more records of a value than adds of it: no add is held under two tags.
        for value in set(sm.get(key)):
            assert sm.get(key).count(value) <= adds[key, value]
    assert not any(isinstance(m, Batch) for m in ref.received)
