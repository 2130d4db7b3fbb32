"""``TopGunServer``: wires config, storage, authentication, sessions, HTTP and a transport together.

Usage::

    async with TopGunServer(port=0, storage="memory://") as server:
        print(server.port)

Handlers plug in through ``server.processors`` (see
:mod:`topgun.server.interfaces`), start-up work (e.g. loading the grid) through
``server.on_startup(fn)``, and shutdown work (flushing the group committer)
through ``server.on_shutdown(fn)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any

from topgun.server.auth import DeviceRegistry, make_authenticator
from topgun.server.config import ServerConfig, TransportKind, is_loopback_host
from topgun.server.http import HttpRoutes
from topgun.server.metrics import ServerMetrics
from topgun.server.session import ProcessorRegistry, Session, SessionHub
from topgun.server.storage import Storage, open_storage
from topgun.server.transport import transport_class
from topgun.server.transport.base import CloseCode, Connection, TransportServer

if TYPE_CHECKING:
    from topgun.server.handlers import CoreServices
    from topgun.server.handlers.query import QueryService

__all__ = ["Hook", "TopGunServer"]

log = logging.getLogger("topgun.server")

#: A start-up or shutdown hook: called with the server, may be a coroutine function.
Hook = Callable[["TopGunServer"], "Awaitable[None] | None"]


class TopGunServer:
    """The TopGun server: WebSocket protocol on ``/ws`` and ``/``, ``/health``, ``/ready``, ``/metrics``.

    ``config`` is a :class:`ServerConfig`; keyword arguments override its fields
    (``TopGunServer(port=0, jwt_secret="s")``). ``storage`` may be an already
    constructed :class:`~topgun.server.storage.Storage` (opened by ``start()`` and
    closed by ``stop()`` like one built from ``config.storage``) or a storage URL
    string (same as the ``storage`` config field). ``codec`` replaces
    :mod:`topgun.protocol.codec` (tests only). ``core_handlers=False`` skips
    :func:`topgun.server.handlers.register_core_handlers` (writes, sync, push, GC).
    """

    def __init__(
        self,
        config: ServerConfig | None = None,
        *,
        storage: Storage | str | None = None,
        codec: Any = None,
        core_handlers: bool = True,
        **overrides: Any,
    ) -> None:
        if isinstance(storage, str):
            overrides["storage"] = storage
            storage = None
        base = config if config is not None else ServerConfig()
        self.config: ServerConfig = base.replace(**overrides) if overrides else base
        self.metrics = ServerMetrics()
        self.processors = ProcessorRegistry()
        self.devices = DeviceRegistry()
        self._storage: Storage | None = storage
        self._codec = codec
        self._startup_hooks: list[Hook] = []
        self._shutdown_hooks: list[Hook] = []
        self._hub: SessionHub | None = None
        self._transport: TransportServer | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._ready = False
        self._state = "new"
        self._stopped = asyncio.Event() if _has_loop() else None
        #: Grid, push notifier and ACL of the core handlers (``None`` with ``core_handlers=False``).
        self.core: CoreServices | None = None
        if core_handlers:
            from topgun.server.handlers import register_core_handlers

            register_core_handlers(self)
        from topgun.server.handlers.counters import install_coordination_handlers

        #: Topic, lock and counter processors (PROTOCOL §5.12-§5.14).
        self.coordination = install_coordination_handlers(self)
        #: Live queries (PROTOCOL §5.11): processors, grid listener and ``engine`` (needs core handlers).
        self.queries: QueryService | None = None
        if self.core is not None:
            from topgun.server.handlers.query import install_query_handlers

            self.queries = install_query_handlers(self)

    # -- public properties -------------------------------------------------------------------
    @property
    def port(self) -> int:
        """The bound port (useful with ``port=0``); 0 before ``start()``."""
        return self._transport.port if self._transport is not None else 0

    @property
    def host(self) -> str:
        """The configured bind address."""
        return self.config.host

    @property
    def url(self) -> str:
        """``ws://HOST:PORT/ws`` of the running server."""
        host = self.config.host
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"ws://{host}:{self.port}/ws"

    @property
    def start_line(self) -> str:
        """The one line ``topgun serve`` prints once listening."""
        return f"topgun listening on {self.url} storage={self.config.storage_kind} auth={self.auth_mode}"

    @property
    def auth_mode(self) -> str:
        """``none``, ``hs256`` or ``rs256``."""
        return self.config.auth_mode.value

    @property
    def storage(self) -> Storage:
        """The storage backend (available after ``start()``)."""
        if self._storage is None:
            raise RuntimeError("storage is not open; call start() first")
        return self._storage

    @property
    def sessions(self) -> dict[int, Session]:
        """Open sessions by connection id (read-only use: broadcasts, diagnostics)."""
        return self._hub.sessions if self._hub is not None else {}

    @property
    def hub(self) -> SessionHub:
        """The session hub (available after ``start()``)."""
        if self._hub is None:
            raise RuntimeError("server not started")
        return self._hub

    @property
    def ready(self) -> bool:
        """Last result of the storage reachability probe (what ``/ready`` reports)."""
        return self._ready

    @property
    def transport_name(self) -> str:
        """The transport in use (``picows`` or ``websockets``)."""
        return TransportKind(self.config.transport).value

    # -- hooks ---------------------------------------------------------------------------------
    def on_startup(self, hook: Hook) -> Hook:
        """Run ``hook(server)`` in ``start()`` after storage opened, before listening (e.g. grid load)."""
        self._startup_hooks.append(hook)
        return hook

    def on_shutdown(self, hook: Hook) -> Hook:
        """Run ``hook(server)`` in ``stop()`` after in-flight work drained, before connections close
        (e.g. flush the group committer so pending acks still reach their clients)."""
        self._shutdown_hooks.append(hook)
        return hook

    # -- lifecycle -------------------------------------------------------------------------------
    async def start(self) -> None:
        """Open storage, run start-up hooks and start listening."""
        if self._state != "new":
            raise RuntimeError(f"server already {self._state}")
        self._state = "starting"
        cfg = self.config
        cfg.check_secure_default()
        authenticator = make_authenticator(cfg)
        if self._stopped is None:
            self._stopped = asyncio.Event()
        opened = False
        try:
            if self._storage is None:
                self._storage = open_storage(cfg.storage)
            await self._storage.open()
            opened = True
            self._ready = bool(await self._storage.ping())
            for hook in self._startup_hooks:
                await _call(hook, self)
            self._hub = SessionHub(
                cfg,
                authenticator=authenticator,
                processors=self.processors,
                metrics=self.metrics,
                devices=self.devices,
                codec=self._codec,
            )
            routes = HttpRoutes(self.metrics, lambda: self._ready)
            cls = transport_class(cfg.transport)
            self._transport = cls(
                self,
                routes,
                max_message_size=cfg.max_message_size,
                on_oversize=self.metrics.oversize_disconnects.inc,
            )
            await self._transport.start(cfg.host, cfg.port)
        except BaseException:
            self._state = "stopped"
            if opened and self._storage is not None:
                with contextlib.suppress(Exception):
                    await self._storage.close()
            raise
        if not is_loopback_host(cfg.host) and self.auth_mode == "none":
            log.warning("serving WITHOUT authentication on %s (--no-auth)", cfg.host)
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._sweep_loop()), loop.create_task(self._probe_loop())]
        self._state = "running"
        log.info(
            "listening on %s (transport=%s storage=%s auth=%s)",
            self.url, self.transport_name, cfg.storage_kind, self.auth_mode,
        )

    async def stop(self) -> None:
        """Drain and shut down: stop accepting, let in-flight work finish, run shutdown hooks
        (persistence flush), close every connection with 1001, close storage. Idempotent."""
        if self._state in {"stopping", "stopped", "new"}:
            if self._state == "new":
                self._state = "stopped"
            if self._state == "stopping" and self._stopped is not None:
                await self._stopped.wait()
            return
        self._state = "stopping"
        cfg = self.config
        try:
            if self._transport is not None:
                await self._transport.stop_accepting()
            hub = self._hub
            if hub is not None and not await hub.drain(cfg.drain_timeout):
                log.warning("in-flight work did not finish within %.1f s", cfg.drain_timeout)
            for hook in self._shutdown_hooks:
                try:
                    await _call(hook, self)
                except Exception:
                    log.exception("shutdown hook failed")
            if hub is not None:
                for session in list(hub.sessions.values()):
                    session.close(int(CloseCode.GOING_AWAY), "server shutting down")
            if self._transport is not None:
                try:
                    await asyncio.wait_for(self._transport.wait_closed(), timeout=max(cfg.drain_timeout, 1.0))
                except asyncio.TimeoutError:
                    log.warning("connections did not close in time")
            if hub is not None:
                await hub.drain(1.0)
            for task in self._tasks:
                task.cancel()
            for task in self._tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            self._tasks = []
            if self._storage is not None:
                try:
                    await self._storage.close()
                except Exception:
                    log.exception("closing storage failed")
        finally:
            self._ready = False
            self._state = "stopped"
            if self._stopped is not None:
                self._stopped.set()

    async def wait_stopped(self) -> None:
        """Wait until :meth:`stop` has completed."""
        if self._stopped is None:
            self._stopped = asyncio.Event()
        await self._stopped.wait()

    async def __aenter__(self) -> TopGunServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # -- transport callback --------------------------------------------------------------------
    def on_connect(self, conn: Connection) -> Session:
        """Called by the transport for every upgraded WebSocket."""
        hub = self._hub
        if hub is None:
            raise RuntimeError("connection accepted before the server started")
        session = hub.open_session(conn)
        if self._state != "running":
            session.close(int(CloseCode.GOING_AWAY), "server shutting down")
        return session

    # -- background loops ----------------------------------------------------------------------
    def _sweep_interval(self) -> float:
        cfg = self.config
        candidates = [cfg.auth_timeout]
        if cfg.idle_timeout > 0:
            candidates.append(cfg.idle_timeout)
        return min(1.0, max(0.02, min(candidates) / 4))

    async def _sweep_loop(self) -> None:
        interval = self._sweep_interval()
        while True:
            await asyncio.sleep(interval)
            try:
                if self._hub is not None:
                    self._hub.sweep()
            except Exception:
                log.exception("session sweep failed")

    async def _probe_loop(self) -> None:
        interval = max(0.05, self.config.ready_probe_interval)
        while True:
            await asyncio.sleep(interval)
            storage = self._storage
            if storage is None:
                continue
            try:
                ok = bool(await asyncio.wait_for(storage.ping(), timeout=max(interval, 1.0)))
            except Exception:
                ok = False
            if ok != self._ready:
                level = logging.INFO if ok else logging.WARNING
                log.log(level, "storage %s", "reachable" if ok else "UNREACHABLE")
            self._ready = ok


def _has_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


async def _call(hook: Hook, server: TopGunServer) -> None:
    result = hook(server)
    if inspect.isawaitable(result):
        await result
