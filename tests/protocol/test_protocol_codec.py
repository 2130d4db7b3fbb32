"""Codec behaviour: golden bytes, PROTOCOL.md §8 tolerances, op classification, errors, limits, BATCH."""

from __future__ import annotations

import math
import struct
from typing import Any

import msgpack
import pytest

from topgun.core.records import LWWRecord, ORMapRecord, Timestamp
from topgun.errors import (
    FrameTooLargeError,
    ProtocolError,
    UnknownMessageTypeError,
    UnsupportedMessageTypeError,
)
from topgun.protocol import messages as M

TS = Timestamp(1700000000000, 1, "node-1")
TS_WIRE = {"millis": 1700000000000.0, "counter": 1, "nodeId": "node-1"}


def pk(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def wrapped(kind: str, payload: Any) -> bytes:
    return pk({"type": kind, "payload": payload})


# --- golden bytes


def test_golden_auth_required(twin: Any) -> None:
    # fixmap(1) "type" fixstr(13) "AUTH_REQUIRED"
    expected = bytes.fromhex("81a474797065ad415554485f5245515549524544")
    assert twin.codec.encode(M.AuthRequired()) == expected
    assert twin.codec.decode(expected) == M.AuthRequired()


def test_golden_pong(twin: Any) -> None:
    # fixmap(3); "type":"PONG"; "timestamp": uint64 1700000000000 (0x18BCFE56800); "serverTime": +5
    expected = bytes.fromhex(
        "83"
        "a474797065" "a4504f4e47"
        "a974696d657374616d70" "cf0000018bcfe56800"
        "aa73657276657254696d65" "cf0000018bcfe56805"
    )  # fmt: skip
    msg = M.Pong(timestamp=1700000000000, server_time=1700000000005)
    assert twin.codec.encode(msg) == expected
    assert twin.codec.decode(expected) == msg


def test_golden_op_ack(twin: Any) -> None:
    # {"type":"OP_ACK","payload":{"lastId":"5","achievedLevel":"PERSISTED",
    #   "results":[{"opId":"5","success":true,"achievedLevel":"PERSISTED"}]}}
    expected = bytes.fromhex(
        "82"
        "a474797065" "a64f505f41434b"
        "a77061796c6f6164" "83"
        "a66c6173744964" "a135"
        "ad61636869657665644c6576656c" "a9504552534953544544"
        "a7726573756c7473" "91" "83"
        "a46f704964" "a135"
        "a773756363657373" "c3"
        "ad61636869657665644c6576656c" "a9504552534953544544"
    )  # fmt: skip
    msg = M.OpAck(
        last_id="5",
        achieved_level=M.WriteConcern.PERSISTED,
        results=[M.OpResult(op_id="5", success=True, achieved_level=M.WriteConcern.PERSISTED)],
    )
    assert twin.codec.encode(msg) == expected
    assert twin.codec.decode(expected) == msg


def test_golden_server_event_tombstone(twin: Any) -> None:
    ev = M.ServerEvent(
        map_name="m",
        event_type=M.ServerEventType.REMOVE,
        key="k",
        record=LWWRecord(None, Timestamp(5, 0, "n")),
    )
    expected = bytes.fromhex(
        "82" "a474797065" "ac5345525645525f4556454e54"
        "a77061796c6f6164" "84"
        "a76d61704e616d65" "a16d"
        "a96576656e7454797065" "a652454d4f5645"
        "a36b6579" "a16b"
        "a67265636f7264" "82" "a576616c7565" "c0"
        "a974696d657374616d70" "83" "a66d696c6c6973" "05" "a7636f756e746572" "00" "a66e6f64654964" "a16e"
    )  # fmt: skip
    assert twin.codec.encode(ev) == expected
    assert twin.codec.decode(expected) == ev


# --- numbers (§1.4, §8 items 1, 4)


def test_float_millis_become_ints(twin: Any) -> None:
    frame = wrapped(
        "OP_BATCH",
        {
            "ops": [
                {
                    "id": "1",
                    "mapName": "m",
                    "key": "k",
                    "opType": "PUT",
                    "record": {"value": 1.5, "timestamp": TS_WIRE, "ttlMs": 5e12},
                    "timeout": 1000.0,
                }
            ],
            "timeout": 5000.0,
        },
    )
    msg = twin.codec.decode(frame)
    op = msg.ops[0]
    assert type(op.record.timestamp.millis) is int and op.record.timestamp.millis == 1700000000000
    assert type(op.record.ttl_ms) is int and op.record.ttl_ms == 5_000_000_000_000
    assert type(op.timeout) is int and type(msg.timeout) is int
    assert op.record.value == 1.5 and type(op.record.value) is float  # user data untouched
    assert str(op.record.timestamp) == "1700000000000:1:node-1"


@pytest.mark.parametrize("kind,field", [("PING", "timestamp"), ("SYNC_INIT", "lastSyncTimestamp")])
def test_flat_float_ints(twin: Any, kind: str, field: str) -> None:
    body: dict[str, Any] = {"type": kind, field: 1700000000123.0}
    if kind == "SYNC_INIT":
        body["mapName"] = "m"
    msg = twin.codec.decode(pk(body))
    v = getattr(msg, "timestamp" if kind == "PING" else "last_sync_timestamp")
    assert type(v) is int and v == 1700000000123


@pytest.mark.parametrize("bad", [1.5, math.nan, math.inf, -math.inf, 2.0**64, "1", True, None])
def test_non_integral_int_field_is_invalid(twin: Any, bad: Any) -> None:
    with pytest.raises(ProtocolError) as ei:
        twin.codec.decode(pk({"type": "PING", "timestamp": bad}))
    assert ei.value.field == "timestamp" and ei.value.code == 400


def test_float32_integral_accepted(twin: Any) -> None:
    frame = b"\x82\xa4type\xa4PING\xa9timestamp\xca" + struct.pack(">f", 1024.0)
    assert twin.codec.decode(frame) == M.Ping(timestamp=1024)


@pytest.mark.parametrize("h,ok", [(0, True), (2**32 - 1, True), (12345.0, True), (-1, False), (2**32, False)])
def test_hash_fields_are_uint32(twin: Any, h: Any, ok: bool) -> None:
    frame = wrapped("SYNC_RESP_ROOT", {"mapName": "m", "rootHash": h, "timestamp": TS_WIRE})
    if ok:
        msg = twin.codec.decode(frame)
        assert msg.root_hash == int(h) and type(msg.root_hash) is int
    else:
        with pytest.raises(ProtocolError) as ei:
            twin.codec.decode(frame)
        assert ei.value.field == "payload.rootHash"
    bucket = wrapped("SYNC_RESP_BUCKETS", {"mapName": "m", "path": "", "buckets": {"a": h}})
    if ok:
        assert twin.codec.decode(bucket).buckets == {"a": int(h)}
    else:
        with pytest.raises(ProtocolError):
            twin.codec.decode(bucket)


def test_large_ints_encoded_as_ints(twin: Any) -> None:
    frame = twin.codec.encode(M.Ping(timestamp=1700000000000))
    assert frame.endswith(b"\xcf" + (1700000000000).to_bytes(8, "big"))


# --- MsgPack rules (§1.5, §8 items 2, 3, 5)


def test_map16_headers_accepted(twin: Any) -> None:
    # msgpackr writes 0xde maps even for two entries
    frame = b"\xde\x00\x02\xa4type\xa4PING\xa9timestamp\x05"
    assert twin.codec.decode(frame) == M.Ping(timestamp=5)
    frame = b"\xde\x00\x02\xa4type\xd9\x04PING\xa9timestamp\xda\x00\x01x"
    with pytest.raises(ProtocolError):  # str8/str16 type value decoded, then timestamp is a string
        twin.codec.decode(frame)


def test_timestamp_ext_kept_verbatim(twin: Any) -> None:
    # msgpackr writes Dates as ext -1 in the 8-byte form even with zero nanoseconds;
    # msgpack-python would shrink that to the 4-byte form: the codec must not.
    date_ext = b"\xd7\xff" + bytes(4) + (1700000000).to_bytes(4, "big")
    value = b"\x82\xa4when" + date_ext + b"\xa5other\xd4\x05\x01"
    record = b"\x82\xa5value" + value + b"\xa9timestamp" + pk({"millis": 5, "counter": 0, "nodeId": "n"})
    frame = (
        b"\x82\xa4type\xacSERVER_EVENT\xa7payload"
        + b"\x84\xa7mapName\xa1m\xa9eventType\xa3PUT\xa3key\xa1k\xa6record"
        + record
    )
    msg = twin.codec.decode(frame)
    when = msg.record.value["when"]
    assert isinstance(when, M.Ext) and when.code == -1 and len(when.data) == 8
    assert msg.record.value["other"] == M.Ext(5, b"\x01")
    out = twin.codec.encode(msg)
    assert date_ext in out and b"\xd4\x05\x01" in out
    assert twin.codec.decode(out) == msg


def test_reserved_ext_minus_128_rejected(twin: Any) -> None:
    frame = b"\x82\xa4type\xa9TOPIC_PUB\xa7payload\x82\xa5topic\xa1t\xa4data\xd4\x80\x00"
    with pytest.raises(ProtocolError):
        twin.codec.decode(frame)


def test_nil_array_elements_and_absent_optionals(twin: Any) -> None:
    msg = twin.codec.decode(wrapped("TOPIC_PUB", {"topic": "t", "data": [1, None, 3]}))
    assert msg == M.TopicPub(topic="t", data=[1, None, 3])
    ack = twin.codec.decode(pk({"type": "AUTH_ACK", "userId": None, "deviceId": "d"}))
    assert ack == M.AuthAck(device_id="d")


def test_none_optionals_are_omitted_never_nil(twin: Any) -> None:
    rec = LWWRecord("v", TS)  # ttl_ms None
    ev = M.ServerEvent(map_name="m", event_type=M.ServerEventType.PUT, key="k", record=rec)
    wire = twin.codec.unpack(twin.codec.encode(ev))
    assert wire["payload"] == {
        "mapName": "m",
        "eventType": "PUT",
        "key": "k",
        "record": {"value": "v", "timestamp": {"millis": TS.millis, "counter": 1, "nodeId": "node-1"}},
    }
    orr = ORMapRecord("x", TS, str(TS))
    wire = twin.codec.unpack(
        twin.codec.encode(
            M.ServerEvent(map_name="m", event_type=M.ServerEventType.OR_ADD, key="k", or_record=orr)
        )
    )
    assert "ttlMs" not in wire["payload"]["orRecord"] and "record" not in wire["payload"]


def test_meaningful_nils_are_written(twin: Any) -> None:
    upd = M.QueryUpdate(query_id="q", key="k", value=None, change_type=M.ChangeType.LEAVE)
    wire = twin.codec.unpack(twin.codec.encode(upd))
    assert "value" in wire["payload"] and wire["payload"]["value"] is None
    assert twin.codec.decode(twin.codec.encode(upd)) == upd
    tomb = LWWRecord(None, TS)
    wire = twin.codec.unpack(
        twin.codec.encode(
            M.ServerEvent(map_name="m", event_type=M.ServerEventType.REMOVE, key="k", record=tomb)
        )
    )
    assert wire["payload"]["record"]["value"] is None and "value" in wire["payload"]["record"]


# --- ops and classification (§5.6, §8 7, 19)


def _op(**kw: Any) -> dict[str, Any]:
    d: dict[str, Any] = {"id": "1", "mapName": "m", "key": "k"}
    d.update(kw)
    return d


def _decode_ops(twin: Any, *ops: Any) -> list[Any]:
    return twin.codec.decode(wrapped("OP_BATCH", {"ops": list(ops)})).ops


REC = {"value": "v", "timestamp": TS_WIRE}
OREC = {"value": "v", "timestamp": TS_WIRE, "tag": "1700000000000:1:node-1"}


@pytest.mark.parametrize(
    "fields,expected",
    [
        ({"opType": "PUT", "record": REC}, M.OpType.PUT),
        ({"record": REC}, M.OpType.PUT),
        ({"record": None}, M.OpType.REMOVE),
        ({"record": None, "timestamp": TS_WIRE}, M.OpType.REMOVE),
        ({"orRecord": OREC}, M.OpType.OR_ADD),
        ({"orTag": "t1", "timestamp": TS_WIRE}, M.OpType.OR_REMOVE),
        ({"orTag": "t1", "orRecord": None}, M.OpType.OR_REMOVE),
        ({"opType": "SOMETHING", "orRecord": OREC}, M.OpType.OR_ADD),
        ({"opType": "PUT", "record": {"value": None, "timestamp": TS_WIRE}}, M.OpType.REMOVE),
        ({"record": {"timestamp": TS_WIRE}}, M.OpType.REMOVE),  # value stripped (undefined) -> tombstone
        ({"opType": "REMOVE"}, M.OpType.REMOVE),
    ],
)
def test_classification(twin: Any, fields: dict[str, Any], expected: M.OpType) -> None:
    (op,) = _decode_ops(twin, _op(**fields))
    assert isinstance(op, M.ClientOp), op
    assert op.op_type is expected


def test_ts_op_log_extra_fields(twin: Any) -> None:
    (op,) = _decode_ops(twin, _op(opType="PUT", record=REC, timestamp=TS_WIRE, synced=False))
    assert op.timestamp == TS and op.record == LWWRecord("v", TS)


@pytest.mark.parametrize(
    "fields,field",
    [
        ({"opType": "PUT"}, "payload.ops[1].record"),
        ({"opType": "PUT", "record": {"value": 1}}, "payload.ops[1].record.timestamp"),
        ({"mapName": ""}, "payload.ops[1].mapName"),
        ({"mapName": 5}, "payload.ops[1].mapName"),
        ({"key": None, "record": REC}, "payload.ops[1].key"),
        ({"opType": "OR_ADD", "orRecord": {**OREC, "tag": ""}}, "payload.ops[1].orRecord.tag"),
        ({"opType": "OR_REMOVE", "orTag": ""}, "payload.ops[1].orTag"),
        ({"opType": "OR_REMOVE"}, "payload.ops[1].orTag"),
        (
            {"record": {"value": 1, "timestamp": {**TS_WIRE, "nodeId": "a:b"}}},
            "payload.ops[1].record.timestamp.nodeId",
        ),
        (
            {"record": {"value": 1, "timestamp": {**TS_WIRE, "nodeId": ""}}},
            "payload.ops[1].record.timestamp.nodeId",
        ),
        (
            {"record": {"value": 1, "timestamp": {**TS_WIRE, "counter": 2**32}}},
            "payload.ops[1].record.timestamp.counter",
        ),
        (
            {"record": {"value": 1, "timestamp": {**TS_WIRE, "millis": 1.5}}},
            "payload.ops[1].record.timestamp.millis",
        ),
        ({"record": REC, "writeConcern": "SOMETIMES"}, "payload.ops[1].writeConcern"),
        ({"record": REC, "timeout": "x"}, "payload.ops[1].timeout"),
        ({"opType": 7, "record": REC}, "payload.ops[1].opType"),
    ],
)
def test_invalid_op_does_not_fail_batch(twin: Any, fields: dict[str, Any], field: str) -> None:
    good = _op(record=REC)
    bad = _op(**fields)
    bad["id"] = "2"
    ops = _decode_ops(twin, good, bad, {**good, "id": "3"})
    assert isinstance(ops[0], M.ClientOp) and isinstance(ops[2], M.ClientOp)
    inv = ops[1]
    assert isinstance(inv, M.InvalidOp)
    assert inv.id == "2" and inv.code == 400 and inv.field == field and inv.reason


def test_invalid_op_without_usable_id(twin: Any) -> None:
    ops = _decode_ops(twin, "not a map", {"id": 17, "mapName": "m", "key": "k", "record": REC})
    assert ops[0] == M.InvalidOp(id=None, reason=ops[0].reason, code=400, field="payload.ops[0]")
    assert isinstance(ops[1], M.InvalidOp) and ops[1].id is None and ops[1].field == "payload.ops[1].id"


def test_client_op_invalid_is_an_invalid_op(twin: Any) -> None:
    msg = twin.codec.decode(wrapped("CLIENT_OP", {"id": "9", "mapName": "m", "key": "k", "opType": "PUT"}))
    assert isinstance(msg, M.ClientOpMessage) and isinstance(msg.op, M.InvalidOp) and msg.op.id == "9"


def test_ops_not_array_is_frame_error(twin: Any) -> None:
    with pytest.raises(ProtocolError) as ei:
        twin.codec.decode(wrapped("OP_BATCH", {"ops": {"a": 1}}))
    assert ei.value.field == "payload.ops"


def test_remove_marker_round_trip(twin: Any) -> None:
    op = M.ClientOp(id="4", map_name="m", key="k", op_type=M.OpType.REMOVE, timestamp=TS)
    wire = twin.codec.unpack(twin.codec.encode(M.OpBatch(ops=[op])))
    assert wire["payload"]["ops"][0]["record"] is None
    assert twin.codec.decode(twin.codec.encode(M.OpBatch(ops=[op]))).ops == [op]


def test_invalid_op_cannot_be_encoded(twin: Any) -> None:
    with pytest.raises(ProtocolError):
        twin.codec.encode(M.OpBatch(ops=[M.InvalidOp(id="1", reason="x")]))


# --- queries (§8 items 8, 11)


def test_query_sort_both_forms_and_fields(twin: Any) -> None:
    arr = twin.codec.decode(
        wrapped(
            "QUERY_SUB",
            {
                "queryId": "q",
                "mapName": "m",
                "query": {"sort": [{"field": "b", "direction": "desc"}, {"field": "a", "direction": "asc"}],
                          "fields": ["x"]},
            },
        )
    )  # fmt: skip
    mp = twin.codec.decode(
        wrapped("QUERY_SUB", {"queryId": "q", "mapName": "m", "query": {"sort": {"b": "desc", "a": "asc"}}})
    )
    expected = [M.SortKey(field="b", direction=M.SortDirection.DESC), M.SortKey(field="a")]
    assert arr.query.sort == expected and mp.query.sort == expected
    assert arr.fields is None and arr.effective_fields == ["x"]
    both = twin.codec.decode(
        wrapped("QUERY_SUB", {"queryId": "q", "mapName": "m", "query": {"fields": ["x"]}, "fields": ["y"]})
    )
    assert both.effective_fields == ["y"]


def test_where_operator_object_is_literal(twin: Any) -> None:
    msg = twin.codec.decode(
        wrapped("QUERY_SUB", {"queryId": "q", "mapName": "m", "query": {"where": {"a": {"$gt": 1}}}})
    )
    assert msg.query.where == {"a": {"$gt": 1}}


def test_predicate_shape(twin: Any) -> None:
    pred = {
        "op": "and",
        "children": [{"op": "eq", "attribute": "a.b", "value": 1}, {"op": "not", "children": []}],
    }
    msg = twin.codec.decode(
        wrapped("QUERY_SUB", {"queryId": "q", "mapName": "m", "query": {"predicate": pred}})
    )
    assert msg.query.predicate == pred
    for bad, field in [
        ({"op": 1}, "payload.query.predicate.op"),
        ({"op": "eq", "attribute": 3}, "payload.query.predicate.attribute"),
        ({"op": "and", "children": {}}, "payload.query.predicate.children"),
        ({"op": "and", "children": [{"attribute": "a"}]}, "payload.query.predicate.children[0].op"),
    ]:
        with pytest.raises(ProtocolError) as ei:
            twin.codec.decode(
                wrapped("QUERY_SUB", {"queryId": "q", "mapName": "m", "query": {"predicate": bad}})
            )
        assert ei.value.field == field


def test_predicate_depth_bounded(twin: Any) -> None:
    node: dict[str, Any] = {"op": "eq", "attribute": "a", "value": 1}
    for _ in range(70):
        node = {"op": "not", "children": [node]}
    with pytest.raises(ProtocolError):
        twin.codec.decode(
            wrapped("QUERY_SUB", {"queryId": "q", "mapName": "m", "query": {"predicate": node}})
        )
    lim = twin.codec.Limits(max_predicate_depth=100)
    msg = twin.codec.decode(
        wrapped("QUERY_SUB", {"queryId": "q", "mapName": "m", "query": {"predicate": node}}), lim
    )
    assert msg.query.predicate == node


def test_bad_enum_values(twin: Any) -> None:
    with pytest.raises(ProtocolError) as ei:
        twin.codec.decode(
            wrapped("QUERY_SUB", {"queryId": "q", "mapName": "m", "query": {"sort": {"a": "up"}}})
        )
    assert ei.value.field == "payload.query.sort.a"
    with pytest.raises(ProtocolError) as ei:
        twin.codec.decode(
            wrapped("QUERY_UPDATE", {"queryId": "q", "key": "k", "value": 1, "changeType": "MOVE"})
        )
    assert ei.value.field == "payload.changeType"


# --- counters (§2.8, §8 items 10, 39)


def test_counter_spellings(twin: Any) -> None:
    ts_form = twin.codec.decode(
        wrapped("COUNTER_SYNC", {"name": "c", "state": {"positive": {"a": 3}, "negative": {"b": 1.0}}})
    )
    assert ts_form.state == M.CounterState(p={"a": 3}, n={"b": 1}) and type(ts_form.state.n["b"]) is int
    both = twin.codec.decode(
        wrapped(
            "COUNTER_SYNC",
            {
                "name": "c",
                "state": {"p": {"a": 3, "c": 1}, "n": {}, "positive": {"a": 5}, "negative": {"b": 2}},
            },
        )
    )
    assert both.state == M.CounterState(p={"a": 5, "c": 1}, n={"b": 2})
    assert both.state.value == 4
    wire = twin.codec.unpack(twin.codec.encode(M.CounterUpdate(name="c", state=both.state)))
    st = wire["payload"]["state"]
    assert st["p"] == st["positive"] == {"a": 5, "c": 1} and st["n"] == st["negative"] == {"b": 2}
    with pytest.raises(ProtocolError):
        twin.codec.decode(wrapped("COUNTER_SYNC", {"name": "c", "state": {"p": {"a": -1}}}))


# --- other kinds and tolerances


def test_sync_init_extra_fields_ignored(twin: Any) -> None:
    msg = twin.codec.decode(
        pk({"type": "SYNC_INIT", "mapName": "m", "rootHash": 1, "bucketHashes": {"0": 2}})
    )
    assert msg == M.SyncInit(map_name="m")


def test_ormap_epoch_fields(twin: Any) -> None:
    msg = twin.codec.decode(
        pk(
            {
                "type": "ORMAP_SYNC_INIT",
                "mapName": "m",
                "rootHash": 0,
                "bucketHashes": {},
                "claimedEpoch": 7.0,
            }
        )
    )
    assert msg.claimed_epoch == 7
    root = M.ORMapSyncRespRoot(map_name="m", root_hash=1, timestamp=TS, covering_epoch=3, full_resync=True)
    assert twin.codec.decode(twin.codec.encode(root)) == root
    ev = M.ServerEvent(map_name="m", event_type=M.ServerEventType.OR_REMOVE, key="k", or_tag="t", epoch=9)
    assert twin.codec.decode(twin.codec.encode(ev)) == ev


def test_server_event_remove_without_record_decodes(twin: Any) -> None:
    msg = twin.codec.decode(wrapped("SERVER_EVENT", {"mapName": "m", "eventType": "REMOVE", "key": "k"}))
    assert msg.record is None and msg.event_type is M.ServerEventType.REMOVE


def test_kinds_without_fixture_round_trip(twin: Any) -> None:
    entry = M.ORMapEntry(key="k", records=[ORMapRecord({"a": 1}, TS, str(TS), 100)], tombstones=["x:1:n"])
    msgs = [
        M.DeviceHello(),
        M.DeviceHello(device_token="d.tok"),
        M.DeviceAck(device_id="d", device_token="d.tok"),
        M.SyncRespLeaf(map_name="m", path="abc", records=[M.LeafRecord(key="k", record=LWWRecord(None, TS))]),
        M.ORMapSyncRespRoot(map_name="m", root_hash=0, timestamp=TS),
        M.ORMapMerkleReqBucket(map_name="m", path="a"),
        M.ORMapSyncRespBuckets(map_name="m", path="", buckets={"0": 1, "f": 2**32 - 1}),
        M.ORMapSyncRespLeaf(map_name="m", path="abc", entries=[entry], covering_epoch=2),
        M.ORMapDiffRequest(map_name="m", keys=["a", "b"]),
        M.ORMapDiffResponse(map_name="m", entries=[entry, M.ORMapEntry(key="z")]),
        M.ORMapPushDiff(map_name="m", entries=[entry]),
        M.ClientApplyAck(cursor=12),
        M.CounterResponse(name="c", state=M.CounterState(p={"n1": 2}, n={"n1": 1.5})),
        M.CounterUpdate(name="c", state=M.CounterState()),
    ]
    for m in msgs:
        assert twin.codec.decode(twin.codec.encode(m)) == m, m


def test_entry_lists_default_empty(twin: Any) -> None:
    msg = twin.codec.decode(wrapped("ORMAP_PUSH_DIFF", {"mapName": "m", "entries": [{"key": "k"}]}))
    assert msg.entries == [M.ORMapEntry(key="k", records=[], tombstones=[])]


# --- frame errors


def test_unknown_and_extended_types(twin: Any) -> None:
    with pytest.raises(UnknownMessageTypeError) as ei:
        twin.codec.decode(pk({"type": "HYBRID_QUERY_SUBSCRIBE", "payload": {}}))
    assert ei.value.type_name == "HYBRID_QUERY_SUBSCRIBE" and ei.value.field == "type"
    with pytest.raises(UnsupportedMessageTypeError) as ei2:
        twin.codec.decode(pk({"type": "QUERY_SYNC_INIT", "payload": {}}))
    assert ei2.value.code == 501


@pytest.mark.parametrize(
    "frame,field",
    [
        (pk({"payload": {}}), "type"),
        (pk({"type": 5}), "type"),
        (pk({"type": "ERROR"}), "payload"),
        (pk({"type": "ERROR", "payload": [1]}), "payload"),
        (pk({"type": "ERROR", "payload": {"code": 500}}), "payload.message"),
        (pk({"type": "AUTH"}), "token"),
        (pk({"type": "AUTH", "token": b"bytes"}), "token"),
        (pk({"type": "BATCH", "count": 1, "data": "text"}), "data"),
        (
            pk({"type": "LOCK_RELEASED", "payload": {"requestId": "r", "name": "n", "success": 1}}),
            "payload.success",
        ),
    ],
)
def test_shape_errors_name_the_field(twin: Any, frame: bytes, field: str) -> None:
    with pytest.raises(ProtocolError) as ei:
        twin.codec.decode(frame)
    assert ei.value.field == field and ei.value.code == 400


@pytest.mark.parametrize(
    "frame",
    [
        b"",
        b"\x91\x01",  # array at top level
        b"\xa3abc",  # string at top level
        b"\x81\xa4type",  # truncated
        b"\x81\xa4type\xa4PING\x00",  # trailing byte
        b"\x81\x01\xa4PING",  # int map key
        b"\x81\xc4\x01t\xa4PING",  # bin map key
        b"\x81\xa4type\xdb\xff\xff\xff\xff",  # huge declared string
        b"\x81\xa4type\xdd\xff\xff\xff\xff",  # huge declared array
        b"\xdf\xff\xff\xff\xff",  # huge declared map
        b"\x81\xa4type\xc1",  # never-used byte
        b"\x81\xa4type\xa2\xff\xfe",  # invalid UTF-8
    ],
)
def test_malformed_frames(twin: Any, frame: bytes) -> None:
    with pytest.raises(ProtocolError):
        twin.codec.decode(frame)


def test_depth_limit(twin: Any) -> None:
    # top map + payload map + data arrays: depth = 2 + (n arrays)
    ok = b"\x82\xa4type\xa9TOPIC_PUB\xa7payload\x82\xa5topic\xa1t\xa4data" + b"\x91" * 253 + b"\x90"
    msg = twin.codec.decode(ok)  # 2 maps + 254 arrays = 256
    assert isinstance(msg, M.TopicPub)
    too_deep = b"\x82\xa4type\xa9TOPIC_PUB\xa7payload\x82\xa5topic\xa1t\xa4data" + b"\x91" * 254 + b"\x90"
    with pytest.raises(ProtocolError):
        twin.codec.decode(too_deep)
    very_deep = (
        b"\x82\xa4type\xa9TOPIC_PUB\xa7payload\x82\xa5topic\xa1t\xa4data" + b"\x91" * 100_000 + b"\x90"
    )
    with pytest.raises(ProtocolError):
        twin.codec.decode(very_deep)
    with pytest.raises(ProtocolError):
        twin.codec.decode(ok, twin.codec.Limits(max_depth=100))


def test_frame_size_limit(twin: Any) -> None:
    frame = pk({"type": "TOPIC_PUB", "payload": {"topic": "t", "data": "x" * 5000}})
    assert twin.codec.decode(frame).data == "x" * 5000
    with pytest.raises(FrameTooLargeError) as ei:
        twin.codec.decode(frame, twin.codec.Limits(max_frame_bytes=4096))
    assert ei.value.code == 413
    with pytest.raises(ProtocolError):
        twin.codec.decode(frame, twin.codec.Limits(max_str_len=1000))
    big = b"\x81\xa4type" + b"\xdb" + (3 * 1024 * 1024).to_bytes(4, "big")
    with pytest.raises(FrameTooLargeError):
        twin.codec.decode(big + bytes(3 * 1024 * 1024))


# --- BATCH (§1.7)


def test_batch_format_a_round_trip(twin: Any) -> None:
    frames = [twin.codec.encode(M.Ping(timestamp=i)) for i in range(3)]
    data = twin.codec.encode_batch(frames)
    assert data[:4] == b"\x03\x00\x00\x00" and data[4:8] == len(frames[0]).to_bytes(4, "little")
    assert twin.codec.split_batch(data) == frames
    outer = twin.codec.decode(twin.codec.encode(M.Batch(count=3, data=data)))
    assert [twin.codec.decode(f) for f in twin.codec.split_batch(outer.data)] == [
        M.Ping(timestamp=i) for i in range(3)
    ]
    assert twin.codec.split_batch(twin.codec.encode_batch([])) == []


def test_batch_format_b_and_garbage(twin: Any) -> None:
    frames = [twin.codec.encode(M.Ping(timestamp=i)) for i in range(2)]
    data_b = b"".join(len(f).to_bytes(4, "big") + f for f in frames)
    assert twin.codec.split_batch(data_b) == frames
    with pytest.raises(ProtocolError):
        twin.codec.split_batch(b"\xde\xad\xbe\xef")  # the BATCH fixture's bytes
    with pytest.raises(ProtocolError):
        twin.codec.split_batch(b"\x01\x00")


def test_batch_item_limit(twin: Any) -> None:
    f = twin.codec.encode(M.Ping(timestamp=1))
    data = twin.codec.encode_batch([f] * 8193)
    with pytest.raises(ProtocolError) as ei:
        twin.codec.split_batch(data)
    assert ei.value.code == 413
    assert len(twin.codec.split_batch(twin.codec.encode_batch([f] * 8192))) == 8192
    with pytest.raises(ProtocolError):
        twin.codec.split_batch(twin.codec.encode_batch([f] * 11), twin.codec.Limits(max_batch_items=10))


# --- enums


def test_write_concern_order() -> None:
    W = M.WriteConcern
    assert W.FIRE_AND_FORGET < W.MEMORY < W.APPLIED < W.REPLICATED < W.PERSISTED
    assert max(W.APPLIED, W.PERSISTED, W.MEMORY) is W.PERSISTED
    assert sorted(W, reverse=True)[0] is W.PERSISTED


def test_message_type_core_and_extended() -> None:
    core = [t for t in M.MessageType if not t.is_extended]
    assert len(core) == 48 and set(M.MESSAGE_CLASSES) == set(core)
    assert M.MessageType.SEARCH.is_extended and M.MessageType.QUERY_SYNC_INIT.is_extended
    for cls in M.MESSAGE_CLASSES.values():
        assert cls.SHAPE in (M.Shape.FLAT, M.Shape.WRAPPED)
    assert M.ErrorCode.CLOCK_DRIFT == 422 and M.ErrorCode(501) is M.ErrorCode.NOT_IMPLEMENTED


def test_wire_name() -> None:
    assert M.wire_name("map_name") == "mapName"
    assert M.wire_name("last_sync_timestamp") == "lastSyncTimestamp"
    assert M.wire_name("key") == "key"


def test_buffer_types_accepted(twin: Any) -> None:
    # transports hand over bytes, bytearray or memoryview frames
    date_ext = b"\xd7\xff" + bytes(8)
    frame = wrapped(
        "OP_BATCH", {"ops": [_op(record={"value": {"d": M.Ext(-1, bytes(8))}, "timestamp": TS_WIRE})]}
    )
    assert date_ext in frame
    expected = twin.codec.decode(frame)
    assert expected.ops[0].record.value == {"d": M.Ext(-1, bytes(8))}
    for buf in (bytearray(frame), memoryview(frame), memoryview(bytearray(frame))):
        assert twin.codec.decode(buf) == expected
        assert twin.codec.unpack(buf) == twin.codec.unpack(frame)
