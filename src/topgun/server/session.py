"""The sans-I/O session: one per WebSocket connection, independent of the WebSocket library.

A transport hands complete binary messages to :meth:`Session.on_message` and
reports the end with :meth:`Session.on_close`; the session writes through the
transport's :class:`~topgun.server.transport.base.Connection` (``send`` /
``close``). It runs the connection state machine of PROTOCOL §5.1 to §5.5:
``AWAIT_AUTH`` (JWT mode) → ``OPEN`` → ``CLOSED``; answers ``AUTH``,
``DEVICE_HELLO`` and ``PING`` itself; unpacks ``BATCH``; and passes every other
message to the :class:`Processor` registered for its kind, strictly in arrival
order (§1.8).

Timeouts (auth deadline, idle) are checked by :meth:`SessionHub.sweep`, which
the server calls periodically, so the session never owns a timer.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import msgpack

from topgun.errors import ConfigError, ProtocolError, UnknownMessageTypeError, UnsupportedMessageTypeError
from topgun.protocol.messages import (
    Auth,
    AuthAck,
    AuthFail,
    AuthRequired,
    Batch,
    DeviceAck,
    DeviceHello,
    Error,
    MessageType,
    Pong,
)
from topgun.server._sessionpath_py import RECEIVED_KEY, WIRE_NAME, SessionState
from topgun.server.auth import Authenticator, DeviceRegistry, Principal
from topgun.server.config import ServerConfig
from topgun.server.interfaces import CleanupHook, OpenHook, Processor, RequestContext
from topgun.server.metrics import ServerMetrics
from topgun.server.sessionpath import on_message, send_frame
from topgun.server.transport.base import CloseCode, Connection

__all__ = [
    "CLIENT_KINDS",
    "SESSION_KINDS",
    "ProcessorRegistry",
    "Session",
    "SessionHub",
    "SessionState",
]

log = logging.getLogger("topgun.session")

#: Kinds the session answers itself; processors cannot be registered for them.
SESSION_KINDS = frozenset({MessageType.AUTH, MessageType.DEVICE_HELLO, MessageType.PING, MessageType.BATCH})

#: Core kinds a client may send. Others (server-to-client kinds) are ignored when received (§1.9 item 3).
CLIENT_KINDS = frozenset(
    {
        MessageType.AUTH,
        MessageType.DEVICE_HELLO,
        MessageType.PING,
        MessageType.CLIENT_OP,
        MessageType.OP_BATCH,
        MessageType.SYNC_INIT,
        MessageType.MERKLE_REQ_BUCKET,
        MessageType.ORMAP_SYNC_INIT,
        MessageType.ORMAP_MERKLE_REQ_BUCKET,
        MessageType.ORMAP_DIFF_REQUEST,
        MessageType.ORMAP_PUSH_DIFF,
        MessageType.CLIENT_APPLY_ACK,
        MessageType.QUERY_SUB,
        MessageType.QUERY_UNSUB,
        MessageType.TOPIC_SUB,
        MessageType.TOPIC_UNSUB,
        MessageType.TOPIC_PUB,
        MessageType.LOCK_REQUEST,
        MessageType.LOCK_RELEASE,
        MessageType.COUNTER_REQUEST,
        MessageType.COUNTER_SYNC,
        MessageType.BATCH,
    }
)

#: Extended kinds the server must accept and ignore (PROTOCOL §6, query delta reconnect).
IGNORED_KINDS = frozenset({"QUERY_SYNC_INIT"})

#: A BATCH inside a BATCH works (§1.7); deeper than this is refused.
_MAX_BATCH_NESTING = 8

_HandleFn = Callable[[RequestContext, Any], "Awaitable[None] | None"]


_CLOSED = SessionState.CLOSED


def _wall_millis() -> int:
    return time.time_ns() // 1_000_000


class ProcessorRegistry:
    """Message kind → processor, plus connection open/close hooks shared by every session."""

    def __init__(self) -> None:
        self._handlers: dict[str, _HandleFn] = {}
        #: the same handlers keyed by kind: what a session looks up per message
        self.by_kind: dict[MessageType, _HandleFn] = {}
        self._processors: dict[str, Processor | _HandleFn] = {}
        self.cleanup_hooks: list[CleanupHook] = []
        self.open_hooks: list[OpenHook] = []

    def register(self, kind: MessageType | str, processor: Processor | _HandleFn) -> None:
        """Route messages of ``kind`` to ``processor`` (an object with ``handle(ctx, msg)`` or a callable).

        Replaces an earlier registration. ``AUTH``, ``DEVICE_HELLO``, ``PING`` and
        ``BATCH`` belong to the session and cannot be registered.
        """
        name = MessageType(kind).value
        if name in SESSION_KINDS:
            raise ConfigError(f"{name} is handled by the session itself")
        handle = getattr(processor, "handle", None)
        fn = handle if callable(handle) else processor
        if not callable(fn):
            raise ConfigError(f"processor for {name} has no handle(ctx, msg) and is not callable")
        self._handlers[name] = fn  # type: ignore[assignment]
        self.by_kind[MessageType(name)] = fn  # type: ignore[assignment]
        self._processors[name] = processor

    def unregister(self, kind: MessageType | str) -> None:
        """Remove the processor of ``kind`` (its messages are then answered with ``ERROR`` 501)."""
        name = MessageType(kind).value
        self._handlers.pop(name, None)
        self.by_kind.pop(MessageType(name), None)
        self._processors.pop(name, None)

    def get(self, kind: MessageType | str) -> Processor | _HandleFn | None:
        """The processor registered for ``kind``, if any."""
        return self._processors.get(MessageType(kind).value)

    def handler(self, name: str) -> _HandleFn | None:
        """The bound ``handle`` callable for the wire name ``name``."""
        return self._handlers.get(name)

    def kinds(self) -> list[str]:
        """Wire names of the kinds that have a processor."""
        return sorted(self._handlers)

    def add_cleanup(self, hook: CleanupHook) -> None:
        """Run ``hook(ctx)`` for every connection that closes (after its own per-context hooks)."""
        self.cleanup_hooks.append(hook)

    def add_open_hook(self, hook: OpenHook) -> None:
        """Run ``hook(ctx)`` whenever a connection enters ``OPEN``."""
        self.open_hooks.append(hook)


class SessionHub:
    """What every session shares: config, authenticator, device registry, processors, metrics, codec."""

    def __init__(
        self,
        config: ServerConfig,
        *,
        authenticator: Authenticator | None,
        processors: ProcessorRegistry | None = None,
        metrics: ServerMetrics | None = None,
        devices: DeviceRegistry | None = None,
        codec: Any = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if codec is None:
            from topgun.protocol import codec as default_codec

            codec = default_codec
        self.config = config
        self.authenticator = authenticator
        self.processors = processors if processors is not None else ProcessorRegistry()
        self.metrics = metrics if metrics is not None else ServerMetrics()
        #: ``messages_received`` series, counted into inline per message
        self.received = self.metrics.messages_received.series
        self.devices = devices if devices is not None else DeviceRegistry()
        self.codec = codec
        limits_cls = getattr(codec, "Limits", None)
        self.limits: Any = (
            limits_cls(
                max_frame_bytes=config.max_message_size,
                max_str_len=config.max_message_size,
                max_bin_len=config.max_message_size,
            )
            if limits_cls is not None
            else None
        )
        self.clock = clock
        self.decode: Callable[..., Any] = codec.decode
        self.sessions: dict[int, Session] = {}
        # what the compiled sessionpath.on_message keeps of this hub
        self._path_state: Any = None
        self._background: set[asyncio.Future[Any]] = set()

    def open_session(self, conn: Connection) -> Session:
        """Create and start the session of a freshly accepted connection."""
        session = Session(self, conn)
        self.sessions[conn.id] = session
        self.metrics.connections.inc()
        self.metrics.connections_total.inc()
        session.start()
        return session

    def sweep(self, now: float | None = None) -> int:
        """Close sessions past their auth deadline or idle timeout; return how many were closed."""
        now = self.clock() if now is None else now
        idle = self.config.idle_timeout
        closed = 0
        for session in list(self.sessions.values()):
            state = session.state
            if state is SessionState.AWAIT_AUTH:
                if now >= session.auth_deadline:
                    log.info("connection %d: no AUTH before the deadline; closing", session.connection_id)
                    session.close(int(CloseCode.POLICY_VIOLATION), "authentication timeout")
                    closed += 1
            elif state is SessionState.OPEN and idle > 0 and now - session.last_ping >= idle:
                log.info("connection %d: no PING for %.0f s; closing", session.connection_id, idle)
                session.close(int(CloseCode.GOING_AWAY), "idle timeout")
                closed += 1
        return closed

    def track(self, awaitable: Awaitable[Any]) -> None:
        """Run ``awaitable`` in the background; :meth:`drain` waits for it."""
        fut = asyncio.ensure_future(awaitable)
        self._background.add(fut)
        fut.add_done_callback(self._background_done)

    def _background_done(self, fut: asyncio.Future[Any]) -> None:
        self._background.discard(fut)
        if not fut.cancelled() and fut.exception() is not None:
            log.error("background task failed", exc_info=fut.exception())

    async def drain(self, timeout: float) -> bool:
        """Wait until no session has queued or in-flight work and background hooks finished."""
        deadline = self.clock() + timeout
        while True:
            pending: list[asyncio.Future[Any]] = [
                s._task for s in self.sessions.values() if s._task is not None
            ]
            pending.extend(self._background)
            if not pending:
                return True
            remaining = deadline - self.clock()
            if remaining <= 0:
                return False
            await asyncio.wait(pending, timeout=remaining)


class Session:
    """One connection's protocol state; implements :class:`RequestContext` for processors."""

    def __init__(self, hub: SessionHub, conn: Connection) -> None:
        self.hub = hub
        self.conn = conn
        self.connection_id = conn.id
        self.state = SessionState.AWAIT_AUTH if hub.authenticator is not None else SessionState.OPEN
        self.data: dict[str, Any] = {}
        now = hub.clock()
        self.opened_at = now
        self.auth_deadline = now + hub.config.auth_timeout
        self.last_ping = now
        self._principal: Principal | None = None
        self._device_id: str | None = None
        self._auth_answered = False
        self._device_answered = False
        self._cleanups: list[CleanupHook] = []
        self._queue: deque[tuple[Any, int]] = deque()
        self._queued_bytes = 0
        self._batch_depth = 0
        self._task: asyncio.Task[None] | None = None
        self._finished = False
        cfg = hub.config
        self._max_out_bytes = cfg.send_queue_max_bytes
        self._max_out_frames = cfg.send_queue_max_frames
        self._max_in_frames = cfg.recv_queue_max_frames
        self._max_in_bytes = cfg.recv_queue_max_bytes
        self._send_bounded: Callable[[bytes, int, int], bool] | None = getattr(conn, "send_bounded", None)

    # -- RequestContext ------------------------------------------------------------------
    @property
    def principal(self) -> Principal | None:
        return self._principal

    @property
    def user_id(self) -> str | None:
        return self._principal.user_id if self._principal is not None else None

    @property
    def roles(self) -> tuple[str, ...]:
        return self._principal.roles if self._principal is not None else ()

    @property
    def device_id(self) -> str | None:
        return self._device_id

    @property
    def closed(self) -> bool:
        return self.state is SessionState.CLOSED

    def send(self, message: Any) -> None:
        """Encode ``message`` (typed message, or a plain dict packed as is) and queue it."""
        if self.state is _CLOSED:
            return
        data = msgpack.packb(message) if isinstance(message, dict) else self.hub.codec.encode(message)
        self.send_frame(data)

    #: Queue one encoded frame; drop the connection if its outbound queue is over its bound (the
    #: twin :func:`topgun.server.sessionpath.send_frame`).
    send_frame = send_frame

    def send_error(self, code: int, message: str, details: Any = None) -> None:
        self.send(Error(code=int(code), message=message, details=details))

    def add_cleanup(self, hook: CleanupHook) -> None:
        self._cleanups.append(hook)

    def close(self, code: int = 1000, reason: str = "", *, drop_pending: bool = False) -> None:
        """Stop processing and close the socket (after queued frames unless ``drop_pending``)."""
        if self.state is SessionState.CLOSED:
            return
        self.state = SessionState.CLOSED
        self._queue.clear()
        self._queued_bytes = 0
        self.conn.close(code, reason, drop_pending=drop_pending)

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        """Called once by the hub right after accept."""
        if self.state is SessionState.AWAIT_AUTH:
            self.send(AuthRequired())
        else:
            self._enter_open()

    def _enter_open(self) -> None:
        self.state = SessionState.OPEN
        self.last_ping = self.hub.clock()
        for hook in self.hub.processors.open_hooks:
            try:
                hook(self)
            except Exception:
                log.exception("connection %d: open hook failed", self.connection_id)

    def on_close(self) -> None:
        """The transport lost the connection: release everything it held (PROTOCOL §5.15)."""
        if self._finished:
            return
        self._finished = True
        self.state = SessionState.CLOSED
        self._queue.clear()
        hub = self.hub
        hub.sessions.pop(self.connection_id, None)
        hub.metrics.connections.dec()
        if self._task is not None and not self._task.done():
            self._task.cancel()
        if self._device_id is not None:
            hub.devices.release(self._device_id)
        for hook in (*self._cleanups, *hub.processors.cleanup_hooks):
            try:
                result = hook(self)
            except Exception:
                log.exception("connection %d: cleanup hook failed", self.connection_id)
                continue
            if inspect.isawaitable(result):
                hub.track(result)
        self._cleanups.clear()

    def _slow_consumer(self) -> None:
        log.warning(
            "connection %d (%s): outbound queue over its bound (%d bytes, %d frames); disconnecting",
            self.connection_id,
            self.conn.remote,
            self.conn.outbound_bytes(),
            self.conn.outbound_frames(),
        )
        self.hub.metrics.slow_consumer_disconnects.inc()
        self.close(
            int(CloseCode.TRY_AGAIN_LATER), "slow consumer: outbound queue over limit", drop_pending=True
        )

    # -- inbound ---------------------------------------------------------------------------
    #: One complete binary message from the transport (the twin
    #: :func:`topgun.server.sessionpath.on_message`: decode, then an open session with nothing
    #: queued hands it straight to its kind's processor; anything else goes to ``_on_decoded``).
    on_message = on_message

    def _on_decode_error(self, exc: Exception) -> None:
        if isinstance(exc, (UnsupportedMessageTypeError, UnknownMessageTypeError)):
            self._on_undecodable(exc, exc.type_name)
        elif isinstance(exc, ProtocolError):
            self._on_undecodable(exc, None)
        else:  # a codec bug must not take the connection down
            log.debug("connection %d: frame could not be decoded: %r", self.connection_id, exc)
            self._on_undecodable(ProtocolError(f"malformed message: {exc}"), None)

    def _on_undecodable(self, exc: ProtocolError, type_name: str | None) -> None:
        if self.state is not SessionState.OPEN:
            self.hub.metrics.malformed_frames.inc()
            return  # §1.2 item 4: never answer before authentication
        if isinstance(exc, UnsupportedMessageTypeError):
            if type_name in IGNORED_KINDS:
                return
            self.send_error(501, f"not implemented: {type_name}")
            return
        if isinstance(exc, UnknownMessageTypeError):
            log.debug("connection %d: unknown message type %r", self.connection_id, type_name)
            self.send_error(400, f"unknown message type: {type_name}")
            return
        self.hub.metrics.malformed_frames.inc()
        log.debug("connection %d: invalid message: %s", self.connection_id, exc)
        self.send_error(exc.code if 400 <= exc.code < 600 else 400, str(exc))

    def _on_decoded(self, msg: Any, size: int) -> None:
        kind: MessageType = msg.TYPE
        received = self.hub.received
        key = RECEIVED_KEY[kind]
        received[key] = received.get(key, 0) + 1
        if self.state is SessionState.AWAIT_AUTH:
            if kind is MessageType.AUTH:
                self._handle_auth_jwt(msg)
            return  # everything else is dropped silently before authentication (§5.1)
        if kind is MessageType.PING:
            # Answered at once, also while earlier work of this connection is pending (§5.5).
            self.last_ping = self.hub.clock()
            self.send(Pong(timestamp=msg.timestamp, server_time=_wall_millis()))
            return
        if kind is MessageType.BATCH:
            self._handle_batch(msg)
            return
        if self._task is not None:
            if len(self._queue) >= self._max_in_frames or self._queued_bytes + size > self._max_in_bytes:
                log.warning("connection %d: inbound queue over its bound; disconnecting", self.connection_id)
                self.close(int(CloseCode.TRY_AGAIN_LATER), "inbound queue over limit", drop_pending=True)
                return
            self._queue.append((msg, size))
            self._queued_bytes += size
            return
        result = self._dispatch(msg)
        if result is not None:
            self._task = asyncio.ensure_future(self._run_queue(result))

    def _handle_batch(self, msg: Batch) -> None:
        if self._batch_depth >= _MAX_BATCH_NESTING:
            # Each level recurses through on_message; a crafted frame could nest thousands deep.
            self.send_error(400, "BATCH nested too deeply")
            return
        try:
            frames = self.hub.codec.split_batch(msg.data, self.hub.limits)
        except ProtocolError as exc:
            self.send_error(exc.code, str(exc))
            return
        except Exception as exc:
            self.send_error(400, f"malformed BATCH: {exc}")
            return
        self._batch_depth += 1
        try:
            for frame in frames:
                if self.state is SessionState.CLOSED:
                    return
                self.on_message(bytes(frame))
        finally:
            self._batch_depth -= 1

    # -- in-order dispatch -------------------------------------------------------------------
    def _dispatch(self, msg: Any) -> Awaitable[None] | None:
        """Run the session's own handling or the registered processor; return its awaitable, if any."""
        kind: MessageType = msg.TYPE
        if kind is MessageType.AUTH:
            self._handle_auth_open(msg)
            return None
        if kind is MessageType.DEVICE_HELLO:
            self._handle_device_hello(msg)
            return None
        name = WIRE_NAME[kind]
        handler = self.hub.processors.handler(name)
        if handler is None:
            if kind in CLIENT_KINDS:
                self.send_error(501, f"not implemented: {name}")
            else:
                log.debug("connection %d: ignoring server-to-client kind %s", self.connection_id, name)
            return None
        try:
            result = handler(self, msg)
        except ProtocolError as exc:
            self._report_failure(name, exc)
            return None
        except Exception as exc:
            self._report_failure(name, exc)
            return None
        if result is not None and inspect.isawaitable(result):
            return result
        return None

    def _report_failure(self, name: str, exc: BaseException) -> None:
        if isinstance(exc, ProtocolError):
            self.send_error(exc.code, str(exc), {"type": name})
        else:
            log.error("connection %d: processor for %s failed", self.connection_id, name, exc_info=exc)
            self.send_error(500, "internal error", {"type": name})

    async def _run_queue(self, first: Awaitable[None]) -> None:
        current: Awaitable[None] | None = first
        try:
            while True:
                if current is not None:
                    try:
                        await current
                    except asyncio.CancelledError:
                        raise
                    except Exception as exc:
                        self._report_failure("?", exc)
                if self.state is SessionState.CLOSED or not self._queue:
                    return
                msg, size = self._queue.popleft()
                self._queued_bytes -= size
                current = self._dispatch(msg)
        finally:
            self._task = None

    # -- handshake -----------------------------------------------------------------------------
    def _bind_device(self, token: str | None) -> tuple[str | None, str | None]:
        if not self.hub.config.device_identity:
            return None, None
        binding = self.hub.devices.bind(token)
        self._device_id = binding.device_id
        return binding.device_id, binding.token

    def _handle_auth_jwt(self, msg: Auth) -> None:
        auth = self.hub.authenticator
        assert auth is not None
        try:
            principal = auth.authenticate(msg.token)
        except Exception as exc:  # AuthError, or anything a key/library throws
            self.hub.metrics.auth_failures.inc()
            log.info(
                "connection %d (%s): authentication failed: %s", self.connection_id, self.conn.remote, exc
            )
            self.send(AuthFail(error="Authentication failed", code=401))
            self.close(int(CloseCode.POLICY_VIOLATION), "authentication failed")
            return
        self._principal = principal
        self._auth_answered = True
        device_id, device_token = self._bind_device(msg.device_token)
        self.send(AuthAck(user_id=principal.user_id, device_id=device_id, device_token=device_token))
        self._enter_open()

    def _handle_auth_open(self, msg: Auth) -> None:
        # JWT mode: the duplicate AUTH of a TS client is ignored (§5.2 step 8).
        # No-auth mode: the first AUTH is acknowledged without validation (§5.3 step 5).
        if self._auth_answered or self.hub.authenticator is not None:
            return
        self._auth_answered = True
        device_id, device_token = (None, None)
        if self._device_id is None:
            device_id, device_token = self._bind_device(msg.device_token)
        else:
            device_id = self._device_id
        self.send(AuthAck(device_id=device_id, device_token=device_token))

    def _handle_device_hello(self, msg: DeviceHello) -> None:
        if self._device_answered or self._device_id is not None:
            return
        self._device_answered = True
        device_id, device_token = self._bind_device(msg.device_token)
        self.send(DeviceAck(device_id=device_id, device_token=device_token))

    def __repr__(self) -> str:
        return f"Session(id={self.connection_id}, state={self.state.value}, user={self.user_id!r})"


# Session structurally implements RequestContext; keep mypy honest about it.
_check: type[RequestContext] = Session
