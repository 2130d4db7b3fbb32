"""Differential tests of ``CLIENT_OP`` decoding: the compiled twin reads the op straight from the
frame's bytes (falling back to the general path for anything unusual) and must agree with the
pure specification object for object, type for type, and error for error."""

from __future__ import annotations

import dataclasses
import random
import struct
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from protocol_strategies import PROPS, client_ops, same_deeply, shuffled, values, wire_ops

from topgun.errors import ProtocolError
from topgun.protocol import _codec_py
from topgun.protocol import messages as M
from topgun.protocol.codec import Limits

pk = _codec_py.pack



def _agree(pure: Any, compiled: Any, frame: Any, limits: Limits | None = None) -> Any:
    """Decode with both twins; same message (deeply, with types) or same error. Returns pure's."""
    try:
        expected = pure.codec.decode(frame, limits)
    except ProtocolError as exc:
        with pytest.raises(ProtocolError) as ei:
            compiled.codec.decode(frame, limits)
        got = ei.value
        assert (type(got), got.code, got.field, str(got)) == (type(exc), exc.code, exc.field, str(exc))
        return exc
    got = compiled.codec.decode(frame, limits)
    assert got == expected
    assert repr(got) == repr(expected)
    same_deeply(expected, got)
    return expected


def _client_op(payload: Any) -> bytes:
    return pk({"type": "CLIENT_OP", "payload": payload})


_TS = {"millis": 1_700_000_000_000, "counter": 3, "nodeId": "node-a"}


def _op(**kw: Any) -> dict[str, Any]:
    op: dict[str, Any] = {"id": "7", "mapName": "m", "key": "k"}
    op.update(kw)
    return op


_VALID = {
    "put": _op(opType="PUT", record={"value": {"n": 1, "v": "x" * 40}, "timestamp": _TS}),
    "put-no-optype": _op(record={"value": [1, 2.5, None, True], "timestamp": _TS}),
    "put-nil-value-is-remove": _op(opType="PUT", record={"value": None, "timestamp": _TS}),
    "put-ttl": _op(opType="PUT", record={"value": 1, "timestamp": _TS, "ttlMs": 5000}),
    "put-ttl-nil": _op(opType="PUT", record={"value": 1, "timestamp": _TS, "ttlMs": None}),
    "put-float-millis": _op(record={"value": "v", "timestamp": {**_TS, "millis": 1.7e12}}),
    "put-all-optionals": _op(
        opType="PUT",
        record={"value": b"\x00\x01", "timestamp": _TS},
        writeConcern="PERSISTED",
        timeout=2500,
        timestamp=dict(_TS),
    ),
    "put-op-timestamp-differs": _op(
        record={"value": 1, "timestamp": _TS}, timestamp={**_TS, "counter": 4, "nodeId": "other"}
    ),
    "put-nil-optionals": _op(
        id=None, opType=None, record={"value": 1, "timestamp": _TS}, writeConcern=None, timeout=None
    ),
    "put-unknown-optype-classifies": _op(opType="UPSERT", record={"value": 1, "timestamp": _TS}),
    "put-no-id": {"mapName": "m", "key": "", "record": {"value": 1, "timestamp": _TS}},
    "remove-nil-record": _op(record=None),
    "remove-typed": _op(opType="REMOVE", record={"value": None, "timestamp": _TS}),
    "remove-typed-no-record": _op(opType="REMOVE"),
    "or-add": _op(opType="OR_ADD", orRecord={"value": {"a": 1}, "timestamp": _TS, "tag": "t1"}),
    "or-add-classified": _op(orRecord={"value": 1, "timestamp": _TS, "tag": "t1", "ttlMs": 9}),
    "or-remove": _op(opType="OR_REMOVE", orTag="t1"),
    "or-remove-classified": _op(orTag="t1", writeConcern="APPLIED"),
    "ts-op-log-extras": _op(
        opType="PUT", record={"value": 1, "timestamp": _TS}, timestamp=dict(_TS), synced=False, extra=[{}]
    ),
    "unicode": _op(mapName="carte-é", key="ключ", record={"value": "値", "timestamp": _TS}),
    "ext-values": _op(record={"value": [M.Ext(5, b"abc"), M.Ext(-1, b"\x00" * 8)], "timestamp": _TS}),
}

