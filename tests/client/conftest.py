"""Fixtures for client integration tests: real servers (in-process and ``topgun serve`` subprocesses).

Storage backends are SQLite (a file under ``tmp_path``) and PostgreSQL (a private
schema of ``TOPGUN_TEST_DATABASE_URL``); the PostgreSQL helpers come from
``tests/server/conftest.py`` so both suites skip or fail the same way when the
database is missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from support.clients import free_port
from support.pg import PG_URL, drop_pg_schema, need_postgres, with_query

BACKENDS = ("sqlite", "postgresql")


@pytest.fixture(params=BACKENDS)
def server_storage_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty server store URL on each backend (reopenable: restarts see the same data)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'server.db'}"
    need_postgres()
    schema = "tg_client_" + uuid.uuid4().hex[:16]
    request.addfinalizer(lambda: drop_pg_schema(schema))
    return str(with_query(PG_URL, schema=schema))


class ServerProcess:
    """``topgun serve`` in a subprocess on a fixed port, restartable (kill -9 or SIGTERM)."""

    def __init__(self, storage_url: str, port: int, *extra: str) -> None:
        self.storage_url = storage_url
        self.port = port
        self.extra = extra
        self.proc: asyncio.subprocess.Process | None = None
        self.url = f"ws://127.0.0.1:{port}/ws"

    async def start(self, timeout: float = 30.0) -> None:
        env = dict(os.environ)
        env.pop("TOPGUN_CONFIG", None)
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "topgun", "serve", "--host", "127.0.0.1", "--port", str(self.port),
            "--storage", self.storage_url, "--no-auth", "--log-level", "WARNING", *self.extra,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env,
        )
        assert self.proc.stdout is not None
        lines: list[str] = []

        async def wait_line() -> None:
            assert self.proc is not None and self.proc.stdout is not None
            while True:
                raw = await self.proc.stdout.readline()
                if not raw:
                    raise RuntimeError("topgun serve exited:\n" + "".join(lines))
                line = raw.decode(errors="replace")
                lines.append(line)
                if "listening on" in line:
                    return

        await asyncio.wait_for(wait_line(), timeout)
        # Keep draining output so the server never blocks on a full pipe.
        self._drain = asyncio.get_running_loop().create_task(self._drain_output())

    async def _drain_output(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        with contextlib.suppress(Exception):
            while await self.proc.stdout.readline():
                pass

    async def kill(self) -> None:
        """SIGKILL: the process dies with whatever it had not committed."""
        await self._stop(signal.SIGKILL)

    async def terminate(self) -> None:
        await self._stop(signal.SIGTERM)

    async def _stop(self, sig: int) -> None:
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        proc.send_signal(sig)
        try:
            await asyncio.wait_for(proc.wait(), 20)
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()
        self.proc = None


@pytest.fixture
async def server_process(server_storage_url: str) -> AsyncIterator[Callable[[], ServerProcess]]:
    """Factory of one :class:`ServerProcess` on a free port over the test's storage (killed at the end)."""
    made: list[ServerProcess] = []

    def make() -> ServerProcess:
        sp = ServerProcess(server_storage_url, free_port())
        made.append(sp)
        return sp

    yield make
    for sp in made:
        await sp.kill()


@pytest.fixture
async def mem_server() -> AsyncIterator[object]:
    """An in-process :class:`TopGunServer` on a fresh, private ``memory://`` store."""
    from topgun.server.app import TopGunServer

    srv = TopGunServer(port=0, storage=f"memory://client-{uuid.uuid4().hex}")
    await srv.start()
    try:
        yield srv
    finally:
        await srv.stop()


@pytest.fixture
async def server(server_storage_url: str) -> AsyncIterator[object]:
    """An in-process :class:`TopGunServer` (no-auth, websockets on 127.0.0.1, ephemeral port)."""
    from topgun.server.app import TopGunServer

    srv = TopGunServer(port=0, storage=server_storage_url)
    await srv.start()
    try:
        yield srv
    finally:
        await srv.stop()


class StalledServer:
    """A TCP server that accepts connections and never sends a byte (nor reads one)."""

    def __init__(self) -> None:
        self.server: asyncio.Server | None = None
        self.accepted = 0
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> str:
        async def on_conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.accepted += 1
            self._writers.append(writer)

        self.server = await asyncio.start_server(on_conn, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"ws://127.0.0.1:{port}/ws"

    async def stop(self) -> None:
        for w in self._writers:
            w.close()
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 2)


@pytest.fixture
async def stalled_server() -> AsyncIterator[StalledServer]:
    s = StalledServer()
    yield s
    await s.stop()
