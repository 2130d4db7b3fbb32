"""Server CPU per message of the picows transport adapter alone, in request/response.

The server process runs :class:`~topgun.server.transport.picows_transport.PicowsTransport` (uvloop)
with a trivial handler whose ``on_message`` answers at once through ``send_bounded`` (no session,
no codec). A client process (picows on uvloop) opens ``--connections`` WebSockets; each sends one
~150-byte binary message and waits for the ~40-byte reply before sending the next, like the
``fire-and-wait`` scenario. The client reads the server's CPU time from ``/proc`` over the window
and reports server CPU microseconds per message (Linux only).

    flock /tmp/bench.lock .venv/bin/python bench/transport_rr.py [--rounds 5] [--seconds 4]
    # A/B against a saved copy of the adapter module, rounds interleaved:
    flock /tmp/bench.lock .venv/bin/python bench/transport_rr.py --module /tmp/old_picows_transport.py

``--floor`` adds picows alone (a bare WSListener replying from ``on_ws_frame``): the lower bound of
any adapter. That server may not saturate its core, so its figure includes more idle wake-ups.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import subprocess
import sys
import time
from typing import Any

REQUEST = b"\x81\xa4type\xa9CLIENT_OP" + b"x" * 130
REPLY = b"\x82\xa4type\xa6OP_ACK\xa7payload\x81\xa6lastId\xa31234"
_TREE = "tree"
_FLOOR = "floor"


def _adapter_class(module: str) -> Any:
    if module == _TREE:
        from topgun.server.transport.picows_transport import PicowsTransport

        return PicowsTransport
    spec = importlib.util.spec_from_file_location("picows_transport_under_test", module)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.PicowsTransport


async def _serve_adapter(module: str) -> None:
    transport_class = _adapter_class(module)

    class Listener:
        __slots__ = ("send",)

        def __init__(self, conn: Any) -> None:
            self.send = conn.send_bounded

        def on_message(self, data: bytes) -> None:
            self.send(REPLY, 1 << 30, 1 << 30)

        def on_close(self) -> None:
            pass

    class Handler:
        def on_connect(self, conn: Any) -> Listener:
            return Listener(conn)

    class Routes:
        def route(self, method: str, target: str) -> None:
            return None

    server = transport_class(Handler(), Routes(), max_message_size=1 << 20)
    print(await server.start("127.0.0.1", 0), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


async def _serve_floor() -> None:
    from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_create_server

    binary = WSMsgType.BINARY

    class Bare(WSListener):  # type: ignore[misc]
        def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
            if frame.msg_type is binary:
                frame.get_payload_as_bytes()
                transport.send(binary, REPLY)

    server = await ws_create_server(lambda request: Bare(), "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _load(port: int, pid: int, connections: int, warmup: float, seconds: float) -> dict[str, float]:
    from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

    binary = WSMsgType.BINARY
    count = [0]

    class Load(WSListener):  # type: ignore[misc]
        def on_ws_connected(self, transport: WSTransport) -> None:
            transport.send(binary, REQUEST)

        def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
            if frame.msg_type is binary:
                count[0] += 1
                transport.send(binary, REQUEST)

    transports = [(await ws_connect(Load, f"ws://127.0.0.1:{port}/ws"))[0] for _ in range(connections)]
    await asyncio.sleep(warmup)
    n0, c0, t0 = count[0], _cpu_seconds(pid), time.perf_counter()
    await asyncio.sleep(seconds)
    n1, c1, t1 = count[0], _cpu_seconds(pid), time.perf_counter()
    for t in transports:
        t.disconnect()
    n, cpu, wall = n1 - n0, c1 - c0, t1 - t0
    return {"msg_per_s": n / wall, "server_cpu_pct": 100 * cpu / wall, "us_per_msg": 1e6 * cpu / n}


def _round(server: str, args: argparse.Namespace) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--serve", server]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        out = subprocess.run(
            [sys.executable, __file__, "--load", str(port), "--pid", str(proc.pid),
             "--connections", str(args.connections), "--warmup", str(args.warmup),
             "--seconds", str(args.seconds)],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
        return result
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(10)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--connections", type=int, default=50)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--module", action="append", default=[], help="adapter module file to compare")
    p.add_argument("--floor", action="store_true", help="also measure picows alone")
    p.add_argument("--serve", help=argparse.SUPPRESS)
    p.add_argument("--load", type=int, help=argparse.SUPPRESS)
    p.add_argument("--pid", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve is not None:
        import uvloop

        uvloop.run(_serve_floor() if args.serve == _FLOOR else _serve_adapter(args.serve))
        return
    if args.load is not None:
        import uvloop

        result = uvloop.run(_load(args.load, args.pid, args.connections, args.warmup, args.seconds))
        print(json.dumps(result))
        return
    servers = [_TREE, *args.module] + ([_FLOOR] if args.floor else [])
    figures: dict[str, list[float]] = {s: [] for s in servers}
    for _ in range(args.rounds):
        for server in servers:
            r = _round(server, args)
            figures[server].append(r["us_per_msg"])
            print(
                f"{os.path.basename(server):<28} {r['msg_per_s']:>9,.0f} msg/s  server "
                f"{r['server_cpu_pct']:5.1f} % CPU  {r['us_per_msg']:5.2f} us/msg",
                flush=True,
            )
    print()
    for server, vals in figures.items():
        vals.sort()
        name = os.path.basename(server)
        print(f"{name:<28} server us/msg: median {vals[len(vals) // 2]:.2f}, best {vals[0]:.2f}")


if __name__ == "__main__":
    main()
