"""The client against the real server (in-process and `topgun serve` subprocesses), SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from support.clients import until
from topgun.client import ChangeOrigin, ConnectionSettings, SQLiteStorage, TopGunClient
from topgun.client.storage import MemoryStorage

pytestmark = pytest.mark.timeout(180)

FAST = ConnectionSettings(backoff_base=0.05, backoff_max=0.5, open_timeout=2.0)


def lww_state(client: TopGunClient, name: str) -> dict[str, Any]:
    return dict(client.get_map(name).records())


def or_state(client: TopGunClient, name: str) -> dict[str, list[Any]]:
    m = client.get_or_map(name)
    return {k: sorted((r.tag, repr(r.value)) for r in m.get_records(k)) for k in m._map.record_keys()}


async def observer_view(url: str, lww: list[str], ors: list[str]) -> tuple[dict, dict]:
    """What the server holds, as seen by a brand-new empty client after a full sync."""
    async with TopGunClient(url, storage=MemoryStorage(), settings=FAST) as obs:
        for n in lww:
            obs.get_map(n)
        for n in ors:
            obs.get_or_map(n)
        await obs.wait_synced(30)
        return ({n: lww_state(obs, n) for n in lww}, {n: or_state(obs, n) for n in ors})


async def test_two_clients_see_each_others_writes(server, tmp_path: Path) -> None:
    url = server.url
    async with TopGunClient(url, storage=SQLiteStorage(tmp_path / "a.db"), settings=FAST) as a, \
            TopGunClient(url, storage=SQLiteStorage(tmp_path / "b.db"), settings=FAST) as b:
        ta, tb = a.get_map("todos"), b.get_map("todos")
        ga, gb = a.get_or_map("tags"), b.get_or_map("tags")
        remote_events: list[Any] = []
        tb.subscribe(lambda e: remote_events.append(e) if e.origin is ChangeOrigin.REMOTE else None)
        await a.wait_synced(10)
        await b.wait_synced(10)
        ta.set("t1", {"text": "milk", "done": False})
        ga.add("k", "red")
        await a.flush(10)
        assert a.pending_ops == 0
        await until(lambda: tb.get("t1") is not None and gb.get("k") == ["red"], what="b to see a's writes")
        assert tb.get("t1") == {"text": "milk", "done": False}
        assert any(e.key == "t1" and e.value == {"text": "milk", "done": False} for e in remote_events)
        tb.set("t1", {"text": "milk", "done": True})
        tb.remove("t2")
        gb.remove("k", "red")
        gb.add("k", "blue")
        await b.flush(10)
        await until(lambda: ta.get("t1") == {"text": "milk", "done": True} and ga.get("k") == ["blue"],
                    what="a to see b's writes")
        assert ta.root_hash == tb.root_hash and ga.root_hash == gb.root_hash
        assert a.rejected == [] and b.rejected == []


async def test_map_opened_while_connected_is_synced(server) -> None:
    async with TopGunClient(server.url, settings=FAST) as a:
        a.get_map("late").set("k", 1)
        await a.flush(10)
    async with TopGunClient(server.url, settings=FAST) as b:
        await b.wait_connected(10)
        late = b.get_map("late")  # opened after authentication: SYNC_INIT goes out at once
        await b.wait_synced(10)
        await until(lambda: late.get("k") == 1, what="the late map to sync")


async def test_offline_client_catches_up_exactly_via_merkle_sync(server, tmp_path: Path) -> None:
    db = tmp_path / "off.db"
    async with TopGunClient(server.url, storage=SQLiteStorage(db), settings=FAST) as a:
        m = a.get_map("items")
        with a.batch():
            for i in range(300):
                m.set(f"k{i}", i)
        await a.flush(20)
    # a is offline; b writes, overwrites and deletes.
    async with TopGunClient(server.url, settings=FAST) as b:
        mb = b.get_map("items")
        await b.wait_synced(20)
        assert len(mb) == 300
        for i in range(0, 300, 3):
            mb.remove(f"k{i}")
        for i in range(1, 300, 3):
            mb.set(f"k{i}", {"changed": i})
        mb.set("new", "x")
        await b.flush(20)
        expected = dict(mb.records())
    async with TopGunClient(server.url, storage=SQLiteStorage(db), settings=FAST) as a:
        m = a.get_map("items")
        await a.wait_synced(20)
        assert dict(m.records()) == expected
        assert m.get("k0") is None and m.get("k1") == {"changed": 1} and m.get("k2") == 2
        assert len(m) == 201
    # The catch-up was persisted locally.
    st = SQLiteStorage(db)
    st.open()
    assert dict(st.load_lww("items")) == expected
    st.close()


async def test_client_started_while_server_down_survives_its_own_restart(server_process, tmp_path) -> None:
    sp = server_process()
    db = tmp_path / "offline.db"
    code = textwrap.dedent(
        f"""
        import asyncio, os, signal
        from topgun.client import TopGunClient, SQLiteStorage
        async def main():
            c = TopGunClient({sp.url!r}, storage=SQLiteStorage({str(db)!r}))
            await c.start()
            m = c.get_map("todos")
            for i in range(200):
                m.set(f"k{{i}}", {{"i": i}})
            m.remove("k7")
            c.get_or_map("tags").add("t", "x")
            print("written", c.pending_ops, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        asyncio.run(main())
        """
    )
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", code, stdout=asyncio.subprocess.PIPE,
                                                env=dict(os.environ))
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == -9 and b"written 202" in out
    await sp.start()
    async with TopGunClient(sp.url, storage=SQLiteStorage(db), settings=FAST) as c:
        assert c.pending_ops == 202
        await c.flush(30)
        assert c.pending_ops == 0
    lww, ors = await observer_view(sp.url, ["todos"], ["tags"])
    todos = lww["todos"]
    assert len([k for k, r in todos.items() if r.value is not None]) == 199
    assert todos["k7"].value is None and todos["k3"].value == {"i": 3}
    assert [v for _, v in ors["tags"]["t"]] == ["'x'"]


async def test_server_restart_mid_stream_loses_no_acknowledged_op(server_process, tmp_path) -> None:
    sp = server_process()
    await sp.start()
    acked_max = 0
    async with TopGunClient(sp.url, storage=SQLiteStorage(tmp_path / "w.db"), settings=FAST) as c:
        m = c.get_map("stream")
        await c.wait_connected(10)
        for i in range(1500):
            m.set(f"k{i}", i)
            if i % 50 == 0:
                await asyncio.sleep(0.005)
            if i == 700:
                # Every op acknowledged so far must survive the crash.
                acked_max = i - c.pending_ops
                await sp.kill()
            if i == 1000:
                await sp.start()
        await c.flush(60)
        assert c.pending_ops == 0
    lww, _ = await observer_view(sp.url, ["stream"], [])
    assert acked_max > 0  # the crash hit ops the client had already dropped from its op log
    assert sorted(lww["stream"]) == sorted(f"k{i}" for i in range(1500))
    assert all(lww["stream"][f"k{i}"].value == i for i in range(1500))


async def test_rejected_op_is_reported_and_leaves_the_op_log(server) -> None:
    async with TopGunClient(server.url, settings=FAST) as a, TopGunClient(server.url, settings=FAST) as b:
        a.get_map("kind").set("k", 1)
        await a.flush(10)
        seen: list[Any] = []
        b.on_rejected(seen.append)
        b.get_or_map("kind").add("k", "x")  # an OR op on an LWW map: refused with 409
        await b.flush(10)
        assert b.pending_ops == 0
        assert [(e.code, e.op_id) for e in b.rejected] == [(409, "1")]
        assert seen == b.rejected


async def test_gc_prune_and_sync_reset_against_the_server(server_storage_url: str, tmp_path: Path) -> None:
    from topgun.server.app import TopGunServer

    srv = TopGunServer(port=0, storage=server_storage_url, tombstone_retention=0.4, gc_interval=0.2)
    await srv.start()
    try:
        stale_db = tmp_path / "stale.db"
        async with TopGunClient(srv.url, settings=FAST) as a:
            ma = a.get_map("gc")
            ma.set("k1", "live")
            ma.set("k2", "keep")
            await a.flush(10)
            # A client that synced now and then goes offline with k1 alive.
            async with TopGunClient(srv.url, storage=SQLiteStorage(stale_db), settings=FAST) as stale:
                stale.get_map("gc")
                await stale.wait_synced(10)
                assert stale.get_map("gc").get("k1") == "live"
            ma.remove("k1")
            await a.flush(10)
            assert ma.get_record("k1").value is None
            # After the retention the server prunes the tombstone and tells every open connection.
            await until(lambda: ma.get_record("k1") is None, timeout=10, what="GC_PRUNE to reach a")
            assert ma.get("k2") == "keep"
        # The stale client's SYNC_INIT is older than the prune horizon: SYNC_RESET_REQUIRED, then a
        # clean resync, so the deleted key does not survive on it.
        async with TopGunClient(srv.url, storage=SQLiteStorage(stale_db), settings=FAST) as stale:
            m = stale.get_map("gc")
            await until(lambda: m.get("k1") is None and m.get("k2") == "keep", timeout=10,
                        what="the stale client to reset")
            await stale.wait_synced(10)
            assert dict(m.records()) == {"k2": m.get_record("k2")}
    finally:
        await srv.stop()


async def test_or_map_full_resync_after_tombstone_gc(server_storage_url: str, tmp_path: Path) -> None:
    from topgun.server.app import TopGunServer

    srv = TopGunServer(port=0, storage=server_storage_url, tombstone_retention=0.4, gc_interval=0.2)
    await srv.start()
    try:
        stale_db = tmp_path / "stale-or.db"
        async with TopGunClient(srv.url, settings=FAST) as a:
            ta = a.get_or_map("tags")
            ta.add("k", "gone")
            ta.add("k", "stays")
            await a.flush(10)
            async with TopGunClient(srv.url, storage=SQLiteStorage(stale_db), settings=FAST) as stale:
                tags = stale.get_or_map("tags")
                await stale.wait_synced(10)
                await until(lambda: sorted(tags.get("k")) == ["gone", "stays"], what="stale to sync")
            ta.remove("k", "gone")
            await a.flush(10)
            await until(lambda: ta._map.tombstone_tags() == [], timeout=10,
                        what="GC_PRUNE of the OR tombstone")
        async with TopGunClient(srv.url, storage=SQLiteStorage(stale_db), settings=FAST) as stale:
            tags = stale.get_or_map("tags")
            await until(lambda: tags.get("k") == ["stays"], timeout=10, what="the full resync")
            await stale.wait_synced(10)
        # The removed value did not come back to the server through the stale client.
        _, ors = await observer_view(srv.url, [], ["tags"])
        assert [v for _, v in ors["tags"]["k"]] == ["'stays'"]
    finally:
        await srv.stop()
