"""The write path over real sockets (PROTOCOL §5.6, §5.7, §7): acks, rejections, pushes, echoes."""

from __future__ import annotations

import asyncio
import struct
from typing import Any

import pytest
from gridkit import (
    batch,
    connect,
    expected_level,
    now_ms,
    or_add,
    put,
    recv_until,
    remove,
    serving,
)
from rawclient import SECRET, make_token, pack

from topgun.core.records import LWWRecord, Timestamp

pytestmark = pytest.mark.timeout(60)


async def test_put_is_acked_with_honest_level_and_survives_restart(
    storage_kind: str, storage_url: str
) -> None:
    t = now_ms()
    async with serving(storage_url) as server:
        c = await connect(server)
        await c.send(batch(put("1", "todos", "a", {"title": "A"}, t), put("2", "todos", "b", 2.5, t, 1)))
        ack = await c.recv()
        assert ack["type"] == "OP_ACK"
        level = expected_level(storage_kind)
        assert ack["payload"] == {
            "lastId": "2",
            "achievedLevel": level,
            "results": [
                {"opId": "1", "success": True, "achievedLevel": level},
                {"opId": "2", "success": True, "achievedLevel": level},
            ],
        }
        grid = server.core.grid  # type: ignore[union-attr]
        assert grid.lww("todos").get_record("a") == LWWRecord({"title": "A"}, Timestamp(t, 0, "client-a"))
        node_id = grid.node_id
        await c.close()
    async with serving(storage_url) as server:
        grid = server.core.grid  # type: ignore[union-attr]
        assert grid.node_id == node_id  # the server's node id is stable across restarts
        assert grid.lww("todos").get("a") == {"title": "A"}
        assert grid.lww("todos").get("b") == 2.5
        # the writer's timestamp is kept (§7 decision 1) and the server clock moved past it
        assert grid.lww("todos").get_record("b").timestamp == Timestamp(t, 1, "client-a")
        assert grid.hlc.now() > Timestamp(t, 1, "client-a")


async def test_rejections_precede_the_ack_which_still_covers_them(
    storage_kind: str, storage_url: str
) -> None:
    t = now_ms()
    async with serving(storage_url) as server:
        c = await connect(server)
        await c.send(batch(or_add("1", "tags", "x", "red", t)))
        assert (await c.recv())["type"] == "OP_ACK"
        bad_shape = {
            "id": "3",
            "mapName": "todos",
            "key": "k",
            "opType": "PUT",
            "record": {"value": 1, "timestamp": {"millis": "soon", "counter": 0, "nodeId": "n"}},
        }
        bad_node = put("4", "todos", "k", 1, t, node="a:b")
        await c.send(
            batch(
                put("2", "todos", "k", "ok", t),
                bad_shape,
                bad_node,
                put("5", "todos", "k2", 1, t + 3_600_000),  # an hour ahead: drift
                put("6", "tags", "x", 1, t),  # LWW op on an OR map
                or_add("7", "todos", "k", "v", t),  # OR op on an LWW map
                {
                    "id": "8",
                    "mapName": "",
                    "key": "k",
                    "opType": "PUT",
                    "record": {"value": 1, "timestamp": {"millis": t, "counter": 0, "nodeId": "n"}},
                },
                put("9", "todos", "k3", "fine", t),
            )
        )
        frames = await recv_until(c, "OP_ACK")
        rejected = [f["payload"] for f in frames if f["type"] == "OP_REJECTED"]
        assert [(r["opId"], r["code"]) for r in rejected] == [
            ("3", 400),
            ("4", 400),
            ("5", 422),
            ("6", 409),
            ("7", 409),
            ("8", 400),
        ]
        assert all(isinstance(r["reason"], str) and r["reason"] for r in rejected)
        ack = frames[-1]["payload"]
        assert ack["lastId"] == "9"
        assert ack["achievedLevel"] == expected_level(storage_kind)
        ok = {r["opId"]: r["success"] for r in ack["results"]}
        assert ok == {
            "2": True,
            "3": False,
            "4": False,
            "5": False,
            "6": False,
            "7": False,
            "8": False,
            "9": True,
        }
        assert all(r["achievedLevel"] == "FIRE_AND_FORGET" for r in ack["results"] if not r["success"])
        grid = server.core.grid  # type: ignore[union-attr]
        assert grid.lww("todos").get("k") == "ok" and grid.lww("todos").get("k3") == "fine"
        assert grid.lww("todos").get("k2") is None
        # the drift-rejected op did not move the server clock an hour ahead
        assert grid.hlc.now().millis < t + 3_000_000
        assert server.metrics.rejected_ops.value("422") == 1
        assert server.metrics.rejected_ops.value("409") == 2
        assert server.metrics.ops.value("PUT") >= 2


