"""Transport benchmark: PING/PONG round trips against ``topgun serve`` from a separate process.

``python -m topgun.server.transport.bench`` starts ``topgun serve`` once per
transport (memory storage, uvloop when installed), then runs a load process
that opens ``--connections`` WebSockets (picows client, so the load generator
is the same for both servers) and keeps ``--window`` PINGs in flight on each.
It reports PONGs received per second (every PONG is one request and one
response through the whole session path: decode, dispatch, encode, send).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from typing import Any

import msgpack

__all__ = ["main"]

_LINE = re.compile(r"ws://[^:]+:(\d+)/ws")


async def _client(port: int, connections: int, window: int, warmup: float, seconds: float) -> dict[str, Any]:
    from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

    ping = msgpack.packb({"type": "PING", "timestamp": 1_700_000_000_000.0})
    counts = {"n": 0}

    class Load(WSListener):  # type: ignore[misc]
        def on_ws_connected(self, transport: WSTransport) -> None:
            for _ in range(window):
                transport.send(WSMsgType.BINARY, ping)

        def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
            if frame.msg_type is WSMsgType.BINARY:
                counts["n"] += 1
                transport.send(WSMsgType.BINARY, ping)

    transports = []
    for _ in range(connections):
        t, _listener = await ws_connect(Load, f"ws://127.0.0.1:{port}/ws")
        transports.append(t)
    await asyncio.sleep(warmup)
    start_n, t0 = counts["n"], time.perf_counter()
    await asyncio.sleep(seconds)
    done_n, t1 = counts["n"], time.perf_counter()
    for t in transports:
        t.disconnect()
    return {"msgs": done_n - start_n, "seconds": t1 - t0, "msg_per_s": (done_n - start_n) / (t1 - t0)}


def _run_client(args: argparse.Namespace) -> None:
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:
        runner = asyncio.run
    result = runner(_client(args.port, args.connections, args.window, args.warmup, args.seconds))
    print(json.dumps(result))


def _bench_transport(transport: str, args: argparse.Namespace) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOPGUN_")}
    server = subprocess.Popen(
        [sys.executable, "-m", "topgun", "serve", "--port", "0", "--storage", "memory://",
         "--transport", transport, "--log-level", "WARNING"],
        stdout=subprocess.PIPE, env=env, text=True,
    )
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        m = _LINE.search(line)
        if not m:
            raise RuntimeError(f"server did not start: {line!r}")
        port = m.group(1)
        out = subprocess.run(
            [sys.executable, "-m", "topgun.server.transport.bench", "client", "--port", port,
             "--connections", str(args.connections), "--window", str(args.window),
             "--warmup", str(args.warmup), "--seconds", str(args.seconds)],
            capture_output=True, text=True, check=True, timeout=args.seconds + args.warmup + 60,
        )
        result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
        result["transport"] = transport
        return result
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            server.kill()


def main(argv: list[str] | None = None) -> None:
    """Command line entry point (``bench`` or ``client`` mode)."""
    p = argparse.ArgumentParser(prog="python -m topgun.server.transport.bench")
    p.add_argument("mode", nargs="?", default="bench", choices=["bench", "client"])
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--window", type=int, default=8)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--transports", default="picows,websockets")
    args = p.parse_args(argv)
    if args.mode == "client":
        _run_client(args)
        return
    results: dict[str, list[float]] = {}
    for _ in range(args.rounds):
        for transport in args.transports.split(","):
            r = _bench_transport(transport, args)
            results.setdefault(transport, []).append(r["msg_per_s"])
            print(f"{transport:<11} {r['msg_per_s']:>10.0f} msg/s", flush=True)
    print()
    print("| transport | median msg/s | runs |")
    print("|---|---:|---|")
    for transport, vals in results.items():
        med = sorted(vals)[len(vals) // 2]
        print(f"| {transport} | {med:,.0f} | {', '.join(f'{v:,.0f}' for v in vals)} |")


if __name__ == "__main__":
    main()
