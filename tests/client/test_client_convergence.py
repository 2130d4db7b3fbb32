"""Convergence property: random concurrent writes by several clients going offline and online at random.

Every example runs against a real in-process server over SQLite or PostgreSQL and ends with every
client's replicas equal to what a brand-new client pulls from the server.
"""

from __future__ import annotations

import asyncio
import tempfile
import uuid
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from topgun.client import ConnectionSettings, MemoryStorage, SQLiteStorage, TopGunClient

FAST = ConnectionSettings(backoff_base=0.02, backoff_max=0.2, open_timeout=2.0)
N_CLIENTS = 3
KEYS = [f"k{i}" for i in range(5)]

action = st.one_of(
    st.tuples(st.just("set"), st.integers(0, N_CLIENTS - 1), st.sampled_from(KEYS), st.integers(0, 3)),
    st.tuples(st.just("remove"), st.integers(0, N_CLIENTS - 1), st.sampled_from(KEYS)),
    st.tuples(st.just("or_add"), st.integers(0, N_CLIENTS - 1), st.sampled_from(KEYS), st.integers(0, 2)),
    st.tuples(st.just("or_remove"), st.integers(0, N_CLIENTS - 1), st.sampled_from(KEYS), st.integers(0, 2)),
    st.tuples(st.just("toggle"), st.integers(0, N_CLIENTS - 1)),
    st.tuples(st.just("wait"), st.sampled_from([0.0, 0.005, 0.02])),
    st.tuples(st.just("restart"), st.just(0)),  # client 0 (SQLite) closes and starts again
)


def or_view(client: TopGunClient, name: str) -> dict[str, list[tuple[str, Any]]]:
    m = client.get_or_map(name)
    out = {}
    for k in KEYS:
        recs = sorted((r.tag, r.value) for r in m.get_records(k))
        if recs:
            out[k] = recs
    return out


async def scenario(storage_url: str, actions: list[tuple[Any, ...]], tmp: Path) -> None:
    from topgun.server.app import TopGunServer

    lname, oname = f"lww-{uuid.uuid4().hex[:8]}", f"or-{uuid.uuid4().hex[:8]}"
    srv = TopGunServer(port=0, storage=storage_url)
    await srv.start()
    clients: list[TopGunClient] = []
    try:
        for i in range(N_CLIENTS):
            storage = SQLiteStorage(tmp / f"c{i}-{lname}.db") if i == 0 else MemoryStorage()
            c = TopGunClient(srv.url, storage=storage, settings=FAST)
            await c.start()
            c.get_map(lname)
            c.get_or_map(oname)
            clients.append(c)
        online = [True] * N_CLIENTS
        for act in actions:
            kind = act[0]
            if kind == "wait":
                await asyncio.sleep(act[1])
                continue
            c = clients[act[1]]
            if kind == "set":
                c.get_map(lname).set(act[2], {"v": act[3], "by": act[1]})
            elif kind == "remove":
                c.get_map(lname).remove(act[2])
            elif kind == "or_add":
                c.get_or_map(oname).add(act[2], act[3])
            elif kind == "or_remove":
                c.get_or_map(oname).remove(act[2], act[3])
            elif kind == "restart":
                await c.close()
                c = TopGunClient(srv.url, storage=SQLiteStorage(tmp / f"c0-{lname}.db"), settings=FAST,
                                 connect=online[0])
                await c.start()
                clients[0] = c
            elif kind == "toggle":
                if online[act[1]]:
                    await c.disconnect()
                else:
                    c.connect()
                online[act[1]] = not online[act[1]]
            await asyncio.sleep(0)
        # Everyone online, every write delivered, then a fresh session each so every replica re-syncs.
        for i, c in enumerate(clients):
            if not online[i]:
                c.connect()
        for c in clients:
            await c.flush(30)
        for c in clients:
            await c.disconnect()
            c.connect()
        for c in clients:
            await c.wait_synced(30)
        async with TopGunClient(srv.url, storage=MemoryStorage(), settings=FAST) as obs:
            obs.get_map(lname)
            obs.get_or_map(oname)
            await obs.wait_synced(30)
            want_lww = dict(obs.get_map(lname).records())
            want_or = or_view(obs, oname)
            want_vis = {k: sorted(map(repr, obs.get_or_map(oname).get(k))) for k in KEYS}
        for i, c in enumerate(clients):
            assert dict(c.get_map(lname).records()) == want_lww, f"client {i} LWW differs"
            assert or_view(c, oname) == want_or, f"client {i} OR differs"
            assert {k: sorted(map(repr, c.get_or_map(oname).get(k))) for k in KEYS} == want_vis
            assert c.rejected == []
        # Every write that was made is reflected: each key's LWW winner is the newest write to it.
        newest: dict[str, Any] = {}
        for c in clients:
            for k, r in c.get_map(lname).records():
                if k not in newest or r.timestamp > newest[k].timestamp:
                    newest[k] = r
        assert newest == want_lww
    finally:
        for c in clients:
            await c.close()
        await srv.stop()


@pytest.mark.timeout(600)
@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                               HealthCheck.too_slow])
@given(actions=st.lists(action, min_size=5, max_size=40))
def test_random_schedules_converge(server_storage_url: str, actions: list[tuple[Any, ...]]) -> None:
    with tempfile.TemporaryDirectory() as d:
        asyncio.run(asyncio.wait_for(scenario(server_storage_url, actions, Path(d)), 120))
