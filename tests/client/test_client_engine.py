"""The sans-I/O sync engine, message by message (every message goes through the real codec)."""

from __future__ import annotations

from pathlib import Path

import pytest
from client_peer import Peer, converse, wire

from topgun.client.engine import SyncEngine
from topgun.client.state import ChangeOrigin
from topgun.client.storage import MemoryStorage, SQLiteStorage
from topgun.client.store import LocalStore
from topgun.core.records import LWWRecord, ORMapRecord, Timestamp
from topgun.protocol.messages import (
    Auth,
    AuthAck,
    AuthFail,
    AuthRequired,
    DeviceAck,
    DeviceHello,
    Error,
    GcPrune,
    MerkleReqBucket,
    OpAck,
    OpBatch,
    OpRejected,
    OpType,
    ORMapDiffResponse,
    ORMapEntry,
    ORMapMerkleReqBucket,
    ORMapPushDiff,
    ORMapSyncInit,
    ORMapSyncRespRoot,
    Pong,
    ServerBatchEvent,
    ServerEvent,
    ServerEventType,
    SyncInit,
    SyncResetRequired,
    SyncRespRoot,
)


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> LocalStore:
    st = MemoryStorage() if request.param == "memory" else SQLiteStorage(tmp_path / "e.db")
    s = LocalStore(st, node_id="client-a")
    s.open()
    return s


def ready(engine: SyncEngine, token: str | None = "tok") -> list:
    first = engine.start_session(token)
    if token:
        return [wire(m) for m in engine.receive(wire(AuthAck(user_id="u")))]
    assert isinstance(first[0], DeviceHello)
    return [wire(m) for m in engine.receive(wire(DeviceAck(device_id="d1", device_token="dt")))]


# -- handshake ------------------------------------------------------------------------------------


def test_token_handshake_then_oplog_before_sync_init(store: LocalStore) -> None:
    store.lww_set("todos", "a", 1)
    store.lww_remove("todos", "b")
    store.or_add("tags", "k", "v")
    engine = SyncEngine(store)
    first = engine.start_session("jwt")
    assert [type(m) for m in first] == [Auth] and first[0].token == "jwt" and first[0].protocol_version == 1
    assert not engine.ready
    assert engine.receive(wire(AuthRequired())) == []  # AUTH already sent: nothing to add
    out = [wire(m) for m in engine.receive(wire(AuthAck(user_id="alice")))]
    assert engine.ready and engine.user_id == "alice"
    assert isinstance(out[0], OpBatch)
    ops = out[0].ops
    assert [(o.id, o.op_type, o.key) for o in ops] == [
        ("1", OpType.PUT, "a"), ("2", OpType.REMOVE, "b"), ("3", OpType.OR_ADD, "k")]
    assert ops[1].record is not None and ops[1].record.value is None
    assert ops[2].or_record.tag == str(ops[2].or_record.timestamp)
    assert {type(m) for m in out[1:]} == {SyncInit, ORMapSyncInit}
    assert {m.map_name for m in out[1:]} == {"todos", "tags"}


def test_no_token_device_hello_and_fallbacks(store: LocalStore) -> None:
    engine = SyncEngine(store)
    first = engine.start_session(None)
    assert [type(m) for m in first] == [DeviceHello] and first[0].device_token is None
    engine.receive(wire(DeviceAck(device_id="dev-1", device_token="secret")))
    assert engine.ready and engine.device_id == "dev-1"
    assert store.device_token == "secret"
    assert store.storage.get_meta("device_token") == "secret"
    # Next session presents the stored credential.
    engine.end_session()
    assert engine.start_session(None)[0].device_token == "secret"
    # The grace timer ends the wait when the server says nothing.
    assert engine.grace_expired() == [] or engine.ready
    assert engine.ready
    # Any other server message also ends it.
    engine.end_session()
    engine.start_session(None)
    engine.receive(wire(Pong(timestamp=1, server_time=2)))
    assert engine.ready


