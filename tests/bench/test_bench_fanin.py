"""The fan-out client's socket reader (:class:`topgun.bench.worker.FanIn`); both readers end to end.

``FanIn`` parses the server's WebSocket frames itself, so these tests feed it
server-style frames through socket pairs: whole and split frames, every
length encoding, frames without the marker or of another opcode, a masked
frame and a closed peer, and check that it counts and times exactly the
deliveries the picows path (``Subscriber``) would. The end-to-end test runs
the ``fan-out`` mode against a real server with each reader.
"""

from __future__ import annotations

import asyncio
import select
import socket
import struct
import time
from typing import Any

import msgpack
import pytest

from support.servers import serving
from topgun.bench import worker
from topgun.bench.histogram import Histogram

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(not hasattr(select, "epoll"), reason="FanIn needs epoll"),
]

_Q = struct.Struct(">Q")


def ws_frame(payload: bytes, first: int = 0x82) -> bytes:
    """An unmasked server frame (RFC 6455 §5.2) with every length encoding."""
    n = len(payload)
    if n < 126:
        return bytes((first, n)) + payload
    if n < 0x1_0000:
        return bytes((first, 126)) + n.to_bytes(2, "big") + payload
    return bytes((first, 127)) + n.to_bytes(8, "big") + payload


def update(stamp: int, pad: int = 0) -> bytes:
    """A QUERY_UPDATE payload whose value carries the stamp as the load client writes it."""
    return msgpack.packb(
        {
            "type": "QUERY_UPDATE",
            "payload": {
                "queryId": "q1",
                "key": "k",
                "value": {"t": stamp, "p": "x" * pad},
                "changeType": "UPDATE",
            },
        }
    )


def event(stamp: int) -> bytes:
    """The SERVER_EVENT of the same write: it holds the stamp too but is not a delivery."""
    record = {"value": {"t": stamp}}
    return msgpack.packb({"type": "SERVER_EVENT", "payload": {"mapName": "m", "key": "k", "record": record}})


class Pair:
    """A FanIn over ``n`` socket pairs; the test writes to the far ends."""

    def __init__(self, n: int = 1, measuring: bool = True) -> None:
        pairs = [socket.socketpair() for _ in range(n)]
        self.far = [b for _a, b in pairs]
        self.lats: list[int] = []
        self.fan = worker.FanIn([a for a, _b in pairs], b"QUERY_UPDATE", self.lats.append)
        self.fan.measuring = measuring

    def close(self) -> None:
        self.fan.close()
        for s in self.far:
            s.close()


@pytest.fixture
def pair() -> Any:
    p = Pair()
    yield p
    p.close()


def ago(ms: float) -> int:
    return time.perf_counter_ns() - int(ms * 1_000_000)


def test_a_write_is_one_delivery_timed_from_its_stamp(pair: Pair) -> None:
    stamp = ago(5)
    pair.far[0].sendall(ws_frame(event(stamp)) + ws_frame(update(stamp)))
    t0 = time.perf_counter_ns()
    pair.fan.drain()
    t1 = time.perf_counter_ns()
    assert pair.fan.deliveries == 1
    assert len(pair.lats) == 1
    assert t0 - stamp <= pair.lats[0] <= t1 - stamp
    assert pair.fan.other_frames == 0


