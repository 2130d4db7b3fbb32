"""``TopGunClient``: an offline-first replica whose reads and writes never wait for the network."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any

from topgun.client.counter import CounterHandle, counters_of
from topgun.client.engine import Handler, SyncEngine
from topgun.client.lock import LockHandle, locks_of
from topgun.client.maps import LWWMapHandle, ORMapHandle
from topgun.client.query import QueryHandle, queries_of
from topgun.client.state import ConnectionState
from topgun.client.storage.base import ClientStorage
from topgun.client.storage.memory import MemoryStorage
from topgun.client.store import LocalStore
from topgun.client.topic import TopicHandle, topics_of
from topgun.client.transport import ConnectionSettings, Connector, TokenSource
from topgun.errors import ClientClosedError, ConfigError, FlushTimeoutError, OpRejectedError
from topgun.protocol.messages import Error, Message, MessageType

__all__ = ["TopGunClient"]

log = logging.getLogger("topgun.client")


class TopGunClient:
    """A client of a ``topgun serve`` server (or a TopGun v2 server).

    ``url`` is the WebSocket endpoint (``ws://host:port/ws``). ``storage``
    defaults to :class:`MemoryStorage`; use ``SQLiteStorage(path)`` to keep
    data and pending writes across restarts. ``token`` is a JWT string, or a
    sync/async callable returning one (called before every connection, so it
    can refresh expired tokens), or None for a no-auth server. ``node_id`` is
    the HLC node id; by default a random lowercase UUID kept in storage.
    ``max_pending_ops`` caps the op log (writes beyond it raise
    ``BackpressureError``, or wait with the ``a*`` variants). ``batch_size`` ops go in
    one ``OP_BATCH``; at most ``max_inflight_ops`` unacknowledged ops are on the wire at once.
    """

    def __init__(
        self,
        url: str,
        *,
        storage: ClientStorage | None = None,
        token: TokenSource = None,
        node_id: str | None = None,
        max_pending_ops: int = 100_000,
        batch_size: int = 500,
        max_inflight_ops: int = 10_000,
        settings: ConnectionSettings | None = None,
        connect: bool = True,
    ) -> None:
        if not isinstance(url, str) or not url.startswith(("ws://", "wss://")):
            raise ConfigError(f"the server URL must be ws:// or wss://, not {url!r}")
        if node_id is not None and (not node_id or ":" in node_id):
            raise ConfigError("node_id must be non-empty and must not contain ':'")
        self.url = url
        self._store = LocalStore(
            storage if storage is not None else MemoryStorage(),
            node_id=node_id,
            max_pending_ops=max_pending_ops,
        )
        self._engine = SyncEngine(self._store, batch_size=batch_size, max_inflight_ops=max_inflight_ops)
        self._settings = settings or ConnectionSettings()
        self._token: TokenSource = token
        self._autoconnect = connect
        self._state = ConnectionState.INITIAL
        self._state_listeners: list[Callable[[ConnectionState], None]] = []
        self._connector: Connector | None = None
        self._lww_handles: dict[str, LWWMapHandle] = {}
        self._or_handles: dict[str, ORMapHandle] = {}
        self._progress_waiters: list[asyncio.Future[None]] = []
        self._pump_scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = False
        self._closed = False
        self._store.on_new_ops = self._schedule_pump
        self._store.on_acked = self._wake_waiters
        self._store.on_map_opened = self._map_opened
        self._engine.on_progress = self._wake_waiters

    # -- lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        """Open storage and load every replica; connecting then runs in the background."""
        if self._closed:
            raise ClientClosedError("the client is closed")
        if self._started:
            return
        self._loop = asyncio.get_running_loop()
        self._store.open()
        self._started = True
        self._connector = Connector(
            self.url, self._engine, token=self._token, settings=self._settings, set_state=self._set_state
        )
        if self._autoconnect:
            self._set_state(ConnectionState.CONNECTING)
            self._connector.start()

    async def disconnect(self) -> None:
        """Go offline on purpose: close the connection and stop reconnecting (writes keep working)."""
        self._require_open()
        if self._connector is not None:
            await self._connector.stop()
        self._set_state(ConnectionState.DISCONNECTED)

    def connect(self) -> None:
        """Start (or restart) the background connection loop after :meth:`disconnect` or ``connect=False``."""
        self._require_open()
        if self._connector is not None:
            self._connector.stop_nowait()
        self._connector = Connector(
            self.url, self._engine, token=self._token, settings=self._settings, set_state=self._set_state
        )
        self._set_state(ConnectionState.CONNECTING)
        self._connector.start()

    async def close(self) -> None:
        """Disconnect and close storage (pending ops stay in the op log for the next start)."""
        if self._closed:
            return
        self._closed = True
        if self._connector is not None:
            await self._connector.stop()
        self._store.close()
        self._set_state(ConnectionState.CLOSED)
        self._wake_waiters()

    async def __aenter__(self) -> TopGunClient:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    def _require_open(self) -> None:
        if self._closed:
            raise ClientClosedError("the client is closed")
        if not self._started:
            raise ClientClosedError("call await client.start() first")

    # -- maps --------------------------------------------------------------------------------------

    def get_map(self, name: str) -> LWWMapHandle:
        """The LWW map ``name`` (created locally on first use)."""
        h = self._lww_handles.get(name)
        if h is None:
            self._require_open()
            h = self._lww_handles[name] = LWWMapHandle(self._store, name)
        return h

    def get_or_map(self, name: str) -> ORMapHandle:
        """The OR map ``name`` (created locally on first use)."""
        h = self._or_handles.get(name)
        if h is None:
            self._require_open()
            h = self._or_handles[name] = ORMapHandle(self._store, name)
        return h

    def map_names(self) -> list[str]:
        """Every map held locally (opened now or persisted earlier)."""
        return sorted([*self._store.lww_maps, *self._store.or_maps])

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Group the writes of the block into one local transaction (bulk loads)."""
        self._require_open()
        self._store.begin_batch()
        ok = False
        try:
            yield
            ok = True
        finally:
            self._store.end_batch(ok)

    # -- topics, locks, counters -------------------------------------------------------------------

    def topic(self, name: str, *, offline_queue: int | None = None) -> TopicHandle:
        """The ephemeral pub/sub topic ``name`` (one handle per name; see :mod:`topgun.client.topic`).

        ``offline_queue=N`` lets up to N publications wait while offline (oldest dropped
        first) instead of raising ``NotConnectedError``.
        """
        self._require_open()
        return topics_of(self).topic(name, offline_queue=offline_queue)

    def lock(self, name: str, *, ttl: float | None = 10.0, timeout: float | None = None) -> LockHandle:
        """A handle on the distributed lock ``name`` (see :mod:`topgun.client.lock`).

        ``ttl`` is the lease in seconds (None: until released or disconnected);
        ``timeout`` is the default wait of ``acquire()`` / ``async with``.
        """
        self._require_open()
        return locks_of(self).lock(name, ttl=ttl, timeout=timeout)

    def counter(self, name: str) -> CounterHandle:
        """The PN-counter ``name`` (one handle per name; works offline; see :mod:`topgun.client.counter`)."""
        self._require_open()
        return counters_of(self).counter(name)

    def query(
        self,
        map_name: str,
        *,
        where: Mapping[str, Any] | None = None,
        predicate: Mapping[str, Any] | None = None,
        sort: Any = None,
        limit: int | None = None,
        fields: Sequence[str] | None = None,
        cursor: str | None = None,
        group_by: Sequence[str] | None = None,
        aggregations: Sequence[Any] | None = None,
    ) -> QueryHandle:
        """A live query over the LWW map ``map_name`` (see :mod:`topgun.client.query`).

        ``predicate`` is a tree built with :class:`topgun.P`; ``sort`` is ``[(field, "asc"|"desc")]``
        (or the wire forms). Results are evaluated locally at once (also offline) and reconciled
        with the server's snapshot and updates while connected.
        """
        self._require_open()
        return queries_of(self).query(
            map_name, where=where, predicate=predicate, sort=sort, limit=limit, fields=fields,
            cursor=cursor, group_by=group_by, aggregations=aggregations,
        )

    def _map_opened(self, name: str) -> None:
        # §5.4: a map opened while connected is synced right away.
        if self._connector is not None and self._engine.ready:
            self._connector.send(self._engine.sync_map(name))

    # -- state -------------------------------------------------------------------------------------

    @property
    def state(self) -> ConnectionState:
        """The current :class:`ConnectionState`."""
        return self._state

    @property
    def node_id(self) -> str:
        """This client's HLC node id."""
        return self._store.node_id

    @property
    def connected(self) -> bool:
        """True while the connection is authenticated."""
        return self._engine.ready

    def on_state_change(self, callback: Callable[[ConnectionState], None]) -> Callable[[], None]:
        """Call ``callback(state)`` on every state change; returns the unsubscribe callable."""
        self._state_listeners.append(callback)

        def off() -> None:
            with contextlib.suppress(ValueError):
                self._state_listeners.remove(callback)

        return off

    def _set_state(self, state: ConnectionState) -> None:
        if state == self._state:
            return
        self._state = state
        log.debug("client state %s", state.value)
        for cb in list(self._state_listeners):
            try:
                cb(state)
            except Exception:
                log.exception("state listener failed")
        self._wake_waiters()

    @property
    def last_error(self) -> BaseException | None:
        """The last connection or authentication error, if any."""
        return self._connector.last_error if self._connector is not None else None

    def set_token(self, token: TokenSource) -> None:
        """Replace the token (or token callable) and reconnect at once if waiting."""
        self._token = token
        if self._connector is not None:
            self._connector.token_source = token
            self._connector.reconnect_now()

    # -- op log ------------------------------------------------------------------------------------

    @property
    def pending_ops(self) -> int:
        """Number of writes not yet acknowledged by the server."""
        return self._store.pending_count

    @property
    def max_pending_ops(self) -> int:
        """The op-log cap."""
        return self._store.max_pending_ops

    @property
    def rejected(self) -> list[OpRejectedError]:
        """Every op the server refused (oldest first)."""
        return self._engine.rejected

    def on_rejected(self, callback: Callable[[OpRejectedError], None]) -> Callable[[], None]:
        """Call ``callback(OpRejectedError)`` for every refused op; returns the unsubscribe callable."""
        self._engine.on_rejected.append(callback)

        def off() -> None:
            with contextlib.suppress(ValueError):
                self._engine.on_rejected.remove(callback)

        return off

    def on_error(self, callback: Callable[[Error], None]) -> None:
        """Call ``callback(Error)`` for every ``ERROR`` message from the server."""
        self._engine.on_error.append(callback)

    def _schedule_pump(self) -> None:
        if self._pump_scheduled or self._loop is None or not self._engine.ready:
            return
        self._pump_scheduled = True
        self._loop.call_soon(self._pump)

    def _pump(self) -> None:
        self._pump_scheduled = False
        if self._connector is not None:
            self._connector.send(self._engine.pump())

    async def flush(self, timeout: float | None = 5.0) -> None:
        """Wait until every op pending now is acknowledged; ``FlushTimeoutError`` after ``timeout``."""
        self._require_open()
        target = max(self._store.pending, default=0)

        def done() -> bool:
            p = self._store.pending
            return not p or next(iter(self._store.pending_ops()))[0] > target

        try:
            await self._wait_until(done, timeout)
        except TimeoutError:
            raise FlushTimeoutError(
                f"{self.pending_ops} ops still unacknowledged after {timeout} s (state {self._state.value})"
            ) from None

    async def wait_connected(self, timeout: float | None = 10.0) -> None:
        """Wait until the connection is authenticated."""
        await self._wait_until(lambda: self._engine.ready, timeout)

    async def wait_synced(self, timeout: float | None = 10.0) -> None:
        """Wait until connected and every sync walk started on this connection has finished."""
        await self._wait_until(lambda: self._engine.ready and not self._engine.syncing, timeout)

    async def _wait_until(self, pred: Callable[[], bool], timeout: float | None) -> None:
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while not pred():
            if self._closed:
                raise ClientClosedError("the client is closed")
            fut: asyncio.Future[None] = loop.create_future()
            self._progress_waiters.append(fut)
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                raise TimeoutError
            try:
                await asyncio.wait_for(fut, remaining)
            except asyncio.TimeoutError:
                if not pred():
                    raise TimeoutError from None
            finally:
                with contextlib.suppress(ValueError):
                    self._progress_waiters.remove(fut)

    def _wake_waiters(self) -> None:
        ws = self._progress_waiters
        if ws:
            self._progress_waiters = []
            for f in ws:
                if not f.done():
                    f.set_result(None)

    # -- extension points --------------------------------------------------------------------------

    def register_handler(self, type_: MessageType, handler: Handler) -> None:
        """Route incoming messages of ``type_`` to ``handler`` (features such as queries plug in here)."""
        self._engine.register_handler(type_, handler)

    def add_after_auth_hook(self, hook: Callable[[], Iterable[Message]]) -> None:
        """Run ``hook()`` after every authentication; it returns messages to send (re-subscriptions)."""
        self._engine.after_auth_hooks.append(hook)

    def send(self, *msgs: Message) -> None:
        """Send messages on the current connection (dropped while disconnected)."""
        if self._connector is not None and self._engine.ready:
            self._connector.send(list(msgs))

    @property
    def engine(self) -> SyncEngine:
        """The sans-I/O :class:`SyncEngine` (for extensions and tests)."""
        return self._engine

    @property
    def store(self) -> LocalStore:
        """The :class:`LocalStore` holding the replicas and the op log."""
        return self._store

    def __repr__(self) -> str:
        return f"TopGunClient({self.url!r}, state={self._state.value}, pending={self.pending_ops})"

