"""Transport adapter over ``picows`` (a Cython WebSocket library).

picows delivers frames, not messages, so fragmented binary messages are
reassembled here (with the size limit checked across fragments). Sends go
straight to the asyncio transport; its write-buffer size is what the
slow-consumer policy measures (plus the frames queued for the next flush).
Frames sent during one event-loop iteration are corked: they are written at
the end of the iteration, all frames of a connection in one ``write``, so a
push to many connections or an ack after each of several pipelined batches
costs one system call per connection rather than one per frame. Plain HTTP is answered by returning a non-101
response from the listener factory, which picows sends with
``Connection: close``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from typing import Any

from picows import (
    WSCloseCode,
    WSFrame,
    WSListener,
    WSMsgType,
    WSTransport,
    WSUpgradeRequest,
    WSUpgradeResponse,
    WSUpgradeResponseWithListener,
    ws_create_server,
)

from topgun.server.transport.base import CloseCode, ConnectionListener, TransportServer, next_connection_id
from topgun.server.transport.outbox import Outbox, flush_all

__all__ = ["PicowsTransport"]

log = logging.getLogger("topgun.transport")

#: Seconds a closing connection may take to flush before it is aborted.
_ABORT_AFTER = 5.0

_BINARY = WSMsgType.BINARY
_CONTINUATION = WSMsgType.CONTINUATION
_TEXT = WSMsgType.TEXT
_CLOSE_FRAME = WSMsgType.CLOSE


def _drop_message(data: bytes) -> None:
    """The message sink of a connection without a listener."""


def _ignore_frame(transport: WSTransport, frame: WSFrame) -> None:
    """The frame handler of a connection before it is connected and after it is gone."""


def _close_code(code: int) -> WSCloseCode:
    try:
        return WSCloseCode(code)
    except ValueError:
        return WSCloseCode.POLICY_VIOLATION


class _PicowsConnection(WSListener):  # type: ignore[misc]
    """Both the picows listener and the :class:`~topgun.server.transport.base.Connection`."""

    # Slots: without them every attribute of this subclass of picows' extension type lives in an
    # instance dict that costs about three times as much to read or write (~25 vs ~8 ns).
    __slots__ = (
        "_box",
        "_close_sent",
        "_closed",
        "_in_text",
        "_listener",
        "_on_message",
        "_oversize_reported",
        "_parts",
        "_parts_size",
        "_server",
        "_transport",
        "id",
        "on_ws_frame",
        "remote",
    )

    def __init__(self, server: PicowsTransport) -> None:
        super().__init__()
        self._server = server
        self.id = next_connection_id()
        self.remote = "?"
        self._transport: WSTransport | None = None
        self._listener: ConnectionListener | None = None
        # The listener's on_message, bound once: called for every message. Until the session
        # exists (never, if on_connect fails) messages are dropped, without a test per frame.
        self._on_message: Callable[[bytes], None] = _drop_message
        self._closed = False
        self._close_sent = False
        self._box = Outbox(server)
        # Fragment reassembly: None when no binary message is in progress.
        self._parts: list[bytes] | None = None
        self._parts_size = 0
        self._in_text = False
        self._oversize_reported = False
        # Set to the connection's frame handler on connect (see _frame_handler); an attribute where
        # the picows stub declares a method.
        self.on_ws_frame: Callable[[WSTransport, WSFrame], None] = _ignore_frame  # type: ignore[assignment]

    # -- Connection ------------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self._closed or self._close_sent

    def send(self, data: bytes) -> None:
        self._box.send(data)

    @property
    def send_bounded(self) -> Callable[[bytes, int, int], bool]:
        """:meth:`Outbox.send_bounded` of this connection: send one frame, then say whether the
        outbound queue is over ``max_bytes`` or ``max_frames`` (the session's slow-consumer test)."""
        return self._box.send_bounded

    def close(self, code: int, reason: str = "", *, drop_pending: bool = False) -> None:
        t = self._transport
        if t is None or self._closed or self._close_sent:
            return
        box = self._box
        if drop_pending:
            box.drop()
        else:
            box.flush()
        self._close_sent = True
        box.accepting = False
        try:
            t.send_close(_close_code(code), reason.encode("utf-8")[:120])
        except Exception:
            pass
        t.disconnect(graceful=True)
        if drop_pending or box.paused:
            asyncio.get_running_loop().call_later(_ABORT_AFTER, self._abort)

    def _abort(self) -> None:
        if not self._closed and self._transport is not None:
            self._transport.disconnect(graceful=False)

    def outbound_bytes(self) -> int:
        return self._box.outbound_bytes()

    def outbound_frames(self) -> int:
        return self._box.paused_frames

    # -- WSListener ------------------------------------------------------------------------
    def on_ws_connected(self, transport: WSTransport) -> None:
        self._transport = transport
        self.on_ws_frame = self._frame_handler()
        box = self._box
        box.transport = transport
        box.write_frame = transport.send
        # the outbox twin's flush of the server's dirty list, scheduled without a wrapper frame
        box.schedule = functools.partial(asyncio.get_running_loop().call_soon, flush_all, self._server._dirty)
        box.underlying = ut = transport.underlying_transport
        box.write_buffer_size = ut.get_write_buffer_size
        box.high_water = int(ut.get_write_buffer_limits()[1])
        box.accepting = not (self._closed or self._close_sent)
        peer = transport.underlying_transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            self.remote = f"{peer[0]}:{peer[1]}"
        self._server._connections.add(self)
        self._server._idle.clear()
        self._listener = listener = self._server.handler.on_connect(self)
        self._on_message = listener.on_message

    def _deliver(self, data: bytes) -> None:
        try:
            self._on_message(data)
        except Exception:
            log.exception("connection %d: listener failed", self.id)

    def _frame_handler(self) -> Callable[[WSTransport, WSFrame], None]:
        """The ``on_ws_frame`` picows calls for every frame of this connection.

        A closure held in an instance slot rather than a method: picows looks the override up on
        every frame, and a method would be bound anew each time (about 220 instructions a frame,
        measured). The common case, a whole binary message in one frame and no fragmented one
        pending, is delivered here; every other frame goes to :meth:`_on_other_frame`.
        """

        def on_ws_frame(transport: WSTransport, frame: WSFrame) -> None:
            if frame.msg_type is _BINARY and frame.fin and self._parts is None:
                on_message = self._on_message
                try:
                    on_message(frame.get_payload_as_bytes())
                except Exception:
                    log.exception("connection %d: listener failed", self.id)
                return
            self._on_other_frame(transport, frame, frame.msg_type)

        return on_ws_frame

    def _on_other_frame(self, transport: WSTransport, frame: WSFrame, mtype: WSMsgType) -> None:
        if mtype is _BINARY:
            if frame.fin:
                # a whole message abandons the unfinished fragmented one
                self._parts = None
                self._deliver(frame.get_payload_as_bytes())
                return
            # the first fragment of a message
            self._parts = [frame.get_payload_as_bytes()]
            self._parts_size = frame.payload_size
            self._check_size()
        elif mtype is _CONTINUATION:
            if self._in_text:
                if frame.fin:
                    self._in_text = False
                return
            if self._parts is None:
                return
            self._parts.append(frame.get_payload_as_bytes())
            self._parts_size += frame.payload_size
            if not self._check_size():
                return
            if frame.fin:
                data = b"".join(self._parts)
                self._parts = None
                self._deliver(data)
        elif mtype is _TEXT:
            # Text messages are never protocol messages (PROTOCOL §1.2).
            self._in_text = not frame.fin
        elif mtype is _CLOSE_FRAME:
            if not self._close_sent:
                self._close_sent = True
                self._box.accepting = False
                transport.send_close(frame.get_close_code(), frame.get_close_message())
            transport.disconnect()

    def _check_size(self) -> bool:
        if self._parts_size > self._server.max_message_size:
            self._parts = None
            self._oversize_reported = True
            if self._server.on_oversize:
                self._server.on_oversize()
            self.close(int(CloseCode.MESSAGE_TOO_BIG), "message too big")
            return False
        return True

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        if self._closed:
            return
        self._closed = True
        # The frame handler refers to this connection; dropping it leaves no cycle behind.
        self.on_ws_frame = _ignore_frame
        box = self._box
        box.accepting = False
        box.drop()
        self._parts = None
        hs = transport.close_handshake
        if hs is not None and hs.sent is not None and not self._oversize_reported:
            code: Any = hs.sent.code
            too_big = int(getattr(code, "value", code)) == int(CloseCode.MESSAGE_TOO_BIG)
            if too_big and self._server.on_oversize:
                # picows refused a single oversize frame itself
                self._server.on_oversize()
        listener = self._listener
        if listener is not None:
            try:
                listener.on_close()
            except Exception:
                log.exception("connection %d: on_close failed", self.id)
        server = self._server
        server._connections.discard(self)
        if not server._connections:
            server._idle.set()

    def pause_writing(self) -> None:
        self._box.paused = True

    def resume_writing(self) -> None:
        box = self._box
        box.paused = False
        box.paused_frames = 0


class PicowsTransport(TransportServer):
    """WebSocket + plain HTTP on one port with picows."""

    name = "picows"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._server: asyncio.Server | None = None
        self._connections: set[_PicowsConnection] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        # Outboxes with frames for the end-of-iteration flush. Never replaced (every outbox holds
        # it); the flush is scheduled by the send that finds it empty.
        self._dirty: list[Outbox] = []

    def _factory(self, request: WSUpgradeRequest) -> Any:
        try:
            method = request.method.decode("latin-1")
            target = request.path.decode("latin-1")
        except Exception:
            return None
        answer = self.routes.route(method, target)
        if answer is None:
            return _PicowsConnection(self)
        headers = {"Content-Type": answer.content_type}
        if answer.status < 400:
            response = WSUpgradeResponse.create_ok_response(answer.body, headers)
        else:
            response = WSUpgradeResponse.create_error_response(answer.status, answer.body, headers)
        return WSUpgradeResponseWithListener(response, None)

    async def start(self, host: str, port: int) -> int:
        self._server = await ws_create_server(
            self._factory,
            host,
            port,
            max_frame_size=self.max_message_size,
            logger_name="server",
            enable_auto_pong=True,
            websocket_handshake_timeout=10,
        )
        sock = self._server.sockets[0]
        self.port = sock.getsockname()[1]
        return self.port

    async def stop_accepting(self) -> None:
        if self._server is not None:
            self._server.close()

    async def wait_closed(self) -> None:
        await self._idle.wait()
