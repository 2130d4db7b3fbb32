"""Wire codec throughput: OP_BATCH decode into validated records, SERVER_EVENT encode.

Run: ``.venv/bin/pytest bench/test_bench_protocol.py -p no:cacheprovider --benchmark-columns=min,median,ops``

* ``decode-op-batch``: one frame of 100 ops shaped like the TS client's op log
  (``opType``, record with a float64 ``millis``, op-level ``timestamp``,
  ``synced``), decoded into an ``OpBatch`` of validated ``ClientOp`` records by
  the compiled twin, by the pure twin, and, as the baseline, plain
  ``msgpack.unpackb`` of the same frame (no validation, no records).
  ``decode-compiled-general-path`` is the same batch with ``payload`` written
  before ``type``, which the compiled twin decodes the general way (msgpack
  ``unpackb``, then the op walk in Cython); ``decode-compiled-one-invalid-op``
  has op 50 invalid (empty ``mapName``): only that op leaves the byte path.
* ``encode-server-event``: one ``SERVER_EVENT`` (PUT with a small map value),
  compiled vs pure vs ``msgpack.packb`` of the equivalent prebuilt dict.

Figures (ops/s, events/s, ratios) are printed at the end of the session.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest

from topgun.core.records import LWWRecord, Timestamp
from topgun.protocol import _codec_py
from topgun.protocol import messages as M

OPS = 100
RESULTS: dict[str, float] = {}


def _compiled() -> Any:
    try:
        return importlib.import_module("topgun._speedups._codec")
    except ImportError:
        pytest.skip("compiled codec not built")


def _frame() -> bytes:
    ops = []
    for i in range(OPS):
        ts = {
            "millis": 1700000000000.0 + i,
            "counter": i % 7,
            "nodeId": "2c1f3a9e-5b7d-4c1e-9f0a-6d2b8e4c7a1f",
        }
        ops.append(
            {
                "id": str(1000 + i),
                "mapName": "todos",
                "key": f"todo-{i}",
                "opType": "PUT",
                "record": {"value": {"title": f"task {i}", "done": False, "prio": i % 5}, "timestamp": ts},
                "timestamp": dict(ts),
                "synced": False,
            }
        )
    return msgpack.packb({"type": "OP_BATCH", "payload": {"ops": ops}})


FRAME = _frame()
# the same ops with "payload" before "type": the compiled twin's general path (unpackb, then a walk)
FRAME_GENERAL = msgpack.packb({"payload": msgpack.unpackb(FRAME)["payload"], "type": "OP_BATCH"})


def _frame_one_invalid() -> bytes:
    obj = msgpack.unpackb(FRAME)
    obj["payload"]["ops"][50]["mapName"] = ""  # rejected by validation: becomes an InvalidOp
    return msgpack.packb(obj)


FRAME_ONE_INVALID = _frame_one_invalid()
EVENT = M.ServerEvent(
    map_name="todos",
    event_type=M.ServerEventType.PUT,
    key="todo-1",
    record=LWWRecord({"title": "task 1", "done": False}, Timestamp(1700000000000, 1, "server-1")),
)


@pytest.fixture(scope="session", autouse=True)
def _report() -> Iterator[None]:
    yield
    if not RESULTS:
        return
    lines = ["", "protocol codec:"]
    for k, v in RESULTS.items():
        lines.append(f"  {k:<40} {v:>14,.0f}/s")
    if "decode compiled ops" in RESULTS and "decode unpackb ops" in RESULTS:
        lines.append(
            f"  compiled / unpackb: {RESULTS['decode compiled ops'] / RESULTS['decode unpackb ops']:.2f}x"
        )
    if "decode compiled ops" in RESULTS and "decode pure ops" in RESULTS:
        lines.append(
            f"  compiled / pure decode: {RESULTS['decode compiled ops'] / RESULTS['decode pure ops']:.1f}x"
        )
    if "encode compiled events" in RESULTS and "encode packb events" in RESULTS:
        lines.append(
            "  compiled / packb encode: "
            f"{RESULTS['encode compiled events'] / RESULTS['encode packb events']:.2f}x"
        )
    print("\n".join(lines))


def _record(benchmark: Any, name: str, per_call: int) -> None:
    rate = per_call / benchmark.stats.stats.median
    benchmark.extra_info["rate_per_s"] = rate
    RESULTS[name] = rate


@pytest.mark.benchmark(group="decode-op-batch")
def test_decode_compiled(benchmark: Any) -> None:
    codec = _compiled()
    msg = benchmark(codec.decode, FRAME)
    assert len(msg.ops) == OPS and all(isinstance(op, M.ClientOp) for op in msg.ops)
    assert type(msg.ops[0].record.timestamp.millis) is int
    _record(benchmark, "decode compiled ops", OPS)


@pytest.mark.benchmark(group="decode-op-batch")
def test_decode_compiled_general_path(benchmark: Any) -> None:
    codec = _compiled()
    msg = benchmark(codec.decode, FRAME_GENERAL)
    assert msg == codec.decode(FRAME)
    _record(benchmark, "decode compiled (general path) ops", OPS)


@pytest.mark.benchmark(group="decode-op-batch")
def test_decode_compiled_one_invalid_op(benchmark: Any) -> None:
    codec = _compiled()
    msg = benchmark(codec.decode, FRAME_ONE_INVALID)
    assert (
        isinstance(msg.ops[50], M.InvalidOp) and sum(isinstance(op, M.ClientOp) for op in msg.ops) == OPS - 1
    )
    _record(benchmark, "decode compiled (1 invalid op) ops", OPS)


@pytest.mark.benchmark(group="decode-op-batch")
def test_decode_pure(benchmark: Any) -> None:
    msg = benchmark(_codec_py.decode, FRAME)
    assert len(msg.ops) == OPS and all(isinstance(op, M.ClientOp) for op in msg.ops)
    _record(benchmark, "decode pure ops", OPS)


@pytest.mark.benchmark(group="decode-op-batch")
def test_decode_unpackb_baseline(benchmark: Any) -> None:
    obj = benchmark(msgpack.unpackb, FRAME)
    assert len(obj["payload"]["ops"]) == OPS
    _record(benchmark, "decode unpackb ops", OPS)


@pytest.mark.benchmark(group="encode-server-event")
def test_encode_compiled(benchmark: Any) -> None:
    codec = _compiled()
    out = benchmark(codec.encode, EVENT)
    assert out == _codec_py.encode(EVENT)
    _record(benchmark, "encode compiled events", 1)


@pytest.mark.benchmark(group="encode-server-event")
def test_encode_pure(benchmark: Any) -> None:
    out = benchmark(_codec_py.encode, EVENT)
    assert _codec_py.decode(out) == EVENT
    _record(benchmark, "encode pure events", 1)


@pytest.mark.benchmark(group="encode-server-event")
def test_encode_packb_baseline(benchmark: Any) -> None:
    wire = _codec_py.to_wire(EVENT)
    out = benchmark(msgpack.packb, wire)
    assert out == _codec_py.encode(EVENT)
    _record(benchmark, "encode packb events", 1)