@pytest.mark.parametrize("pad", [0, 200, 70_000])  # 7-bit, 16-bit and 64-bit payload lengths
def test_a_frame_split_anywhere_is_counted_once_after_its_last_byte(pair: Pair, pad: int) -> None:
    stamp = ago(1)
    data = ws_frame(event(stamp)) + ws_frame(update(stamp, pad))
    head = len(ws_frame(event(stamp)))
    # in the first frame, in the second's header (2, 4 or 10 bytes), in its payload, before its last byte
    for cut in (1, head, head + 1, head + 3, head + 9, head + 12, len(data) // 2, len(data) - 1):
        pair.far[0].sendall(data[:cut])
        pair.fan.drain()
        assert pair.fan.deliveries == 0 and pair.lats == []
        pair.far[0].sendall(data[cut:])
        while pair.fan.deliveries == 0:  # a 70 kB frame may take more than one read
            pair.fan.drain()
        assert pair.fan.deliveries == 1 and len(pair.lats) == 1
        pair.fan.deliveries = 0
        pair.lats.clear()


def test_many_writes_in_one_read_each_count(pair: Pair) -> None:
    stamps = [ago(10 - i) for i in range(10)]
    pair.far[0].sendall(b"".join(ws_frame(event(s)) + ws_frame(update(s)) for s in stamps))
    pair.fan.drain()
    assert pair.fan.deliveries == 10
    # one read, one receive time: each latency is that time minus its own write's stamp
    received = {s + lat for s, lat in zip(stamps, pair.lats, strict=True)}
    assert len(received) == 1


def test_other_opcodes_are_counted_apart_and_never_timed(pair: Pair) -> None:
    stamp = ago(1)
    pair.far[0].sendall(ws_frame(update(stamp), 0x89) + ws_frame(update(stamp), 0x02) + ws_frame(b"", 0x8A))
    pair.fan.drain()
    assert pair.fan.deliveries == 0 and pair.lats == []
    assert pair.fan.other_frames == 3


def test_outside_the_window_deliveries_are_counted_not_timed() -> None:
    p = Pair(measuring=False)
    try:
        p.far[0].sendall(ws_frame(update(ago(1))))
        p.fan.drain()
        assert p.fan.deliveries == 1 and p.lats == []
    finally:
        p.close()


def test_a_masked_frame_stops_that_socket_and_is_reported() -> None:
    p = Pair(2)
    try:
        p.far[0].sendall(ws_frame(update(ago(1))) + bytes((0x82, 0x80 | 4)) + b"\0\0\0\0" + b"abcd")
        p.fan.drain()
        assert isinstance(p.fan.error, ConnectionError) and "masked" in str(p.fan.error)
        assert p.fan.deliveries == 1  # the frame before it still counts
        p.far[1].sendall(ws_frame(update(ago(1))))  # the other sockets are still read
        p.fan.drain()
        assert p.fan.deliveries == 2
    finally:
        p.close()


def test_a_frame_larger_than_the_buffer_is_reported() -> None:
    a, b = socket.socketpair()
    fan = worker.FanIn([a], b"QUERY_UPDATE", [].append, buffer=4096)
    try:
        b.sendall(ws_frame(update(ago(1), pad=5000))[:3000])
        fan.drain()
        assert isinstance(fan.error, ConnectionError) and "exceeds the read buffer" in str(fan.error)
    finally:
        fan.close()
        b.close()


def test_a_closed_peer_is_dropped_and_the_others_still_read() -> None:
    p = Pair(3)
    try:
        p.far[1].close()
        p.far[0].sendall(ws_frame(update(ago(1))))
        p.far[2].sendall(ws_frame(update(ago(1))))
        p.fan.drain()
        assert p.fan.closed == 1
        assert p.fan.deliveries == 2
        p.far[0].sendall(ws_frame(update(ago(1))))
        p.fan.drain()
        assert p.fan.deliveries == 3
    finally:
        p.fan.close()
        for s in (p.far[0], p.far[2]):
            s.close()


async def test_started_on_a_loop_it_reads_when_data_arrives(pair: Pair) -> None:
    pair.fan.start(asyncio.get_running_loop())
    pair.far[0].sendall(ws_frame(update(ago(1))))
    for _ in range(200):
        if pair.fan.deliveries:
            break
        await asyncio.sleep(0.005)
    assert pair.fan.deliveries == 1 and len(pair.lats) == 1


@pytest.mark.parametrize("reader", ["epoll", "picows"])
async def test_fan_out_mode_delivers_every_write_to_every_subscriber(reader: str) -> None:
    async with serving("picows", gc_interval=0.0) as server:
        result = await worker.fan_out(
            {
                "url": f"ws://127.0.0.1:{server.port}/ws",
                "token": "no-auth",
                "subscribers": 5,
                "writers": 1,
                "rate": 100,
                "run": f"t-{reader}",
                "warmup": 0.2,
                "duration": 0.5,
                "reader": reader,
            }
        )
    assert result["reader"] == reader
    assert result["mode"] == "query"
    assert result["writes"] > 0 and result["other_frames"] == 0 and result["closed_subscribers"] == 0
    # a write in flight at either edge of the window may fall on either side of it
    assert result["expected"] - 5 * 2 <= result["deliveries"] <= result["expected"] + 5 * 2
    hist = Histogram.from_json(result["latency"])
    assert hist.total == result["deliveries"]  # every delivery of the window timed, no other
    assert 0 < hist.percentile(50) < 5_000_000_000
