"""Running the server under test (``topgun serve`` in a subprocess) and load workers."""

from __future__ import annotations

import json
import os
import re
import resource
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import psutil

from topgun.errors import TopGunError

__all__ = ["BenchError", "ServerProcess", "Worker", "raise_nofile"]

_LINE = re.compile(r"ws://([^:/]+):(\d+)/ws")


class BenchError(TopGunError):
    """The benchmark could not run (server did not start, worker failed)."""


def raise_nofile() -> None:
    """Raise this process's soft open-file limit to the hard limit (10,000 connections need fds)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOPGUN_")}
    env["PYTHONWARNINGS"] = "ignore"
    return env


class ServerProcess:
    """``topgun serve`` on an ephemeral loopback port with HS256 auth, or an external server (``url``).

    For an external server CPU and RSS are unknown (reported as ``None``).
    """

    def __init__(
        self,
        storage: str | None = None,
        *,
        url: str | None = None,
        jwt_secret: str | None = None,
        transport: str | None = None,
    ) -> None:
        self.storage = storage
        self.external_url = url
        self.jwt_secret = jwt_secret or secrets.token_hex(32)
        self.transport = transport
        self.proc: subprocess.Popen[str] | None = None
        self.ps: psutil.Process | None = None
        self.url = url or ""
        self._stderr: Any = None

    def __enter__(self) -> ServerProcess:
        if self.external_url:
            return self
        self._stderr = tempfile.TemporaryFile(mode="w+")
        cmd = [
            sys.executable,
            "-m",
            "topgun",
            "serve",
            "--port",
            "0",
            "--storage",
            str(self.storage),
            "--jwt-secret",
            self.jwt_secret,
            "--idle-timeout",
            "0",
            "--log-level",
            "WARNING",
        ]
        if self.transport:
            cmd += ["--transport", self.transport]
        self.proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            env=_clean_env(),
            preexec_fn=raise_nofile,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        m = _LINE.search(line)
        if not m:
            self.proc.wait(10)
            self._stderr.seek(0)
            raise BenchError(f"server did not start ({self.storage}): {line!r} {self._stderr.read()[-2000:]}")
        self.url = f"ws://{m.group(1)}:{m.group(2)}/ws"
        self.ps = psutil.Process(self.proc.pid)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self._stderr is not None:
            self._stderr.close()

    def check_alive(self) -> None:
        """Raise :class:`BenchError` (with the server's last log lines) if the server process has exited."""
        if self.proc is None or self.proc.poll() is None:
            return
        err = ""
        if self._stderr is not None:
            self._stderr.seek(0)
            err = self._stderr.read()[-2000:]
        raise BenchError(f"the server exited during the run (status {self.proc.returncode}): {err}")

    def cpu(self) -> float | None:
        """User + system CPU seconds of the server so far."""
        if self.ps is None:
            return None
        t = self.ps.cpu_times()
        return float(t.user + t.system)

    def rss(self) -> int | None:
        """Resident set size of the server in bytes."""
        return None if self.ps is None else int(self.ps.memory_info().rss)

    def token(self) -> str:
        """A JWT the server accepts."""
        from topgun.bench.frames import mint_token

        return mint_token(self.jwt_secret)


class Worker:
    """One load-generator process (``topgun.bench.worker``) whose JSON events are fed to ``on_event``."""

    def __init__(self, mode: str, args: dict[str, Any]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "topgun.bench.worker", mode, json.dumps(args)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_clean_env(),
            preexec_fn=raise_nofile,
        )
        self.result: dict[str, Any] | None = None
        self.cpu_start: float | None = None

    def events(self) -> Any:
        """Iterate the worker's events until it exits."""
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            line = line.strip()
            if not line.startswith("{"):
                continue
            ev = json.loads(line)
            if ev.get("event") == "result":
                self.result = ev
            yield ev

    def finish(self, timeout: float = 120) -> dict[str, Any]:
        """Wait for exit; the result event, or :class:`BenchError` with the worker's stderr."""
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.result is None or self.proc.returncode != 0:
            err = self.proc.stderr.read() if self.proc.stderr else ""
            raise BenchError(f"load worker failed (exit {self.proc.returncode}): {err[-3000:]}")
        return self.result


def run_workers(
    mode: str,
    arg_list: list[dict[str, Any]],
    server: ServerProcess,
    on_progress: Callable[[float, float], None] | None = None,
    on_event: Callable[[dict[str, Any]], None] | None = None,
    timeout: float = 600,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Run workers in parallel; returns their results and the server's CPU seconds/RSS over the window.

    ``on_progress(n, t)`` gets the summed progress count across workers.
    """
    import threading

    workers = [Worker(mode, a) for a in arg_list]
    lock = threading.Lock()
    progress = [0.0] * len(workers)
    marks: dict[str, Any] = {"cpu0": None, "cpu1": None, "t0": None, "t1": None, "rss_peak": 0}

    def pump(i: int, w: Worker) -> None:
        for ev in w.events():
            kind = ev.get("event")
            with lock:
                if kind == "start" and marks["cpu0"] is None:
                    marks["cpu0"], marks["t0"] = server.cpu(), time.perf_counter()
                elif kind == "end":
                    marks["cpu1"], marks["t1"] = server.cpu(), time.perf_counter()
                    marks["rss_end"] = server.rss()
                elif kind == "progress":
                    progress[i] = float(ev.get("n", 0))
                    rss = server.rss() or 0
                    marks["rss_peak"] = max(marks["rss_peak"], rss)
                    if on_progress is not None:
                        on_progress(sum(progress), float(ev.get("t", 0.0)))
                if on_event is not None and kind not in ("progress",):
                    on_event(ev)

    threads = [threading.Thread(target=pump, args=(i, w), daemon=True) for i, w in enumerate(workers)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    server.check_alive()
    results = [w.finish(timeout=10) for w in workers]
    server_cpu = None
    if marks["cpu0"] is not None and marks["cpu1"] is not None:
        server_cpu = marks["cpu1"] - marks["cpu0"]
    return results, {
        "server_cpu": server_cpu,
        "window": (marks["t1"] or 0) - (marks["t0"] or 0),
        "rss_peak": marks["rss_peak"] or None,
        "rss_end": marks.get("rss_end"),
    }