async def test_all_rejected_batch_and_ops_without_ids() -> None:
    t = now_ms()
    async with serving() as server:
        c = await connect(server)
        op = put("x", "m", "k", 1, t + 10_000_000)
        del op["id"]
        await c.send(batch(op))
        frames = await recv_until(c, "OP_ACK")
        assert frames[0] == {
            "type": "OP_REJECTED",
            "payload": {"opId": "", "reason": frames[0]["payload"]["reason"], "code": 422},
        }
        assert frames[1]["payload"]["lastId"] == "0"
        assert frames[1]["payload"]["results"] == []


async def test_empty_batch_gets_no_reply_and_client_op_is_a_batch_of_one() -> None:
    t = now_ms()
    async with serving() as server:
        c = await connect(server)
        await c.send(batch())
        await c.expect_silence(0.3)
        await c.send({"type": "CLIENT_OP", "payload": put("41", "m", "k", "v", t)})
        ack = await c.recv()
        assert ack["type"] == "OP_ACK" and ack["payload"]["lastId"] == "41"
        await c.send({"type": "CLIENT_APPLY_ACK", "cursor": 5})
        await c.expect_silence(0.3)
        assert server.core.grid.lww("m").get("k") == "v"  # type: ignore[union-attr]


async def test_remove_without_record_uses_op_timestamp_then_server_clock() -> None:
    t = now_ms()
    async with serving() as server:
        c = await connect(server)
        await c.send(batch(put("1", "m", "a", 1, t), put("2", "m", "b", 1, t)))
        await c.recv_type("OP_ACK")
        await c.send(
            batch(
                {
                    "id": "3",
                    "mapName": "m",
                    "key": "a",
                    "opType": "REMOVE",
                    "timestamp": {"millis": float(t + 5), "counter": 0, "nodeId": "client-a"},
                },
                {"id": "4", "mapName": "m", "key": "b", "record": None},  # classified REMOVE, server clock
            )
        )
        await c.recv_type("OP_ACK")
        lww = server.core.grid.lww("m")  # type: ignore[union-attr]
        assert lww.get_record("a") == LWWRecord(None, Timestamp(t + 5, 0, "client-a"))
        rec_b = lww.get_record("b")
        assert rec_b.value is None and rec_b.timestamp.node_id == server.core.grid.node_id  # type: ignore


async def test_push_to_interested_others_not_the_writer(storage_url: str) -> None:
    t = now_ms()
    async with serving(storage_url) as server:
        writer = await connect(server)
        watcher = await connect(server)
        bystander = await connect(server)
        await watcher.send({"type": "SYNC_INIT", "mapName": "todos"})
        assert (await watcher.recv())["type"] == "SYNC_RESP_ROOT"
        await bystander.send({"type": "SYNC_INIT", "mapName": "other"})
        assert (await bystander.recv())["type"] == "SYNC_RESP_ROOT"

        await writer.send(batch(put("1", "todos", "a", {"n": 1}, t)))
        assert (await writer.recv())["type"] == "OP_ACK"
        ev = await watcher.recv()
        assert ev == {
            "type": "SERVER_EVENT",
            "payload": {
                "mapName": "todos",
                "eventType": "PUT",
                "key": "a",
                "record": {"value": {"n": 1}, "timestamp": {"millis": t, "counter": 0, "nodeId": "client-a"}},
            },
        }
        # a remove is pushed as REMOVE with its tombstone record (value nil)
        await writer.send(batch(remove("2", "todos", "a", t + 1)))
        assert (await writer.recv())["type"] == "OP_ACK"
        ev = await watcher.recv()
        assert ev["payload"]["eventType"] == "REMOVE"
        assert ev["payload"]["record"] == {
            "value": None,
            "timestamp": {"millis": t + 1, "counter": 0, "nodeId": "client-a"},
        }
        # several changes of one batch arrive coalesced, in order
        await writer.send(batch(*(put(str(10 + i), "todos", f"k{i}", i, t + 2) for i in range(5))))
        assert (await writer.recv())["type"] == "OP_ACK"
        ev = await watcher.recv()
        assert ev["type"] == "SERVER_BATCH_EVENT"
        assert [e["key"] for e in ev["payload"]["events"]] == [f"k{i}" for i in range(5)]
        # idempotent re-send: acked again, nothing pushed
        await writer.send(batch(*(put(str(10 + i), "todos", f"k{i}", i, t + 2) for i in range(5))))
        assert (await writer.recv())["type"] == "OP_ACK"
        await watcher.expect_silence(0.3)
        await writer.expect_silence(0.1)
        await bystander.expect_silence(0.1)
        # the writer became interested by writing: it sees the watcher's writes
        await watcher.send(batch(put("1", "todos", "w", "from-watcher", t + 3, node="client-b")))
        assert (await watcher.recv())["type"] == "OP_ACK"
        ev = await writer.recv()
        assert ev["type"] == "SERVER_EVENT" and ev["payload"]["key"] == "w"