def test_auth_required_without_token_waits_for_one(store: LocalStore) -> None:
    engine = SyncEngine(store)
    engine.start_session(None)
    assert engine.receive(wire(AuthRequired())) == []
    assert engine.needs_token and not engine.ready
    assert engine.grace_expired() == [] and not engine.ready
    out = engine.supply_token("late")
    assert [type(m) for m in out] == [Auth] and out[0].token == "late"
    engine.receive(wire(AuthAck()))
    assert engine.ready


def test_auth_fail_is_reported(store: LocalStore) -> None:
    engine = SyncEngine(store)
    engine.start_session("bad")
    engine.receive(wire(AuthFail(error="Authentication failed", code=401)))
    assert engine.auth_failed is not None and engine.auth_failed.code == 401
    assert not engine.ready
    engine.end_session()
    assert engine.auth_failed is None


# -- op log ---------------------------------------------------------------------------------------


def test_batches_are_bounded_and_acks_must_match_exactly(store: LocalStore) -> None:
    for i in range(1200):
        store.lww_set("m", f"k{i}", i)
    engine = SyncEngine(store, batch_size=500)
    out = ready(engine)
    batches = [m for m in out if isinstance(m, OpBatch)]
    assert [len(b.ops) for b in batches] == [500, 500, 200]
    assert [b.ops[-1].id for b in batches] == ["500", "1000", "1200"]
    # Every op id is strictly increasing across batches.
    ids = [int(o.id) for b in batches for o in b.ops]
    assert ids == list(range(1, 1201))
    # OP_ACKs that are not the last id of a sent batch are ignored (§5.6, §8 item 36).
    for bogus in ("unknown", "499", "1", "100000"):
        engine.receive(wire(OpAck(last_id=bogus)))
    assert store.pending_count == 1200
    engine.receive(wire(OpAck(last_id="1000")))
    assert store.pending_count == 200
    assert next(o.op_id for o in store.storage.load_ops()) == 1001
    # The same ack twice does nothing more; the last batch's ack empties the log.
    engine.receive(wire(OpAck(last_id="1000")))
    engine.receive(wire(OpAck(last_id="1200")))
    assert store.pending_count == 0 and store.storage.load_ops() == []


def test_unacknowledged_ops_in_flight_are_bounded(store: LocalStore) -> None:
    for i in range(2600):
        store.lww_set("m", f"k{i}", i)
    engine = SyncEngine(store, batch_size=500, max_inflight_ops=1000)
    out = ready(engine)
    assert [len(b.ops) for b in out if isinstance(b, OpBatch)] == [500, 500]
    # New ops wait behind the window too, and are never queued twice.
    store.lww_set("m", "new", 1)
    assert engine.pump() == []
    more = [wire(m) for m in engine.receive(wire(OpAck(last_id="500")))]
    assert [(b.ops[0].id, b.ops[-1].id) for b in more] == [("1001", "1500")]
    sent: list[str] = []
    acks = ["1000", "1500"]
    while acks:
        nxt = [wire(m) for m in engine.receive(wire(OpAck(last_id=acks.pop(0))))]
        for b in nxt:
            sent.extend(o.id for o in b.ops)
            acks.append(b.ops[-1].id)
    assert sent == [str(i) for i in range(1501, 2602)]
    assert store.pending_count == 0


def test_new_ops_are_sent_once_and_resent_after_reconnect(store: LocalStore) -> None:
    engine = SyncEngine(store)
    ready(engine)
    assert engine.pump() == []
    store.lww_set("m", "a", 1)
    store.lww_set("m", "b", 2)
    sent = engine.pump()
    assert [[o.id for o in b.ops] for b in sent] == [["1", "2"]]
    assert engine.pump() == []
    store.lww_set("m", "c", 3)
    assert [[o.id for o in b.ops] for b in engine.pump()] == [["3"]]
    engine.receive(wire(OpAck(last_id="2")))
    assert store.pending_count == 1
    # A new connection re-sends everything unacknowledged; acks from the old one no longer count.
    engine.end_session()
    out = ready(engine)
    assert [[o.id for o in b.ops] for b in out if isinstance(b, OpBatch)] == [["3"]]


