"""The load client's ack check: byte equality with the predicted success ack, the full unpack otherwise.

The write scenarios count an ``OP_ACK`` as all-success only when its bytes
equal :meth:`BatchTemplate.ok_ack`; every other frame must be counted exactly
as the full unpack (``_ack_ok``) counts it. These tests pin both halves: the
prediction equals what the server encodes (both twins), and failed, mixed,
rejected and unexpected frames come out as the unpack says.
"""

from __future__ import annotations

from array import array
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from picows import WSMsgType
from picows.picows import _make_test_ws_frame

from topgun.bench import worker
from topgun.bench.frames import BatchTemplate
from topgun.bench.histogram import Histogram
from topgun.protocol import codec
from topgun.protocol.messages import ClientOpMessage, OpAck, OpBatch, OpRejected, OpResult, WriteConcern

LEVELS = list(WriteConcern)
APPLIED = WriteConcern.APPLIED


def _single() -> BatchTemplate:
    return BatchTemplate(
        "m", ["k"], {"n": 1, "v": "x" * 40}, node_id="n1", write_concern="APPLIED", single=True
    )


def _batch(n: int = 100, first: int = 0) -> BatchTemplate:
    keys = [f"k{j:07d}" for j in range(first, first + n)]
    return BatchTemplate("m", keys, {"n": 1, "v": "x" * 40}, node_id="n1", write_concern="APPLIED")