async def test_losing_writer_gets_corrective_event(storage_url: str) -> None:
    t = now_ms()
    async with serving(storage_url) as server:
        a = await connect(server)
        b = await connect(server)
        await a.send(batch(put("1", "m", "k", "newer", t + 10, node="client-a")))
        assert (await a.recv())["type"] == "OP_ACK"
        await b.send(batch(put("1", "m", "k", "older", t, node="client-b")))
        frames = await recv_until(b, "OP_ACK")
        assert frames[0] == {
            "type": "SERVER_EVENT",
            "payload": {
                "mapName": "m",
                "eventType": "PUT",
                "key": "k",
                "record": {
                    "value": "newer",
                    "timestamp": {"millis": t + 10, "counter": 0, "nodeId": "client-a"},
                },
            },
        }
        assert frames[1]["payload"]["results"][0]["success"] is True  # accepted, it just lost
        await a.expect_silence(0.3)  # a losing write is no change: nothing pushed
        # an equal timestamp (a re-sent op) gets no correction
        await a.send(batch(put("2", "m", "k", "newer", t + 10, node="client-a")))
        frames = await recv_until(a, "OP_ACK")
        assert len(frames) == 1


async def test_write_concern_applied_acks_without_waiting(storage_url: str) -> None:
    t = now_ms()
    async with serving(storage_url) as server:
        c = await connect(server)
        await c.send(batch(put("1", "m", "k", 1, t), writeConcern="APPLIED"))
        ack = await c.recv()
        assert ack["payload"]["achievedLevel"] == "APPLIED"
        await c.send(batch(put("2", "m", "k", 2, t + 1, writeConcern="FIRE_AND_FORGET")))
        assert (await c.recv())["payload"]["achievedLevel"] in {"APPLIED", "PERSISTED"}


async def test_acks_keep_batch_order_under_a_stream(storage_kind: str, storage_url: str) -> None:
    t = now_ms()
    async with serving(storage_url) as server:
        c = await connect(server)
        n = 200
        for i in range(1, n + 1):
            wc = {"writeConcern": "APPLIED"} if i % 7 == 0 else {}
            await c.send(batch(put(str(i), "m", f"k{i % 50}", i, t + i), **wc))
        ids = []
        while len(ids) < n:
            msg = await c.recv(10)
            if msg["type"] == "OP_ACK":
                ids.append(int(msg["payload"]["lastId"]))
        assert ids == list(range(1, n + 1))
        assert server.core.grid.lww("m").get("k0") == 200  # type: ignore[union-attr]


async def test_write_permissions_from_the_map_acl() -> None:
    t = now_ms()
    acl = [
        {"map": "admin.*", "read": ["admin"], "write": ["admin"]},
        {"map": "catalog*", "read": ["*"], "write": ["editor"]},
    ]
    async with serving(jwt_secret=SECRET, map_acl=acl) as server:
        plain = await connect(server, make_token(sub="bob", roles=["viewer"]))
        editor = await connect(server, make_token(sub="eve", roles=["editor"]))
        await plain.send(
            batch(
                put("1", "catalog", "k", 1, t),
                put("2", "notes", "k", 1, t),
                put("3", "admin.users", "k", 1, t),
            )
        )
        frames = await recv_until(plain, "OP_ACK")
        assert [
            (f["payload"]["opId"], f["payload"]["code"]) for f in frames if f["type"] == "OP_REJECTED"
        ] == [("1", 403), ("3", 403)]
        assert frames[-1]["payload"]["lastId"] == "3"
        # reads: catalog is readable by everyone, admin.* is not
        await plain.send({"type": "SYNC_INIT", "mapName": "admin.users"})
        err = await plain.recv()
        assert err["type"] == "ERROR" and err["payload"]["code"] == 403
        await plain.send({"type": "SYNC_INIT", "mapName": "catalog"})
        assert (await plain.recv())["type"] == "SYNC_RESP_ROOT"
        await editor.send(batch(put("1", "catalog", "k", "by-editor", t)))
        assert (await editor.recv())["payload"]["results"][0]["success"] is True
        ev = await plain.recv()
        assert ev["payload"]["record"]["value"] == "by-editor"
        # A map once written is remembered per connection; a refused one never is.
        await plain.send(batch(put("4", "notes", "k", 2, t + 1)))
        assert (await plain.recv())["payload"]["results"][0]["success"] is True
        await plain.send(batch(put("5", "notes", "k", 3, t + 2), put("6", "catalog", "k", 3, t + 2)))
        frames = await recv_until(plain, "OP_ACK")
        assert [
            (f["payload"]["opId"], f["payload"]["code"]) for f in frames if f["type"] == "OP_REJECTED"
        ] == [("6", 403)]
        assert [r["success"] for r in frames[-1]["payload"]["results"]] == [True, False]
        assert server.core.grid.lww("notes").get("k") == 3  # type: ignore[union-attr]
        assert server.core.grid.lww("catalog").get("k") == "by-editor"  # type: ignore[union-attr]


