"""The ``topgun`` command line: ``topgun serve`` and ``topgun bench``.

Every ``serve`` flag can also come from the environment (``TOPGUN_HOST``,
``TOPGUN_PORT``, ``TOPGUN_STORAGE``, ``TOPGUN_JWT_SECRET``,
``TOPGUN_JWT_PUBLIC_KEY``, ``TOPGUN_NO_AUTH``, ``TOPGUN_CONFIG``, … — any
:class:`~topgun.server.config.ServerConfig` field upper-cased) or a config
file; flags win over the environment, which wins over the file.

Once listening, ``serve`` prints exactly one line to stdout::

    topgun listening on ws://HOST:PORT/ws storage=KIND auth=MODE

SIGTERM / SIGINT drain the server and exit 0.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import signal
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from topgun.errors import ConfigError, StorageError, TopGunError

__all__ = ["GC_THRESHOLDS", "build_parser", "main", "serve", "tune_gc"]

log = logging.getLogger("topgun.cli")


def build_parser() -> argparse.ArgumentParser:
    """The ``topgun`` argument parser."""
    parser = argparse.ArgumentParser(prog="topgun", description="TopGun offline-first data grid")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    s = sub.add_parser("serve", help="run the server", description="Run the TopGun server.")
    s.add_argument("--host", help="bind address (default 127.0.0.1; env TOPGUN_HOST)")
    s.add_argument("--port", type=int, help="port, 0 for an ephemeral one (default 8080; env TOPGUN_PORT)")
    s.add_argument("--storage", help="storage URL (default sqlite:///topgun.db; env TOPGUN_STORAGE)")
    auth = s.add_mutually_exclusive_group()
    auth.add_argument("--jwt-secret", help="HS256 shared secret (env TOPGUN_JWT_SECRET)")
    auth.add_argument(
        "--jwt-public-key", metavar="FILE", help="RS256 PEM public key file (env TOPGUN_JWT_PUBLIC_KEY)"
    )
    auth.add_argument(
        "--no-auth",
        action="store_const",
        const=True,
        default=None,
        help="serve without authentication, also on non-loopback addresses (env TOPGUN_NO_AUTH)",
    )
    s.add_argument("--jwt-issuer", help="required 'iss' claim (env TOPGUN_JWT_ISSUER)")
    s.add_argument("--jwt-audience", help="required 'aud' claim (env TOPGUN_JWT_AUDIENCE)")
    s.add_argument("--jwt-leeway", type=float, help="seconds of clock skew allowed for 'exp' (default 60)")
    s.add_argument("--auth-timeout", type=float, help="seconds to wait for AUTH in JWT mode (default 10)")
    s.add_argument("--idle-timeout", type=float, help="seconds without PING before closing (default 60)")
    s.add_argument("--max-message-size", type=int, help="largest inbound message in bytes (default 2 MiB)")
    s.add_argument(
        "--transport", choices=["picows", "websockets"], help="WebSocket library (env TOPGUN_TRANSPORT)"
    )
    s.add_argument(
        "--no-uvloop", dest="uvloop", action="store_const", const=False, default=None,
        help="do not use uvloop even when it is installed",
    )
    s.add_argument("--log-level", help="DEBUG, INFO, WARNING, ERROR (default INFO)")
    s.add_argument("--config", metavar="FILE", help="TOML or JSON config file (env TOPGUN_CONFIG)")
    b = sub.add_parser("bench", help="run the load harness", description="Run the load harness (see "
                       "`topgun bench --help`): fire-and-forget, fire-and-wait, fan-out, connections, sync, "
                       "memory, or transport (PING/PONG through each WebSocket adapter).", add_help=False)
    b.add_argument("options", nargs=argparse.REMAINDER, help="scenario and options (see topgun bench --help)")
    return parser


def _install_signal_handlers(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):  # pragma: no cover - non-Unix
            signal.signal(sig, lambda *_: loop.call_soon_threadsafe(stop.set))


#: Cyclic-GC thresholds of a ``topgun serve`` process. The default gen-0 threshold (700) runs a
#: collection every few hundred ops (each op allocates records, changes and messages), and the
#: older generations then re-walk a grid of millions of records; measured: +20-60 % ops/s and
#: a lower write-latency p99. Cycles are rare on the server's paths, so collecting less often
#: costs little memory.
GC_THRESHOLDS = (100_000, 50, 1_000)


def tune_gc() -> None:
    """Apply :data:`GC_THRESHOLDS` (process-wide: called by ``topgun serve``, not by library code)."""
    gc.set_threshold(*GC_THRESHOLDS)


async def serve(config: Any, *, out: Any = None, freeze_gc: bool = False) -> None:
    """Run a server with ``config`` until SIGTERM/SIGINT, printing the start line to ``out``.

    ``freeze_gc``: after start-up (the grid is loaded from storage) move every
    object into the collector's permanent generation, so later collections
    never traverse the loaded data again.
    """
    from topgun.server.app import TopGunServer

    out = sys.stdout if out is None else out
    server = TopGunServer(config)
    stop = asyncio.Event()
    _install_signal_handlers(asyncio.get_running_loop(), stop)
    await server.start()
    if freeze_gc:
        gc.collect()
        gc.freeze()
    try:
        out.write(server.start_line + "\n")
        out.flush()
        await stop.wait()
        log.info("signal received; draining")
    finally:
        await server.stop()


def _run(main: Callable[[], Coroutine[Any, Any, None]], use_uvloop: bool) -> None:
    factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    if use_uvloop:
        try:
            import uvloop

            factory = uvloop.new_event_loop
        except ImportError:
            factory = None
    if sys.version_info >= (3, 11):
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(main())
    else:  # pragma: no cover - Python 3.10
        if factory is not None:
            import uvloop

            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        asyncio.run(main())


def _cmd_serve(args: argparse.Namespace) -> int:
    from topgun.server.config import load_config

    overrides = {
        "host": args.host,
        "port": args.port,
        "storage": args.storage,
        "jwt_secret": args.jwt_secret,
        "jwt_public_key": args.jwt_public_key,
        "no_auth": args.no_auth,
        "jwt_issuer": args.jwt_issuer,
        "jwt_audience": args.jwt_audience,
        "jwt_leeway": args.jwt_leeway,
        "auth_timeout": args.auth_timeout,
        "idle_timeout": args.idle_timeout,
        "max_message_size": args.max_message_size,
        "transport": args.transport,
        "uvloop": args.uvloop,
        "log_level": args.log_level,
    }
    config = load_config(config_file=args.config, overrides=overrides)
    level = getattr(logging, str(config.log_level).upper(), None)
    if not isinstance(level, int):
        raise ConfigError(f"unknown log level {config.log_level!r}")
    logging.basicConfig(
        level=level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if level > logging.DEBUG:
        # picows logs every accepted and closed connection at INFO; at 10,000 connections that
        # drowns the server's own log, so it speaks only about problems unless debugging.
        logging.getLogger("picows").setLevel(logging.WARNING)
    config.check_secure_default()
    tune_gc()
    _run(lambda: serve(config, freeze_gc=True), config.uvloop)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``topgun`` script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:
        # The harness owns its whole command line (scenario and flags), so it parses it itself.
        from topgun.bench.cli import main as bench_main

        return bench_main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        if args.command == "serve":
            return _cmd_serve(args)
        if args.command == "bench":  # pragma: no cover - dispatched above
            from topgun.bench.cli import main as bench_main

            return bench_main(list(args.options))
    except ConfigError as exc:
        print(f"topgun: configuration error: {exc}", file=sys.stderr)
        return 2
    except StorageError as exc:
        print(f"topgun: storage error: {exc}", file=sys.stderr)
        return 1
    except TopGunError as exc:
        print(f"topgun: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"topgun: cannot start: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