# valid ops the byte reader leaves to the general decoder (sizes or forms it does not handle)
_DECLINED_VALID = {
    "millis-beyond-int64": _op(record={"value": 1, "timestamp": {**_TS, "millis": 2**64 - 1}}),
    "timeout-float": _op(record={"value": 1, "timestamp": _TS}, timeout=3.0),
    "ext-minus-1-in-declined-op": _op(
        record={"value": M.Ext(-1, b"\x01\x02\x03\x04"), "timestamp": {**_TS, "millis": 2**64 - 1}}
    ),
}

_INVALID = {
    "no-map-name": {"id": "1", "key": "k", "record": {"value": 1, "timestamp": _TS}},
    "empty-map-name": _op(mapName="", record={"value": 1, "timestamp": _TS}),
    "int-key": _op(key=5, record={"value": 1, "timestamp": _TS}),
    "nil-key": _op(key=None, record={"value": 1, "timestamp": _TS}),
    "int-id": _op(id=5, record={"value": 1, "timestamp": _TS}),
    "put-without-record": _op(opType="PUT"),
    "or-add-without-orrecord": _op(opType="OR_ADD"),
    "or-add-empty-tag": _op(opType="OR_ADD", orRecord={"value": 1, "timestamp": _TS, "tag": ""}),
    "or-remove-empty-tag": _op(opType="OR_REMOVE", orTag=""),
    "optype-int": _op(opType=3, record={"value": 1, "timestamp": _TS}),
    "bad-write-concern": _op(record={"value": 1, "timestamp": _TS}, writeConcern="NOPE"),
    "timeout-fraction": _op(record={"value": 1, "timestamp": _TS}, timeout=1.5),
    "record-not-map": _op(record=[1, 2]),
    "record-no-timestamp": _op(record={"value": 1}),
    "counter-too-big": _op(record={"value": 1, "timestamp": {**_TS, "counter": 2**32}}),
    "negative-millis": _op(record={"value": 1, "timestamp": {**_TS, "millis": -1}}),
    "node-with-colon": _op(record={"value": 1, "timestamp": {**_TS, "nodeId": "a:b"}}),
    "empty-node": _op(record={"value": 1, "timestamp": {**_TS, "nodeId": ""}}),
    "op-timestamp-bad": _op(record={"value": 1, "timestamp": _TS}, timestamp={"millis": 1}),
    "ext-minus-1-in-invalid-op": _op(key=None, record={"value": M.Ext(-1, b"\x09" * 4), "timestamp": _TS}),
}


def _op_of(msg: Any) -> Any:
    assert type(msg) is M.ClientOpMessage
    return msg.op


@pytest.mark.parametrize("op", list(_VALID.values()), ids=list(_VALID))
def test_valid_client_ops(pure: Any, compiled: Any, op: dict[str, Any]) -> None:
    assert type(_op_of(_agree(pure, compiled, _client_op(op)))) is M.ClientOp


@pytest.mark.parametrize("op", list(_DECLINED_VALID.values()), ids=list(_DECLINED_VALID))
def test_ops_the_byte_reader_declines(pure: Any, compiled: Any, op: dict[str, Any]) -> None:
    assert type(_op_of(_agree(pure, compiled, _client_op(op)))) is M.ClientOp


@pytest.mark.parametrize("op", list(_INVALID.values()), ids=list(_INVALID))
def test_invalid_ops_are_invalid_ops(pure: Any, compiled: Any, op: dict[str, Any]) -> None:
    inv = _op_of(_agree(pure, compiled, _client_op(op)))
    assert type(inv) is M.InvalidOp
    assert inv.field is not None and inv.field.startswith("payload")