async def test_no_push_to_connections_that_may_not_read() -> None:
    t = now_ms()
    acl = [{"map": "private", "read": ["admin"], "write": ["*"]}]
    async with serving(jwt_secret=SECRET, map_acl=acl) as server:
        admin = await connect(server, make_token(sub="root", roles=["admin"]))
        viewer = await connect(server, make_token(sub="bob", roles=[]))
        await admin.send({"type": "SYNC_INIT", "mapName": "private"})
        await admin.recv_type("SYNC_RESP_ROOT")
        # the viewer may write (so it is not interested by reading rights) but never receives pushes
        await viewer.send(batch(put("1", "private", "a", 1, t)))
        await viewer.recv_type("OP_ACK")
        assert (await admin.recv())["type"] == "SERVER_EVENT"
        await admin.send(batch(put("1", "private", "b", 2, t)))
        await admin.recv_type("OP_ACK")
        await viewer.expect_silence(0.3)


def _batch_frame(inner: list[bytes], fmt: str = "A") -> dict[str, Any]:
    if fmt == "A":
        data = struct.pack("<I", len(inner)) + b"".join(struct.pack("<I", len(f)) + f for f in inner)
    else:
        data = b"".join(struct.pack(">I", len(f)) + f for f in inner)
    return {"type": "BATCH", "count": len(inner), "data": data}


@pytest.mark.parametrize("fmt", ["A", "B"])
async def test_batch_envelope_inner_writes_processed_in_order(fmt: str) -> None:
    t = now_ms()
    async with serving() as server:
        c = await connect(server)
        inner = [pack(batch(put(str(i), "m", "k", i, t + i))) for i in range(1, 4)]
        inner.append(pack({"type": "SYNC_INIT", "mapName": "m"}))
        await c.send(_batch_frame(inner, fmt))
        got = [await c.recv() for _ in range(4)]
        assert [g["type"] for g in got] == ["OP_ACK", "OP_ACK", "OP_ACK", "SYNC_RESP_ROOT"]
        assert [g["payload"]["lastId"] for g in got[:3]] == ["1", "2", "3"]
        lww = server.core.grid.lww("m")  # type: ignore[union-attr]
        assert lww.get("k") == 3
        assert got[3]["payload"]["rootHash"] == lww.root_hash


async def test_batch_envelope_over_8192_items_is_refused_whole() -> None:
    t = now_ms()
    async with serving() as server:
        c = await connect(server)
        one = pack(batch(put("1", "m", "k", 1, t)))
        await c.send(_batch_frame([one] * 8193))
        err = await c.recv()
        assert err["type"] == "ERROR" and err["payload"]["code"] == 413
        await c.expect_silence(0.3)
        assert server.core.grid.lww("m") is None  # type: ignore[union-attr]
        assert (await c.ping(3))["timestamp"] == 3


async def test_ack_waits_for_the_commit(storage_kind: str, storage_url: str) -> None:
    if storage_kind == "memory":
        pytest.skip("memory storage acks APPLIED at once")
    t = now_ms()
    async with serving(storage_url) as server:
        c = await connect(server)
        storage = server.core.grid.committer.storage  # type: ignore[union-attr]
        gate = asyncio.Event()
        real_write = storage.write
        committed: list[int] = []

        async def slow_write(b: Any) -> None:
            await gate.wait()
            await real_write(b)
            committed.append(len(b))

        storage.write = slow_write  # type: ignore[method-assign]
        try:
            await c.send(batch(put("1", "m", "k", 1, t)))
            await c.expect_silence(0.4)  # not durable yet: no ack
            assert not committed
            gate.set()
            ack = await c.recv()
            assert ack["payload"]["achievedLevel"] == "PERSISTED" and committed
        finally:
            storage.write = real_write  # type: ignore[method-assign]


