"""The ``topgun bench`` scenarios: each starts a server (or targets ``--url``), runs load and baselines.

Every scenario returns one :class:`dict` row (see :func:`row`) with our
figure, the baseline's, their ratio, the target and whether it was met, plus
latency percentiles and the CPU used by the server and by the load client over
the measured window (so a reader can tell which side was the bottleneck).
"""

from __future__ import annotations

import os
import secrets
import tempfile
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

from topgun.bench import baselines
from topgun.bench.histogram import Histogram
from topgun.bench.server import ServerProcess, run_workers

__all__ = ["SCENARIOS", "Options", "Scenario", "StorageKind", "row", "run_scenario", "storage_kind"]

MiB = 1024 * 1024


class Scenario(str, Enum):
    """The scenarios of ``topgun bench``."""

    FIRE_AND_FORGET = "fire-and-forget"
    FIRE_AND_WAIT = "fire-and-wait"
    FAN_OUT = "fan-out"
    CONNECTIONS = "connections"
    SYNC = "sync"
    MEMORY = "memory"


SCENARIOS = [s.value for s in Scenario]


class StorageKind(str, Enum):
    """Storage kinds by URL scheme."""

    MEMORY = "memory"
    SQLITE = "sqlite"
    POSTGRES = "postgresql"


def storage_kind(url: str) -> StorageKind:
    """The kind of a storage URL."""
    scheme = url.split(":", 1)[0].split("+", 1)[0]
    if scheme == "memory":
        return StorageKind.MEMORY
    if scheme == "sqlite":
        return StorageKind.SQLITE
    if scheme in ("postgresql", "postgres"):
        return StorageKind.POSTGRES
    raise ValueError(f"unsupported storage URL {url!r}")


@dataclass
class Options:
    """Settings shared by every scenario (command-line flags)."""

    duration: float = 5.0
    warmup: float = 1.0
    connections: int | None = None  # None: the scenario's default
    batch: int = 100
    window: int = 8
    ack: str | None = None  # None: APPLIED on memory, PERSISTED on durable storage
    subscribers: int = 1000
    writers: int = 1
    rate: int = 100
    conns: int = 10_000
    records: int = 100_000
    memory_records: int = 1_000_000
    procs: int = 1
    url: str | None = None
    jwt_secret: str | None = None
    baselines: bool = True
    redis_host: str = "127.0.0.1"
    redis_port: int = 6379
    progress: Callable[[str, float, float], None] | None = None


def row(scenario: str, storage: str, **fields: Any) -> dict[str, Any]:
    """A result row with every key present (``None`` where it does not apply)."""
    r: dict[str, Any] = {
        "scenario": scenario,
        "storage": storage,
        "ack": None,
        "metric": None,
        "ours": None,
        "baseline": None,
        "baseline_value": None,
        "baseline_note": None,
        "ratio": None,
        "target": None,
        "met": None,
        "latency_ms": None,
        "baseline_latency_ms": None,
        "server_cpu_pct": None,
        "client_cpu_pct": None,
        "details": {},
        "ratio_target": None,
        "p99_target_ms": None,
    }
    r.update(fields)
    if r["ours"] is not None and r["baseline_value"]:
        r["ratio"] = r["ours"] / r["baseline_value"]
    return r


def _pct(cpu: float | None, seconds: float | None) -> float | None:
    if cpu is None or not seconds:
        return None
    return 100.0 * cpu / seconds


def _prepare_storage(url: str, opts: Options) -> tuple[str, Callable[[], None]]:
    """A fresh instance of ``url`` for one run (temp SQLite file, empty PostgreSQL schema), its cleanup."""
    kind = storage_kind(url)
    if opts.url:  # an external server keeps its own storage
        return url, lambda: None
    if kind is StorageKind.SQLITE and url in ("sqlite://", "sqlite:///", "sqlite:///:tmp:"):
        d = tempfile.mkdtemp(prefix="topgun-bench-")
        path = os.path.join(d, "bench.db")

        def cleanup() -> None:
            for suffix in ("", "-wal", "-shm"):
                try:
                    os.unlink(path + suffix)
                except FileNotFoundError:
                    pass
            os.rmdir(d)

        return f"sqlite:///{path}", cleanup
    if kind is StorageKind.POSTGRES:
        parts = urllib.parse.urlsplit(url)
        q = dict(urllib.parse.parse_qsl(parts.query))
        schema = q.setdefault("schema", "topgun_bench")
        dsn = urllib.parse.urlunsplit(parts._replace(scheme="postgresql", query=""))
        baselines.pg_drop_schema(dsn, schema)
        full = urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(q)))
        return full, lambda: baselines.pg_drop_schema(dsn, schema)
    return url, lambda: None


