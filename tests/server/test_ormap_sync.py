"""OR-Map writes, pushes, sync walk, push-diff and diff requests over real sockets (PROTOCOL §5.9)."""

from __future__ import annotations

from typing import Any

import pytest
from gridkit import batch, connect, now_ms, or_add, or_remove, or_to_wire, serving, wire_or
from rawclient import SECRET, RawClient, make_token

from topgun.core.hlc import HLC
from topgun.core.ormap import ORMap
from topgun.core.records import ORMapRecord, Timestamp

pytestmark = pytest.mark.timeout(60)


async def or_walk(c: RawClient, name: str, local: ORMap) -> dict[str, Any]:
    """Client side of the OR walk (pull part only): merge every differing leaf with mergeKey."""
    await c.send(
        {
            "type": "ORMAP_SYNC_INIT",
            "mapName": name,
            "rootHash": local.root_hash,
            "bucketHashes": local.merkle.buckets(""),
            "lastSyncTimestamp": 0,
        }
    )  # type: ignore[union-attr]
    root = await c.recv_type("ORMAP_SYNC_RESP_ROOT")
    if root["payload"]["rootHash"] == local.root_hash:
        return root
    await c.send({"type": "ORMAP_MERKLE_REQ_BUCKET", "payload": {"mapName": name, "path": ""}})
    outstanding = 1
    while outstanding:
        msg = await c.recv()
        if msg["type"] not in {"ORMAP_SYNC_RESP_BUCKETS", "ORMAP_SYNC_RESP_LEAF"}:
            continue
        outstanding -= 1
        p = msg["payload"]
        if msg["type"] == "ORMAP_SYNC_RESP_BUCKETS":
            mine = local.merkle.buckets(p["path"])  # type: ignore[union-attr]
            for ch, h in p["buckets"].items():
                if mine.get(ch, 0) != h:
                    await c.send(
                        {
                            "type": "ORMAP_MERKLE_REQ_BUCKET",
                            "payload": {"mapName": name, "path": p["path"] + ch},
                        }
                    )
                    outstanding += 1
        else:
            for e in p["entries"]:
                local.merge_key(e["key"], [wire_or(r) for r in e["records"]], e["tombstones"])
    return root


def tag_of(millis: int, counter: int = 0, node: str = "client-a") -> str:
    return f"{millis}:{counter}:{node}"


async def test_or_ops_push_events_and_keep_tags(storage_url: str) -> None:
    t = now_ms()
    async with serving(storage_url) as server:
        a = await connect(server)
        w = await connect(server)
        await w.send({"type": "ORMAP_SYNC_INIT", "mapName": "tags", "rootHash": 0, "bucketHashes": {}})
        root = await w.recv()
        assert root["type"] == "ORMAP_SYNC_RESP_ROOT" and root["payload"]["rootHash"] == 0
        custom = {
            "id": "2",
            "mapName": "tags",
            "key": "k",
            "opType": "OR_ADD",
            "orRecord": {
                "value": "blue",
                "timestamp": {"millis": float(t), "counter": 1, "nodeId": "client-a"},
                "tag": "my-own-tag",
            },
        }
        await a.send(batch(or_add("1", "tags", "k", "red", t), custom))
        await a.recv_type("OP_ACK")
        ev = await w.recv()
        assert ev["type"] == "SERVER_BATCH_EVENT"
        events = ev["payload"]["events"]
        assert [e["eventType"] for e in events] == ["OR_ADD", "OR_ADD"]
        assert events[0]["orRecord"] == {
            "value": "red",
            "timestamp": {"millis": t, "counter": 0, "nodeId": "client-a"},
            "tag": tag_of(t),
        }
        assert "ttlMs" not in events[0]["orRecord"]
        assert events[1]["orRecord"]["tag"] == "my-own-tag"  # kept as sent (§7 decision 6)
        orm = server.core.grid.ormap("tags")  # type: ignore[union-attr]
        assert orm.get("k") == ["red", "blue"]  # tag order: digits sort before letters
        # remove one tag: OR_REMOVE event, idempotent when re-sent
        await a.send(batch(or_remove("3", "tags", "k", tag_of(t), t + 1)))
        await a.recv_type("OP_ACK")
        ev = await w.recv()
        assert ev == {
            "type": "SERVER_EVENT",
            "payload": {"mapName": "tags", "eventType": "OR_REMOVE", "key": "k", "orTag": tag_of(t)},
        }
        await a.send(batch(or_add("1", "tags", "k", "red", t), or_remove("3", "tags", "k", tag_of(t), t + 1)))
        await a.recv_type("OP_ACK")
        await w.expect_silence(0.3)  # re-adding a tombstoned tag and re-removing change nothing
        assert orm.get("k") == ["blue"]
        a_root = orm.root_hash
    async with serving(storage_url) as server:
        orm = server.core.grid.ormap("tags")  # type: ignore[union-attr]
        assert orm.get("k") == ["blue"] and orm.is_tombstoned(tag_of(t))
        assert orm.root_hash == a_root
        assert orm.tombstones_for("k") == [tag_of(t)]


