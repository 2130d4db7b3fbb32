"""Live-query benchmarks (figures go to docs/benchmarks.md, "## Live queries").

Run: ``.venv/bin/pytest bench/test_bench_query.py -p no:cacheprovider -s``

* ``matching`` — the in-process :class:`QueryEngine`: 10,000 live queries on a 100,000-record
  map (5,000 ``where owner = u`` with ``sort price desc, limit 20``, 5,000
  ``between(price, x, x+100)``), random updates of existing records. ``matching only``
  (pytest-benchmark, compiled and pure twin): writes/s for finding the subscriptions a write
  matches (``QueryEngine.match`` + the members of the matching windows); ``matching
  throughput``: writes/s of the full delta (index upkeep + matching + window maintenance +
  QUERY_UPDATE objects built);
* ``snapshot-1m`` — ``QUERY_SUB`` with an indexed equality predicate (~100 rows) on a
  1,000,000-record map: engine-only time, and ``QUERY_SUB`` → ``QUERY_RESP`` over a real
  socket to an in-process server;
* ``end-to-end`` — 100 connections holding 10,000 queries on a ``topgun serve`` process, one
  writer connection at a fixed rate; write-to-subscriber latency percentiles.

Sizes can be scaled down with ``TOPGUN_BENCH_QUERY_SCALE`` (e.g. 0.1) for a quick run;
``TOPGUN_BENCH_QUERY_ROUNDS`` sets the matching-only rounds (default 7). End-to-end
knobs: ``TOPGUN_BENCH_QUERY_RATE`` (writes/s), ``TOPGUN_BENCH_QUERY_CONNS``,
``TOPGUN_BENCH_SERVER_PRELUDE`` (Python run in the server process before ``topgun serve``, e.g.
``import gc; gc.set_threshold(100_000, 50, 1000)``), ``TOPGUN_BENCH_CLIENT_NOGC=1`` (no garbage
collection in the load generator while measuring).
"""

from __future__ import annotations

import asyncio
import os
import random
import statistics
import time
from typing import Any

import msgpack
import pytest

from topgun.core.predicates import P
from topgun.server.query import QueryEngine

SCALE = float(os.environ.get("TOPGUN_BENCH_QUERY_SCALE", "1"))
RESULTS: dict[str, str] = {}


def _n(x: int) -> int:
    return max(1, int(x * SCALE))


class _Conn:
    def __init__(self, cid: int) -> None:
        self.connection_id = cid


def _matching_setup(
    rng: random.Random, index: Any = None
) -> tuple[dict[str, Any], QueryEngine, int, int]:
    n_records, owners, span = _n(100_000), max(1, _n(1000)), 100_000
    data = {
        f"k{i}": {"owner": f"u{rng.randrange(owners)}", "price": rng.randrange(span), "title": "t"}
        for i in range(n_records)
    }
    kw = {"subscription_index": index} if index is not None else {}
    engine = QueryEngine(lambda m: data if m == "items" else None, **kw)
    n_q = _n(5000)
    for i in range(n_q):
        engine.subscribe(_Conn(i % 100), f"e{i}", "items", {
            "where": {"owner": f"u{i % owners}"},
            "sort": [{"field": "price", "direction": "desc"}], "limit": 20,
        })
    for i in range(n_q):
        lo = rng.randrange(span)
        engine.subscribe(_Conn(i % 100), f"r{i}", "items", {"predicate": P.between("price", lo, lo + 100)})
    return data, engine, owners, span


def _writes(
    rng: random.Random, data: dict[str, Any], owners: int, span: int, n: int
) -> list[tuple[str, Any, Any]]:
    """``n`` random updates of existing records as (key, old value, new value), in order."""
    keys = list(data)
    shadow = dict(data)
    out = []
    for _ in range(n):
        k = rng.choice(keys)
        v = {"owner": f"u{rng.randrange(owners)}", "price": rng.randrange(span), "title": "u"}
        out.append((k, shadow[k], v))
        shadow[k] = v
    return out