def _pg_dsn(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit(parts._replace(scheme="postgresql", query=""))


def _ack_for(opts: Options, kind: StorageKind) -> str:
    if opts.ack:
        return opts.ack.upper()
    return "APPLIED" if kind is StorageKind.MEMORY else "PERSISTED"


def _split(total: int, parts: int) -> list[int]:
    parts = max(1, min(parts, total))
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def _progress(opts: Options, label: str) -> Callable[[float, float], None] | None:
    if opts.progress is None:
        return None
    cb = opts.progress
    return lambda n, t: cb(label, n, t)


def _run_writes(
    opts: Options, storage: str, scenario: str, connections: int, extra: dict[str, Any]
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Start a server on ``storage`` and run a write scenario's load processes against it.

    ``connections`` are split over ``opts.procs`` processes; each gets ``extra`` on top of
    the common arguments. Returns the processes' results and the server's statistics.
    """
    run = secrets.token_hex(3)
    url, cleanup = _prepare_storage(storage, opts)
    try:
        with ServerProcess(url, url=opts.url, jwt_secret=opts.jwt_secret) as srv:
            token = srv.token()
            args = [
                {
                    "url": srv.url,
                    "token": token,
                    "connections": n,
                    "run": run,
                    "warmup": opts.warmup,
                    "duration": opts.duration,
                    **extra,
                }
                for n in _split(connections, opts.procs)
            ]
            label = f"{scenario} {storage_kind(storage).value}"
            return run_workers(scenario, args, srv, on_progress=_progress(opts, label))
    finally:
        cleanup()


def _fire_and_forget(opts: Options, storage: str) -> dict[str, Any]:
    kind = storage_kind(storage)
    ack = _ack_for(opts, kind)
    c = opts.connections or 4
    results, srv_stats = _run_writes(
        opts,
        storage,
        "fire-and-forget",
        c,
        {"batch": opts.batch, "keyspace": 10_000, "window": opts.window, "ack": ack},
    )
    ops = sum(r["ops"] for r in results)
    secs = max(r["seconds"] for r in results)
    ours = ops / secs
    r = row(
        Scenario.FIRE_AND_FORGET.value,
        kind.value,
        ack=ack,
        metric="acked ops/s",
        ours=ours,
        server_cpu_pct=_pct(srv_stats["server_cpu"], srv_stats["window"]),
        client_cpu_pct=_pct(sum(x["client_cpu"] for x in results), secs),
        details={
            "connections": c,
            "batch": opts.batch,
            "window": opts.window,
            "acked_ops": ops,
            "failed": sum(x["failed"] for x in results),
            "rejected": sum(x["rejected"] for x in results),
            "seconds": secs,
            "server_rss_mib": (srv_stats["rss_end"] or 0) / MiB or None,
        },
    )
    if kind is StorageKind.MEMORY:
        _with_redis(r, opts, pipeline=16, clients=c, requests=max(200_000, int(ours * opts.duration) * 4))
        r["target"] = ">= 0.5x Redis SET -P 16"
        r["ratio_target"] = 0.5
        r["met"] = None if r["ratio"] is None else r["ratio"] >= 0.5
    elif kind is StorageKind.SQLITE:
        r["target"] = ">= 150,000 ops/s (PERSISTED)"
        r["met"] = ours >= 150_000 if ack == "PERSISTED" else None
    else:
        rows_n = max(ops, 50_000)
        if opts.baselines:
            base = baselines.pg_copy_upsert(_pg_dsn(storage), rows_n)
            r["baseline"] = f"asyncpg COPY+upsert {rows_n:,} rows, {base['chunk']:,}/txn"
            r["baseline_value"] = base["rows_per_s"]
            r["ratio"] = ours / base["rows_per_s"]
        r["target"] = ">= 0.66x PostgreSQL COPY+upsert (PERSISTED)"
        r["ratio_target"] = 0.66
        r["met"] = None if r["ratio"] is None else r["ratio"] >= 0.66
    return r


def _with_redis(r: dict[str, Any], opts: Options, *, pipeline: int, clients: int, requests: int) -> None:
    if not opts.baselines:
        r["baseline_note"] = "baselines disabled"
        return
    why = baselines.redis_reachable(opts.redis_host, opts.redis_port)
    if why is not None:
        r["baseline_note"] = f"baseline not measured: {why}"
        return
    base = baselines.redis_set(pipeline, clients, requests, opts.redis_host, opts.redis_port)
    r["baseline"] = f"redis-benchmark SET -P {pipeline} -c {clients}"
    r["baseline_value"] = base["ops_per_s"]
    r["baseline_latency_ms"] = base.get("latency_ms")
    r["ratio"] = r["ours"] / base["ops_per_s"] if base["ops_per_s"] else None


def _fire_and_wait(opts: Options, storage: str) -> dict[str, Any]:
    kind = storage_kind(storage)
    ack = _ack_for(opts, kind)
    c = opts.connections or 50
    results, srv_stats = _run_writes(opts, storage, "fire-and-wait", c, {"ack": ack})
    hist = Histogram()
    for x in results:
        hist.merge(Histogram.from_json(x["latency"]))
    ops = sum(x["ops"] for x in results)
    secs = max(x["seconds"] for x in results)
    ours = ops / secs
    lat = hist.summary_ms()
    r = row(
        Scenario.FIRE_AND_WAIT.value,
        kind.value,
        ack=ack,
        metric="acked ops/s",
        ours=ours,
        latency_ms=lat,
        server_cpu_pct=_pct(srv_stats["server_cpu"], srv_stats["window"]),
        client_cpu_pct=_pct(sum(x["client_cpu"] for x in results), secs),
        details={
            "connections": c,
            "acked_ops": ops,
            "failed": sum(x["failed"] for x in results),
            "seconds": secs,
            "samples": hist.total,
        },
    )
    _with_redis(r, opts, pipeline=1, clients=c, requests=max(100_000, int(ours * opts.duration * 2)))
    if ack == "APPLIED":
        r["target"] = ">= 0.8x Redis SET -P 1, p99 <= 5 ms"
        r["ratio_target"] = 0.8
        r["p99_target_ms"] = 5.0
        r["met"] = None if r["ratio"] is None else (r["ratio"] >= 0.8 and lat["p99"] <= 5.0)
    else:
        r["target"] = "reported (PERSISTED)"
    return r


class _MachineCPU:
    """CPU time of the whole machine over the measured window (marked by a worker's start/end events).

    The load client shares the machine with the server, and on a shared machine other
    processes may take some of its cores: the fan-out's latency tail follows that load, so
    its row says how much CPU went to processes other than the server, the load client
    and this one.
    """

    def __init__(self) -> None:
        import psutil

        self._psutil = psutil
        self._me = psutil.Process()
        self.start: tuple[Any, float, float] | None = None
        self.end: tuple[Any, float, float] | None = None

    def _mark(self) -> tuple[Any, float, float]:
        mine = self._me.cpu_times()
        return self._psutil.cpu_times(), mine.user + mine.system, time.perf_counter()

    def on_event(self, ev: dict[str, Any]) -> None:
        kind = ev.get("event")
        if kind == "start" and self.start is None:
            self.start = self._mark()
        elif kind == "end":
            self.end = self._mark()

    def figures(self, server_cpu: float | None, client_cpu: float) -> dict[str, float | None]:
        """``machine_cpu_pct`` (of one core), ``steal_pct`` and ``other_cpu_pct`` over the window."""
        if self.start is None or self.end is None:
            return {"machine_cpu_pct": None, "steal_pct": None, "other_cpu_pct": None}
        (t0, me0, w0), (t1, me1, w1) = self.start, self.end
        secs = w1 - w0

        def busy(t: Any) -> float:
            idle = t.idle + getattr(t, "iowait", 0.0)
            total = t.user + t.system + t.idle + sum(
                getattr(t, f, 0.0) for f in ("nice", "iowait", "irq", "softirq", "steal")
            )
            return float(total - idle)

        machine = busy(t1) - busy(t0)
        steal = getattr(t1, "steal", 0.0) - getattr(t0, "steal", 0.0)
        other = None
        if server_cpu is not None:  # what is left when the hypervisor, server, client and we are taken out
            other = max(0.0, machine - steal - server_cpu - client_cpu - (me1 - me0))
        return {
            "machine_cpu_pct": _pct(machine, secs),
            "steal_pct": _pct(steal, secs),
            "other_cpu_pct": _pct(other, secs),
        }


def _fan_out(opts: Options, storage: str) -> dict[str, Any]:
    kind = storage_kind(storage)
    run = secrets.token_hex(3)
    machine = _MachineCPU()
    url, cleanup = _prepare_storage(storage, opts)
    try:
        with ServerProcess(url, url=opts.url, jwt_secret=opts.jwt_secret) as srv:
            token = srv.token()
            subs = _split(opts.subscribers, opts.procs)
            args = [
                {
                    "url": srv.url,
                    "token": token,
                    "subscribers": n,
                    "writers": opts.writers if i == 0 else 0,
                    "rate": opts.rate,
                    "run": run,
                    "warmup": opts.warmup,
                    "duration": opts.duration,
                }
                for i, n in enumerate(subs)
            ]
            if len(args) > 1:
                raise ValueError("fan-out runs in one load process (writers and subscribers share a clock)")
            results, srv_stats = run_workers(
                "fan-out", args, srv, on_progress=_progress(opts, "fan-out"), on_event=machine.on_event
            )
    finally:
        cleanup()
    x = results[0]
    hist = Histogram.from_json(x["latency"])
    lat = hist.summary_ms()
    ours = x["deliveries"] / x["seconds"]
    r = row(
        Scenario.FAN_OUT.value,
        kind.value,
        ack="APPLIED",
        metric="deliveries/s",
        ours=ours,
        latency_ms=lat,
        server_cpu_pct=_pct(srv_stats["server_cpu"], srv_stats["window"]),
        client_cpu_pct=_pct(x["client_cpu"], x["seconds"]),
        target=f"{opts.subscribers:,} subscribers x {opts.rate}/s, p99 <= 20 ms",
        baseline_note="no baseline",
        rank_by="p99",
        details={
            "subscribers": x["subscribers"],
            "writers": opts.writers,
            "rate": opts.rate,
            "writes": x["writes"],
            "deliveries": x["deliveries"],
            "expected": x["expected"],
            "delivered_via": "QUERY_UPDATE"
            if x["mode"] == "query"
            else "SERVER_EVENT (live queries not served; subscribed with SYNC_INIT)",
            "seconds": x["seconds"],
            "reader": x.get("reader"),
            "other_frames": x.get("other_frames"),
            "closed_subscribers": x.get("closed_subscribers"),
            **machine.figures(srv_stats["server_cpu"], x["client_cpu"]),
        },
    )
    r["met"] = lat["p99"] <= 20.0 and x["deliveries"] >= 0.95 * x["expected"] > 0
    return r


def _connections(opts: Options, storage: str) -> dict[str, Any]:
    kind = storage_kind(storage)
    run = secrets.token_hex(3)
    url, cleanup = _prepare_storage(storage, opts)
    rss: dict[str, int | None] = {}
    try:
        with ServerProcess(url, url=opts.url, jwt_secret=opts.jwt_secret) as srv:
            token = srv.token()
            rss["idle"] = srv.rss()

            def on_event(ev: dict[str, Any]) -> None:
                if ev.get("event") == "hold":
                    time.sleep(0.5)
                    rss["held"] = srv.rss()

            args = [
                {"url": srv.url, "token": token, "n": n, "concurrency": 256, "hold": 2.0, "run": run}
                for n in _split(opts.conns, opts.procs)
            ]
            results, srv_stats = run_workers(
                "connections", args, srv, on_event=on_event, on_progress=_progress(opts, "connections")
            )
    finally:
        cleanup()
    connected = sum(x["connected"] for x in results)
    secs = max(x["seconds"] for x in results)
    held = rss.get("held")
    modes: dict[str, int] = {}
    for x in results:
        for k, v in x["modes"].items():
            modes[k] = modes.get(k, 0) + v
    r = row(
        Scenario.CONNECTIONS.value,
        kind.value,
        metric="connections",
        ours=float(connected),
        server_cpu_pct=_pct(srv_stats["server_cpu"], srv_stats["window"]),
        client_cpu_pct=_pct(sum(x["client_cpu"] for x in results), secs),
        target=f"{opts.conns:,} in <= 10 s, server RSS <= 1 GiB",
        baseline_note="no baseline",
        details={
            "requested": opts.conns,
            "connected": connected,
            "connect_seconds": secs,
            "server_rss_mib": None if held is None else held / MiB,
            "server_rss_idle_mib": None if rss.get("idle") is None else rss["idle"] / MiB,  # type: ignore[operator]
            "errors": sum(x["error_count"] for x in results),
            "first_errors": [e for x in results for e in x["errors"]][:3],
            "subscribed_via": {
                ("live query" if k == "query" else "SYNC_INIT (live queries not served)"): v
                for k, v in modes.items()
            },
        },
    )
    r["met"] = connected >= opts.conns and secs <= 10.0 and held is not None and held <= 1024 * MiB
    return r


def _sync(opts: Options, storage: str) -> dict[str, Any]:
    kind = storage_kind(storage)
    run = secrets.token_hex(3)
    url, cleanup = _prepare_storage(storage, opts)
    try:
        with ServerProcess(url, url=opts.url, jwt_secret=opts.jwt_secret) as srv:
            args = [
                {
                    "url": srv.url,
                    "token": srv.token(),
                    "records": opts.records,
                    "ack": _ack_for(opts, kind),
                    "run": run,
                }
            ]
            results, srv_stats = run_workers("sync", args, srv, on_progress=_progress(opts, "sync (load)"))
    finally:
        cleanup()
    x = results[0]
    ours = x["initial_records"] / x["initial_seconds"] if x["initial_seconds"] else 0.0
    busy = x["initial_seconds"] + x["catchup_seconds"]
    r = row(
        Scenario.SYNC.value,
        kind.value,
        metric="records/s (initial sync)",
        ours=ours,
        server_cpu_pct=_pct(srv_stats["server_cpu"], srv_stats["window"]),
        client_cpu_pct=_pct(x["client_cpu"], srv_stats["window"] or busy),
        baseline_note="no baseline",
        target="reported",
        details={
            "records": x["records"],
            "initial_records": x["initial_records"],
            "initial_seconds": x["initial_seconds"],
            "initial_requests": x["initial_requests"],
            "changed": x["changed"],
            "catchup_seconds": x["catchup_seconds"],
            "catchup_changed_received": x["catchup_changed_received"],
            "catchup_records": x["catchup_records"],
            "catchup_requests": x["catchup_requests"],
            "load_seconds": x["load_seconds"],
        },
    )
    r["met"] = x["initial_records"] == x["records"] and x["catchup_changed_received"] == x["changed"]
    return r


def _memory(opts: Options, storage: str) -> dict[str, Any]:
    kind = storage_kind(storage)
    url, cleanup = _prepare_storage(storage, opts)
    try:
        with ServerProcess(url, url=opts.url, jwt_secret=opts.jwt_secret) as srv:
            idle = srv.rss()
            args = [
                {
                    "url": srv.url,
                    "token": srv.token(),
                    "records": opts.memory_records,
                    "batch": 1000,
                    "map": "bench-memory",
                    "ack": _ack_for(opts, kind),
                    "run": "m",
                }
            ]
            results, srv_stats = run_workers("fill", args, srv, on_progress=_progress(opts, "memory (fill)"))
            time.sleep(0.5)
            held = srv.rss()
    finally:
        cleanup()
    x = results[0]
    r = row(
        Scenario.MEMORY.value,
        kind.value,
        metric="server RSS MiB",
        ours=None if held is None else held / MiB,
        server_cpu_pct=_pct(srv_stats["server_cpu"], srv_stats["window"]),
        client_cpu_pct=_pct(x["client_cpu"], x["seconds"]),
        baseline_note="no baseline",
        target=f"{opts.memory_records:,} records of ~100 B, RSS <= 600 MiB",
        details={
            "records": x["records"],
            "fill_seconds": x["seconds"],
            "fill_ops_per_s": x["records"] / x["seconds"] if x["seconds"] else None,
            "idle_rss_mib": None if idle is None else idle / MiB,
            "bytes_per_record": None
            if held is None or idle is None or not x["records"]
            else (held - idle) / x["records"],
        },
    )
    r["met"] = held is not None and x["records"] == opts.memory_records and held <= 600 * MiB
    return r


RUNNERS: dict[str, Callable[[Options, str], dict[str, Any]]] = {
    Scenario.FIRE_AND_FORGET.value: _fire_and_forget,
    Scenario.FIRE_AND_WAIT.value: _fire_and_wait,
    Scenario.FAN_OUT.value: _fan_out,
    Scenario.CONNECTIONS.value: _connections,
    Scenario.SYNC.value: _sync,
    Scenario.MEMORY.value: _memory,
}


def run_scenario(name: str, opts: Options, storage: str) -> dict[str, Any]:
    """Run one scenario against one storage URL and return its result row."""
    return RUNNERS[name](opts, storage)
