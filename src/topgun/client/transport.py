"""The thin I/O adapter: one websockets connection at a time, feeding the sans-I/O engine.

Owns the reconnect loop (exponential backoff with jitter, §5.5), the heartbeat
(``PING`` every 5 s, drop after 15 s without ``PONG``), the no-auth grace timer
(§5.3) and the token lookup. Frames are binary MsgPack (§1.2); text frames and
undecodable frames are dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Union

import websockets
from websockets.asyncio.client import ClientConnection, connect

from topgun.client.engine import SyncEngine
from topgun.client.state import ConnectionState
from topgun.errors import AuthError, ProtocolError
from topgun.protocol import codec
from topgun.protocol.messages import Message

__all__ = ["ConnectionSettings", "Connector", "TokenSource", "backoff_delay"]

log = logging.getLogger("topgun.client.transport")

#: A token, or a (sync or async) callable returning one (None = no token).
TokenSource = Union[str, Callable[[], Union[str, Awaitable[Union[str, None]], None]], None]  # noqa: UP007


@dataclass
class ConnectionSettings:
    """Timing knobs of the connection (defaults are the TS client's, Appendix B)."""

    ping_interval: float = 5.0
    pong_timeout: float = 15.0
    backoff_base: float = 1.0
    backoff_max: float = 30.0
    open_timeout: float = 10.0
    no_auth_grace: float = 0.5
    max_frame: int = 64 * 1024 * 1024
    resend_delay: float = 1.0


def backoff_delay(
    attempt: int, settings: ConnectionSettings, rnd: Callable[[], float] = random.random
) -> float:
    """``min(base * 2**attempt, max) * U[0.5, 1.5)`` seconds (§5.5 item 4)."""
    base = min(settings.backoff_base * (2 ** min(attempt, 30)), settings.backoff_max)
    return base * (0.5 + rnd())


class Connector:
    """Runs the connect → authenticate → sync → read loop until stopped."""

    def __init__(
        self,
        url: str,
        engine: SyncEngine,
        *,
        token: TokenSource,
        settings: ConnectionSettings,
        set_state: Callable[[ConnectionState], None],
    ) -> None:
        self.url = url
        self.engine = engine
        self.token_source = token
        self.settings = settings
        self._set_state = set_state
        self._ws: ClientConnection | None = None
        self._stopping = False
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._out: asyncio.Queue[Message | None] | None = None
        self.last_error: BaseException | None = None
        self._token_failed = False
        self._my_session = -1

    # -- control -----------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the connection loop task."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="topgun-client")

    async def stop(self) -> None:
        """Stop the loop, close the socket and wait for the task."""
        self._stopping = True
        self._wake.set()
        ws = self._ws
        if ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), 1.0)
        task = self._task
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._task = None

    def stop_nowait(self) -> None:
        """Stop without waiting (the task is cancelled and the socket aborted)."""
        self._stopping = True
        self._wake.set()
        self.drop_connection()
        if self._task is not None:
            self._task.cancel()
            self._task = None

    def reconnect_now(self) -> None:
        """Skip a pending backoff wait (e.g. after :meth:`TopGunClient.set_token`)."""
        self._token_failed = False
        self._wake.set()

    def send(self, msgs: list[Message]) -> None:
        """Queue messages for the current connection (dropped when there is none)."""
        q = self._out
        if q is None or not msgs:
            return
        for m in msgs:
            q.put_nowait(m)

    def drop_connection(self) -> None:
        """Abort the current socket (the run loop reconnects)."""
        ws = self._ws
        if ws is not None:
            ws.transport.abort()

    # -- token -------------------------------------------------------------------------------------

    async def _token(self) -> str | None:
        src = self.token_source
        if src is None or isinstance(src, str):
            return src
        res = src()
        if inspect.isawaitable(res):
            res = await res
        if res is not None and not isinstance(res, str):
            raise AuthError("the token callable must return a str or None")
        return res

    # -- main loop ---------------------------------------------------------------------------------

    async def _run(self) -> None:
        attempt = 0
        while not self._stopping:
            if self._token_failed:
                # A fixed token the server refused: wait for set_token()/reconnect_now().
                self._set_state(ConnectionState.ERROR)
                self._wake.clear()
                await self._wake.wait()
                continue
            self._set_state(ConnectionState.CONNECTING)
            opened = False
            auth_failed = None
            try:
                async with connect(
                    self.url,
                    open_timeout=self.settings.open_timeout,
                    ping_interval=None,
                    close_timeout=1.0,
                    max_size=self.settings.max_frame,
                    compression=None,
                ) as ws:
                    opened = True
                    attempt = 0
                    self._ws = ws
                    await self._session(ws)
            except asyncio.CancelledError:
                raise
            except (OSError, TimeoutError, websockets.exceptions.WebSocketException) as exc:
                self.last_error = exc
                log.debug("connection to %s failed: %r", self.url, exc)
            except Exception as exc:  # a bug must not kill the reconnect loop
                self.last_error = exc
                log.exception("client connection loop error")
            finally:
                self._ws = None
                self._out = None
                if self.engine.sessions == self._my_session:
                    auth_failed = self.engine.auth_failed
                    self.engine.end_session()
            if self._stopping:
                break
            if auth_failed is not None:
                self.last_error = AuthError(auth_failed.error or "Authentication failed")
                if not callable(self.token_source):
                    # A fixed token the server refused will not work next time either.
                    self._token_failed = True
                    continue
            self._set_state(ConnectionState.DISCONNECTED if opened else ConnectionState.BACKOFF)
            delay = backoff_delay(attempt, self.settings)
            attempt += 1
            self._set_state(ConnectionState.BACKOFF)
            self._wake.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)

    async def _session(self, ws: ClientConnection) -> None:
        engine = self.engine
        loop = asyncio.get_running_loop()
        self._set_state(ConnectionState.AUTHENTICATING)
        out: asyncio.Queue[Message | None] = asyncio.Queue()
        self._out = out
        writer = loop.create_task(self._writer(ws, out))
        heart: asyncio.Task[None] | None = None
        try:
            token = await self._token()
            msgs = engine.start_session(token)
            self._my_session = engine.sessions
            self.send(msgs)
            grace_deadline = loop.time() + self.settings.no_auth_grace if not token else None
            while True:
                if not engine.ready:
                    if engine.needs_token:
                        await self._supply_token()
                        grace_deadline = None
                    if grace_deadline is not None:
                        try:
                            frame = await asyncio.wait_for(ws.recv(), max(0.0, grace_deadline - loop.time()))
                        except (asyncio.TimeoutError, TimeoutError):
                            grace_deadline = None
                            self._after_receive(engine.grace_expired())
                            if engine.ready and heart is None:
                                heart = self._became_ready()
                            continue
                    else:
                        frame = await ws.recv()
                else:
                    frame = await ws.recv()
                if isinstance(frame, str):
                    log.debug("ignoring a text frame")
                    continue
                try:
                    msg = codec.decode(frame)
                except ProtocolError as exc:
                    log.debug("dropping an undecodable frame: %s", exc)
                    continue
                self._after_receive(engine.receive(msg))
                if engine.auth_failed is not None:
                    log.warning("authentication failed: %s", engine.auth_failed.error)
                    return
                if engine.ready and heart is None:
                    heart = self._became_ready()
        finally:
            if heart is not None:
                heart.cancel()
            out.put_nowait(None)
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await writer

    def _became_ready(self) -> asyncio.Task[None]:
        # The TS client passes through SYNCING to CONNECTED without waiting for the sync (§5.1).
        self._set_state(ConnectionState.SYNCING)
        self._set_state(ConnectionState.CONNECTED)
        return asyncio.get_running_loop().create_task(self._heartbeat())

    def _after_receive(self, msgs: list[Message]) -> None:
        self.send(msgs)
        if self.engine.resend_requested:
            self.engine.session.resend_requested = False
            asyncio.get_running_loop().call_later(self.settings.resend_delay, self._resend)

    def _resend(self) -> None:
        self.send(self.engine.resend_unacked())

    async def _supply_token(self) -> None:
        token = None
        if callable(self.token_source):
            token = await self._token()
        if token:
            self.send(self.engine.supply_token(token))
            return
        # JWT server, no token: wait for set_token() (reconnect_now) or close.
        self.last_error = AuthError("the server requires a token and none is configured")
        self._set_state(ConnectionState.ERROR)
        self._wake.clear()
        await self._wake.wait()
        raise ConnectionResetError("reconnecting with a new token")

    async def _writer(self, ws: ClientConnection, q: asyncio.Queue[Message | None]) -> None:
        try:
            await self._write_loop(ws, q)
        except asyncio.CancelledError:
            raise
        except websockets.exceptions.ConnectionClosed:
            pass
        except Exception:
            # A writer that died silently would leave a connection that looks alive but sends
            # nothing; drop it instead so the session starts over.
            log.exception("client writer failed; reconnecting")
            ws.transport.abort()

    async def _write_loop(self, ws: ClientConnection, q: asyncio.Queue[Message | None]) -> None:
        encode = codec.encode
        while True:
            msg = await q.get()
            if msg is None:
                return
            frames = [encode(msg)]
            # Coalesce whatever else is queued into consecutive sends without yielding per frame.
            while not q.empty():
                nxt = q.get_nowait()
                if nxt is None:
                    for f in frames:
                        await ws.send(f)
                    return
                frames.append(encode(nxt))
            for f in frames:
                await ws.send(f)

    async def _heartbeat(self) -> None:
        engine = self.engine
        interval = self.settings.ping_interval
        while True:
            await asyncio.sleep(interval)
            if not engine.ready:
                continue
            self.send([engine.ping()])
            if engine.seconds_since_pong() > self.settings.pong_timeout:
                log.warning("no PONG for %.1f s: reconnecting", engine.seconds_since_pong())
                self.drop_connection()
                return

