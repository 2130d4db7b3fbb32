"""TopGunClient without a server: local reads/writes, persistence, op ids, events, backpressure."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

from topgun import TopGunClient as TopLevelClient
from topgun.client import (
    ChangeOrigin,
    ConnectionState,
    MapEvent,
    MemoryStorage,
    ORMapEvent,
    SQLiteStorage,
    TopGunClient,
)
from topgun.errors import BackpressureError, ClientClosedError, ConfigError, FlushTimeoutError
from topgun.protocol.messages import OpAck

# Nothing listens on port 9 of the loopback: every connect attempt fails at once.
DEAD_URL = "ws://127.0.0.1:9/ws"


async def test_api_and_top_level_export(tmp_path: Path) -> None:
    assert TopLevelClient is TopGunClient
    async with TopGunClient(DEAD_URL, storage=SQLiteStorage(tmp_path / "a.db")) as client:
        todos = client.get_map("todos")
        assert client.get_map("todos") is todos
        rec = todos.set("t1", {"text": "milk", "done": False})
        assert rec.timestamp.node_id == client.node_id
        assert todos.get("t1") == {"text": "milk", "done": False}
        assert "t1" in todos and len(todos) == 1
        assert todos.items() == [("t1", {"text": "milk", "done": False})]
        todos.remove("t1")
        assert todos.get("t1") is None and "t1" not in todos and len(todos) == 0
        assert todos.get_record("t1").value is None  # tombstone kept for sync
        tags = client.get_or_map("tags")
        tags.add("k", "a")
        tags.add("k", "b")
        tags.add("k", "a")
        assert sorted(tags.get("k")) == ["a", "a", "b"]
        assert len(tags.remove("k", "a")) == 2
        assert tags.get("k") == ["b"] and tags.get("nope") == []
        assert client.pending_ops == 2 + 3 + 2
        with pytest.raises(ConfigError):
            client.get_or_map("todos")
        with pytest.raises(ValueError):
            todos.set("x", None)
        assert client.state in (ConnectionState.CONNECTING, ConnectionState.BACKOFF,
                                ConnectionState.DISCONNECTED)
    assert client.state is ConnectionState.CLOSED
    with pytest.raises(ClientClosedError):
        client.get_map("other")


async def test_node_id_is_a_stable_lowercase_uuid(tmp_path: Path) -> None:
    db = tmp_path / "n.db"
    async with TopGunClient(DEAD_URL, storage=SQLiteStorage(db), connect=False) as c1:
        node = c1.node_id
        assert str(uuid.UUID(node)) == node and node == node.lower()
    async with TopGunClient(DEAD_URL, storage=SQLiteStorage(db), connect=False) as c2:
        assert c2.node_id == node
    async with TopGunClient(DEAD_URL, storage=MemoryStorage(), node_id="fixed-1", connect=False) as c3:
        assert c3.node_id == "fixed-1"
    with pytest.raises(ConfigError):
        TopGunClient(DEAD_URL, node_id="bad:id")
    with pytest.raises(ConfigError):
        TopGunClient("http://x")


async def test_replicas_and_op_log_survive_restart_with_increasing_ids(tmp_path: Path) -> None:
    db = tmp_path / "r.db"
    async with TopGunClient(DEAD_URL, storage=SQLiteStorage(db), connect=False) as c:
        m = c.get_map("todos")
        for i in range(10):
            m.set(f"k{i}", i)
        m.remove("k3")
        c.get_or_map("tags").add("t", "v")
        # Acknowledge the first five ops as a server would.
        ready_session(c)
        c.engine.receive(OpAck(last_id="12"))
        assert c.pending_ops == 0
        m.set("after", 1)
        first_ids = [i for i, _ in c.store.pending_ops()]
    assert first_ids == [13]
    async with TopGunClient(DEAD_URL, storage=SQLiteStorage(db), connect=False) as c:
        assert sorted(c.map_names()) == ["tags", "todos"]
        m = c.get_map("todos")
        assert m.get("k5") == 5 and m.get("k3") is None and m.get("after") == 1
        assert c.get_or_map("tags").get("t") == ["v"]
        assert c.pending_ops == 1
        m.set("again", 2)
        assert [i for i, _ in c.store.pending_ops()] == [13, 14]
        # The clock is ahead of every persisted record.
        assert m.get_record("again").timestamp > m.get_record("after").timestamp


def ready_session(client: TopGunClient) -> None:
    """Authenticate the engine as if a no-auth server had answered (no socket involved)."""
    client.engine.start_session(None)
    client.engine.grace_expired()
    assert client.engine.ready


async def test_subscribe_local_events_and_unsubscribe() -> None:
    async with TopGunClient(DEAD_URL, connect=False) as c:
        m = c.get_map("todos")
        got: list[MapEvent] = []
        off = m.subscribe(got.append)
        m.set("a", 1)
        m.set("a", 2)
        m.remove("a")
        off()
        m.set("b", 3)
        assert [(e.key, e.value, e.previous, e.origin) for e in got] == [
            ("a", 1, None, ChangeOrigin.LOCAL), ("a", 2, 1, ChangeOrigin.LOCAL),
            ("a", None, 2, ChangeOrigin.LOCAL)]
        tags = c.get_or_map("tags")
        tev: list[ORMapEvent] = []
        tags.subscribe(tev.append)
        tags.add("k", 1)
        tags.remove("k", 1)
        assert [e.values for e in tev] == [[1], []]

        def broken(_: object) -> None:
            raise RuntimeError("listener bug")

        m.subscribe(broken)
        m.set("c", 1)  # a failing listener never breaks the write
        assert m.get("c") == 1


async def test_batch_is_one_transaction(tmp_path: Path) -> None:
    db = tmp_path / "b.db"
    async with TopGunClient(DEAD_URL, storage=SQLiteStorage(db), connect=False) as c:
        m = c.get_map("bulk")
        probe = SQLiteStorage(db)
        probe.open()
        with c.batch():
            for i in range(1000):
                m.set(f"k{i}", i)
            assert m.get("k999") == 999
            assert probe.load_lww("bulk") == []  # not committed yet
        assert len(probe.load_lww("bulk")) == 1000
        assert len(probe.load_ops()) == 1000
        probe.close()


async def test_backpressure_raises_or_waits() -> None:
    async with TopGunClient(DEAD_URL, max_pending_ops=5, connect=False) as c:
        m = c.get_map("m")
        for i in range(5):
            m.set(f"k{i}", i)
        with pytest.raises(BackpressureError):
            m.set("over", 1)
        assert m.get("over") is None and c.pending_ops == 5
        with pytest.raises(BackpressureError):
            c.get_or_map("o").add("k", 1)
        ready_session(c)
        c.engine.pump()
        waiter = asyncio.ensure_future(m.aset("over", 1))
        await asyncio.sleep(0.05)
        assert not waiter.done()
        batch_last = str(max(c.engine.session.inflight)[0])
        c.engine.receive(OpAck(last_id=batch_last))
        rec = await asyncio.wait_for(waiter, 2)
        assert m.get("over") == 1 and rec.value == 1
        assert c.pending_ops == 1


async def test_flush_times_out_without_server() -> None:
    async with TopGunClient(DEAD_URL) as c:
        c.get_map("m").set("a", 1)
        with pytest.raises(FlushTimeoutError):
            await c.flush(timeout=0.3)
        assert c.pending_ops == 1
    # Nothing pending: flush returns at once.
    async with TopGunClient(DEAD_URL) as c2:
        await c2.flush(timeout=0.1)


def test_process_crash_right_after_set_loses_nothing(tmp_path: Path) -> None:
    db = tmp_path / "crash.db"
    code = textwrap.dedent(
        f"""
        import asyncio, os, signal, sys
        from topgun.client import TopGunClient, SQLiteStorage
        async def main():
            c = TopGunClient({DEAD_URL!r}, storage=SQLiteStorage({str(db)!r}))
            await c.start()
            m = c.get_map("todos")
            for i in range(50):
                m.set(f"k{{i}}", {{"i": i}})
            c.get_or_map("tags").add("t", "x")
            print("done", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        asyncio.run(main())
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env=dict(os.environ))
    assert proc.returncode == -9, proc.stderr
    assert "done" in proc.stdout

    async def check() -> None:
        async with TopGunClient(DEAD_URL, storage=SQLiteStorage(db), connect=False) as c:
            m = c.get_map("todos")
            assert len(m) == 50 and m.get("k49") == {"i": 49}
            assert c.get_or_map("tags").get("t") == ["x"]
            assert c.pending_ops == 51

    asyncio.run(check())


