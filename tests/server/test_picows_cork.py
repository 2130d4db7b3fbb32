"""Corked sends of the picows adapter: frames queued in one event-loop iteration leave in one write.

The frames are written with hand-built headers (7-bit, 16-bit and 64-bit
lengths), so a real independent WebSocket client (``websockets``) must parse
every one of them, in order and intact.
"""

from __future__ import annotations

import asyncio
import struct
from typing import Any

import pytest
from rawclient import RawClient, pack

from topgun.server import TopGunServer
from topgun.server.transport._outbox_py import _frame_header

pytestmark = pytest.mark.timeout(30)


def _batch(messages: list[bytes]) -> dict[str, object]:
    data = struct.pack("<I", len(messages)) + b"".join(struct.pack("<I", len(m)) + m for m in messages)
    return {"type": "BATCH", "count": len(messages), "data": data}


@pytest.mark.parametrize(
    ("size", "header"),
    [
        (0, b"\x82\x00"),
        (125, b"\x82\x7d"),
        (126, b"\x82\x7e\x00\x7e"),
        (65_535, b"\x82\x7e\xff\xff"),
        (65_536, b"\x82\x7f" + (65_536).to_bytes(8, "big")),
    ],
)
def test_frame_header_lengths(size: int, header: bytes) -> None:
    assert _frame_header(size) == header


async def test_frames_of_one_iteration_arrive_in_order() -> None:
    async with TopGunServer(port=0, storage="memory://", transport="picows") as server:
        c = await RawClient.open(server.url)
        try:
            # One inbound message carrying 50 PINGs: their PONGs are produced in one iteration.
            pings = [pack({"type": "PING", "timestamp": 1_700_000_000_000 + i}) for i in range(50)]
            await c.send(_batch(pings))
            stamps = [(await c.recv_type("PONG"))["timestamp"] for _ in range(50)]
            assert stamps == [1_700_000_000_000 + i for i in range(50)]
        finally:
            await c.ws.close()


async def _corked_pushes_arrive(sizes: list[int]) -> None:
    """Pushes of values of ``sizes`` queued to one subscriber in one iteration arrive whole, in order."""
    async with TopGunServer(port=0, storage="memory://", transport="picows") as server:
        sub = await RawClient.open(server.url)
        writer = await RawClient.open(server.url)
        try:
            await sub.send({"type": "SYNC_INIT", "mapName": "cork"})
            await sub.recv_type("SYNC_RESP_ROOT")
            ops = [
                pack(
                    {
                        "type": "CLIENT_OP",
                        "payload": {
                            "id": str(i + 1),
                            "mapName": "cork",
                            "key": f"k{i}",
                            "opType": "PUT",
                            "writeConcern": "APPLIED",
                            "record": {
                                "value": "v" * n,
                                "timestamp": {"millis": 1_700_000_000_000, "counter": i, "nodeId": "w"},
                            },
                        },
                    }
                )
                for i, n in enumerate(sizes)
            ]
            await writer.send(_batch(ops))  # the pushes to `sub` are queued in one iteration
            got = []
            for _ in sizes:
                ev = await sub.recv_type("SERVER_EVENT")
                got.append((ev["payload"]["key"], len(ev["payload"]["record"]["value"])))
            assert got == [(f"k{i}", n) for i, n in enumerate(sizes)]
            acks = [(await writer.recv_type("OP_ACK"))["payload"]["lastId"] for _ in sizes]
            assert acks == [str(i + 1) for i in range(len(sizes))]
        finally:
            await sub.ws.close()
            await writer.ws.close()


async def test_corked_pushes_of_every_header_size() -> None:
    await _corked_pushes_arrive([10, 300, 70_000, 20])


@pytest.mark.parametrize(
    "sizes",
    # two frames (the two-frame join): both headers prebuilt, either or both beyond the prebuilt
    # table (frames of 2,048+ bytes), 16-bit and 64-bit lengths
    [[10, 20], [10, 2_500], [2_500, 10], [1_900, 1_900], [3_000, 70_000], [70_000, 70_000]],
)
async def test_two_corked_pushes_of_any_sizes(sizes: list[int]) -> None:
    await _corked_pushes_arrive(sizes)


def test_prebuilt_headers_are_the_computed_ones() -> None:
    from topgun.server.transport._outbox_py import _HEADER_TABLE, _TABLE_LIMIT

    assert len(_HEADER_TABLE) == _TABLE_LIMIT
    assert all(_HEADER_TABLE[n] == _frame_header(n) for n in range(_TABLE_LIMIT))


async def test_send_bounded_answers_as_the_outbound_counters_do() -> None:
    """The one-call send and bound check agrees with asking outbound_bytes()/outbound_frames()
    after the send, frame by frame, before and while the transport has paused writing."""
    frame = b"\x00" * 3000
    seen: dict[str, Any] = {"frames": 0, "paused": 0, "over": 0, "wrong": []}

    async def flood(conn: Any) -> None:
        # bounds that straddle what builds up, below and above the transport's high-water mark:
        # some answers must be True, some False
        bounds = [(20_000, 50_000), (70_000, 50_000), (100_000, 50_000), (1 << 20, 50_000),
                  (64 << 20, 50_000), (64 << 20, 3)]
        for i in range(4000):
            for _ in range(i % 7 + 1):
                max_bytes, max_frames = bounds[seen["frames"] % len(bounds)]
                got = conn.send_bounded(frame, max_bytes, max_frames)
                want = conn.outbound_bytes() > max_bytes or conn.outbound_frames() > max_frames
                if got != want:
                    seen["wrong"].append((seen["frames"], got, want))
                seen["frames"] += 1
                seen["over"] += got
                seen["paused"] += conn.outbound_frames() > 0
            await asyncio.sleep(0)
            if seen["paused"] > 2000:
                return

    tasks: list[asyncio.Task[None]] = []

    def start(ctx: Any, msg: Any) -> None:
        tasks.append(asyncio.get_running_loop().create_task(flood(ctx.conn)))

    async with TopGunServer(port=0, storage="memory://", transport="picows") as server:
        server.processors.register("TOPIC_SUB", start)
        c = await RawClient.open(server.url, max_queue=1)
        try:
            await c.send({"type": "TOPIC_SUB", "payload": {"topic": "t"}})
            while not tasks:
                await asyncio.sleep(0.01)
            await asyncio.wait_for(tasks[0], 20)
        finally:
            c.ws.transport.abort()
    assert seen["wrong"] == []
    assert seen["paused"] > 2000 and 0 < seen["over"] < seen["frames"]