class FakeTransport:
    """Stands in for picows' ``WSTransport``: keeps what was sent."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def send(self, msg_type: WSMsgType, data: bytes) -> None:
        assert msg_type is WSMsgType.BINARY
        self.sent.append(bytes(data))

    def disconnect(self) -> None:
        pass


def _frame(data: bytes, kind: WSMsgType = WSMsgType.BINARY) -> Any:
    return _make_test_ws_frame(kind, data, True, False)


def _ack(results: list[tuple[str, bool, WriteConcern]], level: WriteConcern) -> bytes:
    """An ``OP_ACK`` as the server encodes a batch with refusals (``OpAck`` through the codec)."""
    rs = [
        OpResult(op_id=i, success=ok, achieved_level=lv, error=None if ok else "denied")
        for i, ok, lv in results
    ]
    return codec.encode(OpAck(last_id=results[-1][0], achieved_level=level, results=rs))


# --------------------------------------------------------------------------- the prediction


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("shape", ["single", "batch"])
def test_ok_ack_is_what_the_server_encodes(twin: Any, shape: str, level: WriteConcern) -> None:
    t = _single() if shape == "single" else _batch()
    msg = codec.decode(t.stamp(1_700_000_000_000, 7))
    if shape == "single":
        assert isinstance(msg, ClientOpMessage)
        ops: list[Any] = [msg.op]
    else:
        assert isinstance(msg, OpBatch)
        ops = list(msg.ops)
    assert [op.id for op in ops] == list(t.op_ids)
    assert twin.writepath.ok_ack_frame(ops, level) == t.ok_ack(level.value)


def test_stamp_sets_every_timestamp_and_keeps_the_layout() -> None:
    t = _batch(100)
    f = t.stamp(1_700_000_000_123, 0x1_0000_0005)  # the counter wraps to 32 bits
    assert isinstance(f, bytes) and len(f) == len(t.frame)
    ops = msgpack.unpackb(f)["payload"]["ops"]
    assert [op["key"] for op in ops] == [f"k{j:07d}" for j in range(100)]
    assert {(op["record"]["timestamp"]["millis"], op["record"]["timestamp"]["counter"]) for op in ops} == {
        (1_700_000_000_123, 5)
    }
    assert msgpack.unpackb(t.stamp(1, 2))["payload"]["ops"][0]["record"]["timestamp"]["millis"] == 1


# --------------------------------------------------------------------------- fire-and-wait


async def _waiter(level: str = "APPLIED") -> tuple[worker.Waiter, FakeTransport, array[int], BatchTemplate]:
    conn = worker.Conn("token")
    transport = FakeTransport()
    conn.transport = transport  # type: ignore[assignment]
    conn.__class__ = worker.Waiter
    assert isinstance(conn, worker.Waiter)
    lats: array[int] = array("q")
    t = _single()
    conn.arm(t, level, lats.append, 0)
    assert len(transport.sent) == 1  # the first op
    return conn, transport, lats, t


def _counts(c: worker.AckingConn) -> tuple[int, int, int, int]:
    return c.acked, c.failed, c.rejected, c.unpacked


async def test_waiter_counts_the_success_ack_by_its_bytes() -> None:
    c, tr, lats, t = await _waiter()
    for i in range(3):
        c.on_ws_frame(tr, _frame(t.ok_ack("APPLIED")))  # type: ignore[arg-type]
        assert _counts(c) == (i + 1, 0, 0, 0)
    assert len(tr.sent) == 4 and len(lats) == 3 and min(lats) >= 0
    stamps = [msgpack.unpackb(f)["payload"]["record"]["timestamp"] for f in tr.sent]
    assert [s["counter"] for s in stamps] == [1, 2, 3, 4]  # every op a strictly newer write
    assert stamps == sorted(stamps, key=lambda s: (s["millis"], s["counter"]))


async def test_waiter_success_at_another_level_is_recognised_and_then_expected() -> None:
    c, tr, _lats, t = await _waiter("APPLIED")
    persisted = t.ok_ack("PERSISTED")
    c.on_ws_frame(tr, _frame(persisted))  # type: ignore[arg-type]
    assert _counts(c) == (1, 0, 0, 0) and c.ok == persisted
    c.on_ws_frame(tr, _frame(persisted))  # type: ignore[arg-type]
    assert _counts(c) == (2, 0, 0, 0) and len(tr.sent) == 3


@pytest.mark.parametrize(
    ("frame", "acked", "failed", "rejected", "unpacked", "answered"),
    [
        # refused: OP_REJECTED first (not an ack: no next op), then the failed ack
        (codec.encode(OpRejected(op_id="1", reason="denied", code=403)), 0, 0, 1, 0, False),
        (_ack([("1", False, WriteConcern.FIRE_AND_FORGET)], WriteConcern.FIRE_AND_FORGET), 0, 1, 0, 1, True),
        # a success ack for another op id: not byte-identical, so unpacked (and counted as the unpack says)
        (_ack([("2", True, APPLIED)], APPLIED), 1, 0, 0, 1, True),
        # an ack without results acknowledges nothing, yet it is this op's ack
        (codec.encode(OpAck(last_id="1", achieved_level=APPLIED)), 0, 0, 0, 1, True),
        # other server frames are ignored
        (msgpack.packb({"type": "SERVER_EVENT", "payload": {"mapName": "m"}}), 0, 0, 0, 0, False),
    ],
)
async def test_waiter_counts_other_frames_as_the_unpack_does(
    frame: bytes, acked: int, failed: int, rejected: int, unpacked: int, answered: bool
) -> None:
    c, tr, lats, _t = await _waiter()
    c.on_ws_frame(tr, _frame(frame))  # type: ignore[arg-type]
    assert _counts(c) == (acked, failed, rejected, unpacked)
    assert len(tr.sent) == (2 if answered else 1)
    assert len(lats) == (1 if answered else 0)


async def test_a_text_frame_is_not_an_ack() -> None:
    c, tr, lats, _t = await _waiter()
    c.on_ws_frame(tr, _frame(b"OP_ACK", WSMsgType.TEXT))  # type: ignore[arg-type]
    assert _counts(c) == (0, 0, 0, 0) and len(tr.sent) == 1 and len(lats) == 0


async def test_a_frame_sharing_the_success_prefix_is_not_a_success() -> None:
    c, tr, _lats, t = await _waiter()
    ok = t.ok_ack("APPLIED")
    # Same length and prefix, the success flag flipped: only the full unpack may count it.
    flipped = ok.replace(b"\xa7success\xc3", b"\xa7success\xc2")
    assert flipped != ok and len(flipped) == len(ok)
    c.on_ws_frame(tr, _frame(flipped))  # type: ignore[arg-type]
    assert _counts(c) == (0, 1, 0, 1)


# --------------------------------------------------------------------------- fire-and-forget


async def _streamer(inflight: int = 3) -> tuple[worker.Streamer, FakeTransport, list[BatchTemplate]]:
    conn = worker.Conn("token")
    transport = FakeTransport()
    conn.transport = transport  # type: ignore[assignment]
    conn.__class__ = worker.Streamer
    assert isinstance(conn, worker.Streamer)
    templates = [_batch(100, first=f * 100) for f in range(3)]
    conn.arm(templates, "APPLIED", inflight)
    assert len(transport.sent) == inflight
    return conn, transport, templates


def _spec(data: bytes) -> tuple[int, int, int]:
    """``(acked, failed, rejected)`` as the load client counted a frame before the byte check."""
    is_ack, ok, bad = worker._ack_ok(data)
    if is_ack:
        return ok, bad, 0
    return 0, 0, 1 if b"OP_REJECTED" in data else 0


_IDS = [str(i) for i in range(1, 101)]


@pytest.mark.parametrize(
    "frames",
    [
        pytest.param([None, None], id="success"),
        pytest.param(
            [_ack([(i, True, WriteConcern.PERSISTED) for i in _IDS], WriteConcern.PERSISTED)], id="level"
        ),
        pytest.param(
            [
                codec.encode(OpRejected(op_id="7", reason="denied", code=403)),
                codec.encode(OpRejected(op_id="9", reason="denied", code=403)),
                _ack([(i, i not in ("7", "9"), APPLIED) for i in _IDS], APPLIED),
                None,
            ],
            id="mixed",
        ),
        pytest.param(
            [_ack([(i, False, WriteConcern.FIRE_AND_FORGET) for i in _IDS], APPLIED)], id="all-failed"
        ),
        pytest.param([_ack([(i, True, APPLIED) for i in _IDS[:99]], APPLIED)], id="short"),
    ],
)
async def test_streamer_counts_exactly_as_the_unpack(frames: list[bytes | None]) -> None:
    c, tr, templates = await _streamer()
    ok = templates[0].ok_ack("APPLIED")
    want = [0, 0, 0]
    answered = 0
    for f in frames:
        data = ok if f is None else f
        a, b, r = _spec(data)
        want = [want[0] + a, want[1] + b, want[2] + r]
        answered += worker._ack_ok(data)[0]
        c.on_ws_frame(tr, _frame(data))  # type: ignore[arg-type]
    assert (c.acked, c.failed, c.rejected) == tuple(want)
    assert len(tr.sent) == 3 + answered  # one batch sent per ack, none per OP_REJECTED
    fast = sum(
        1 for f in frames if f is None or f in {t.ok_ack(lv.value) for t in templates for lv in LEVELS}
    )
    assert c.unpacked == answered - fast


async def test_streamer_sends_the_templates_round_robin() -> None:
    c, tr, templates = await _streamer(inflight=2)
    for _ in range(4):
        c.on_ws_frame(tr, _frame(templates[0].ok_ack("APPLIED")))  # type: ignore[arg-type]
    firsts = [msgpack.unpackb(f)["payload"]["ops"][0]["key"] for f in tr.sent]
    assert firsts == [f"k{j * 100:07d}" for j in (0, 1, 2, 0, 1, 2)]
    counters = [msgpack.unpackb(f)["payload"]["ops"][0]["record"]["timestamp"]["counter"] for f in tr.sent]
    assert counters == [1, 2, 3, 4, 5, 6]
    assert c.acked == 400


async def test_streamer_refuses_templates_with_different_acks() -> None:
    conn = worker.Conn("token")
    conn.transport = FakeTransport()  # type: ignore[assignment]
    conn.__class__ = worker.Streamer
    assert isinstance(conn, worker.Streamer)
    other = BatchTemplate("m", ["a", "b"], 1, node_id="n", first_id=5)
    with pytest.raises(ValueError, match="share their op ids"):
        conn.arm([_batch(2), other], "APPLIED", 1)


# --------------------------------------------------------------------------- histogram


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=-1000, max_value=10**12), max_size=300), st.integers(0, 10**9))
def test_record_many_counts_as_record_each(values: list[int], before: int) -> None:
    one, many = Histogram(), Histogram()
    one.record(before)
    many.record(before)
    for v in values:
        one.record(v)
    many.record_many(array("q", values))
    assert (many.counts, many.total, many.max, many.min) == (one.counts, one.total, one.max, one.min)


# --------------------------------------------------------------------------- against a real server


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", ["fire-and-wait", "fire-and-forget"])
def test_every_ack_of_a_real_server_matches_the_prediction(mode: str) -> None:
    from topgun.bench.server import ServerProcess, run_workers

    with ServerProcess("memory://") as srv:
        args = {
            "url": srv.url,
            "token": srv.token(),
            "connections": 3,
            "ack": "APPLIED",
            "run": "t",
            "warmup": 0.2,
            "duration": 0.8,
            "batch": 50,
            "keyspace": 500,
            "window": 4,
        }
        (result,), _stats = run_workers(mode, [args], srv)
    assert result["ops"] > 0 and result["failed"] == 0 and result["rejected"] == 0
    assert result["unpacked_acks"] == 0  # every ack was byte-identical to the predicted success ack
    if mode == "fire-and-wait":
        # one latency per ack counted in the window, no more, no fewer
        assert Histogram.from_json(result["latency"]).total == result["ops"]