async def test_or_walk_converges_including_emptied_keys(storage_url: str) -> None:
    t = now_ms()
    async with serving(storage_url) as server:
        a = await connect(server)
        await a.send(
            batch(*(or_add(str(i + 1), "set", f"k{i}", {"v": i, "n": [1, 2]}, t, i) for i in range(40)))
        )
        await a.recv_type("OP_ACK")
        b = await connect(server)
        local = ORMap(HLC("client-b"))
        await or_walk(b, "set", local)
        orm = server.core.grid.ormap("set")  # type: ignore[union-attr]
        assert local.root_hash == orm.root_hash != 0
        await b.close()
        # offline for B: k0 emptied, k1 gets a second value
        await a.send(
            batch(
                or_remove("100", "set", "k0", tag_of(t, 0), t + 1), or_add("101", "set", "k1", "extra", t + 2)
            )
        )
        await a.recv_type("OP_ACK")
        b = await connect(server)
        await or_walk(b, "set", local)
        # k0 has no node in the tree; the walk alone only fixes what differs in the tree
        assert sorted(map(str, local.get("k1"))) == sorted(map(str, [{"v": 1, "n": [1, 2]}, "extra"]))
        # the emptied key's tombstones are served in its leaf
        from topgun.core.hashing import route

        await b.send(
            {"type": "ORMAP_MERKLE_REQ_BUCKET", "payload": {"mapName": "set", "path": route("k0")[:3]}}
        )
        leaf = await b.recv_type("ORMAP_SYNC_RESP_LEAF")
        entries = {e["key"]: e for e in leaf["payload"]["entries"]}
        assert entries["k0"] == {"key": "k0", "records": [], "tombstones": [tag_of(t, 0)]}
        local.merge_key("k0", [], entries["k0"]["tombstones"])
        assert local.root_hash == orm.root_hash
        assert local.get("k0") == []


