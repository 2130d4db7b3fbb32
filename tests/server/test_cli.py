"""``topgun serve`` as a subprocess: the start line, environment configuration, SIGTERM, refusals."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from rawclient import SECRET, RawClient, http_get, make_token

pytestmark = pytest.mark.timeout(60)

START_LINE = re.compile(
    r"^topgun listening on ws://(?P<host>[^:\s]+):(?P<port>\d+)/ws"
    r" storage=(?P<storage>\w+) auth=(?P<auth>\w+)$"
)


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOPGUN_")}
    env.update(extra)
    return env


async def _spawn(*args: str, env: dict[str, str] | None = None) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "topgun", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env=env if env is not None else _env(),
    )


async def _start_line(proc: asyncio.subprocess.Process) -> re.Match[str]:
    assert proc.stdout is not None
    line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
    m = START_LINE.match(line.rstrip("\n"))
    assert m, f"unexpected start line {line!r}"
    return m


async def _terminate(proc: asyncio.subprocess.Process) -> tuple[int, bytes, bytes]:
    proc.send_signal(signal.SIGTERM)
    out, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode is not None
    return proc.returncode, out, err


async def test_serve_prints_start_line_serves_and_exits_0_on_sigterm(tmp_path: Path) -> None:
    db = tmp_path / "cli.db"
    proc = await _spawn("serve", "--port", "0", "--storage", f"sqlite:///{db}")
    m = await _start_line(proc)
    assert m["host"] == "127.0.0.1" and m["storage"] == "sqlite" and m["auth"] == "none"
    port = int(m["port"])
    assert port > 0
    c = await RawClient.open(f"ws://127.0.0.1:{port}/ws")
    assert (await c.ping(5))["timestamp"] == 5
    assert (await http_get(port, "/health"))[0] == 200
    rc, out, err = await _terminate(proc)
    assert rc == 0, err.decode()
    assert out == b""  # exactly one line on stdout
    code, _ = await c.wait_closed()
    assert code == 1001
    assert db.exists()


async def test_serve_from_environment_with_jwt() -> None:
    proc = await _spawn(
        "serve", env=_env(TOPGUN_PORT="0", TOPGUN_JWT_SECRET=SECRET, TOPGUN_STORAGE="memory://",
                          TOPGUN_TRANSPORT="websockets"),
    )
    m = await _start_line(proc)
    assert m["auth"] == "hs256" and m["storage"] == "memory"
    c = await RawClient.open(f"ws://127.0.0.1:{m['port']}/")
    assert (await c.recv())["type"] == "AUTH_REQUIRED"
    await c.send({"type": "AUTH", "token": make_token(sub="env-user")})
    assert (await c.recv())["userId"] == "env-user"
    await c.close()
    rc, _, err = await _terminate(proc)
    assert rc == 0, err.decode()


async def test_sigint_also_exits_0() -> None:
    proc = await _spawn("serve", "--port", "0", "--storage", "memory://", "--no-uvloop")
    await _start_line(proc)
    proc.send_signal(signal.SIGINT)
    await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 0


def test_non_loopback_without_auth_is_refused() -> None:
    res = subprocess.run(
        [sys.executable, "-m", "topgun", "serve", "--host", "0.0.0.0", "--port", "0", "--storage", "memory://"],
        capture_output=True, env=_env(), timeout=30, check=False,
    )
    assert res.returncode == 2
    assert res.stdout == b""
    assert b"configuration error" in res.stderr and b"--no-auth" in res.stderr


async def test_non_loopback_with_explicit_no_auth_starts() -> None:
    proc = await _spawn("serve", "--host", "0.0.0.0", "--port", "0", "--storage", "memory://", "--no-auth")
    m = await _start_line(proc)
    assert m["host"] == "0.0.0.0" and m["auth"] == "none"
    c = await RawClient.open(f"ws://127.0.0.1:{m['port']}/ws")
    assert (await c.ping())["type"] == "PONG"
    await c.close()
    rc, _, err = await _terminate(proc)
    assert rc == 0, err.decode()


def test_bad_flag_values_exit_nonzero() -> None:
    res = subprocess.run(
        [sys.executable, "-m", "topgun", "serve", "--port", "0", "--storage", "nonsense"],
        capture_output=True, env=_env(), timeout=30, check=False,
    )
    assert res.returncode == 2 and b"storage" in res.stderr


def test_port_in_use_exits_1() -> None:
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    try:
        res = subprocess.run(
            [sys.executable, "-m", "topgun", "serve", "--port", str(sock.getsockname()[1]),
             "--storage", "memory://"],
            capture_output=True, env=_env(), timeout=30, check=False,
        )
    finally:
        sock.close()
    assert res.returncode == 1 and res.stdout == b""
