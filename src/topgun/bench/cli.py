"""``topgun bench [SCENARIO] [options]`` (also ``python -m topgun.bench``).

Without a scenario every scenario runs: fire-and-forget and fire-and-wait on
memory, SQLite and PostgreSQL storage, the others on memory. ``transport``
runs the WebSocket adapter PING/PONG benchmark instead (its own options).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

from topgun.bench.suite import SCENARIOS, Options, Scenario, StorageKind, run_scenario, storage_kind

__all__ = ["DEFAULT_PG", "build_parser", "main", "plan"]

#: PostgreSQL used by default when reachable (the test database of this project's CI).
DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/test"
_TEMP_SQLITE = "sqlite://"


def build_parser() -> argparse.ArgumentParser:
    """The ``topgun bench`` argument parser."""
    p = argparse.ArgumentParser(
        prog="topgun bench",
        description="Load harness: scenarios against topgun serve, "
        "with Redis and PostgreSQL baselines measured in the same run.",
    )
    p.add_argument(
        "scenario",
        nargs="*",
        metavar="SCENARIO",
        help=f"scenarios to run: {', '.join(SCENARIOS)}, or all (default)",
    )
    p.add_argument("--duration", type=float, default=5.0, help="measured seconds per scenario (default 5)")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds of load before measuring (default 1)")
    p.add_argument(
        "--connections", type=int, help="connections (default 4 fire-and-forget, 50 fire-and-wait)"
    )
    p.add_argument("--batch", type=int, default=100, help="ops per OP_BATCH in fire-and-forget (default 100)")
    p.add_argument("--window", type=int, default=8, help="OP_BATCHes in flight per connection (default 8)")
    p.add_argument(
        "--ack",
        choices=["applied", "persisted"],
        help="write concern (default: applied on memory://, persisted on durable storage)",
    )
    p.add_argument(
        "--storage",
        action="append",
        metavar="URL",
        help="storage URL, repeatable: memory://, sqlite:// (temp file), sqlite:///path, "
        "postgresql://… (default: all three; PostgreSQL only for the write scenarios)",
    )
    p.add_argument(
        "--url",
        help="benchmark a running server at this ws:// URL instead of starting one "
        "(its JWT secret via --jwt-secret)",
    )
    p.add_argument("--jwt-secret", help="HS256 secret of the --url server")
    p.add_argument("--subscribers", type=int, default=1000, help="fan-out subscribers (default 1000)")
    p.add_argument("--writers", type=int, default=1, help="fan-out writers (default 1)")
    p.add_argument(
        "--rate", type=int, default=100, help="fan-out writes per second, all writers (default 100)"
    )
    p.add_argument(
        "--conns", type=int, default=10_000, help="connections scenario: connections (default 10000)"
    )
    p.add_argument("--records", type=int, default=100_000, help="sync scenario: records (default 100000)")
    p.add_argument(
        "--memory-records", type=int, default=1_000_000, help="memory scenario: records (default 1000000)"
    )
    p.add_argument("--procs", type=int, default=1, help="load-generator processes (default 1)")
    p.add_argument(
        "--no-baselines", action="store_true", help="skip redis-benchmark and PostgreSQL baselines"
    )
    p.add_argument(
        "--pg-url", default=DEFAULT_PG, help=f"PostgreSQL for the default plan (default {DEFAULT_PG})"
    )
    p.add_argument(
        "--json",
        nargs="?",
        const="-",
        metavar="FILE",
        help="write the results as JSON to FILE (or stdout when no FILE)",
    )
    p.add_argument(
        "--redis",
        default="127.0.0.1:6379",
        metavar="HOST:PORT",
        help="Redis for the baselines (default 127.0.0.1:6379)",
    )
    p.add_argument("--markdown", metavar="FILE", help="write the summary as a Markdown table to FILE")
    p.add_argument(
        "--plot", metavar="FILE", help="draw throughput and latency to FILE (PNG; needs matplotlib)"
    )
    p.add_argument(
        "--runs", type=int, default=1, help="repeat everything N times and report medians (default 1)"
    )
    p.add_argument("--quiet", action="store_true", help="no live progress display")
    return p


def plan(
    scenarios: list[str], storages: list[str] | None, pg_url: str
) -> tuple[list[tuple[str, str]], list[str]]:
    """The (scenario, storage URL) pairs to run, and notes about anything left out."""
    from topgun.bench import baselines

    notes: list[str] = []
    names = SCENARIOS if "all" in scenarios else [s for s in SCENARIOS if s in scenarios]
    explicit = storages is not None
    if storages is None:
        storages = ["memory://", _TEMP_SQLITE]
        why = baselines.pg_reachable(pg_url)
        if why is None:
            storages.append(pg_url)
        else:
            notes.append(f"PostgreSQL scenarios skipped: {why}")
    pairs: list[tuple[str, str]] = []
    for name in names:
        for s in storages:
            kind = storage_kind(s)
            writes = name in (Scenario.FIRE_AND_FORGET.value, Scenario.FIRE_AND_WAIT.value)
            grid_memory = name == Scenario.MEMORY.value and kind is StorageKind.SQLITE
            if not explicit and not writes and not grid_memory and kind is not StorageKind.MEMORY:
                continue
            pairs.append((name, s))
    return pairs, notes


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``topgun bench``; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "transport":
        from topgun.server.transport import bench as transport_bench

        transport_bench.main(argv[1:])
        return 0
    parser = build_parser()
    args = parser.parse_args(argv)
    unknown = [s for s in args.scenario if s not in (*SCENARIOS, "all")]
    if unknown:
        parser.error(f"unknown scenario {unknown[0]!r} (choose from {', '.join(SCENARIOS)}, all)")
    if not args.scenario:
        args.scenario = ["all"]
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from topgun.bench import report
    from topgun.bench.server import raise_nofile

    raise_nofile()
    json_to_stdout = args.json == "-"
    console = Console(stderr=json_to_stdout)
    if not console.is_terminal:
        console.width = max(console.width, 200)
    opts = Options(
        duration=args.duration,
        warmup=args.warmup,
        connections=args.connections,
        batch=args.batch,
        window=args.window,
        ack=args.ack.upper() if args.ack else None,
        subscribers=args.subscribers,
        writers=args.writers,
        rate=args.rate,
        conns=args.conns,
        records=args.records,
        memory_records=args.memory_records,
        procs=args.procs,
        url=args.url,
        baselines=not args.no_baselines,
    )
    opts.jwt_secret = args.jwt_secret
    host, _, port = args.redis.rpartition(":")
    if not host or not port.isdigit():
        parser.error(f"--redis wants HOST:PORT, got {args.redis!r}")
    opts.redis_host, opts.redis_port = host, int(port)
    storages = args.storage
    if args.url and not storages:
        storages = ["memory://"]
    pairs, notes = plan(args.scenario, storages, args.pg_url)
    for n in notes:
        console.print(f"[yellow]{n}[/yellow]")
    rows: list[dict[str, Any]] = []
    failures: list[str] = []
    started = time.time()
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        console=console,
        disable=args.quiet,
        transient=True,
        # the display shares the two cores with the server and load processes it measures
        refresh_per_second=2,
    ) as progress:
        for run_no, (name, storage) in [(i, p) for i in range(args.runs) for p in pairs]:
            label = f"{name} ({storage_kind(storage).value})" + (
                f" run {run_no + 1}" if args.runs > 1 else ""
            )
            task = progress.add_task(label, total=None, rate="starting")

            def on_progress(what: str, n: float, t: float, task: Any = task) -> None:
                rate = (
                    f"{n / t:,.0f}/s"
                    if t > 0 and what.split()[0] in ("fire-and-forget", "fire-and-wait", "fan-out")
                    else f"{n:,.0f}"
                )
                progress.update(task, rate=f"{what}: {rate}")

            opts.progress = on_progress
            try:
                r = run_scenario(name, opts, storage)
                rows.append(r)
                progress.update(task, total=1, completed=1, rate="done")
                progress.console.print(
                    f"[green]done[/green] {label}: {report._ours(r)}"
                    + (
                        f" vs {r['baseline_value']:,.0f} ({r['ratio']:.2f}x)"
                        if r["ratio"] is not None
                        else ""
                    )
                    + (f", p99 {r['latency_ms']['p99']:.2f} ms" if r.get("latency_ms") else "")
                )
            except Exception as exc:
                failures.append(f"{label}: {type(exc).__name__}: {exc}")
                progress.console.print(f"[red]failed[/red] {label}: {exc}")
            progress.remove_task(task)
    rows = report.medians(rows)
    info = report.machine()
    info["elapsed_s"] = round(time.time() - started, 1)
    if rows:
        console.print(report.summary_table(rows))
    for r in rows:
        if r["baseline_note"] and r["baseline_note"].startswith("baseline not measured"):
            console.print(
                f"[yellow]{r['scenario']} ({r['storage']}): {r['baseline_note']}; our figure alone[/yellow]"
            )
    for f in failures:
        console.print(f"[red]FAILED[/red] {f}")
    console.print(
        f"machine: {info.get('cpu', '?')}, {info['cores']} cores, load {info.get('load_average')}, "
        f"commit {info.get('commit')}"
    )
    doc = {"machine": info, "notes": notes, "failures": failures, "results": rows}
    if args.json:
        text = json.dumps(doc, indent=2)
        if json_to_stdout:
            sys.stdout.write(text + "\n")
        else:
            with open(args.json, "w") as out:
                out.write(text + "\n")
    if args.markdown and rows:
        with open(args.markdown, "w") as md:
            md.write(report.markdown_table(rows) + "\n")
    if args.plot and rows:
        try:
            report.plot(
                rows, args.plot, title=f"topgun bench — commit {info.get('commit')}, {info['cores']} cores"
            )
        except ImportError:
            console.print("[yellow]--plot needs matplotlib: pip install 'topgun[bench]'[/yellow]")
    return 1 if failures else 0