async def test_push_diff_merges_pushes_events_and_answers_differences(storage_url: str) -> None:
    t = now_ms()
    async with serving(storage_url) as server:
        a = await connect(server)
        b = await connect(server)
        await a.send(batch(or_add("1", "s", "k", "server-only", t), or_add("2", "s", "same", "x", t, 1)))
        await a.recv_type("OP_ACK")
        orm = server.core.grid.ormap("s")  # type: ignore[union-attr]
        same = orm.get_records("same")[0]
        pushed_k = ORMapRecord("from-b", Timestamp(t, 5, "client-b"), tag_of(t, 5, "client-b"))
        pushed_j = ORMapRecord("j", Timestamp(t, 6, "client-b"), tag_of(t, 6, "client-b"))
        await b.send(
            {
                "type": "ORMAP_PUSH_DIFF",
                "payload": {
                    "mapName": "s",
                    "entries": [
                        {"key": "k", "records": [or_to_wire(pushed_k)], "tombstones": []},
                        {"key": "j", "records": [or_to_wire(pushed_j)], "tombstones": []},
                        {"key": "same", "records": [or_to_wire(same)], "tombstones": []},
                    ],
                },
            }
        )
        resp = await b.recv()
        assert resp["type"] == "ORMAP_DIFF_RESPONSE"
        # only "k" differs: the server holds a record B did not push
        assert [e["key"] for e in resp["payload"]["entries"]] == ["k"]
        assert sorted(r["tag"] for r in resp["payload"]["entries"][0]["records"]) == sorted(
            [tag_of(t), pushed_k.tag]
        )
        await b.expect_silence(0.2)  # no OP_ACK for a push-diff, no echo of its own changes
        ev = await a.recv()
        assert ev["type"] == "SERVER_BATCH_EVENT"
        assert [(e["eventType"], e["key"]) for e in ev["payload"]["events"]] == [
            ("OR_ADD", "k"),
            ("OR_ADD", "j"),
        ]
        # tombstones in a push-diff remove the record wherever it is, with an OR_REMOVE event
        await b.send(
            {
                "type": "ORMAP_PUSH_DIFF",
                "payload": {
                    "mapName": "s",
                    "entries": [
                        {"key": "k", "records": [or_to_wire(pushed_k)], "tombstones": [tag_of(t)]},
                    ],
                },
            }
        )
        await b.expect_silence(0.3)  # after the merge B and the server agree on "k"
        ev = await a.recv()
        assert ev["payload"] == {"mapName": "s", "eventType": "OR_REMOVE", "key": "k", "orTag": tag_of(t)}
        assert [r.tag for r in orm.get_records("k")] == [pushed_k.tag]
        # a pushed record whose tag is tombstoned is suppressed and reported back
        await b.send(
            {
                "type": "ORMAP_PUSH_DIFF",
                "payload": {
                    "mapName": "s",
                    "entries": [
                        {
                            "key": "k",
                            "records": [
                                or_to_wire(pushed_k),
                                or_to_wire(ORMapRecord("zombie", Timestamp(t, 0, "client-a"), tag_of(t))),
                            ],
                            "tombstones": [],
                        },
                    ],
                },
            }
        )
        resp = await b.recv()
        assert resp["type"] == "ORMAP_DIFF_RESPONSE"
        assert resp["payload"]["entries"] == [
            {"key": "k", "records": [or_to_wire(pushed_k)], "tombstones": [tag_of(t)]}
        ]
        await a.expect_silence(0.2)


async def test_diff_request_and_refusals() -> None:
    t = now_ms()
    acl = [{"map": "ro", "read": ["*"], "write": ["admin"]}]
    async with serving(jwt_secret=SECRET, map_acl=acl) as server:
        c = await connect(server, make_token(sub="u", roles=[]))
        await c.send(batch(or_add("1", "s", "k", 1, t)))
        await c.recv_type("OP_ACK")
        await c.send({"type": "ORMAP_DIFF_REQUEST", "payload": {"mapName": "s", "keys": ["k", "unknown"]}})
        resp = await c.recv()
        assert resp["type"] == "ORMAP_DIFF_RESPONSE"
        entries = resp["payload"]["entries"]
        assert entries[1] == {"key": "unknown", "records": [], "tombstones": []}
        assert entries[0]["records"][0]["value"] == 1
        # push-diff needs write permission and an OR map
        await c.send({"type": "ORMAP_PUSH_DIFF", "payload": {"mapName": "ro", "entries": []}})
        err = await c.recv()
        assert err["type"] == "ERROR" and err["payload"]["code"] == 403
        await c.send(
            batch(
                {
                    "id": "2",
                    "mapName": "lww",
                    "key": "k",
                    "opType": "PUT",
                    "record": {"value": 1, "timestamp": {"millis": float(t), "counter": 0, "nodeId": "n"}},
                }
            )
        )
        await c.recv_type("OP_ACK")
        await c.send({"type": "ORMAP_PUSH_DIFF", "payload": {"mapName": "lww", "entries": []}})
        err = await c.recv()
        assert err["type"] == "ERROR" and err["payload"]["code"] == 409
        for bad in ("g", "0/1", "1234"):
            await c.send({"type": "ORMAP_MERKLE_REQ_BUCKET", "payload": {"mapName": "s", "path": bad}})
            err = await c.recv()
            assert err["type"] == "ERROR" and err["payload"]["code"] == 400
