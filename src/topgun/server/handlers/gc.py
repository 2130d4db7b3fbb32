"""Tombstone GC task (PROTOCOL §5.10): prune, record ``P(M)``, tell every open connection.

Every ``gc_interval`` seconds the grid prunes LWW tombstones older than
``H = wall - R`` and OR tombstones removed before ``H.millis`` (persisting the
deletions and each touched map's prune horizon through the group committer),
then ``GC_PRUNE {olderThan: H}`` — encoded once — goes to every ``OPEN``
connection.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import Any

from topgun.protocol import codec
from topgun.protocol.messages import GcPrune
from topgun.server.grid import GcReport, Grid

__all__ = ["GcTask", "broadcast_gc_prune"]

log = logging.getLogger("topgun.gc")


def broadcast_gc_prune(report: GcReport, sessions: Iterable[Any]) -> int:
    """Send ``GC_PRUNE`` for ``report`` to every open session; return how many got it."""
    frame = codec.encode(GcPrune(older_than=report.horizon))
    n = 0
    for s in sessions:
        state = getattr(s, "state", None)
        if getattr(state, "value", state) != "OPEN" or s.closed:
            continue
        s.send_frame(frame)
        n += 1
    return n


class GcTask:
    """Runs :meth:`Grid.gc` every ``interval_s`` seconds and broadcasts ``GC_PRUNE``."""

    def __init__(self, grid: Grid, sessions: Callable[[], Iterable[Any]], interval_s: float) -> None:
        self.grid = grid
        self._sessions = sessions
        self.interval_s = float(interval_s)
        self._task: asyncio.Task[None] | None = None
        #: passes run so far
        self.passes = 0

    def run_once(self) -> GcReport:
        """One pass now (also what the timer calls)."""
        report = self.grid.gc()
        broadcast_gc_prune(report, self._sessions())
        self.passes += 1
        return report

    def start(self) -> None:
        """Start the periodic pass (no-op when the interval is 0)."""
        if self.interval_s > 0 and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="topgun-gc")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                self.run_once()
            except Exception:
                log.exception("tombstone GC pass failed")
