"""kill -9 durability: every change whose commit future resolved survives SIGKILL of the writer."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import pytest

from support.stores import reload

pytestmark = [pytest.mark.timeout(180), pytest.mark.slow]

WRITER = Path(__file__).with_name("durability_writer.py")
PRODUCERS = 8
ROWS_PER_SET = 5
KILL_AFTER_LINES = 400


async def run_and_kill(url: str) -> list[tuple[int, int]]:
    """Run the writer, SIGKILL it mid-stream, return every ``(producer, iteration)`` it printed."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(WRITER),
        url,
        str(PRODUCERS),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    lines: list[bytes] = []
    try:
        first = await asyncio.wait_for(proc.stdout.readline(), 60)
        if first != b"READY\n":
            err = await proc.stderr.read()
            pytest.fail(f"writer did not start: {first!r} {err.decode(errors='replace')}")
        while len(lines) < KILL_AFTER_LINES:
            line = await asyncio.wait_for(proc.stdout.readline(), 60)
            assert line, "writer exited early: " + (await proc.stderr.read()).decode(errors="replace")
            lines.append(line)
        os.kill(proc.pid, signal.SIGKILL)
        rest = await asyncio.wait_for(proc.stdout.read(), 30)
        await asyncio.wait_for(proc.wait(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == -signal.SIGKILL
    text = b"".join(lines) + rest
    complete = text[: text.rfind(b"\n") + 1].decode()
    return [(int(p), int(i)) for p, i in (ln.split() for ln in complete.splitlines())]


async def check_all_present(url: str, printed: list[tuple[int, int]]) -> None:
    snap = await reload(url)
    lww = snap.maps["lww"].lww
    ors = snap.maps["or"].or_records
    missing = [(p, i, j) for p, i in printed for j in range(ROWS_PER_SET) if f"p{p}-i{i}-j{j}" not in lww]
    assert not missing, f"{len(missing)} acknowledged rows lost, e.g. {missing[:5]}"
    for p, i in printed[:50]:
        assert lww[f"p{p}-i{i}-j0"].value == [p, i, 0]
    last: dict[int, int] = {}
    for p, i in printed:
        last[p] = max(last.get(p, -1), i)
    for p, i in last.items():
        assert snap.counters[f"c{p}"]["p"][f"node-{p}"] >= i
        assert snap.fencing[f"lock{p}"] >= i
        assert {r.value for r in ors[f"p{p}"]} >= {i2 for p2, i2 in printed if p2 == p}


async def test_sigkill_loses_no_acknowledged_change_sqlite(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/durable.db"
    printed = await run_and_kill(url)
    assert len(printed) >= KILL_AFTER_LINES
    await check_all_present(url, printed)


async def test_sigkill_loses_no_acknowledged_change_postgres(pg_url: str) -> None:
    printed = await run_and_kill(pg_url)
    assert len(printed) >= KILL_AFTER_LINES
    await check_all_present(pg_url, printed)