@pytest.mark.parametrize("side", ["c", "py"])
def test_matching_only(benchmark: Any, side: str) -> None:
    """Matching alone, as :meth:`QueryEngine.on_change` does it before touching any window:
    the subscription-index lookup of the old and new value (``QueryEngine.match``) and the
    subscriptions whose query the new value satisfies. No window upkeep, no messages."""
    import importlib

    mod = "topgun._speedups._match" if side == "c" else "topgun.server.query._match_py"
    try:
        impl = importlib.import_module(mod)
    except ImportError:
        pytest.skip("compiled twin not built")
    rng = random.Random(7)
    data, engine, owners, span = _matching_setup(rng, impl.SubscriptionIndex)
    assert type(engine._by_map["items"]).__module__ == mod
    writes = _writes(rng, data, owners, span, _n(50_000))
    match = engine.match
    counts = [0, 0]

    def run() -> None:
        hits = affected = 0
        for _k, old, new in writes:
            found = match("items", old, new)
            subs = [s for win, hit in found.items() if hit for s in win.members.values()]
            hits += len(subs)
            affected += len(found)
        counts[:] = [hits, affected]

    benchmark.pedantic(run, rounds=int(os.environ.get("TOPGUN_BENCH_QUERY_ROUNDS", "7")), iterations=1,
                       warmup_rounds=1)
    st = benchmark.stats.stats
    label = "compiled" if side == "c" else "pure Python"
    RESULTS[f"matching only [{label}]: writes/s median (best)"] = (
        f"{len(writes) / st.median:,.0f} ({len(writes) / st.min:,.0f})"
    )
    RESULTS["matching only: matching queries per write"] = f"{counts[0] / len(writes):.1f}"
    RESULTS["matching only: affected windows per write (old or new value)"] = f"{counts[1] / len(writes):.1f}"
    assert counts[0] > 0


def test_matching_throughput() -> None:
    """The full delta: record-index upkeep, matching, window maintenance and the
    ``QUERY_UPDATE`` objects, through :meth:`QueryEngine.on_change`."""
    rng = random.Random(7)
    data, engine, owners, span = _matching_setup(rng)
    writes = _writes(rng, data, owners, span, _n(50_000))
    rates = []
    events = 0
    for chunk in range(5):
        part = writes[chunk::5]
        ev = 0
        t0 = time.perf_counter()
        for k, old, v in part:
            data[k] = v
            ev += len(engine.on_change("items", k, old, v, None))
        rates.append(len(part) / (time.perf_counter() - t0))
        events += ev
    RESULTS["full delta: writes/s median (best) (10k queries, 100k records)"] = (
        f"{statistics.median(rates):,.0f} ({max(rates):,.0f})"
    )
    RESULTS["full delta: QUERY_UPDATEs per write"] = f"{events / len(writes):.1f}"
    RESULTS[f"queries / windows: {len(engine):,} / {engine.windows():,}"] = ""
    assert events > 0