def test_rejected_ops_are_reported_then_dropped_with_the_ack(store: LocalStore) -> None:
    store.lww_set("m", "a", 1)
    store.lww_set("m", "b", 2)
    engine = SyncEngine(store)
    seen = []
    engine.on_rejected.append(seen.append)
    ready(engine)
    engine.receive(wire(OpRejected(op_id="1", reason="forbidden", code=403)))
    assert [(e.op_id, e.code, e.reason) for e in engine.rejected] == [("1", 403, "forbidden")]
    assert seen == engine.rejected
    assert store.pending_count == 2  # OP_REJECTED alone does not remove the op
    engine.receive(wire(OpAck(last_id="2")))
    assert store.pending_count == 0


def test_error_429_requests_a_resend(store: LocalStore) -> None:
    store.lww_set("m", "a", 1)
    engine = SyncEngine(store)
    ready(engine)
    engine.receive(wire(Error(code=429, message="slow down")))
    assert engine.resend_requested
    again = engine.resend_unacked()
    assert [[o.id for o in b.ops] for b in again] == [["1"]]
    engine.receive(wire(OpAck(last_id="1")))
    assert store.pending_count == 0


# -- server push ----------------------------------------------------------------------------------


def test_server_events_merge_and_notify(store: LocalStore) -> None:
    store.lww("todos")
    store.ormap("tags")
    events = []
    store.subscribe("todos", events.append)
    tag_events = []
    store.subscribe("tags", tag_events.append)
    engine = SyncEngine(store)
    ready(engine)
    t1 = Timestamp(2_000_000_000_000, 0, "other")
    engine.receive(wire(ServerEvent(map_name="todos", event_type=ServerEventType.PUT, key="a",
                                    record=LWWRecord({"x": 1}, t1))))
    assert store.lww_maps["todos"].get("a") == {"x": 1}
    assert events[-1].origin is ChangeOrigin.REMOTE and events[-1].value == {"x": 1}
    # A REMOVE without record is ignored (§8 item 21), one with a tombstone applies.
    engine.receive(wire(ServerEvent(map_name="todos", event_type=ServerEventType.REMOVE, key="a")))
    assert store.lww_maps["todos"].get("a") == {"x": 1}
    t2 = Timestamp(t1.millis, 1, "other")
    engine.receive(wire(ServerBatchEvent(events=[
        ServerEvent(map_name="todos", event_type=ServerEventType.REMOVE, key="a", record=LWWRecord(None, t2)),
        ServerEvent(map_name="tags", event_type=ServerEventType.OR_ADD, key="k",
                    or_record=ORMapRecord("v", t2, str(t2))),
        ServerEvent(map_name="unknown", event_type=ServerEventType.PUT, key="z", record=LWWRecord(1, t2)),
    ])))
    assert store.lww_maps["todos"].get("a") is None and "a" not in store.lww_maps["todos"]
    assert events[-1].value is None and events[-1].previous == {"x": 1}
    assert store.or_maps["tags"].get("k") == ["v"]
    engine.receive(wire(ServerEvent(map_name="tags", event_type=ServerEventType.OR_REMOVE, key="k",
                                    or_tag=str(t2))))
    assert store.or_maps["tags"].get("k") == []
    assert [e.values for e in tag_events] == [["v"], []]
    assert "unknown" not in store.lww_maps
    # Persisted: a reopened store sees the same state.
    recs = dict(store.storage.load_lww("todos"))
    assert recs["a"] == LWWRecord(None, t2)
    assert store.storage.load_or("tags") == ([], [(str(t2), "k")])


def test_gc_prune(store: LocalStore) -> None:
    lw = store.lww("m")
    store.lww_set("m", "live", 1)
    store.lww_remove("m", "dead")
    store.or_add("o", "k", "v")
    store.or_remove("o", "k", "v")
    engine = SyncEngine(store)
    ready(engine)
    horizon = Timestamp(store.hlc.now().millis + 1, 0, "server")
    engine.receive(wire(GcPrune(older_than=horizon)))
    assert lw.get_record("dead") is None and lw.get("live") == 1
    assert [k for k, _ in store.storage.load_lww("m")] == ["live"]
    assert store.or_maps["o"].tombstone_tags() == []
    assert store.storage.load_or("o") == ([], [])


