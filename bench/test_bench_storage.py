"""Storage write throughput: ``Storage.write()`` of 10k-row batches, and a COPY baseline.

Run: ``.venv/bin/pytest bench/test_bench_storage.py -p no:cacheprovider --benchmark-columns=min,median,max``

Each round writes one 10,000-row LWW batch in one transaction:

* ``insert`` — 10k keys not yet stored;
* ``update`` — the same 10k keys again, with new values (the ON CONFLICT path).

``pg-copy-baseline`` is the hand-written asyncpg alternative measured in the
same run on the same rows: ``COPY`` into a temporary table, then one
``INSERT ... SELECT ... ON CONFLICT DO UPDATE``. ``record`` is the cost of
filling the ``WriteBatch`` itself (MsgPack-encoding the values), which the
server pays on the event loop.

The rows/s figure of each case is in ``extra_info`` and printed at the end.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from topgun.core.records import LWWRecord, Timestamp
from topgun.server.storage import Storage, WriteBatch, open_storage

ROWS = 10_000
ROUNDS = int(os.environ.get("TOPGUN_BENCH_ROUNDS", "7"))
PG_URL = os.environ.get("TOPGUN_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")

RESULTS: dict[str, float] = {}


def make_batch(round_no: int, fresh_keys: bool) -> WriteBatch:
    b = WriteBatch()
    prefix = f"r{round_no}-" if fresh_keys else ""
    for i in range(ROWS):
        b.lww_put(
            "bench",
            f"{prefix}key-{i:06d}",
            LWWRecord(
                {"name": f"user {i}", "age": i % 90, "tags": ["a", "b"], "score": i * 0.5, "round": round_no},
                Timestamp(1_700_000_000_000 + round_no, i, "node-bench"),
            ),
        )
    return b


def pg_reachable() -> str | None:
    try:
        import asyncpg
    except ImportError:
        return "asyncpg not installed"

    async def probe() -> None:
        conn = await asyncpg.connect(PG_URL, timeout=5)
        await conn.close()

    try:
        asyncio.run(probe())
    except Exception as exc:
        return f"PostgreSQL unreachable: {exc}"
    return None


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    lp = asyncio.new_event_loop()
    yield lp
    lp.close()


def pg_schema_url(loop: asyncio.AbstractEventLoop) -> tuple[str, Callable[[], None]]:
    reason = pg_reachable()
    if reason:
        pytest.skip(reason)
    schema = "tg_bench_" + uuid.uuid4().hex[:12]

    def drop() -> None:
        import asyncpg

        async def go() -> None:
            conn = await asyncpg.connect(PG_URL)
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            await conn.close()

        loop.run_until_complete(go())

    sep = "&" if "?" in PG_URL else "?"
    return f"{PG_URL}{sep}schema={schema}", drop


def run_rounds(
    benchmark: Any,
    loop: asyncio.AbstractEventLoop,
    name: str,
    fresh_keys: bool,
    write: Callable[[WriteBatch], Any],
) -> None:
    counter = iter(range(1, 10_000))

    def setup() -> tuple[tuple[WriteBatch], dict[str, Any]]:
        return (make_batch(next(counter), fresh_keys),), {}

    def target(batch: WriteBatch) -> None:
        loop.run_until_complete(write(batch))

    if not fresh_keys:
        loop.run_until_complete(write(make_batch(0, False)))  # the keys exist before the first round
    benchmark.pedantic(target, setup=setup, rounds=ROUNDS, iterations=1, warmup_rounds=1)
    rate = ROWS / benchmark.stats.stats.median
    benchmark.extra_info["rows_per_s"] = round(rate)
    RESULTS[name] = rate


@pytest.mark.parametrize("mode", ["insert", "update"])
def test_sqlite_write(benchmark: Any, loop: asyncio.AbstractEventLoop, tmp_path: Path, mode: str) -> None:
    store: Storage = open_storage(f"sqlite:///{tmp_path}/bench.db")
    loop.run_until_complete(store.open())
    try:
        run_rounds(benchmark, loop, f"sqlite write() {mode}", mode == "insert", store.write)
    finally:
        loop.run_until_complete(store.close())


@pytest.mark.parametrize("mode", ["insert", "update"])
def test_postgres_write(benchmark: Any, loop: asyncio.AbstractEventLoop, mode: str) -> None:
    url, drop = pg_schema_url(loop)
    store: Storage = open_storage(url)
    loop.run_until_complete(store.open())
    try:
        run_rounds(benchmark, loop, f"postgresql write() {mode}", mode == "insert", store.write)
    finally:
        loop.run_until_complete(store.close())
        drop()


@pytest.mark.parametrize("mode", ["insert", "update"])
def test_postgres_copy_baseline(benchmark: Any, loop: asyncio.AbstractEventLoop, mode: str) -> None:
    import asyncpg

    url, drop = pg_schema_url(loop)
    store: Any = open_storage(url)
    loop.run_until_complete(store.open())  # creates the same tables in the same kind of schema
    schema = store.schema
    loop.run_until_complete(store.close())
    conn = loop.run_until_complete(asyncpg.connect(PG_URL))
    columns = ["map", "key", "value", "millis", "counter", "node_id", "ttl_ms"]

    async def copy_upsert(batch: WriteBatch) -> None:
        ups, _ = batch.lww_split()
        rows = [(m, k, *row) for m, k, row in ups]
        async with conn.transaction():
            await conn.execute(
                f'CREATE TEMP TABLE lww_in (LIKE "{schema}".lww_records INCLUDING DEFAULTS) ON COMMIT DROP'
            )
            await conn.copy_records_to_table("lww_in", records=rows, columns=columns)
            await conn.execute(
                f'INSERT INTO "{schema}".lww_records SELECT * FROM lww_in ON CONFLICT (map, key) DO UPDATE'
                " SET value = EXCLUDED.value, millis = EXCLUDED.millis, counter = EXCLUDED.counter,"
                " node_id = EXCLUDED.node_id, ttl_ms = EXCLUDED.ttl_ms"
            )

    try:
        run_rounds(benchmark, loop, f"postgresql COPY baseline {mode}", mode == "insert", copy_upsert)
    finally:
        loop.run_until_complete(conn.close())
        drop()


@pytest.mark.parametrize("mode", ["insert", "update"])
def test_postgres_write_vs_copy_interleaved(loop: asyncio.AbstractEventLoop, mode: str) -> None:
    """write() and the COPY baseline, alternating round by round, so load drift hits both alike."""
    import asyncpg

    url_a, drop_a = pg_schema_url(loop)
    url_b, drop_b = pg_schema_url(loop)
    ours: Any = open_storage(url_a)
    setup_b: Any = open_storage(url_b)
    loop.run_until_complete(ours.open())
    loop.run_until_complete(setup_b.open())
    schema_b = setup_b.schema
    loop.run_until_complete(setup_b.close())
    conn = loop.run_until_complete(asyncpg.connect(PG_URL))
    columns = ["map", "key", "value", "millis", "counter", "node_id", "ttl_ms"]

    async def copy_upsert(batch: WriteBatch) -> None:
        ups, _ = batch.lww_split()
        rows = [(m, k, *row) for m, k, row in ups]
        async with conn.transaction():
            await conn.execute(
                f'CREATE TEMP TABLE lww_in (LIKE "{schema_b}".lww_records INCLUDING DEFAULTS) ON COMMIT DROP'
            )
            await conn.copy_records_to_table("lww_in", records=rows, columns=columns)
            await conn.execute(
                f'INSERT INTO "{schema_b}".lww_records SELECT * FROM lww_in ON CONFLICT (map, key) DO UPDATE'
                " SET value = EXCLUDED.value, millis = EXCLUDED.millis, counter = EXCLUDED.counter,"
                " node_id = EXCLUDED.node_id, ttl_ms = EXCLUDED.ttl_ms"
            )

    fresh = mode == "insert"
    times: dict[str, list[float]] = {"write()": [], "COPY baseline": []}
    try:
        if not fresh:
            loop.run_until_complete(ours.write(make_batch(0, False)))
            loop.run_until_complete(copy_upsert(make_batch(0, False)))
        for r in range(1, ROUNDS + 2):
            batch = make_batch(r, fresh)
            order = [("write()", ours.write), ("COPY baseline", copy_upsert)]
            if r % 2:
                order.reverse()
            for name, fn in order:
                t0 = time.perf_counter()
                loop.run_until_complete(fn(batch))
                if r > 1:  # round 1 is warm-up
                    times[name].append(time.perf_counter() - t0)
    finally:
        loop.run_until_complete(conn.close())
        loop.run_until_complete(ours.close())
        drop_a()
        drop_b()
    for name, ts in times.items():
        RESULTS[f"postgresql {name} {mode} (interleaved)"] = ROWS / statistics.median(ts)


def test_record_into_batch(benchmark: Any) -> None:
    rec = LWWRecord({"name": "user", "age": 3, "tags": ["a", "b"], "score": 1.5}, Timestamp(1, 2, "n"))
    keys = [f"key-{i:06d}" for i in range(ROWS)]

    def fill() -> WriteBatch:
        b = WriteBatch()
        put = b.lww_put
        for k in keys:
            put("bench", k, rec)
        return b

    benchmark.pedantic(fill, rounds=ROUNDS, iterations=1, warmup_rounds=1)
    rate = ROWS / benchmark.stats.stats.median
    benchmark.extra_info["rows_per_s"] = round(rate)
    RESULTS["WriteBatch.lww_put (record)"] = rate


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_group_commit_throughput(loop: asyncio.AbstractEventLoop, tmp_path: Path, kind: str) -> None:
    """PRODUCERS tasks each write one key and wait for its commit, over and over (PERSISTED acks)."""
    from topgun.server.persistence import GroupCommitter

    producers, per_producer = 200, 100
    drop: Callable[[], None] = lambda: None  # noqa: E731
    if kind == "sqlite":
        url = f"sqlite:///{tmp_path}/gc.db"
    else:
        url, drop = pg_schema_url(loop)
    store: Storage = open_storage(url)

    async def run() -> tuple[float, GroupCommitter]:
        await store.open()
        committer = GroupCommitter(store)

        async def producer(p: int) -> None:
            for i in range(per_producer):
                rec = LWWRecord({"p": p, "i": i}, Timestamp(1_700_000_000_000, i, "node-bench"))
                await committer.submit(lambda b, k=f"p{p}-{i}", r=rec: b.lww_put("gc", k, r))

        t0 = time.perf_counter()
        await asyncio.gather(*(producer(p) for p in range(producers)))
        elapsed = time.perf_counter() - t0
        await committer.close()
        await store.close()
        return elapsed, committer

    try:
        elapsed, committer = loop.run_until_complete(run())
    finally:
        drop()
    ops = producers * per_producer
    st = committer.stats
    RESULTS[f"{kind} group commit, {producers} waiting producers (ops/s)"] = ops / elapsed
    print(
        f"\n{kind}: {ops} acknowledged ops in {elapsed:.2f} s, {st.commits} transactions,"
        f" {st.rows / st.commits:.0f} rows/transaction,"
        f" commit p50 <= {st.latency.quantile(0.5) * 1000:.1f} ms,"
        f" p99 <= {st.latency.quantile(0.99) * 1000:.1f} ms"
    )
    assert st.rows == ops


def teardown_module() -> None:
    if RESULTS:
        print("\nstorage rows/s (median round of 10k rows):")
        for name, rate in RESULTS.items():
            print(f"  {name:40s} {rate:12,.0f}")
