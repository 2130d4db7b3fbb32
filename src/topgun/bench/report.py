"""Reporting for ``topgun bench``: the summary table (rich), the machine description, JSON and the plot."""

from __future__ import annotations

import os
import platform
import subprocess
from typing import Any

__all__ = ["machine", "markdown_table", "medians", "plot", "summary_table"]


def machine() -> dict[str, Any]:
    """What the figures were measured on: CPU, cores, memory, load, Python, commit."""
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cores": os.cpu_count(),
    }
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        import psutil

        info["memory_gib"] = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:  # pragma: no cover
        pass
    try:
        info["load_average"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:  # pragma: no cover
        pass
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        info["commit"] = (
            subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5
            ).stdout.strip()
            or None
        )
    except (OSError, subprocess.SubprocessError):
        info["commit"] = None
    return info


def medians(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (scenario, storage): the run with the median figure, with the baselines' median.

    Each returned row carries ``runs`` (every run's figure), ``baseline_runs``
    and, when the scenario measures latency, ``p99_runs`` (every run's p99);
    the ratio is median ours / median baseline. A scenario whose target is its
    latency (``rank_by == "p99"``: fan-out, where every run delivers the same
    offered load) is represented by the run with the median p99 rather than
    the median throughput. With one run per pair the rows are returned
    unchanged apart from those lists.
    """
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["scenario"], r["storage"]), []).append(r)
    out = []
    for group in groups.values():
        if group[0].get("rank_by") == "p99" and all(r.get("latency_ms") for r in group):
            ranked = sorted(group, key=lambda r: r["latency_ms"]["p99"])
        else:
            ranked = sorted(group, key=lambda r: r["ours"] if r["ours"] is not None else -1.0)
        mid = dict(ranked[(len(ranked) - 1) // 2])
        mid["runs"] = [r["ours"] for r in group]
        if all(r.get("latency_ms") for r in group):
            mid["p99_runs"] = [r["latency_ms"]["p99"] for r in group]
        bases = sorted(r["baseline_value"] for r in group if r["baseline_value"] is not None)
        mid["baseline_runs"] = [r["baseline_value"] for r in group]
        if bases:
            mid["baseline_value"] = bases[(len(bases) - 1) // 2]
            if mid["ours"] is not None:
                mid["ratio"] = mid["ours"] / mid["baseline_value"]
            if mid.get("ratio_target") is not None and mid["ratio"] is not None:
                met = mid["ratio"] >= mid["ratio_target"]
                if mid.get("p99_target_ms") is not None and mid.get("latency_ms"):
                    met = met and mid["latency_ms"]["p99"] <= mid["p99_target_ms"]
                mid["met"] = met
        out.append(mid)
    return out


def _num(v: float | None, digits: int = 0) -> str:
    if v is None:
        return "—"
    return f"{v:,.{digits}f}"


def _ours(r: dict[str, Any]) -> str:
    if r["scenario"] == "memory":
        return f"{_num(r['ours'])} MiB"
    if r["scenario"] == "connections":
        d = r["details"]
        return f"{_num(r['ours'])} in {d['connect_seconds']:.1f} s, RSS {_num(d['server_rss_mib'])} MiB"
    if r["scenario"] == "sync":
        d = r["details"]
        return (
            f"{_num(r['ours'])} rec/s ({d['initial_seconds']:.2f} s); 1% catch-up "
            f"{d['catchup_seconds'] * 1000:.0f} ms"
        )
    return f"{_num(r['ours'])} {r['metric'].split()[-1]}"


def _lat(r: dict[str, Any]) -> str:
    lat = r.get("latency_ms")
    if not lat:
        return ""
    text = f"p50 {lat['p50']:.2f} / p95 {lat['p95']:.2f} / p99 {lat['p99']:.2f} / max {lat['max']:.1f} ms"
    p99s = r.get("p99_runs") or []
    if len(p99s) > 1:
        text += " (p99 per run " + " · ".join(f"{v:.1f}" for v in p99s) + ")"
    return text


def _cells(r: dict[str, Any]) -> list[str]:
    base = r["baseline_note"] or "—"
    if r["baseline_value"] is not None:
        base = f"{_num(r['baseline_value'])} ({r['baseline']})"
    met = {True: "yes", False: "NO", None: "—"}[r["met"]]
    cpu = f"{_num(r['server_cpu_pct'])} % / {_num(r['client_cpu_pct'])} %"
    return [
        r["scenario"],
        r["storage"],
        r["ack"] or "",
        _ours(r),
        base,
        "—" if r["ratio"] is None else f"{r['ratio']:.2f}x",
        _lat(r),
        cpu,
        f"{met} ({r['target']})",
    ]


_HEADERS = [
    "scenario",
    "storage",
    "ack",
    "ours",
    "baseline",
    "ratio",
    "latency",
    "CPU server / client",
    "target met",
]


def summary_table(rows: list[dict[str, Any]]) -> Any:
    """A :class:`rich.table.Table` of the result rows."""
    from rich.table import Table

    t = Table(title="topgun bench", show_lines=False)
    for h in _HEADERS:
        t.add_column(h, overflow="fold")
    for r in rows:
        t.add_row(*_cells(r))
    return t


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The result rows as a Markdown table (for ``docs/benchmarks.md``), with every run's figure."""
    headers = [*_HEADERS, "runs (ours)"]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for r in rows:
        runs = " · ".join(_num(v) for v in r.get("runs") or [r["ours"]])
        lines.append("| " + " | ".join(c.replace("|", "/") for c in [*_cells(r), runs]) + " |")
    return "\n".join(lines)


_SHORT = {
    "fire-and-forget": "fire&forget",
    "fire-and-wait": "fire&wait",
    "fan-out": "fan-out",
    "sync": "sync",
}


def _label(r: dict[str, Any]) -> str:
    ack = {"APPLIED": "applied", "PERSISTED": "persisted"}.get(r["ack"] or "", "")
    return f"{_SHORT.get(r['scenario'], r['scenario'])} {r['storage']} {ack}".strip()


def plot(rows: list[dict[str, Any]], path: str, title: str = "topgun bench") -> None:
    """Draw throughput (ours vs baseline) and latency percentiles per scenario into ``path`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tp = [
        r
        for r in rows
        if r["scenario"] in ("fire-and-forget", "fire-and-wait", "fan-out", "sync") and r["ours"] is not None
    ]
    lat = [r for r in rows if r.get("latency_ms")]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(14, 5.5))
    labels = [_label(r) for r in tp]
    xs = range(len(tp))
    w = 0.4
    ax1.bar([x - w / 2 for x in xs], [r["ours"] for r in tp], w, label="topgun", color="#2a7ab9")
    ax1.bar(
        [x + w / 2 for x in xs], [r["baseline_value"] or 0 for r in tp], w, label="baseline", color="#c9772b"
    )
    for x, r in zip(xs, tp, strict=True):
        if r["ratio"] is not None:
            ax1.annotate(f"{r['ratio']:.2f}x", (x - w / 2, r["ours"]), ha="center", va="bottom", fontsize=8)
    ax1.set_xticks(list(xs))
    ax1.set_xticklabels(labels, fontsize=8, rotation=30, ha="right")
    ax1.set_yscale("log")
    ax1.set_ylabel("per second (log): ops acked / deliveries / records")
    ax1.set_title("throughput")
    ax1.legend()
    llabels = [_label(r) for r in lat]
    lx = range(len(lat))
    for i, (p, color) in enumerate((("p50", "#7fb800"), ("p99", "#f6511d"), ("max", "#999999"))):
        ax2.bar(
            [x + (i - 1) * 0.27 for x in lx],
            [max(r["latency_ms"][p], 1e-3) for r in lat],
            0.27,
            label=p,
            color=color,
        )
    ax2.set_xticks(list(lx))
    ax2.set_xticklabels(llabels, fontsize=8, rotation=30, ha="right")
    ax2.set_yscale("log")
    ax2.set_ylabel("ms (log)")
    ax2.set_title("latency")
    ax2.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