async def test_held_back_remote_merges_never_overwrite_newer_local_writes(tmp_path: Path) -> None:
    from topgun.core.records import LWWRecord, Timestamp

    db = tmp_path / "d.db"
    c = TopGunClient(DEAD_URL, storage=SQLiteStorage(db), connect=False)
    await c.start()
    m = c.get_map("m")
    store = c.store
    store.merge_lww("m", [("k", LWWRecord("remote", Timestamp(1_000, 0, "srv"))),
                          ("r", LWWRecord("remote-only", Timestamp(1_000, 1, "srv")))])
    assert m.get("k") == "remote"
    probe = SQLiteStorage(db)
    probe.open()
    assert probe.load_lww("m") == []  # held back for a moment, not yet written
    m.set("k", "local")  # newer; committed on its own right away
    assert dict(probe.load_lww("m"))["k"].value == "local"
    await asyncio.sleep(store.defer_delay * 4)
    rows = dict(probe.load_lww("m"))
    assert rows["k"].value == "local" and rows["r"].value == "remote-only"
    store.merge_lww("m", [("z", LWWRecord(1, Timestamp(1_000, 2, "srv")))])
    await c.close()  # close writes what is still held back
    assert dict(probe.load_lww("m"))["z"].value == 1
    probe.close()


async def test_unencodable_values_are_refused_before_anything_changes(tmp_path: Path) -> None:
    async with TopGunClient(DEAD_URL, storage=SQLiteStorage(tmp_path / "u.db"), connect=False) as c:
        m = c.get_map("m")
        tags = c.get_or_map("t")
        for bad in (object(), 2**70, "\ud800", {"nested": {1, 2}}):
            with pytest.raises(TypeError):
                m.set("k", bad)
            with pytest.raises(TypeError):
                tags.add("k", bad)
            with c.batch():
                with pytest.raises(TypeError):
                    m.set("k", bad)
        assert m.get("k") is None and m.get_record("k") is None and tags.get("k") == []
        assert c.pending_ops == 0
        m.set("k", "fine")
        assert c.pending_ops == 1
    async with TopGunClient(DEAD_URL, storage=SQLiteStorage(tmp_path / "u.db"), connect=False) as c:
        assert c.get_map("m").get("k") == "fine" and c.pending_ops == 1