def test_deep_value_beyond_the_readers_depth(pure: Any, compiled: Any) -> None:
    value: Any = 1
    for _ in range(320):
        value = [value]
    frame = _client_op(_op(record={"value": value, "timestamp": _TS}))
    msg = _agree(pure, compiled, frame, Limits(max_depth=400))
    assert type(_op_of(msg)) is M.ClientOp
    err = _agree(pure, compiled, frame)  # the default depth limit refuses the frame
    assert isinstance(err, ProtocolError)


_PUT = _VALID["put"]
_PUT_BYTES = pk(_PUT)


def _raw_map(*entries: tuple[str, bytes]) -> bytes:
    """A top-level map written entry by entry (repeats and any order allowed)."""
    assert len(entries) < 16
    return bytes([0x80 | len(entries)]) + b"".join(pk(k) + v for k, v in entries)


_FRAMES = {
    "type-first": _raw_map(("type", pk("CLIENT_OP")), ("payload", _PUT_BYTES)),
    "payload-first": _raw_map(("payload", _PUT_BYTES), ("type", pk("CLIENT_OP"))),
    "extra-keys-around": _raw_map(
        ("type", pk("CLIENT_OP")), ("seq", pk(5)), ("payload", _PUT_BYTES), ("meta", pk({"a": [1, None]}))
    ),
    "extra-ext-key": _raw_map(
        ("type", pk("CLIENT_OP")), ("x", pk(M.Ext(-1, b"zz"))), ("payload", _PUT_BYTES)
    ),
    "repeated-payload": _raw_map(
        ("type", pk("CLIENT_OP")), ("payload", pk(_INVALID["int-key"])), ("payload", _PUT_BYTES)
    ),
    "repeated-payload-last-invalid": _raw_map(
        ("type", pk("CLIENT_OP")), ("payload", _PUT_BYTES), ("payload", pk(_INVALID["int-key"]))
    ),
    "repeated-type": _raw_map(("type", pk("CLIENT_OP")), ("payload", _PUT_BYTES), ("type", pk("PING"))),
    "repeated-type-same": _raw_map(
        ("type", pk("CLIENT_OP")), ("payload", _PUT_BYTES), ("type", pk("CLIENT_OP"))
    ),
    "type-as-str8": b"\x82" + pk("type") + b"\xd9\x09CLIENT_OP" + pk("payload") + _PUT_BYTES,
    "map16-header": b"\xde\x00\x02" + pk("type") + pk("CLIENT_OP") + pk("payload") + _PUT_BYTES,
    "map16-payload": _raw_map(
        ("type", pk("CLIENT_OP")),
        ("payload", b"\xde" + struct.pack(">H", len(_PUT)) + _PUT_BYTES[1:]),
    ),
    "map16-op-record": _raw_map(
        ("type", pk("CLIENT_OP")),
        ("payload", pk(_op(record={"value": 1, "timestamp": _TS, **{f"k{i}": i for i in range(20)}}))),
    ),
    # frames the general path refuses
    "no-payload": _raw_map(("type", pk("CLIENT_OP")), ("other", _PUT_BYTES)),
    "payload-nil": _raw_map(("type", pk("CLIENT_OP")), ("payload", pk(None))),
    "payload-list": _raw_map(("type", pk("CLIENT_OP")), ("payload", pk([_PUT]))),
    "payload-int": _raw_map(("type", pk("CLIENT_OP")), ("payload", pk(3))),
    "payload-empty-map": _raw_map(("type", pk("CLIENT_OP")), ("payload", pk({}))),
    "type-only": _raw_map(("type", pk("CLIENT_OP"))),
    "truncated": _raw_map(("type", pk("CLIENT_OP")), ("payload", _PUT_BYTES))[:-3],
    "trailing-bytes": _raw_map(("type", pk("CLIENT_OP")), ("payload", _PUT_BYTES)) + b"\xc0",
    "reserved-ext": _raw_map(("type", pk("CLIENT_OP")), ("payload", _PUT_BYTES), ("x", b"\xd4\x80\x00")),
    "bad-utf8-top-key": _raw_map(("type", pk("CLIENT_OP")), ("payload", _PUT_BYTES)).replace(
        b"\xa7payload", b"\xa7payl\xff\xfe\xfd"
    ),
    "bad-utf8-extra-key": _raw_map(
        ("type", pk("CLIENT_OP")), ("ZZZZ", pk(1)), ("payload", _PUT_BYTES)
    ).replace(b"ZZZZ", b"\xed\xa0\x80\x41"),
    "bad-utf8-op-key": _client_op(_op(record={"value": 1, "timestamp": _TS}, ZZZZ=1)).replace(
        b"ZZZZ", b"\xc0\xaf\x41\x41"
    ),
    "bad-utf8-value": _client_op(_op(record={"value": "ZZZZ", "timestamp": _TS})).replace(
        b"ZZZZ", b"AA\xe2\x82"
    ),
    "bad-utf8-node": _client_op(_op(record={"value": 1, "timestamp": {**_TS, "nodeId": "ZZZZ"}})).replace(
        b"ZZZZ", b"\xff\xfe\xfd\xfc"
    ),
    "bad-utf8-in-declined-op": _client_op(_op(key=None, record={"value": "ZZZZ", "timestamp": _TS})).replace(
        b"ZZZZ", b"\xf4\x90\x80\x80"
    ),
}


