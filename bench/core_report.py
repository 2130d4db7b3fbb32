"""Turn the JSON of ``bench/test_bench_core.py`` into the markdown table of docs/benchmarks.md.

Usage: ``.venv/bin/python bench/core_report.py /tmp/bench-core.json``. Figures use the best
(minimum) round of each case; throughput = units / best time; speedup = pure time / compiled time.
"""

from __future__ import annotations

import json
import sys

ORDER = [
    "lww-merge-nomerkle",
    "lww-merge-fresh-keys",
    "lww-merge-noclock",
    "baseline-dict",
    "lww-merge-merkle",
    "merkle-build",
    "merkle-incremental",
    "ts-max",
    "ts-max-shuffled",
    "ts-sort",
]


def main(path: str) -> None:
    with open(path) as f:
        data = json.load(f)
    rows: dict[str, dict[str, dict[str, float | str]]] = {}
    for b in data["benchmarks"]:
        info = b["extra_info"]
        rows.setdefault(info["case"], {})[info["side"]] = {
            "min": b["stats"]["min"],
            "units": info["units"],
            "unit": info["unit"],
            "rounds": b["stats"]["rounds"],
        }
    print("| case | [c] best | [c] throughput | [py] best | [py] throughput | c/py speedup |")
    print("|---|---:|---:|---:|---:|---:|")
    for case in ORDER:
        sides = rows.get(case)
        if not sides:
            continue
        c, py = sides.get("c"), sides.get("py")
        cells = [case]
        for s in (c, py):
            if s is None:
                cells += ["-", "-"]
            else:
                t = float(s["min"])
                cells += [f"{t * 1000:.1f} ms", f"{float(s['units']) / t / 1e6:.2f} M {s['unit']}/s"]
        cells.append(f"{float(py['min']) / float(c['min']):.1f}x" if c and py else "-")
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(sys.argv[1])
