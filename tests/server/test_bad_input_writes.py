"""Hostile and malformed input on the write and sync paths never hurts other sessions."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest
from gridkit import batch, connect, now_ms, put, serving
from rawclient import http_get, pack

pytestmark = pytest.mark.timeout(90)

NASTY: list[Any] = [
    None,
    1,
    -1,
    1.5,
    float("nan"),
    float("inf"),
    "s",
    "",
    [1],
    {},
    {"x": 1},
    True,
    b"\x00",
    2**64 - 1,
    -(2**63),
]


def _random_op(rnd: random.Random, t: int) -> Any:
    op: dict[str, Any] = {
        "id": rnd.choice(["1", "2", 3, None, "", "x" * 300]),
        "mapName": rnd.choice(["m", "", 5, None, "o"]),
        "key": rnd.choice(["k", "", 7, None, ["k"]]),
        "opType": rnd.choice(["PUT", "REMOVE", "OR_ADD", "OR_REMOVE", "BOGUS", 1, None]),
    }
    ts = rnd.choice(
        [
            {"millis": float(t), "counter": 0, "nodeId": "n"},
            {"millis": "now", "counter": 0, "nodeId": "n"},
            {"millis": float(t), "counter": -1, "nodeId": "n"},
            {"millis": float(t), "counter": 2**40, "nodeId": "n"},
            {"millis": 1.5, "counter": 0, "nodeId": "n"},
            {"millis": float(t), "counter": 0, "nodeId": ""},
            {"millis": float(t), "counter": 0},
            rnd.choice(NASTY),
        ]
    )
    field = rnd.choice(["record", "orRecord", "orTag", "timestamp", "none"])
    if field == "record":
        op["record"] = rnd.choice(
            [
                {"value": rnd.choice(NASTY), "timestamp": ts},
                rnd.choice(NASTY),
                {"value": 1, "timestamp": ts, "ttlMs": rnd.choice(NASTY)},
            ]
        )
    elif field == "orRecord":
        op["orRecord"] = rnd.choice(
            [{"value": 1, "timestamp": ts, "tag": rnd.choice(["t", "", 5, None])}, rnd.choice(NASTY)]
        )
    elif field == "orTag":
        op["orTag"] = rnd.choice(["t", "", 5, None, ["t"]])
    elif field == "timestamp":
        op["timestamp"] = ts
    op["writeConcern"] = rnd.choice(["PERSISTED", "APPLIED", "NOPE", 3, None])
    return {k: v for k, v in op.items() if v is not None or rnd.random() < 0.3}


async def test_malformed_ops_are_rejected_one_by_one_and_others_keep_working(storage_url: str) -> None:
    rnd = random.Random(4242)
    t = now_ms()
    async with serving(storage_url) as server:
        attacker = await connect(server)
        victim = await connect(server)
        await victim.send({"type": "SYNC_INIT", "mapName": "m"})
        await victim.recv_type("SYNC_RESP_ROOT")
        acks = 0
        for _ in range(60):
            ops = [_random_op(rnd, t) for _ in range(rnd.randint(1, 12))]
            await attacker.send({"type": "OP_BATCH", "payload": {"ops": ops}})
        # whole-message shape errors: answered with ERROR, never a crash
        for payload in ({"ops": "nope"}, {"ops": None}, {}, [1], "x", {"ops": [1, 2], "writeConcern": 5}):
            await attacker.send({"type": "OP_BATCH", "payload": payload})
            await attacker.send({"type": "CLIENT_OP", "payload": payload})
        for payload in ({"mapName": 1}, {"mapName": "m", "path": 5}, {"mapName": "m", "path": "0" * 1000}):
            await attacker.send({"type": "MERKLE_REQ_BUCKET", "payload": payload})
            await attacker.send({"type": "ORMAP_MERKLE_REQ_BUCKET", "payload": payload})
            await attacker.send({"type": "ORMAP_PUSH_DIFF", "payload": {"mapName": "o", "entries": payload}})
        await attacker.send({"type": "SYNC_INIT", "mapName": 7})
        await attacker.send({"type": "ORMAP_SYNC_INIT", "mapName": "o"})  # missing rootHash/bucketHashes
        errors_500 = 0
        try:
            while True:
                msg = await attacker.recv(0.8)
                acks += msg["type"] == "OP_ACK"
                if msg["type"] == "ERROR":
                    errors_500 += msg["payload"]["code"] >= 500
                if msg["type"] == "OP_REJECTED":
                    assert msg["payload"]["code"] in {400, 409, 422}
                    assert isinstance(msg["payload"]["opId"], str)
        except asyncio.TimeoutError:
            pass
        assert acks > 0
        assert errors_500 == 0, "a malformed write reached an internal error"
        # the attacker's connection and the victim's are both fine
        assert (await attacker.ping(1))["timestamp"] == 1
        await victim.send(batch(put("1", "m", "victim", "ok", t)))
        frames = []
        while not frames or frames[-1]["type"] != "OP_ACK":
            frames.append(await victim.recv())
        assert frames[-1]["payload"]["results"][0]["success"] is True
        assert server.core.grid.lww("m").get("victim") == "ok"  # type: ignore[union-attr]


async def test_write_flood_from_one_session_does_not_starve_another(storage_url: str) -> None:
    t = now_ms()
    async with serving(storage_url) as server:
        flood = await connect(server)
        calm = await connect(server)

        async def flooder() -> None:
            for b in range(400):
                ops = [put(str(b * 25 + j + 1), "flood", f"k{j}", b, t + b, j) for j in range(25)]
                await flood.send(batch(*ops))

        task = asyncio.create_task(flooder())
        latencies = []
        for i in range(10):
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            pong = await calm.ping(i)
            latencies.append(loop.time() - t0)
            assert pong["timestamp"] == i
            await calm.send(batch(put(str(i + 1), "calm", "k", i, t + i)))
            assert (await calm.recv_type("OP_ACK", timeout=10))["payload"]["lastId"] == str(i + 1)
        await task
        acks = 0
        while acks < 400:
            msg = await flood.recv(20)
            acks += msg["type"] == "OP_ACK"
        assert max(latencies) < 5.0
        lww = server.core.grid.lww("flood")  # type: ignore[union-attr]
        assert lww.get("k0") == 399 and lww.record_count == 25


async def test_metrics_report_ops_rejections_commits_and_map_sizes(
    storage_kind: str, storage_url: str
) -> None:
    t = now_ms()
    async with serving(storage_url) as server:
        c = await connect(server)
        await c.send(
            batch(put("1", "m", "a", 1, t), put("2", "m", "b", 2, t), put("3", "m", "c", 3, t + 10**8))
        )
        await c.recv_type("OP_ACK")
        status, _, body = await http_get(server.port, "/metrics")
        assert status == 200
        text = body.decode()
        assert 'topgun_ops_total{type="PUT"} 2' in text
        assert 'topgun_ops_rejected_total{code="422"} 1' in text
        assert 'topgun_map_size{map="m"} 2' in text
        count_line = next(
            ln for ln in text.splitlines() if ln.startswith("topgun_storage_commit_seconds_count")
        )
        assert int(count_line.split()[1]) >= 1


async def test_large_batch_of_duplicates_is_acked_once_with_every_result() -> None:
    t = now_ms()
    async with serving() as server:
        c = await connect(server)
        await c.send_raw(
            pack({"type": "OP_BATCH", "payload": {"ops": [put("1", "m", "k", "x" * 200, t)] * 5000}})
        )
        ack = await c.recv_type("OP_ACK", timeout=20)
        assert ack["payload"]["lastId"] == "1" and len(ack["payload"]["results"]) == 5000
        assert server.core.grid.lww("m").get("k") == "x" * 200  # type: ignore[union-attr]
