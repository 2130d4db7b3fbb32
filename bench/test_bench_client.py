"""Client SDK benchmarks: local writes and reads, initial sync and catch-up from a real server.

Run: ``.venv/bin/pytest bench/test_bench_client.py -p no:cacheprovider -s``

* ``set`` — ``LWWMapHandle.set()`` with SQLite persistence (WAL, synchronous=NORMAL), one commit per write;
* ``set-batch`` — the same inside ``client.batch()`` (one commit for the whole block);
* ``get`` — ``LWWMapHandle.get()`` of existing keys;
* ``initial-sync`` — an empty client (SQLite storage) pulls a 100,000-record map from a
  ``topgun serve`` subprocess (SQLite storage) through the Merkle walk, until the roots agree;
* ``catch-up`` — the same client, offline while another client changes 1% of the keys, reconnects
  and catches up.

Figures are printed at the end and kept in ``RESULTS`` (ops/s or seconds).
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import time
from pathlib import Path

import pytest

from topgun.client import ConnectionSettings, MemoryStorage, SQLiteStorage, TopGunClient

DEAD_URL = "ws://127.0.0.1:9/ws"
SYNC_RECORDS = int(os.environ.get("TOPGUN_BENCH_SYNC_RECORDS", "100000"))
RESULTS: dict[str, float] = {}


def best_rate(fn, n: int, rounds: int = 5) -> float:
    best = 0.0
    for r in range(rounds):
        t0 = time.perf_counter()
        fn(r, n)
        best = max(best, n / (time.perf_counter() - t0))
    return best


@pytest.fixture
async def local_client(tmp_path: Path):
    c = TopGunClient(DEAD_URL, storage=SQLiteStorage(tmp_path / "bench.db"), connect=False,
                     max_pending_ops=10_000_000)
    await c.start()
    yield c
    await c.close()


async def test_local_set_one_commit_per_write(local_client: TopGunClient) -> None:
    m = local_client.get_map("bench")
    value = {"name": "user", "age": 42, "tags": ["a", "b"]}

    def run(r: int, n: int) -> None:
        for i in range(n):
            m.set(f"s{r}-{i}", value)

    rate = best_rate(run, 20_000)
    RESULTS["set (SQLite, one commit per write) ops/s"] = rate
    assert m.get("s0-1") == value


async def test_local_set_in_batch(local_client: TopGunClient) -> None:
    m = local_client.get_map("bench")
    value = {"name": "user", "age": 42, "tags": ["a", "b"]}

    def run(r: int, n: int) -> None:
        with local_client.batch():
            for i in range(n):
                m.set(f"b{r}-{i}", value)

    rate = best_rate(run, 100_000)
    RESULTS["set inside client.batch() ops/s"] = rate
    assert len(local_client.store.storage.load_lww("bench")) == 500_000


async def test_local_get(local_client: TopGunClient) -> None:
    m = local_client.get_map("bench")
    with local_client.batch():
        for i in range(10_000):
            m.set(f"g{i}", i)
    keys = [f"g{i % 10_000}" for i in range(1_000_000)]
    get = m.get

    def run(r: int, n: int) -> None:
        for k in keys:
            get(k)

    RESULTS["get ops/s"] = best_rate(run, len(keys), rounds=3)
    assert m.get("g9999") == 9999


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.timeout(900)
async def test_initial_sync_and_catch_up(tmp_path: Path) -> None:
    port = _free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "topgun", "serve", "--port", str(port), "--no-auth", "--log-level", "WARNING",
        "--storage", f"sqlite:///{tmp_path / 'server.db'}",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    assert proc.stdout is not None
    while b"listening on" not in (line := await asyncio.wait_for(proc.stdout.readline(), 30)):
        assert line, "server exited"
    url = f"ws://127.0.0.1:{port}/ws"
    settings = ConnectionSettings(backoff_base=0.05, backoff_max=0.5)
    try:
        async with TopGunClient(url, storage=MemoryStorage(), settings=settings,
                                max_pending_ops=10_000_000) as writer:
            wm = writer.get_map("big")
            with writer.batch():
                for i in range(SYNC_RECORDS):
                    wm.set(f"key-{i:06d}", {"i": i, "name": f"user {i}", "active": i % 2 == 0})
            await writer.flush(timeout=600)

            db = tmp_path / "reader.db"
            reader = TopGunClient(url, storage=SQLiteStorage(db), settings=settings)
            t0 = time.perf_counter()
            await reader.start()
            rm = reader.get_map("big")
            await reader.wait_synced(timeout=600)
            RESULTS[f"initial sync of {SYNC_RECORDS} records, s"] = time.perf_counter() - t0
            assert rm.root_hash == wm.root_hash and len(rm) == SYNC_RECORDS
            await reader.disconnect()

            changed = max(1, SYNC_RECORDS // 100)
            step = SYNC_RECORDS // changed
            with writer.batch():
                for j in range(changed):
                    wm.set(f"key-{j * step:06d}", {"changed": j})
            await writer.flush(timeout=120)

            t0 = time.perf_counter()
            reader.connect()
            await reader.wait_synced(timeout=120)
            RESULTS[f"catch-up of {changed} changed keys, s"] = time.perf_counter() - t0
            assert rm.root_hash == wm.root_hash and rm.get("key-000000") == {"changed": 0}
            await reader.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 20)
        except asyncio.TimeoutError:
            proc.kill()


def teardown_module() -> None:
    print("\nclient benchmarks:")
    for k, v in RESULTS.items():
        print(f"  {k:55s} {v:,.3f}" if v < 100 else f"  {k:55s} {v:,.0f}")
