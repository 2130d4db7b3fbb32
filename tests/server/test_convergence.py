"""Randomised convergence over real sockets: concurrent writers, an observer fed only by pushes,
and a late joiner fed only by the sync walks all end with the server's Merkle roots."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest
from gridkit import batch, connect, now_ms, or_to_wire, serving, wire_lww, wire_or
from test_ormap_sync import or_walk
from test_sync import lww_walk

from topgun.core.hlc import HLC
from topgun.core.lww import LWWMap
from topgun.core.ormap import ORMap
from topgun.core.records import LWWRecord, ORMapRecord, Timestamp

pytestmark = pytest.mark.timeout(120)


def apply_event(ev: dict[str, Any], lww: LWWMap, orm: ORMap) -> None:
    kind = ev["eventType"]
    if kind in {"PUT", "REMOVE"}:
        lww.merge(ev["key"], wire_lww(ev["record"]))
    elif kind == "OR_ADD":
        orm.apply(ev["key"], wire_or(ev["orRecord"]))
    else:
        orm.apply_tombstone(ev["orTag"])


@pytest.mark.parametrize("seed", [1, 2])
async def test_writers_observer_and_late_joiner_converge(seed: int, storage_url: str) -> None:
    rnd = random.Random(seed)
    t0 = now_ms() - 10_000
    async with serving(storage_url) as server:
        writers = [await connect(server) for _ in range(3)]
        observer = await connect(server)
        for name in ("lww", "or"):
            init: dict[str, Any] = {"type": "SYNC_INIT", "mapName": name}
            if name == "or":
                init = {"type": "ORMAP_SYNC_INIT", "mapName": name, "rootHash": 0, "bucketHashes": {}}
            await observer.send(init)
            await observer.recv()
        seen_lww, seen_or = LWWMap(HLC("obs")), ORMap(HLC("obs"))
        added: list[tuple[str, str]] = []  # (key, tag) of OR adds sent so far
        next_id = [0] * 3
        for _round in range(30):
            for w, c in enumerate(writers):
                ops = []
                for _ in range(rnd.randint(1, 8)):
                    next_id[w] += 1
                    key = f"k{rnd.randint(0, 15)}"
                    ts = {
                        "millis": float(t0 + rnd.randint(0, 5000)),
                        "counter": rnd.randint(0, 3),
                        "nodeId": f"w{w}",
                    }
                    r = rnd.random()
                    if r < 0.45:
                        op = {
                            "opType": "PUT",
                            "mapName": "lww",
                            "record": {"value": rnd.randint(0, 99), "timestamp": ts},
                        }
                    elif r < 0.6:
                        op = {
                            "opType": "REMOVE",
                            "mapName": "lww",
                            "record": {"value": None, "timestamp": ts},
                        }
                    elif r < 0.85 or not added:
                        tag = f"{int(ts['millis'])}:{ts['counter']}:{ts['nodeId']}"
                        op = {
                            "opType": "OR_ADD",
                            "mapName": "or",
                            "orRecord": {"value": rnd.choice(["a", "b", 1]), "timestamp": ts, "tag": tag},
                        }
                        added.append((key, tag))
                    else:
                        key, tag = rnd.choice(added)
                        op = {"opType": "OR_REMOVE", "mapName": "or", "orTag": tag}
                    op.update({"id": str(next_id[w]), "key": key})
                    ops.append(op)
                # duplicates are normal: sometimes re-send the whole batch
                await c.send(batch(*ops))
                if rnd.random() < 0.2:
                    await c.send(batch(*ops))
        # drain: every writer's acks, then the observer's pushes
        for c in writers:
            await c.ping(1)
        await asyncio.sleep(0.3)
        try:
            while True:
                msg = await observer.recv(0.5)
                if msg["type"] == "SERVER_EVENT":
                    apply_event(msg["payload"], seen_lww, seen_or)
                elif msg["type"] == "SERVER_BATCH_EVENT":
                    for ev in msg["payload"]["events"]:
                        apply_event(ev, seen_lww, seen_or)
        except asyncio.TimeoutError:
            pass
        grid = server.core.grid  # type: ignore[union-attr]
        lww, orm = grid.lww("lww"), grid.ormap("or")
        assert lww is not None and orm is not None
        assert seen_lww.root_hash == lww.root_hash
        assert seen_or.root_hash == orm.root_hash
        # a late joiner catches up through the walks only
        late = await connect(server)
        j_lww, j_or = LWWMap(HLC("late")), ORMap(HLC("late"))
        await lww_walk(late, "lww", j_lww)
        await or_walk(late, "or", j_or)
        assert j_lww.root_hash == lww.root_hash and j_or.root_hash == orm.root_hash
        assert sorted(j_lww.items()) == sorted(lww.items())
        roots = (lww.root_hash, orm.root_hash)
    async with serving(storage_url) as server:
        grid = server.core.grid  # type: ignore[union-attr]
        assert (grid.lww("lww").root_hash, grid.ormap("or").root_hash) == roots  # type: ignore[union-attr]


def test_helpers_roundtrip() -> None:
    r = ORMapRecord("v", Timestamp(1, 2, "n"), "1:2:n")
    assert wire_or(or_to_wire(r)) == r
    assert wire_lww({"value": None, "timestamp": {"millis": 5.0, "counter": 0, "nodeId": "x"}}) == LWWRecord(
        None, Timestamp(5, 0, "x")
    )
