"""Differential tests: the compiled and the pure codec agree object for object and byte for byte."""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from protocol_strategies import PROPS, message_strategy, messages, shuffled, values, wire_ops

from topgun.errors import ProtocolError
from topgun.protocol import _codec_py
from topgun.protocol import messages as M


@PROPS
@given(
    ops=st.lists(wire_ops(), max_size=12),
    wc=st.sampled_from([None, "APPLIED", "PERSISTED"]),
    seed=st.none() | st.integers(0, 2**32),
)
def test_op_batches_decode_identically(
    pure: Any, compiled: Any, ops: list[Any], wc: str | None, seed: int | None
) -> None:
    payload: dict[str, Any] = {"ops": ops}
    if wc is not None:
        payload["writeConcern"] = wc
    if seed is not None:
        payload = shuffled(payload, random.Random(seed))
    # type first takes the compiled byte path; payload first the general one
    frame = _codec_py.pack({"type": "OP_BATCH", "payload": payload})
    a = pure.codec.decode(frame)
    b = compiled.codec.decode(frame)
    assert a == b
    assert compiled.codec.decode(_codec_py.pack({"payload": payload, "type": "OP_BATCH"})) == a
    assert [type(x) for x in a.ops] == [type(x) for x in b.ops]
    for x, y in zip(a.ops, b.ops, strict=True):
        if isinstance(x, M.ClientOp):
            assert type(x.timeout) is type(y.timeout)
            for rec in ("record", "or_record"):
                rx, ry = getattr(x, rec), getattr(y, rec)
                if rx is not None:
                    assert type(rx) is type(ry) and type(ry.timestamp) is M.Timestamp
                    assert type(ry.timestamp.millis) is int
    for op in ops:
        single = _codec_py.pack({"type": "CLIENT_OP", "payload": op})
        try:
            ca = pure.codec.decode(single)
        except ProtocolError as exc:
            with pytest.raises(ProtocolError) as ei:
                compiled.codec.decode(single)
            assert (type(ei.value), ei.value.code, ei.value.field) == (type(exc), exc.code, exc.field)
        else:
            assert compiled.codec.decode(single) == ca


server_events = message_strategy(M.ServerEvent)
query_updates = message_strategy(M.QueryUpdate)
op_acks = message_strategy(M.OpAck)


@PROPS
@given(msg=st.one_of(server_events, query_updates, op_acks))
def test_hot_encoders_identical_bytes(pure: Any, compiled: Any, msg: Any) -> None:
    a = pure.codec.encode(msg)
    assert compiled.codec.encode(msg) == a
    assert compiled.codec.decode(a) == pure.codec.decode(a) == msg


@PROPS
@given(
    value=values, big=st.sampled_from([0, 2**31, -(2**31) - 1, 2**63, -(2**63), 2**64 - 1, 1.5, "é" * 300])
)
def test_value_packing_identical(pure: Any, compiled: Any, value: Any, big: Any) -> None:
    for v in (value, big, [value, big], {"a": value, "b": {"c": [big] * 20}}, "x" * 70000, b"y" * 300):
        msg = M.QueryUpdate(query_id="q", key="k", value=v, change_type=M.ChangeType.UPDATE)
        assert compiled.codec.encode(msg) == pure.codec.encode(msg)


def test_unusual_values_fall_back_identically(pure: Any, compiled: Any) -> None:
    ts = M.Timestamp(1, 2, "n")
    for v in [(1, 2), M.Ext(-1, b"abcd"), M.ErrorCode.CONFLICT, M.OpType.PUT, {"k": (1,)}, {1: 2}]:
        ev = M.ServerEvent(map_name="m", event_type=M.ServerEventType.PUT, key="k", record=M.LWWRecord(v, ts))
        assert compiled.codec.encode(ev) == pure.codec.encode(ev)
    for bad in [object(), 2**70, -(2**64)]:
        ev = M.ServerEvent(
            map_name="m", event_type=M.ServerEventType.PUT, key="k", record=M.LWWRecord(bad, ts)
        )
        with pytest.raises(Exception) as ea:
            pure.codec.encode(ev)
        with pytest.raises(Exception) as eb:
            compiled.codec.encode(ev)
        assert type(ea.value) is type(eb.value)
    with pytest.raises(ProtocolError):
        compiled.codec.encode(M.OpAck(last_id=None))  # type: ignore[arg-type]