async def test_listeners_registered_before_start_see_effective_changes_with_origin() -> None:
    from topgun.server.app import TopGunServer
    from topgun.server.grid import Change, ChangeKind, ChangeSource, Origin

    seen: list[tuple[list[Change], Origin]] = []

    class Recorder:
        def on_changes(self, changes: Any, origin: Origin) -> None:
            seen.append((list(changes), origin))

    t = now_ms()
    server = TopGunServer(port=0, storage="memory://", gc_interval=0.0)
    assert server.core is not None
    server.core.add_listener(Recorder())
    await server.start()
    try:
        c = await connect(server)
        await c.send(batch(put("1", "m", "k", 1, t), put("2", "m", "k", 2, t + 1), put("3", "m", "k", 0, t)))
        await c.recv_type("OP_ACK")
        assert len(seen) == 1
        changes, origin = seen[0]
        assert origin.source is ChangeSource.CLIENT and origin.connection_id is not None
        # the losing third op is not an effective change; the second carries what it replaced
        assert [(ch.kind, ch.record.value) for ch in changes] == [(ChangeKind.PUT, 1), (ChangeKind.PUT, 2)]  # type: ignore[union-attr]
        assert changes[1].previous is not None and changes[1].previous.value == 1
    finally:
        await server.stop()


async def test_backpressure_holds_the_writer_but_answers_pings(
    storage_kind: str, storage_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if storage_kind == "memory":
        pytest.skip("needs a storage whose commits can be held")
    import topgun.server.handlers.write as write_mod

    monkeypatch.setattr(write_mod, "BACKLOG_HIGH_WATER", 3)
    t = now_ms()
    async with serving(storage_url) as server:
        c = await connect(server)
        storage = server.core.grid.committer.storage  # type: ignore[union-attr]
        gate = asyncio.Event()
        real_write = storage.write

        async def held_write(b: Any) -> None:
            await gate.wait()
            await real_write(b)

        storage.write = held_write  # type: ignore[method-assign]
        try:
            await c.send(batch(*(put(str(i + 1), "m", f"k{i}", i, t) for i in range(10))))
            await c.send({"type": "SYNC_INIT", "mapName": "m"})
            assert (await c.ping(5))["timestamp"] == 5  # pings are answered at once
            await c.expect_silence(0.3)  # neither the ack nor the sync answer before the commit
            gate.set()
            got = [await c.recv(), await c.recv()]
            assert [g["type"] for g in got] == ["OP_ACK", "SYNC_RESP_ROOT"]
        finally:
            storage.write = real_write  # type: ignore[method-assign]


async def test_no_ack_while_storage_fails_then_persisted_after_recovery(
    storage_kind: str, storage_url: str
) -> None:
    if storage_kind == "memory":
        pytest.skip("memory storage acks APPLIED at once")
    from topgun.errors import StorageError

    t = now_ms()
    async with serving(storage_url) as server:
        c = await connect(server)
        committer = server.core.committer  # type: ignore[union-attr]
        assert committer is not None
        committer.retry_min_s = committer.retry_max_s = 0.05
        storage = committer.storage
        real_write = storage.write
        failures = {"left": 4}

        async def flaky_write(b: Any) -> None:
            if failures["left"] > 0:
                failures["left"] -= 1
                raise StorageError("disk on fire")
            await real_write(b)

        storage.write = flaky_write  # type: ignore[method-assign]
        try:
            await c.send(batch(put("1", "m", "k", 1, t)))
            await c.send(batch(put("2", "m", "k", 2, t + 1)))
            await c.expect_silence(0.1)  # nothing is acknowledged while the commit fails
            acks = [await c.recv(5), await c.recv(5)]
            assert failures["left"] == 0
            assert [a["payload"]["lastId"] for a in acks] == ["1", "2"]
            assert {a["payload"]["achievedLevel"] for a in acks} == {"PERSISTED"}
        finally:
            storage.write = real_write  # type: ignore[method-assign]
    async with serving(storage_url) as server:
        assert server.core.grid.lww("m").get("k") == 2  # type: ignore[union-attr]
