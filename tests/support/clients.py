"""Client-side test helpers shared by the client integration suites: quick reconnect settings,
polling until a condition holds, connected clients, free ports."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from typing import Any

from topgun.client import ConnectionSettings, MemoryStorage, TopGunClient

# Short back-off so reconnect scenarios finish in test time.
FAST = ConnectionSettings(backoff_base=0.05, backoff_max=0.3, open_timeout=2.0)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def until(pred: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    """Poll ``pred`` until it is true; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def connected(url: str, **kw: Any) -> TopGunClient:
    """A started client (memory storage unless given) that has connected to ``url``."""
    kw.setdefault("storage", MemoryStorage())
    c = TopGunClient(url, settings=FAST, **kw)
    await c.start()
    await c.wait_connected(10)
    return c


async def closing(*clients: TopGunClient) -> None:
    """Close every client in order."""
    for c in clients:
        await c.close()
