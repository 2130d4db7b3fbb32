"""Smoke runs of ``topgun bench`` so the load harness never rots.

A few seconds each, real server subprocesses, real load workers; no timing
assertions, only that every scenario produced its figures with sane, non-zero
counts and that the acknowledged ops add up.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from topgun.bench.histogram import Histogram

pytestmark = pytest.mark.timeout(120)

_SHORT = ["--duration", "1", "--warmup", "0.3", "--quiet"]


def _bench(tmp_path: Path, *args: str) -> dict[str, Any]:
    out = tmp_path / "bench.json"
    md = tmp_path / "bench.md"
    proc = subprocess.run(
        [sys.executable, "-m", "topgun.bench", *args, *_SHORT, "--json", str(out), "--markdown", str(md)],
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    doc: dict[str, Any] = json.loads(out.read_text())
    assert doc["failures"] == []
    assert doc["machine"]["cores"] >= 1
    table = md.read_text().splitlines()
    assert len(table) == 2 + len(doc["results"])  # header, rule, one line per result
    for line, r in zip(table[2:], doc["results"], strict=True):
        assert line.startswith(f"| {r['scenario']} | {r['storage']} |")
    return doc


def _by(doc: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(r["scenario"], r["storage"]): r for r in doc["results"]}


def test_every_scenario_on_memory(tmp_path: Path) -> None:
    doc = _bench(
        tmp_path,
        "--storage",
        "memory://",
        "--no-baselines",
        "--subscribers",
        "20",
        "--rate",
        "50",
        "--conns",
        "60",
        "--records",
        "3000",
        "--memory-records",
        "5000",
        "--connections",
        "4",
    )
    rows = _by(doc)
    assert set(rows) == {
        (s, "memory")
        for s in ("fire-and-forget", "fire-and-wait", "fan-out", "connections", "sync", "memory")
    }
    ff = rows["fire-and-forget", "memory"]
    assert ff["ack"] == "APPLIED"
    assert ff["details"]["acked_ops"] > 0 and ff["details"]["failed"] == 0
    assert ff["details"]["acked_ops"] % 100 == 0  # whole batches of 100 are acknowledged
    assert ff["ours"] == pytest.approx(ff["details"]["acked_ops"] / ff["details"]["seconds"])
    assert ff["server_cpu_pct"] > 0 and ff["client_cpu_pct"] > 0

    fw = rows["fire-and-wait", "memory"]
    assert fw["details"]["acked_ops"] > 0 and fw["details"]["failed"] == 0
    lat = fw["latency_ms"]
    assert 0 < lat["p50"] <= lat["p95"] <= lat["p99"] <= lat["max"]
    assert fw["details"]["samples"] >= fw["details"]["acked_ops"] - 4  # one sample per ack in the window

    fo = rows["fan-out", "memory"]
    d = fo["details"]
    assert d["subscribers"] == 20 and d["writes"] > 0
    # Every write reaches every subscriber (a delivery in flight at the window's edge may fall either side).
    assert d["expected"] * 0.9 <= d["deliveries"] <= d["expected"] + 2 * 20
    assert 0 < fo["latency_ms"]["p50"] <= fo["latency_ms"]["p99"]
    assert d["reader"] == "epoll" and d["other_frames"] == 0 and d["closed_subscribers"] == 0
    # the machine's CPU over the window, and what of it went to other processes (clock ticks:
    # too coarse over one short second to compare with the server's and client's own)
    assert d["machine_cpu_pct"] > 0 and d["other_cpu_pct"] >= 0 and d["steal_pct"] >= 0

    co = rows["connections", "memory"]
    assert co["ours"] == 60 and co["details"]["errors"] == 0
    assert co["details"]["server_rss_mib"] > 0 and co["details"]["connect_seconds"] > 0

    sy = rows["sync", "memory"]["details"]
    assert sy["initial_records"] == 3000
    assert sy["changed"] == 30 and sy["catchup_changed_received"] == 30
    assert sy["catchup_records"] < sy["initial_records"]  # catch-up fetched only the changed leaves

    mem = rows["memory", "memory"]
    assert mem["details"]["records"] == 5000 and mem["ours"] > 0


def test_sqlite_persisted_writes_and_redis_baseline(tmp_path: Path) -> None:
    doc = _bench(tmp_path, "fire-and-forget", "fire-and-wait", "--storage", "sqlite://", "--connections", "4")
    rows = _by(doc)
    assert set(rows) == {("fire-and-forget", "sqlite"), ("fire-and-wait", "sqlite")}
    for r in rows.values():
        assert r["ack"] == "PERSISTED"
        assert r["details"]["acked_ops"] > 0 and r["details"]["failed"] == 0
        assert r["ours"] > 0
    fw = rows["fire-and-wait", "sqlite"]
    if fw["baseline_value"] is None:  # no Redis here: said plainly, our figure alone
        assert "not measured" in fw["baseline_note"]
    else:
        assert fw["baseline_value"] > 0 and fw["ratio"] == pytest.approx(fw["ours"] / fw["baseline_value"])


def test_histogram_percentiles_within_resolution() -> None:
    h = Histogram()
    for v in range(1, 100_001):
        h.record(v * 1000)
    for p in (50, 95, 99):
        exact = p * 1000 * 1000
        assert exact <= h.percentile(p) <= exact * 1.01
    assert h.percentile(100) == h.max == 100_000_000
    other = Histogram.from_json(h.to_json())
    other.merge(h)
    assert other.total == 200_000 and other.percentile(50) == h.percentile(50)


def test_unreachable_baseline_is_said_plainly(tmp_path: Path) -> None:
    # Port 1 on loopback: nothing listens there, so the Redis baseline cannot run.
    doc = _bench(
        tmp_path, "fire-and-wait", "--storage", "memory://", "--connections", "2", "--redis", "127.0.0.1:1"
    )
    (r,) = doc["results"]
    assert r["baseline_value"] is None and r["ratio"] is None and r["met"] is None
    note = r["baseline_note"]
    assert note.startswith("baseline not measured: ")
    assert "Redis on 127.0.0.1:1 not reachable" in note or "redis-benchmark is not installed" in note
    assert r["ours"] > 0 and r["details"]["acked_ops"] > 0


def test_a_server_that_dies_mid_run_fails_the_scenario() -> None:
    import os
    import signal
    import threading

    from topgun.bench.server import BenchError, ServerProcess, run_workers

    with ServerProcess("memory://") as srv:
        assert srv.proc is not None
        args = [
            {
                "url": srv.url,
                "token": srv.token(),
                "connections": 2,
                "ack": "APPLIED",
                "run": "t",
                "warmup": 0.2,
                "duration": 2.0,
            }
        ]
        killer = threading.Timer(1.0, os.kill, (srv.proc.pid, signal.SIGKILL))
        killer.start()
        try:
            with pytest.raises(BenchError, match="exited during the run"):
                run_workers("fire-and-wait", args, srv)
        finally:
            killer.cancel()


def test_medians_of_a_latency_target_pick_the_median_p99_run() -> None:
    from topgun.bench.report import markdown_table, medians
    from topgun.bench.suite import row

    def run(ours: float, p99: float, rank_by: str | None) -> dict[str, Any]:
        lat = {"p50": 1.0, "p95": 2.0, "p99": p99, "max": 99.0}
        return row("fan-out", "memory", metric="deliveries/s", ours=ours, latency_ms=lat, rank_by=rank_by)

    # the run with the median throughput has the highest p99
    runs = [run(99_990, 12.0, "p99"), run(100_000, 50.0, "p99"), run(99_980, 9.0, "p99")]
    (mid,) = medians(runs)
    assert mid["latency_ms"]["p99"] == 12.0
    assert mid["p99_runs"] == [12.0, 50.0, 9.0] and mid["runs"] == [99_990, 100_000, 99_980]
    assert "p99 per run 12.0 · 50.0 · 9.0" in markdown_table([mid])
    # throughput scenarios keep the median-throughput run
    (mid,) = medians([run(r["ours"], r["latency_ms"]["p99"], None) for r in runs])
    assert mid["ours"] == 99_990 and mid["latency_ms"]["p99"] == 12.0
    (mid,) = medians([run(1.0, 5.0, None), run(3.0, 1.0, None), run(2.0, 9.0, None)])
    assert mid["ours"] == 2.0 and mid["latency_ms"]["p99"] == 9.0
