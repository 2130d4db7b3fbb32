"""Durability of acknowledged writes (PROTOCOL §7 decision 5): restarts, SIGTERM drain, kill -9.

Every op acknowledged ``PERSISTED`` must be in storage afterwards, whatever
happens to the server process.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any

import pytest
from gridkit import batch, connect, now_ms, put, serving
from rawclient import RawClient

from support.pg import need_postgres
from support.stores import reload

pytestmark = pytest.mark.timeout(120)


async def load_map(url: str, name: str) -> dict[str, Any]:
    snap = await reload(url)
    m = snap.maps.get(name)
    return {k: r.value for k, r in m.lww.items()} if m is not None else {}


class Streamer:
    """Sends OP_BATCHes back to back without waiting and records every acknowledged op."""

    def __init__(self, client: RawClient, ops_per_batch: int = 5) -> None:
        self.c = client
        self.k = ops_per_batch
        self.sent_batches = 0
        self.acked: list[tuple[str, int]] = []  # (key, value) of every acked op
        self.levels: set[str] = set()
        self._batches: dict[str, list[tuple[str, int]]] = {}

    async def send_batches(self, n: int, t: int) -> None:
        for _ in range(n):
            b = self.sent_batches
            ops = []
            rows = []
            for j in range(self.k):
                op_id = str(b * self.k + j + 1)
                key = f"b{b}-j{j}"
                ops.append(put(op_id, "stream", key, b * 100 + j, t, b * self.k + j))
                rows.append((key, b * 100 + j))
            self._batches[ops[-1]["id"]] = rows
            self.sent_batches += 1
            try:
                await self.c.send(batch(*ops))
            except Exception:
                return
            if b % 20 == 0:
                await asyncio.sleep(0)

    async def read_acks(self) -> None:
        try:
            while True:
                msg = await self.c.recv(30)
                if msg["type"] == "OP_ACK":
                    self.levels.add(msg["payload"]["achievedLevel"])
                    self.acked.extend(self._batches[msg["payload"]["lastId"]])
        except Exception:
            return


async def test_every_acked_op_survives_restart_and_graceful_stop(storage_kind: str, storage_url: str) -> None:
    t = now_ms()
    async with serving(storage_url) as server:
        c = await connect(server)
        s = Streamer(c)
        reader = asyncio.create_task(s.read_acks())
        await s.send_batches(300, t)
        # stop while acks are still in flight: the drain commits and acknowledges what was accepted
    await asyncio.wait_for(reader, 30)
    assert s.acked, "nothing was acknowledged"
    assert s.levels == ({"APPLIED"} if storage_kind == "memory" else {"PERSISTED"})
    stored = await load_map(storage_url, "stream")
    missing = [kv for kv in s.acked if stored.get(kv[0]) != kv[1]]
    assert not missing, f"{len(missing)} acknowledged ops lost, e.g. {missing[:3]}"


async def _spawn(url: str, tmp_path: Path) -> tuple[asyncio.subprocess.Process, str]:
    env = dict(os.environ)
    env.pop("TOPGUN_CONFIG", None)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "topgun",
        "serve",
        "--port",
        "0",
        "--storage",
        url,
        "--log-level",
        "WARNING",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        cwd=str(tmp_path),
    )
    assert proc.stdout is not None and proc.stderr is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 60)
    if not line.startswith(b"topgun listening on "):
        proc.kill()
        err = await proc.stderr.read()
        pytest.fail(f"server did not start: {line!r} {err.decode(errors='replace')}")
    ws = line.split()[3].decode()
    return proc, ws


async def _stream_then(url: str, tmp_path: Path, sig: int) -> tuple[Streamer, int | None]:
    proc, ws = await _spawn(url, tmp_path)
    try:
        c = await RawClient.open(ws)
        await c.send({"type": "AUTH", "token": "x"})
        assert (await c.recv())["type"] == "AUTH_ACK"
        s = Streamer(c, ops_per_batch=4)
        reader = asyncio.create_task(s.read_acks())
        t = now_ms()
        for _ in range(40):
            await s.send_batches(25, t)
            if len(s.acked) >= 400:
                break
            await asyncio.sleep(0.01)
        while len(s.acked) < 400:
            await asyncio.sleep(0.01)
        # more in flight at the moment of the signal
        sender = asyncio.create_task(s.send_batches(200, t))
        await asyncio.sleep(0.005)
        os.kill(proc.pid, sig)
        await asyncio.wait_for(proc.wait(), 60)
        sender.cancel()
        await asyncio.wait_for(reader, 40)
        return s, proc.returncode
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def _url(kind: str, tmp_path: Path, pg_url_factory: Any) -> str:
    if kind == "sqlite":
        return f"sqlite:///{tmp_path}/serve.db"
    need_postgres()
    return str(pg_url_factory())


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
async def test_kill_9_of_topgun_serve_loses_no_acked_op(kind: str, tmp_path: Path, request: Any) -> None:
    url = _url(kind, tmp_path, lambda: request.getfixturevalue("pg_url"))
    s, rc = await _stream_then(url, tmp_path, signal.SIGKILL)
    assert rc == -signal.SIGKILL
    assert len(s.acked) >= 400
    stored = await load_map(url, "stream")
    missing = [kv for kv in s.acked if stored.get(kv[0]) != kv[1]]
    assert not missing, f"{len(missing)} of {len(s.acked)} acknowledged ops lost, e.g. {missing[:3]}"
    # the server restarts on what it left behind and serves the data
    proc, ws = await _spawn(url, tmp_path)
    try:
        c = await RawClient.open(ws)
        await c.send({"type": "AUTH", "token": "x"})
        await c.recv()
        await c.send({"type": "SYNC_INIT", "mapName": "stream"})
        root = await c.recv()
        assert root["type"] == "SYNC_RESP_ROOT" and root["payload"]["rootHash"] != 0
    finally:
        proc.kill()
        await proc.wait()


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
async def test_sigterm_drains_and_commits_everything_acknowledged(
    kind: str, tmp_path: Path, request: Any
) -> None:
    url = _url(kind, tmp_path, lambda: request.getfixturevalue("pg_url"))
    s, rc = await _stream_then(url, tmp_path, signal.SIGTERM)
    assert rc == 0
    stored = await load_map(url, "stream")
    missing = [kv for kv in s.acked if stored.get(kv[0]) != kv[1]]
    assert not missing, f"{len(missing)} of {len(s.acked)} acknowledged ops lost"
    # a drain acknowledges what it accepted: at least every batch acked before the signal
    assert len(s.acked) >= 400
