"""Transport adapter over the ``websockets`` library (its asyncio implementation).

Outbound frames go through a per-connection deque drained by one writer task,
so :meth:`Connection.send` never blocks the session; the deque's size is what
the slow-consumer policy measures. Plain HTTP is answered from
``process_request``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from topgun.server.transport.base import CloseCode, ConnectionListener, TransportServer, next_connection_id

__all__ = ["WebsocketsTransport"]

log = logging.getLogger("topgun.transport")

_CLOSE = object()


class _WsConnection:
    """:class:`topgun.server.transport.base.Connection` over one websockets connection."""

    __slots__ = (
        "_bytes",
        "_close_args",
        "_closed",
        "_queue",
        "_wake",
        "_writer",
        "_ws",
        "id",
        "remote",
    )

    def __init__(self, ws: ServerConnection) -> None:
        self.id = next_connection_id()
        addr = ws.remote_address
        self.remote = f"{addr[0]}:{addr[1]}" if isinstance(addr, tuple) and len(addr) >= 2 else str(addr)
        self._ws = ws
        self._queue: deque[Any] = deque()
        self._bytes = 0
        self._wake = asyncio.Event()
        self._closed = False
        self._close_args: tuple[int, str] | None = None
        self._writer = asyncio.get_running_loop().create_task(self._write_loop())

    @property
    def closed(self) -> bool:
        return self._closed

    def send(self, data: bytes) -> None:
        if self._closed or self._close_args is not None:
            return
        self._queue.append(data)
        self._bytes += len(data)
        self._wake.set()

    def close(self, code: int, reason: str = "", *, drop_pending: bool = False) -> None:
        if self._close_args is not None or self._closed:
            return
        self._close_args = (int(code), reason)
        if drop_pending:
            self._queue.clear()
            self._bytes = 0
            # The writer may be parked on a full socket buffer; do not wait for it.
            self._writer.cancel()
            # Keep a strong reference: the loop only holds tasks weakly.
            self._writer = asyncio.get_running_loop().create_task(self._close_now())
        else:
            self._queue.append(_CLOSE)
            self._wake.set()

    async def _close_now(self) -> None:
        assert self._close_args is not None
        with contextlib.suppress(Exception):
            await self._ws.close(*self._close_args)

    def outbound_bytes(self) -> int:
        transport = self._ws.transport
        buffered = transport.get_write_buffer_size() if transport is not None else 0
        return self._bytes + buffered

    def outbound_frames(self) -> int:
        return len(self._queue)

    async def _write_loop(self) -> None:
        ws = self._ws
        queue = self._queue
        try:
            while True:
                if not queue:
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                item = queue.popleft()
                if item is _CLOSE:
                    assert self._close_args is not None
                    await ws.close(*self._close_args)
                    return
                self._bytes -= len(item)
                await ws.send(item)
        except ConnectionClosed:
            pass
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("connection %d: writer failed", self.id)
            with contextlib.suppress(Exception):
                await ws.close(int(CloseCode.INTERNAL_ERROR), "internal error")

    def _finish(self) -> None:
        self._closed = True
        self._queue.clear()
        self._bytes = 0
        if not self._writer.done():
            self._writer.cancel()


class WebsocketsTransport(TransportServer):
    """WebSocket + plain HTTP on one port with the ``websockets`` library."""

    name = "websockets"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._server: Server | None = None
        self._connections: set[_WsConnection] = set()
        self._idle = asyncio.Event()
        self._idle.set()

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        answer = self.routes.route("GET", request.path)
        if answer is None:
            return None
        headers = Headers()
        headers["Content-Type"] = answer.content_type
        headers["Content-Length"] = str(len(answer.body))
        headers["Connection"] = "close"
        return Response(answer.status, answer.reason, headers, answer.body)

    async def _handle(self, ws: ServerConnection) -> None:
        conn = _WsConnection(ws)
        self._connections.add(conn)
        self._idle.clear()
        listener: ConnectionListener | None = None
        try:
            listener = self.handler.on_connect(conn)
            async for message in ws:
                # Text messages are never protocol messages (PROTOCOL §1.2).
                if isinstance(message, bytes):
                    try:
                        listener.on_message(message)
                    except Exception:
                        log.exception("connection %d: listener failed", conn.id)
        except ConnectionClosed:
            pass
        except Exception:
            log.exception("connection %d: listener failed", conn.id)
        finally:
            sent = ws.protocol.close_sent
            if sent is not None and sent.code == int(CloseCode.MESSAGE_TOO_BIG) and self.on_oversize:
                self.on_oversize()
            conn._finish()
            if listener is not None:
                try:
                    listener.on_close()
                except Exception:
                    log.exception("connection %d: on_close failed", conn.id)
            self._connections.discard(conn)
            if not self._connections:
                self._idle.set()

    async def start(self, host: str, port: int) -> int:
        self._server = await serve(
            self._handle,
            host,
            port,
            process_request=self._process_request,
            compression=None,
            # The protocol has its own PING/PONG and idle timeout (PROTOCOL §5.5).
            ping_interval=None,
            max_size=self.max_message_size,
            max_queue=64,
            close_timeout=5,
            server_header=None,
        )
        sock = next(iter(self._server.sockets))
        self.port = sock.getsockname()[1]
        return self.port

    async def stop_accepting(self) -> None:
        if self._server is not None:
            self._server.close(close_connections=False)

    async def wait_closed(self) -> None:
        await self._idle.wait()
        if self._server is not None:
            await self._server.wait_closed()