@pytest.mark.parametrize("frame", list(_FRAMES.values()), ids=list(_FRAMES))
def test_frame_layouts(pure: Any, compiled: Any, frame: bytes) -> None:
    _agree(pure, compiled, frame)


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_buffer_kinds(pure: Any, compiled: Any, kind: Any) -> None:
    frame = _client_op(_VALID["put-all-optionals"])
    assert type(_op_of(_agree(pure, compiled, kind(frame)))) is M.ClientOp
    assert compiled.codec.decode(kind(frame)) == pure.codec.decode(frame)


def test_limits_apply_to_client_op(pure: Any, compiled: Any) -> None:
    frame = _client_op(_op(record={"value": "x" * 100, "timestamp": _TS}))
    assert isinstance(_agree(pure, compiled, frame, Limits(max_str_len=50)), ProtocolError)
    assert isinstance(_agree(pure, compiled, frame, Limits(max_frame_bytes=100)), ProtocolError)
    assert type(_op_of(_agree(pure, compiled, frame, Limits()))) is M.ClientOp


def test_the_bench_frame(pure: Any, compiled: Any) -> None:
    from topgun.bench.frames import BatchTemplate

    tpl = BatchTemplate(
        "m0", ["k"], {"n": 1, "v": "x" * 40}, node_id="n0", write_concern="APPLIED", single=True
    )
    frame = bytes(tpl.stamp(1_700_000_000_123, 42))
    op = _op_of(_agree(pure, compiled, frame))
    assert (op.map_name, op.key, op.op_type, op.write_concern) == (
        "m0",
        "k",
        M.OpType.PUT,
        M.WriteConcern.APPLIED,
    )
    assert op.record.timestamp == M.Timestamp(1_700_000_000_123, 42, "n0")


def test_typical_frame_takes_the_byte_path(compiled: Any) -> None:
    # The byte reader shares the node id string of consecutive timestamps (the general path,
    # through msgpack, builds a fresh one per frame): this tells the path apart, so the
    # differential tests above are known to exercise it.
    node = "node-" + "q" * 20
    frames = [
        _client_op(_op(key=f"k{i}", record={"value": i, "timestamp": {**_TS, "nodeId": node}}))
        for i in range(2)
    ]
    a, b = (compiled.codec.decode(f) for f in frames)
    assert a.op.record.timestamp.node_id is b.op.record.timestamp.node_id
    general = [compiled.codec.decode(_payload_first(f)) for f in frames]
    assert general == [a, b]
    assert general[0].op.record.timestamp.node_id is not general[1].op.record.timestamp.node_id


def _payload_first(frame: bytes) -> bytes:
    """The same CLIENT_OP frame with the payload written before the type (the general path)."""
    obj = _codec_py.unpack(frame)
    return pk({"payload": obj["payload"], "type": obj["type"]})


