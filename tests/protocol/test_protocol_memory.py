"""Peak memory while decoding one frame stays within a small multiple of the frame size."""

from __future__ import annotations

import tracemalloc
from typing import Any

import msgpack
import pytest

from topgun.errors import ProtocolError


def _peak(fn: Any) -> int:
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        try:
            fn()
        except ProtocolError:
            pass
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _op_batch(n: int) -> bytes:
    ts = {"millis": 1700000000000.0, "counter": 1, "nodeId": "node-1"}
    ops = [
        {
            "id": str(i),
            "mapName": "users",
            "key": f"user-{i}",
            "opType": "PUT",
            "record": {"value": {"name": "Alice", "age": 30}, "timestamp": ts},
            "timestamp": ts,
            "synced": False,
        }
        for i in range(n)
    ]
    return msgpack.packb({"type": "OP_BATCH", "payload": {"ops": ops}})


def test_op_batch_peak(twin: Any) -> None:
    frame = _op_batch(100)
    twin.codec.decode(frame)  # warm caches (interned strings, enum lookups)
    peak = _peak(lambda: twin.codec.decode(frame))
    assert peak < 16 * len(frame), (peak, len(frame))


def test_large_string_peak(twin: Any) -> None:
    frame = msgpack.packb({"type": "TOPIC_PUB", "payload": {"topic": "t", "data": "x" * 1_500_000}})
    peak = _peak(lambda: twin.codec.decode(frame))
    assert peak < 3 * len(frame), (peak, len(frame))


@pytest.mark.parametrize(
    "header",
    [
        b"\xdd\x00\x1f\xff\xff",
        b"\xdf\x00\x0f\xff\xff",
        b"\xdb\x00\x1f\xff\xff",
        b"\xc6\x00\x1f\xff\xff",
        b"\xdc\xff\xff",
    ],
)
def test_huge_declared_length_allocates_nothing(twin: Any, header: bytes) -> None:
    # a 2 MiB-ish declared container/string in a frame of a few hundred bytes
    frame = b"\x82\xa4type\xa9TOPIC_PUB\xa7payload\x82\xa5topic\xa1t\xa4data" + header + b"\x00" * 300
    with pytest.raises(ProtocolError):
        twin.codec.decode(frame)
    assert _peak(lambda: twin.codec.decode(frame)) < 16 * 1024


def test_no_leak_across_decodes(twin: Any) -> None:
    import gc

    frame = _op_batch(100)
    ev_frame = msgpack.packb(
        {"type": "TOPIC_PUB", "payload": {"topic": "t", "data": [{"a": msgpack.ExtType(5, b"x")}, 1.5, "s"]}}
    )
    for _ in range(20):  # warm-up
        twin.codec.decode(frame)
        twin.codec.decode(ev_frame)
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        for _ in range(300):
            twin.codec.decode(frame)
            twin.codec.decode(ev_frame)
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    # 300 decodes of a 100-op frame: a single leaked object per op would be megabytes
    assert grown < 64 * 1024, grown
