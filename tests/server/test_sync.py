"""LWW Merkle sync (PROTOCOL §5.8) and tombstone GC / resets (§5.10) over real sockets."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from gridkit import batch, connect, now_ms, put, remove, serving, wire_lww, wire_ts
from rawclient import RawClient

from topgun.core.hlc import HLC
from topgun.core.lww import LWWMap
from topgun.core.records import Timestamp

pytestmark = pytest.mark.timeout(60)


async def lww_walk(c: RawClient, map_name: str, local: LWWMap, last_sync: int = 0) -> dict[str, Any]:
    """Run the client side of §5.8 against the server; return the root (or reset) frame."""
    await c.send({"type": "SYNC_INIT", "mapName": map_name, "lastSyncTimestamp": float(last_sync)})
    root = await c.recv()
    if root["type"] != "SYNC_RESP_ROOT":
        return root
    if root["payload"]["rootHash"] == local.root_hash:
        return root
    await c.send({"type": "MERKLE_REQ_BUCKET", "payload": {"mapName": map_name, "path": ""}})
    outstanding = 1
    while outstanding:
        msg = await c.recv()
        outstanding -= 1
        p = msg["payload"]
        if msg["type"] == "SYNC_RESP_BUCKETS":
            mine = local.merkle.buckets(p["path"])  # type: ignore[union-attr]
            for ch, h in p["buckets"].items():
                assert isinstance(h, int) and 0 <= h < 2**32
                if mine.get(ch, 0) != h:
                    await c.send(
                        {
                            "type": "MERKLE_REQ_BUCKET",
                            "payload": {"mapName": map_name, "path": p["path"] + ch},
                        }
                    )
                    outstanding += 1
        else:
            assert msg["type"] == "SYNC_RESP_LEAF", msg
            for item in p["records"]:
                local.merge(item["key"], wire_lww(item["record"]))
    return root


async def test_merkle_walk_catches_up_missed_writes_and_deletes(storage_url: str) -> None:
    t = now_ms()
    async with serving(storage_url) as server:
        a = await connect(server)
        await a.send(batch(*(put(str(i + 1), "todos", f"k{i}", {"i": i}, t, i) for i in range(30))))
        await a.recv_type("OP_ACK")
        b = await connect(server)
        local = LWWMap(HLC("client-b"))
        root = await lww_walk(b, "todos", local)
        assert local.root_hash == root["payload"]["rootHash"] == server.core.grid.lww("todos").root_hash  # type: ignore
        assert len(local) == 30
        await b.close()
        # while B is offline: updates, deletes and new keys
        ops = [put(str(100 + i), "todos", f"k{i}", {"i": -i}, t + 1, i) for i in range(1, 6)]
        ops += [remove(str(200 + i), "todos", f"k{i}", t + 2, i) for i in range(6, 11)]
        ops += [put(str(300 + i), "todos", f"n{i}", i, t + 3, i) for i in range(10)]
        await a.send(batch(*ops))
        await a.recv_type("OP_ACK")
        server_root = server.core.grid.lww("todos").root_hash  # type: ignore[union-attr]
    # restart: the grid and its Merkle tree are rebuilt from storage
    async with serving(storage_url) as server:
        assert server.core.grid.lww("todos").root_hash == server_root  # type: ignore[union-attr]
        b = await connect(server)
        root = await lww_walk(b, "todos", local, last_sync=t)
        assert root["type"] == "SYNC_RESP_ROOT"
        assert isinstance(root["payload"]["timestamp"]["millis"], int)
        assert local.root_hash == server_root
        assert local.get("k1") == {"i": -1} and local.get("k0") == {"i": 0}
        for i in range(6, 11):
            rec = local.get_record(f"k{i}")
            assert rec is not None and rec.value is None and rec.timestamp == Timestamp(t + 2, i, "client-a")
        assert sorted(local.keys()) == sorted(
            [f"k{i}" for i in range(30) if not 6 <= i <= 10] + [f"n{i}" for i in range(10)]
        )
        # in sync now: one round trip
        root = await lww_walk(b, "todos", local, last_sync=t)
        assert root["payload"]["rootHash"] == local.root_hash


async def test_sync_of_unknown_map_and_bad_paths() -> None:
    async with serving() as server:
        c = await connect(server)
        await c.send({"type": "SYNC_INIT", "mapName": "nothing-here"})
        root = await c.recv()
        assert root["type"] == "SYNC_RESP_ROOT" and root["payload"]["rootHash"] == 0
        assert root["payload"]["timestamp"]["nodeId"] == server.core.grid.node_id  # type: ignore[union-attr]
        await c.send({"type": "MERKLE_REQ_BUCKET", "payload": {"mapName": "nothing-here", "path": ""}})
        assert (await c.recv())["payload"] == {"mapName": "nothing-here", "path": "", "buckets": {}}
        await c.send({"type": "MERKLE_REQ_BUCKET", "payload": {"mapName": "nothing-here", "path": "abc"}})
        assert (await c.recv())["payload"] == {"mapName": "nothing-here", "path": "abc", "records": []}
        for bad in ("0/1/2", "ABC", "abcd", "xyz", " "):
            await c.send({"type": "MERKLE_REQ_BUCKET", "payload": {"mapName": "m", "path": bad}})
            err = await c.recv()
            assert err["type"] == "ERROR" and err["payload"]["code"] == 400, bad
        # an OR map cannot be walked as LWW
        t = now_ms()
        await c.send(
            batch(
                {
                    "id": "1",
                    "mapName": "ormap",
                    "key": "k",
                    "opType": "OR_ADD",
                    "orRecord": {
                        "value": 1,
                        "timestamp": {"millis": t, "counter": 0, "nodeId": "n"},
                        "tag": f"{t}:0:n",
                    },
                }
            )
        )
        await c.recv_type("OP_ACK")
        await c.send({"type": "SYNC_INIT", "mapName": "ormap"})
        err = await c.recv()
        assert err["type"] == "ERROR" and err["payload"]["code"] == 409
        assert (await c.ping(9))["timestamp"] == 9


async def test_leaf_holds_tombstones_and_matches_tree() -> None:
    t = now_ms()
    async with serving() as server:
        c = await connect(server)
        await c.send(batch(put("1", "m", "key1", "v", t), remove("2", "m", "gone", t)))
        await c.recv_type("OP_ACK")
        lww = server.core.grid.lww("m")  # type: ignore[union-attr]
        from topgun.core.hashing import route

        path = route("gone")[:3]
        await c.send({"type": "MERKLE_REQ_BUCKET", "payload": {"mapName": "m", "path": path}})
        leaf = await c.recv()
        recs = {r["key"]: r["record"] for r in leaf["payload"]["records"]}
        assert recs["gone"] == {"value": None, "timestamp": {"millis": t, "counter": 0, "nodeId": "client-a"}}
        await c.send({"type": "MERKLE_REQ_BUCKET", "payload": {"mapName": "m", "path": path[:2]}})
        buckets = (await c.recv())["payload"]["buckets"]
        assert buckets[path[2]] == lww.merkle.buckets(path[:2])[path[2]]


async def test_gc_prunes_old_tombstones_announces_and_forces_resets(storage_url: str) -> None:
    t = now_ms()
    async with serving(storage_url, tombstone_retention=5.0) as server:
        a = await connect(server)
        b = await connect(server)
        await a.send(
            batch(
                put("1", "m", "live", 1, t),
                remove("2", "m", "old", t - 60_000),
                remove("3", "m", "recent", t),
                put("4", "m", "old-live", 1, t - 60_000),
            )
        )
        await a.recv_type("OP_ACK")
        core = server.core
        assert core is not None and core.gc is not None
        report = core.gc.run_once()
        assert report.pruned == {"m": 1}
        h = report.horizon
        assert h.node_id == core.grid.node_id and abs(h.millis - (now_ms() - 5000)) < 2000 and h.counter == 0
        for c in (a, b):
            msg = await c.recv_type("GC_PRUNE")
            assert wire_ts(msg["payload"]["olderThan"]) == h
        if report.commit is not None:
            await report.commit
        lww = core.grid.lww("m")
        assert lww is not None
        assert lww.get_record("old") is None and lww.get_record("recent").value is None  # type: ignore
        assert lww.get("old-live") == 1  # live records are never pruned, however old
        # a client that synced before the horizon must reset, once per connection and map
        await b.send({"type": "SYNC_INIT", "mapName": "m", "lastSyncTimestamp": float(t - 120_000)})
        reset = await b.recv()
        assert reset["type"] == "SYNC_RESET_REQUIRED" and reset["payload"]["mapName"] == "m"
        assert reset["payload"]["reason"]
        await b.send({"type": "SYNC_INIT", "mapName": "m", "lastSyncTimestamp": 0})
        assert (await b.recv())["type"] == "SYNC_RESP_ROOT"
        await a.send({"type": "SYNC_INIT", "mapName": "m", "lastSyncTimestamp": float(now_ms())})
        assert (await a.recv())["type"] == "SYNC_RESP_ROOT"
        # writes older than P(M) that could resurrect the pruned delete are refused
        await a.send(
            batch(put("5", "m", "old", "zombie", t - 60_000, 5), put("6", "m", "old-live", 2, t - 60_000, 1))
        )
        frames = []
        while not frames or frames[-1]["type"] != "OP_ACK":
            frames.append(await a.recv())
        rej = [f["payload"] for f in frames if f["type"] == "OP_REJECTED"]
        assert [(r["opId"], r["code"]) for r in rej] == [("5", 409)]
        assert lww.get("old-live") == 2  # a key the server still holds is merged normally
    async with serving(storage_url, tombstone_retention=5.0) as server:
        # the horizon and the deletion are persisted
        assert server.core.grid.prune_horizon("m") == h  # type: ignore[union-attr]
        assert server.core.grid.lww("m").get_record("old") is None  # type: ignore[union-attr]
        c = await connect(server)
        await c.send({"type": "SYNC_INIT", "mapName": "m"})
        assert (await c.recv())["type"] == "SYNC_RESET_REQUIRED"


async def test_or_tombstone_gc_and_full_resync(storage_url: str) -> None:
    t = now_ms()
    async with serving(storage_url, tombstone_retention=0.2) as server:
        a = await connect(server)
        tag = f"{t}:0:client-a"
        await a.send(
            batch(
                {
                    "id": "1",
                    "mapName": "tags",
                    "key": "k",
                    "opType": "OR_ADD",
                    "orRecord": {
                        "value": "x",
                        "timestamp": {"millis": t, "counter": 0, "nodeId": "client-a"},
                        "tag": tag,
                    },
                },
                {"id": "2", "mapName": "tags", "key": "k", "opType": "OR_REMOVE", "orTag": tag},
            )
        )
        await a.recv_type("OP_ACK")
        orm = server.core.grid.ormap("tags")  # type: ignore[union-attr]
        assert orm.is_tombstoned(tag)
        await asyncio.sleep(0.5)
        report = server.core.gc.run_once()  # type: ignore[union-attr]
        assert report.pruned == {"tags": 1}
        await a.recv_type("GC_PRUNE")
        assert not orm.is_tombstoned(tag)
        await a.send(
            {
                "type": "ORMAP_SYNC_INIT",
                "mapName": "tags",
                "rootHash": 0,
                "bucketHashes": {},
                "lastSyncTimestamp": float(t),
            }
        )
        root = await a.recv()
        assert root["type"] == "ORMAP_SYNC_RESP_ROOT" and root["payload"]["fullResync"] is True
        await a.send(
            {
                "type": "ORMAP_SYNC_INIT",
                "mapName": "tags",
                "rootHash": 0,
                "bucketHashes": {},
                "lastSyncTimestamp": float(now_ms()),
            }
        )
        root = await a.recv()
        assert "fullResync" not in root["payload"] and "coveringEpoch" not in root["payload"]
        # a pre-horizon add of an unknown tag is refused
        await a.send(
            batch(
                {
                    "id": "3",
                    "mapName": "tags",
                    "key": "k",
                    "opType": "OR_ADD",
                    "orRecord": {
                        "value": "y",
                        "timestamp": {"millis": t - 1000, "counter": 0, "nodeId": "c"},
                        "tag": "zz",
                    },
                }
            )
        )
        rej = await a.recv()
        assert rej["type"] == "OP_REJECTED" and rej["payload"]["code"] == 409


async def test_periodic_gc_pass_sends_gc_prune() -> None:
    async with serving(gc_interval=0.2) as server:
        c = await connect(server)
        msg = await c.recv_type("GC_PRUNE", timeout=3)
        assert wire_ts(msg["payload"]["olderThan"]).node_id == server.core.grid.node_id  # type: ignore
        assert server.core.gc.passes >= 1  # type: ignore[union-attr]