def test_snapshot_indexed_equality_1m() -> None:
    rng = random.Random(3)
    n = _n(1_000_000)
    groups = max(1, n // 100)
    data = {f"k{i}": {"g": rng.randrange(groups), "n": i} for i in range(n)}
    engine = QueryEngine(lambda m: data, declared_indexes={"big": ["g"]})
    t0 = time.perf_counter()
    engine.build_declared()
    build = time.perf_counter() - t0
    times = []
    rows = 0
    for i in range(200):
        t0 = time.perf_counter()
        snap = engine.subscribe(_Conn(1), f"q{i}", "big", {"where": {"g": i % groups}})
        times.append(time.perf_counter() - t0)
        rows += len(snap.results)
        engine.unsubscribe(1, f"q{i}")
    assert engine.stats["full_scans"] == 0
    times.sort()
    RESULTS["snapshot-1m: index build s (hash+sorted)"] = f"{build:.1f}"
    RESULTS["snapshot-1m: engine subscribe median ms"] = f"{statistics.median(times) * 1000:.3f}"
    RESULTS["snapshot-1m: engine subscribe p99 ms"] = f"{times[int(len(times) * 0.99) - 1] * 1000:.3f}"
    RESULTS["snapshot-1m: rows per snapshot"] = f"{rows / len(times):.0f}"


async def _server_with_records(n: int, groups: int, **cfg: Any) -> Any:
    from topgun.core.records import LWWRecord, Timestamp
    from topgun.server.app import TopGunServer
    from topgun.server.grid import Change, Origin

    server = TopGunServer(port=0, storage="memory://bench-q", **cfg)
    await server.start()
    grid = server.core.grid  # type: ignore[union-attr]
    now = time.time_ns() // 1_000_000
    rng = random.Random(5)
    step = 50_000
    for start in range(0, n, step):
        changes = [
            Change.put(
                "big", f"k{i}", LWWRecord({"g": rng.randrange(groups), "n": i}, Timestamp(now, i, "bench"))
            )
            for i in range(start, min(n, start + step))
        ]
        grid.apply(changes, Origin.client(0))
        await asyncio.sleep(0)
    return server


async def _ws(server: Any) -> Any:
    import websockets

    ws = await websockets.connect(server.url, max_size=None)
    await ws.send(msgpack.packb({"type": "AUTH", "token": "x"}))
    msg = msgpack.unpackb(await ws.recv())
    assert msg["type"] == "AUTH_ACK"
    return ws


async def test_snapshot_over_the_wire_1m() -> None:
    n = _n(1_000_000)
    groups = max(1, n // 100)
    server = await _server_with_records(n, groups, extra={"query_indexes": {"big": ["g"]}})
    try:
        ws = await _ws(server)
        times = []
        for i in range(100):
            t0 = time.perf_counter()
            await ws.send(msgpack.packb({"type": "QUERY_SUB", "payload": {
                "queryId": f"q{i}", "mapName": "big", "query": {"where": {"g": i}}}}))
            while True:
                msg = msgpack.unpackb(await ws.recv())
                if msg["type"] == "QUERY_RESP":
                    break
            times.append(time.perf_counter() - t0)
            assert len(msg["payload"]["results"]) > 0
            await ws.send(msgpack.packb({"type": "QUERY_UNSUB", "payload": {"queryId": f"q{i}"}}))
        await ws.close()
        times.sort()
        RESULTS["snapshot-1m: QUERY_SUB→QUERY_RESP over a socket median ms"] = (
            f"{statistics.median(times) * 1000:.2f}"
        )
        p99 = times[int(len(times) * 0.99) - 1]
        RESULTS["snapshot-1m: QUERY_SUB→QUERY_RESP p99 ms"] = f"{p99 * 1000:.2f}"
    finally:
        await server.stop()


async def _serve(tmp_path: Any, config: dict[str, Any]) -> tuple[Any, str]:
    import json
    import re
    import sys

    cfg = tmp_path / "topgun.json"
    cfg.write_text(json.dumps(config))
    pre = os.environ.get("TOPGUN_BENCH_SERVER_PRELUDE")
    launch = ["-m", "topgun"]
    if pre:
        launch = ["-c", f"{pre}; import sys; from topgun.cli import main; sys.exit(main(sys.argv[1:]))"]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, *launch, "serve", "--port", "0", "--storage", "memory://", "--no-auth",
        "--log-level", "WARNING", "--config", str(cfg),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
    m = re.search(r"(ws://\S+/ws)", line)
    assert m, line
    return proc, m.group(1)


async def test_end_to_end_latency(tmp_path: Any) -> None:
    """Server in its own process (``topgun serve``); subscribers and writer here, on picows
    connections that decode only the ``QUERY_UPDATE`` frames (the ``SERVER_EVENT`` pushes every
    interested connection also gets are recognised by a byte search and dropped)."""
    import psutil

    from topgun.bench.worker import Conn, connect_many

    n_conns = int(os.environ.get("TOPGUN_BENCH_QUERY_CONNS", str(_n(100))))
    n_queries = _n(10_000)
    rate = int(os.environ.get("TOPGUN_BENCH_QUERY_RATE", str(_n(1000))))
    seconds = 5.0
    owners = max(1, n_queries // 10)
    proc, url = await _serve(tmp_path, {"query_indexes": {"items": ["owner"]}})
    try:
        latencies: list[float] = []
        sent_at: dict[str, float] = {}
        resps = [0]
        subs: list[Conn] = await connect_many(url, "x", n_conns)

        def on_sub_message(data: bytes) -> None:
            if b"QUERY_UPDATE" in data:
                now = time.perf_counter()
                t = sent_at.get(msgpack.unpackb(data)["payload"]["key"])
                if t is not None:
                    latencies.append(now - t)
            elif b"QUERY_RESP" in data:
                resps[0] += 1

        per = n_queries // n_conns
        for c, conn in enumerate(subs):
            conn.on_message = on_sub_message
            for j in range(per):
                qi = c * per + j
                query = {"where": {"owner": f"u{qi % owners}"}}
                conn.send(msgpack.packb({"type": "QUERY_SUB", "payload": {
                    "queryId": f"q{qi}", "mapName": "items", "query": query}}))
        deadline = time.perf_counter() + 120
        while resps[0] < per * n_conns:
            assert time.perf_counter() < deadline, "QUERY_RESPs missing"
            await asyncio.sleep(0.05)
        (writer,) = await connect_many(url, "x", 1)
        writer.on_message = lambda data: None
        rng = random.Random(9)
        now_ms = time.time_ns() // 1_000_000
        total = int(rate * seconds)
        server_ps = psutil.Process(proc.pid)
        me = psutil.Process()
        server_ps.cpu_percent(None)
        me.cpu_percent(None)
        import gc

        if os.environ.get("TOPGUN_BENCH_CLIENT_NOGC"):
            gc.disable()
        t_start = time.perf_counter()
        for i in range(total):
            delay = t_start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            key = f"w{i}"
            ts = {"millis": float(now_ms), "counter": i, "nodeId": "bench-writer"}
            op = {"id": str(i), "mapName": "items", "key": key, "opType": "PUT",
                  "record": {"value": {"owner": f"u{rng.randrange(owners)}"}, "timestamp": ts}}
            sent_at[key] = time.perf_counter()
            writer.send(msgpack.packb({"type": "OP_BATCH", "payload": {"ops": [op]}}))
        sent_for = time.perf_counter() - t_start
        server_cpu, client_cpu = server_ps.cpu_percent(None), me.cpu_percent(None)
        await asyncio.sleep(2.0)
        gc.enable()
        for conn in [*subs, writer]:
            if conn.transport is not None:
                conn.transport.disconnect()
        latencies.sort()
        assert latencies, "no QUERY_UPDATE arrived"
        RESULTS["end-to-end: connections / queries"] = f"{n_conns} / {per * n_conns:,}"
        RESULTS["end-to-end: writes/s offered / sent"] = f"{rate} / {total / sent_for:,.0f}"
        RESULTS["end-to-end: QUERY_UPDATEs received / per write"] = (
            f"{len(latencies):,} / {len(latencies) / total:.1f}"
        )
        RESULTS["end-to-end: CPU % server process / load generator"] = f"{server_cpu:.0f} / {client_cpu:.0f}"
        RESULTS["end-to-end: write→subscriber p50 ms"] = f"{latencies[len(latencies) // 2] * 1000:.2f}"
        RESULTS["end-to-end: write→subscriber p99 ms"] = (
            f"{latencies[int(len(latencies) * 0.99) - 1] * 1000:.2f}"
        )
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 30)


@pytest.fixture(scope="module", autouse=True)
def _report() -> Any:
    yield
    print("\n\n## Live queries — figures")
    for k, v in RESULTS.items():
        print(f"| {k} | {v} |")