@PROPS
@given(msg=messages)
def test_every_kind_identical(pure: Any, compiled: Any, msg: Any) -> None:
    frame = pure.codec.encode(msg)
    assert compiled.codec.encode(msg) == frame
    assert compiled.codec.decode(frame) == pure.codec.decode(frame)


@PROPS
@given(
    data=st.binary(max_size=120),
    prefix=st.sampled_from([b"", b"\x82", b"\x82\xa4type\xa8OP_BATCH\xa7payload"]),
)
def test_errors_identical(pure: Any, compiled: Any, data: bytes, prefix: bytes) -> None:
    frame = prefix + data
    try:
        expected = pure.codec.decode(frame)
    except ProtocolError as exc:
        with pytest.raises(ProtocolError) as ei:
            compiled.codec.decode(frame)
        assert (type(ei.value), ei.value.code, ei.value.field, str(ei.value)) == (
            type(exc),
            exc.code,
            exc.field,
            str(exc),
        )
    else:
        assert compiled.codec.decode(frame) == expected


def test_same_public_names(pure: Any, compiled: Any) -> None:
    for name in _codec_py.__all__:
        assert hasattr(compiled.codec, name), name
    assert compiled.codec.Limits is pure.codec.Limits


@pytest.mark.parametrize(
    "bad",
    [b"\xff\xfe\xfd\xfc", b"\xc0\xaf\x41\x41", b"\xed\xa0\x80\x41", b"\xf4\x90\x80\x80", b"AA\xe2\x82"],
    ids=["invalid-start", "overlong", "surrogate", "beyond-max", "truncated"],
)
@pytest.mark.parametrize(
    "where", ["op-key", "op-value", "ts-key", "payload-key", "top-key", "node-id", "value"]
)
def test_invalid_utf8_anywhere_is_rejected_by_both(pure: Any, compiled: Any, bad: bytes, where: str) -> None:
    ts = {"millis": 1.0, "counter": 0, "nodeId": "ZZZZ" if where == "node-id" else "n"}
    if where == "ts-key":
        ts["ZZZZ"] = 1
    op: dict[str, Any] = {"id": "1", "mapName": "m", "key": "k", "opType": "PUT", "timestamp": ts}
    op["record"] = {"value": "ZZZZ" if where == "value" else 1, "timestamp": dict(ts)}
    if where == "op-key":
        op["ZZZZ"] = False
    if where == "op-value":
        op["synced"] = ["ZZZZ"]
    payload: dict[str, Any] = {"ops": [op]}
    if where == "payload-key":
        payload["ZZZZ"] = 1
    top: dict[str, Any] = {"type": "OP_BATCH", "payload": payload}
    if where == "top-key":
        top["ZZZZ"] = {"a": 1}
    good = _codec_py.pack(top)
    assert isinstance(compiled.codec.decode(good), M.OpBatch)
    frame = good.replace(b"ZZZZ", bad)
    with pytest.raises(ProtocolError) as ea:
        pure.codec.decode(frame)
    with pytest.raises(ProtocolError) as eb:
        compiled.codec.decode(frame)
    assert str(ea.value) == str(eb.value)


@PROPS
@given(
    raw=st.binary(min_size=6, max_size=6)
    | st.text(min_size=2, max_size=2).map(lambda t: t.encode()[:6].ljust(6, b"a"))
)
def test_utf8_of_skipped_keys_judged_like_python(pure: Any, compiled: Any, raw: bytes) -> None:
    op = {
        "id": "1",
        "mapName": "m",
        "key": "k",
        "record": {"value": 1, "timestamp": {"millis": 1, "counter": 0, "nodeId": "n"}},
    }
    op["QQQQQQ"] = True
    frame = _codec_py.pack({"type": "OP_BATCH", "payload": {"ops": [op]}}).replace(b"QQQQQQ", raw)
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        for codec in (pure.codec, compiled.codec):
            with pytest.raises(ProtocolError):
                codec.decode(frame)
    else:
        assert compiled.codec.decode(frame) == pure.codec.decode(frame)
