"""Baselines measured in the same run: ``redis-benchmark`` SET and an asyncpg COPY + upsert."""

from __future__ import annotations

import asyncio
import csv
import io
import shutil
import socket
import subprocess
import time
from typing import Any

__all__ = ["pg_copy_upsert", "redis_reachable", "redis_set"]


def redis_reachable(host: str = "127.0.0.1", port: int = 6379) -> str | None:
    """``None`` when Redis answers on ``host:port`` and ``redis-benchmark`` exists, else the reason."""
    if shutil.which("redis-benchmark") is None:
        return "redis-benchmark is not installed"
    try:
        with socket.create_connection((host, port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            if not s.recv(16).startswith(b"+PONG"):
                return f"Redis on {host}:{port} did not answer PING"
    except OSError as exc:
        return f"Redis on {host}:{port} not reachable ({exc.strerror or exc})"
    return None


def redis_set(
    pipeline: int, clients: int, requests: int, host: str = "127.0.0.1", port: int = 6379
) -> dict[str, Any]:
    """Run ``redis-benchmark -t set -P pipeline -c clients -n requests``; ops/s and latency (ms)."""
    cmd = [
        "redis-benchmark",
        "-h",
        host,
        "-p",
        str(port),
        "-t",
        "set",
        "-P",
        str(pipeline),
        "-c",
        str(clients),
        "-n",
        str(requests),
        "--csv",
    ]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=True).stdout
    elapsed = time.perf_counter() - t0
    rows = list(csv.DictReader(io.StringIO(out)))
    row = next(r for r in rows if r.get("test", "").upper().startswith("SET"))
    result: dict[str, Any] = {"ops_per_s": float(row["rps"]), "command": " ".join(cmd), "seconds": elapsed}
    for src, dst in (
        ("p50_latency_ms", "p50"),
        ("p95_latency_ms", "p95"),
        ("p99_latency_ms", "p99"),
        ("max_latency_ms", "max"),
    ):
        if src in row:
            result.setdefault("latency_ms", {})[dst] = float(row[src])
    return result


async def _pg(dsn: str, rows: int, chunk: int) -> dict[str, Any]:
    # Rows update a fixed keyspace (like the fire-and-forget load); a chunk never holds a key twice.
    keyspace = max(chunk, 10_000)
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS topgun_bench_baseline (map TEXT NOT NULL, key TEXT NOT NULL,"
            " value BYTEA,"
            " millis BIGINT NOT NULL, counter INTEGER NOT NULL, node_id TEXT NOT NULL, ttl_ms BIGINT,"
            " PRIMARY KEY (map, key))"
        )
        await conn.execute("TRUNCATE topgun_bench_baseline")
        value = b"\x82\xa1n\x01\xa1v\xd9\x28" + b"x" * 40
        millis = time.time_ns() // 1_000_000
        t0 = time.perf_counter()
        done = 0
        while done < rows:
            n = min(chunk, rows - done)
            records = [
                ("bench", f"k{(done + i) % keyspace:07d}", value, millis, done + i, "baseline", None)
                for i in range(n)
            ]
            async with conn.transaction():
                await conn.execute(
                    "CREATE TEMP TABLE IF NOT EXISTS topgun_bench_stage (map TEXT, key TEXT, value BYTEA,"
                    " millis BIGINT, counter INTEGER, node_id TEXT, ttl_ms BIGINT) ON COMMIT DELETE ROWS"
                )
                await conn.copy_records_to_table("topgun_bench_stage", records=records)
                await conn.execute(
                    "INSERT INTO topgun_bench_baseline SELECT * FROM topgun_bench_stage"
                    " ON CONFLICT (map, key) DO UPDATE SET value = EXCLUDED.value, millis = EXCLUDED.millis,"
                    " counter = EXCLUDED.counter, node_id = EXCLUDED.node_id, ttl_ms = EXCLUDED.ttl_ms"
                )
            done += n
        elapsed = time.perf_counter() - t0
        await conn.execute("DROP TABLE topgun_bench_baseline")
    finally:
        await conn.close()
    return {"rows_per_s": rows / elapsed, "rows": rows, "seconds": elapsed, "chunk": chunk}


def pg_copy_upsert(dsn: str, rows: int, chunk: int = 10_000) -> dict[str, Any]:
    """COPY ``rows`` rows into a temp table and upsert them into a table, ``chunk`` rows per transaction.

    Includes building the rows in Python, as the server has to. Returns rows/s.
    """
    return asyncio.run(_pg(dsn, rows, chunk))


async def _pg_reachable(dsn: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(dsn, timeout=3)
    await conn.close()


def pg_reachable(dsn: str) -> str | None:
    """``None`` when PostgreSQL at ``dsn`` accepts a connection, else the reason."""
    try:
        asyncio.run(_pg_reachable(dsn))
    except Exception as exc:
        return f"PostgreSQL not reachable ({type(exc).__name__}: {exc})"
    return None


async def _drop_schema(dsn: str, schema: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(dsn, timeout=5)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


def pg_drop_schema(dsn: str, schema: str) -> None:
    """Drop ``schema`` so each run starts from empty tables."""
    asyncio.run(_drop_schema(dsn, schema))
