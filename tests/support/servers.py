"""Server-side test helpers shared by the socket-level server suites: a running server on an
ephemeral port, and polling until server-side bookkeeping catches up."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from topgun.server.app import TopGunServer


@asynccontextmanager
async def serving(
    transport: str | None = None, *, storage: str = "memory://", **cfg: Any
) -> AsyncIterator[TopGunServer]:
    """A started :class:`TopGunServer` on an ephemeral port, stopped on exit.

    ``transport`` defaults to the server configuration's own default; ``cfg`` are further
    configuration overrides (``jwt_secret``, timeouts, ...).
    """
    if transport is not None:
        cfg["transport"] = transport
    server = TopGunServer(port=0, storage=storage, **cfg)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def eventually(cond: Callable[[], Any], timeout: float = 3.0) -> None:
    """Wait until ``cond()`` holds (server-side bookkeeping trails what a client observes)."""
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)