def test_built_messages_equal_constructed_ones(compiled: Any) -> None:
    op = M.ClientOp(
        id="1",
        map_name="m",
        key="k",
        op_type=M.OpType.PUT,
        record=M.LWWRecord({"a": 1}, M.Timestamp(1, 2, "n"), None),
        write_concern=M.WriteConcern.APPLIED,
    )
    cop = compiled.codec.decode(_codec_py.encode(M.ClientOpMessage(op=op)))
    assert type(cop) is M.ClientOpMessage
    assert cop == M.ClientOpMessage(op=op) and repr(cop) == repr(M.ClientOpMessage(op=op))
    assert dataclasses.replace(cop, op=cop.op) == cop
    with pytest.raises(dataclasses.FrozenInstanceError):
        cop.op = None  # type: ignore[misc]
    batch = M.OpBatch(ops=[op, op], write_concern=M.WriteConcern.PERSISTED, timeout=30)
    got = compiled.codec.decode(_codec_py.encode(batch))
    assert type(got) is M.OpBatch and got == batch and repr(got) == repr(batch)
    same_deeply(batch, got)
    bare = M.OpBatch(ops=[op])
    got = compiled.codec.decode(_codec_py.encode(bare))
    assert got == bare and got.write_concern is None and got.timeout is None



@PROPS
@given(
    op=wire_ops(),
    extra=st.dictionaries(st.sampled_from(["seq", "meta", "v", "ZZ"]), values, max_size=2),
    seed=st.none() | st.integers(0, 2**32),
    type_first=st.booleans(),
)
def test_client_op_frames_agree(
    pure: Any, compiled: Any, op: Any, extra: dict[str, Any], seed: int | None, type_first: bool
) -> None:
    rnd = random.Random(seed)
    if seed is not None:
        op = shuffled(op, rnd)
    entries = [("payload", op), *extra.items()]
    rnd.shuffle(entries)
    # type first takes the compiled byte path; anywhere else the general one
    entries.insert(0 if type_first else rnd.randint(1, len(entries)), ("type", "CLIENT_OP"))
    _agree(pure, compiled, pk(dict(entries)))


@PROPS
@given(op=client_ops(), value=values)
def test_encoded_client_ops_agree(pure: Any, compiled: Any, op: M.ClientOp, value: Any) -> None:
    if op.record is not None and op.record.value is not None and value is not None:
        op = dataclasses.replace(op, record=op.record._replace(value=value))
    msg = _agree(pure, compiled, _codec_py.encode(M.ClientOpMessage(op=op)))
    assert type(_op_of(msg)) is M.ClientOp


# The compiled decoder reads CLIENT_OP and OP_BATCH frames in one pass, checking what the scan
# checks as it goes, and scans (then reads again) only a frame it gives up on. Every malformed
# or over-limit variant of those frames must still fail exactly as the scan makes it fail.


def _bench_frames() -> dict[str, bytes]:
    from topgun.bench.frames import BatchTemplate

    value = {"n": 1, "v": "x" * 40}
    one = BatchTemplate("m0", ["k"], value, node_id="n0", write_concern="APPLIED", single=True)
    two = BatchTemplate("m0", ["k1", "k2"], value, node_id="n0")
    extras = _client_op(
        _op(
            record={
                "value": [b"\x01" * 3, M.Ext(3, b"ab"), M.Ext(-1, b"\x00" * 4), -5, 2.5],
                "timestamp": _TS,
            },
            timestamp=dict(_TS),
            meta={"a": [None, True]},
        )
    )
    deep: Any = 1
    for i in range(8):
        deep = [deep] if i % 2 else {"d": deep}
    deep_op = _op(record={"value": deep, "timestamp": _TS}, meta=deep)
    return {
        "client-op": bytes(one.stamp(1_700_000_000_123, 42)),
        "op-batch": bytes(two.stamp(1_700_000_000_123, 42)),
        "client-op-extras": extras,
        "client-op-deep": _client_op(deep_op),
        "op-batch-deep": pk({"type": "OP_BATCH", "payload": {"ops": [deep_op]}, "meta": deep}),
        # deep only where the reader skips
        "client-op-deep-extra": _client_op(_op(record={"value": 1, "timestamp": _TS}, meta=deep)),
        "op-batch-deep-extra": pk({"type": "OP_BATCH", "payload": {"ops": [_PUT], "meta": deep}}),
    }