# -- LWW Merkle walk ------------------------------------------------------------------------------


def test_lww_walk_pulls_exactly_the_difference(store: LocalStore) -> None:
    peer = Peer()
    sm = peer.lmap("todos")
    for i in range(400):
        sm.set(f"k{i}", {"i": i})
    for i in range(0, 400, 7):
        sm.remove(f"k{i}")
    store.lww_set("todos", "mine", "local")
    engine = SyncEngine(store)
    out = ready(engine)
    converse(engine, peer, out)
    cm = store.lww_maps["todos"]
    assert not engine.syncing
    for i in range(400):
        assert cm.get_record(f"k{i}") == sm.get_record(f"k{i}")
    assert cm.root_hash == sm.root_hash  # the client's own op reached the peer through OP_BATCH
    assert store.pending_count == 0
    assert store.last_sync_timestamp > 0
    # Persisted: a fresh store over the same storage loads the same replica.
    assert len(store.storage.load_lww("todos")) == sm.record_count
    # In sync: the next connection costs one SYNC_INIT round trip.
    engine.end_session()
    peer.received.clear()
    seen = store.last_sync_timestamp
    converse(engine, peer, ready(engine))
    assert [type(m) for m in peer.received] == [SyncInit]
    assert peer.received[0].last_sync_timestamp == seen


def test_lww_walk_requests_only_differing_buckets(store: LocalStore) -> None:
    peer = Peer()
    sm = peer.lmap("m")
    for i in range(2000):
        sm.set(f"k{i}", i)
    # The client already holds identical copies of everything but one key.
    store.lww("m")
    store.merge_lww("m", [(k, r) for k, r in sm.records() if k != "k1234"])
    engine = SyncEngine(store)
    converse(engine, peer, ready(engine))
    reqs = [m for m in peer.received if isinstance(m, MerkleReqBucket)]
    assert [len(m.path) for m in reqs] == [0, 1, 2, 3]
    assert store.lww_maps["m"].get("k1234") == 1234


def test_sync_reset_required(store: LocalStore) -> None:
    store.lww("m")
    store.merge_lww("m", [("old", LWWRecord("x", Timestamp(5, 0, "s")))])
    store.lww_set("m", "pending", 1)
    engine = SyncEngine(store)
    ready(engine)
    out = [wire(m) for m in engine.receive(wire(SyncResetRequired(map_name="m", reason="pruned")))]
    assert [type(m) for m in out] == [SyncInit] and out[0].last_sync_timestamp in (None, 0)
    lw = store.lww_maps["m"]
    assert lw.get("old") is None and lw.get("pending") == 1  # pending writes survive the wipe
    assert [k for k, _ in store.storage.load_lww("m")] == ["pending"]
    # At most once per connection.
    assert engine.receive(wire(SyncResetRequired(map_name="m", reason="again"))) == []


# -- OR-Map walk ----------------------------------------------------------------------------------


def test_or_walk_pulls_and_pushes(store: LocalStore) -> None:
    peer = Peer()
    so = peer.omap("tags")
    for i in range(60):
        so.add(f"s{i}", i)
    so.remove("s3", 3)
    # Records the client holds but the server lacks, outside the op log (e.g. a server restored from backup).
    store.ormap("tags")
    t = Timestamp(1_700_000_000_000, 0, "client-a")
    store.or_merge_entries("tags", [("c1", [ORMapRecord("mine", t, str(t))], [])])
    engine = SyncEngine(store)
    converse(engine, peer, ready(engine))
    co = store.or_maps["tags"]
    assert co.get("s5") == [5] and co.get("s3") == []
    assert so.get("c1") == ["mine"]
    assert any(isinstance(m, ORMapPushDiff) for m in peer.received)
    assert co.root_hash == so.root_hash
    recs, _ = store.storage.load_or("tags")
    assert len(recs) == co.record_count


def test_or_diff_response_and_full_resync(store: LocalStore) -> None:
    om = store.ormap("tags")
    store.or_add("tags", "k", "old")
    engine = SyncEngine(store)
    out = ready(engine)
    batch = next(m for m in out if isinstance(m, OpBatch))
    # A diff response carrying a tombstone for our record removes it.
    tag = batch.ops[0].or_record.tag
    engine.receive(wire(ORMapDiffResponse(map_name="tags", entries=[ORMapEntry(key="k", records=[],
                                                                               tombstones=[tag])])))
    assert om.get("k") == []
    # Full resync: local copy discarded, pending OR ops sent before the init and older than the
    # snapshot are dropped, then the walk starts from the root.
    boundary = Timestamp(store.hlc.now().millis + 10_000, 0, "server")
    out = [wire(m) for m in engine.receive(wire(ORMapSyncRespRoot(map_name="tags", root_hash=0,
                                                                   timestamp=boundary, full_resync=True)))]
    assert [type(m) for m in out] == [ORMapMerkleReqBucket] and out[0].path == ""
    assert om.record_count == 0 and om.tombstone_tags() == []
    assert store.pending_count == 0
    assert store.storage.load_or("tags") == ([], [])


def test_root_timestamp_advances_clock_and_last_sync(store: LocalStore) -> None:
    store.lww("m")
    engine = SyncEngine(store)
    ready(engine)
    future = Timestamp(store.hlc.now().millis + 5000, 9, "server")
    engine.receive(wire(SyncRespRoot(map_name="m", root_hash=0, timestamp=future)))
    assert store.last_sync_timestamp == future.millis
    assert store.storage.get_meta("last_sync_timestamp") == str(future.millis)
    assert store.hlc.now() > future


def test_heartbeat_clock() -> None:
    now = [100.0]
    st = LocalStore(MemoryStorage(), node_id="n")
    st.open()
    engine = SyncEngine(st, monotonic=lambda: now[0], wall_clock=lambda: 1_700_000_000_123)
    ready(engine)
    now[0] = 110.0
    assert engine.seconds_since_pong() == 10.0
    ping = wire(engine.ping())
    assert ping.timestamp == 1_700_000_000_123
    engine.receive(wire(Pong(timestamp=ping.timestamp, server_time=1)))
    assert engine.seconds_since_pong() == 0.0


def test_covering_epochs_are_confirmed_with_client_apply_ack(store: LocalStore) -> None:
    from topgun.protocol.messages import ClientApplyAck, ORMapSyncRespLeaf

    store.ormap("a")
    store.ormap("b")
    engine = SyncEngine(store)
    out = ready(engine)
    assert all(m.claimed_epoch is None for m in out if isinstance(m, ORMapSyncInit))
    ts = store.hlc.now()
    # Map a is in sync at epoch 7; b is not confirmed yet: the minimum is 0, nothing is sent.
    got = [wire(m) for m in engine.receive(wire(ORMapSyncRespRoot(map_name="a", root_hash=0, timestamp=ts,
                                                                   covering_epoch=7)))]
    assert got == []
    rec = ORMapRecord("v", ts, str(ts))
    leaf = ORMapSyncRespLeaf(map_name="b", path="000", covering_epoch=5,
                             entries=[ORMapEntry(key="k", records=[rec], tombstones=[])])
    got = [wire(m) for m in engine.receive(wire(leaf))]
    assert [m for m in got if isinstance(m, ClientApplyAck)] == [ClientApplyAck(cursor=5)]
    assert store.storage.get_meta("claimed_epoch") == "5"
    # Not resent for the same minimum; claimed on the next connection.
    assert engine.receive(wire(ORMapDiffResponse(map_name="b", entries=[], covering_epoch=5))) == []
    engine.end_session()
    again = [m for m in ready(engine) if isinstance(m, ORMapSyncInit)]
    assert {m.claimed_epoch for m in again} == {5}