_WRITE_FRAMES = _bench_frames()
# a byte of every MsgPack family, the unused 0xC1, and the reserved ext type -128 (0x80)
_SUBSTITUTES = bytes(
    [0x00, 0x05, 0x7F, 0x80, 0x81, 0x8F, 0x90, 0x9F, 0xA0, 0xA1, 0xBF, 0xC0, 0xC1, 0xC2, 0xC4, 0xC5, 0xC6,
     0xC7, 0xC9, 0xCA, 0xCB, 0xCC, 0xCF, 0xD0, 0xD3, 0xD4, 0xD8, 0xD9, 0xDA, 0xDB, 0xDC, 0xDD, 0xDE,
     0xDF, 0xE0, 0xFF]
)  # fmt: skip


@pytest.mark.parametrize("name", list(_WRITE_FRAMES))
def test_every_truncation_of_a_write_frame(pure: Any, compiled: Any, name: str) -> None:
    frame = _WRITE_FRAMES[name]
    for end in range(len(frame)):
        _agree(pure, compiled, frame[:end])
    for tail in (b"\xc0", b"\x00", b"\x81", b"\xa1"):
        _agree(pure, compiled, frame + tail)


@pytest.mark.parametrize("name", list(_WRITE_FRAMES))
def test_every_byte_of_a_write_frame_replaced(pure: Any, compiled: Any, name: str) -> None:
    frame = _WRITE_FRAMES[name]
    for pos in range(len(frame)):
        for b in _SUBSTITUTES:
            if frame[pos] != b:
                _agree(pure, compiled, frame[:pos] + bytes([b]) + frame[pos + 1 :])


@pytest.mark.parametrize("name", list(_WRITE_FRAMES))
def test_limits_on_write_frames(pure: Any, compiled: Any, name: str) -> None:
    frame = _WRITE_FRAMES[name]
    for depth in range(1, 16):
        _agree(pure, compiled, frame, Limits(max_depth=depth))
    for length in (0, 1, 2, 3, 4, 5, 7, 39, 40, 41):
        _agree(pure, compiled, frame, Limits(max_str_len=length))
        _agree(pure, compiled, frame, Limits(max_bin_len=length))
    for size in (len(frame) - 1, len(frame)):
        _agree(pure, compiled, frame, Limits(max_frame_bytes=size))


@dataclasses.dataclass(frozen=True, slots=True)
class _SubLimits(Limits):
    """A Limits subclass: read through its attributes, not its slots."""


@pytest.mark.parametrize("name", list(_WRITE_FRAMES))
def test_limits_read_through_attributes(pure: Any, compiled: Any, name: str) -> None:
    frame = _WRITE_FRAMES[name]
    for lim in (
        _SubLimits(),
        _SubLimits(max_str_len=39),
        _SubLimits(max_depth=3),
        _SubLimits(max_frame_bytes=len(frame) - 1),
        Limits(max_frame_bytes=2**70, max_str_len=2**63, max_bin_len=2**64 - 1),
    ):
        _agree(pure, compiled, frame, lim)
    assert compiled.codec.decode(frame, _SubLimits()) == compiled.codec.decode(frame)


@PROPS
@given(
    name=st.sampled_from(list(_WRITE_FRAMES)),
    edits=st.lists(
        st.tuples(st.sampled_from(["set", "insert", "delete"]), st.integers(0, 2**16), st.integers(0, 255)),
        min_size=1,
        max_size=3,
    ),
)
def test_mutated_write_frames_agree(pure: Any, compiled: Any, name: str, edits: list[Any]) -> None:
    frame = bytearray(_WRITE_FRAMES[name])
    for kind, at, b in edits:
        at %= len(frame) + 1
        if kind == "insert":
            frame[at:at] = bytes([b])
        elif at < len(frame):
            if kind == "set":
                frame[at] = b
            else:
                del frame[at]
    _agree(pure, compiled, bytes(frame))
