"""The picows adapter alone, between the socket and a trivial handler: what reaches
``on_message`` for every kind of frame sequence, and how replies, closes and failures
leave.

The client is a hand-rolled one over a plain stream, so the tests choose exactly which frames
(fragments, control frames between them, text, empty payloads) arrive in one read.
"""

from __future__ import annotations

import asyncio
import base64
import os
import struct
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest

from topgun.server.transport.picows_transport import PicowsTransport

pytestmark = pytest.mark.timeout(30)

BINARY, TEXT, CONTINUATION, CLOSE, PING, PONG = 0x2, 0x1, 0x0, 0x8, 0x9, 0xA


def frame(opcode: int, payload: bytes = b"", *, fin: bool = True) -> bytes:
    """A masked client frame (RFC 6455 §5.2)."""
    head = bytes([(0x80 if fin else 0) | opcode])
    n = len(payload)
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 0x1_0000:
        head += bytes([0x80 | 126]) + struct.pack(">H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack(">Q", n)
    mask = os.urandom(4)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


class Peer:
    """A WebSocket client over a raw stream: sends any frame sequence in one write."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int) -> Peer:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 101"), head
        return cls(reader, writer)

    async def send(self, *frames: bytes) -> None:
        self.writer.write(b"".join(frames))
        await self.writer.drain()

    async def recv(self, timeout: float = 2.0) -> tuple[int, bytes]:
        """The next frame from the server: ``(opcode, payload)`` (server frames are final)."""

        async def read() -> tuple[int, bytes]:
            b0, b1 = await self.reader.readexactly(2)
            assert b0 & 0x80 and not b1 & 0x80  # final, unmasked
            n = b1 & 0x7F
            if n == 126:
                (n,) = struct.unpack(">H", await self.reader.readexactly(2))
            elif n == 127:
                (n,) = struct.unpack(">Q", await self.reader.readexactly(8))
            return b0 & 0x0F, await self.reader.readexactly(n)

        return await asyncio.wait_for(read(), timeout)

    async def recv_binary(self) -> bytes:
        op, data = await self.recv()
        assert op == BINARY, (op, data)
        return data

    async def expect_close(self) -> int:
        """Frames until the close frame; its code."""
        while True:
            op, data = await self.recv()
            if op == CLOSE:
                return int(struct.unpack(">H", data[:2])[0])

    def abort(self) -> None:
        self.writer.transport.abort()


class Recorder:
    """The session stand-in: records every message, and runs ``react`` on it if set."""

    def __init__(self) -> None:
        self.conns: list[Any] = []
        self.got: list[bytes] = []
        self.closed = 0
        self.react: Callable[[Any, bytes], None] | None = None

    def on_connect(self, conn: Any) -> Recorder.Listener:
        self.conns.append(conn)
        return Recorder.Listener(self, conn)

    class Listener:
        def __init__(self, rec: Recorder, conn: Any) -> None:
            self.rec = rec
            self.conn = conn

        def on_message(self, data: bytes) -> None:
            assert type(data) is bytes
            self.rec.got.append(data)
            if self.rec.react is not None:
                self.rec.react(self.conn, data)

        def on_close(self) -> None:
            self.rec.closed += 1


class _Routes:
    def route(self, method: str, target: str) -> None:
        return None


@asynccontextmanager
async def adapter(
    max_message_size: int = 1 << 20,
) -> AsyncIterator[tuple[Recorder, PicowsTransport, list[int]]]:
    rec = Recorder()
    oversize: list[int] = []
    routes: Any = _Routes()  # every path upgrades
    server = PicowsTransport(
        rec, routes, max_message_size=max_message_size, on_oversize=lambda: oversize.append(1)
    )
    await server.start("127.0.0.1", 0)
    try:
        yield rec, server, oversize
    finally:
        await server.stop_accepting()
        for conn in list(server._connections):
            conn.close(1001)
        await asyncio.wait_for(server.wait_closed(), 10)


async def until(cond: Callable[[], Any]) -> None:
    for _ in range(300):
        if cond():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")


def echo(conn: Any, data: bytes) -> None:
    conn.send(b"re:" + data)


async def test_whole_messages_arrive_as_bytes_in_order_text_and_pongs_dropped() -> None:
    async with adapter() as (rec, server, _):
        rec.react = echo
        peer = await Peer.open(server.port)
        await peer.send(
            frame(BINARY, b"one"),
            frame(TEXT, b"text"),
            frame(BINARY, b""),
            frame(PONG, b"p"),
            frame(BINARY, b"x" * 70_000),
            frame(BINARY, b"four"),
        )
        assert [await peer.recv_binary() for _ in range(4)] == [
            b"re:one",
            b"re:",
            b"re:" + b"x" * 70_000,
            b"re:four",
        ]
        assert rec.got == [b"one", b"", b"x" * 70_000, b"four"]
        peer.abort()
        await until(lambda: rec.closed == 1)


async def test_fragments_are_reassembled_around_control_frames_and_text() -> None:
    async with adapter() as (rec, server, _):
        rec.react = echo
        peer = await Peer.open(server.port)
        await peer.send(
            frame(BINARY, b"ab", fin=False),
            frame(PING, b"hi"),  # answered by picows, between fragments
            frame(CONTINUATION, b"cd", fin=False),
            frame(CONTINUATION, b"ef"),
            frame(TEXT, b"t1", fin=False),  # a fragmented text message: dropped whole
            frame(CONTINUATION, b"t2"),
            frame(BINARY, b"after"),
        )
        assert await peer.recv() == (PONG, b"hi")
        assert [await peer.recv_binary() for _ in range(2)] == [b"re:abcdef", b"re:after"]
        assert rec.got == [b"abcdef", b"after"]
        peer.abort()


async def test_a_whole_message_abandons_unfinished_fragments() -> None:
    async with adapter() as (rec, server, _):
        rec.react = echo
        peer = await Peer.open(server.port)
        await peer.send(
            frame(BINARY, b"lost", fin=False),
            frame(BINARY, b"whole"),
            frame(CONTINUATION, b"stray"),  # belongs to no message any more
            frame(BINARY, b"next"),
        )
        assert [await peer.recv_binary() for _ in range(2)] == [b"re:whole", b"re:next"]
        assert rec.got == [b"whole", b"next"]
        peer.abort()


async def test_oversize_fragmented_message_is_refused_1009() -> None:
    async with adapter(max_message_size=100) as (rec, server, oversize):
        peer = await Peer.open(server.port)
        await peer.send(frame(BINARY, b"a" * 60, fin=False), frame(CONTINUATION, b"b" * 60))
        assert await peer.expect_close() == 1009
        assert rec.got == [] and oversize == [1]
        peer.abort()


async def test_close_during_delivery_sends_the_reply_first_or_drops_it() -> None:
    async with adapter() as (rec, server, _):

        def reply_then_close(conn: Any, data: bytes) -> None:
            conn.send(b"bye:" + data)
            conn.close(1000 if data == b"keep" else 1013, "done", drop_pending=data == b"drop")
            conn.send(b"after close")  # refused: nothing follows the close frame

        rec.react = reply_then_close
        keep = await Peer.open(server.port)
        await keep.send(frame(BINARY, b"keep"), frame(BINARY, b"more"))
        assert await keep.recv() == (BINARY, b"bye:keep")
        assert await keep.recv() == (CLOSE, struct.pack(">H", 1000) + b"done")
        drop = await Peer.open(server.port)
        await drop.send(frame(BINARY, b"drop"))
        assert await drop.recv() == (CLOSE, struct.pack(">H", 1013) + b"done")
        for peer in (keep, drop):
            peer.abort()
        await until(lambda: rec.closed == 2)
        assert rec.conns[0].closed and rec.conns[1].closed


async def test_a_failing_listener_does_not_take_the_connection_down(caplog: pytest.LogCaptureFixture) -> None:
    async with adapter() as (rec, server, _):

        def fragile(conn: Any, data: bytes) -> None:
            if data.startswith(b"boom"):
                raise RuntimeError("listener bug")
            echo(conn, data)

        rec.react = fragile
        peer = await Peer.open(server.port)
        await peer.send(frame(BINARY, b"boom"), frame(BINARY, b"bo", fin=False), frame(CONTINUATION, b"om"))
        await peer.send(frame(BINARY, b"fine"))
        assert await peer.recv_binary() == b"re:fine"
        assert rec.got == [b"boom", b"boom", b"fine"]
        assert caplog.text.count("listener failed") == 2
        peer.abort()


class _WriteSpy:
    """Stands in for one connection's asyncio transport and WebSocket send: counts the writes."""

    def __init__(self, box: Any) -> None:
        self.box = box
        self.real = box.underlying
        self.real_frame = box.write_frame
        self.writes = 0
        self.frame_writes = 0
        self.fail = 0
        box.underlying = self
        box.write_frame = self.write_frame

    def is_closing(self) -> bool:
        return bool(self.real.is_closing())

    def write(self, data: bytes) -> None:
        self.writes += 1
        self.real.write(data)

    def write_frame(self, mtype: Any, data: bytes) -> None:
        if self.fail:
            self.fail -= 1
            raise OSError("write failed")
        self.frame_writes += 1
        self.real_frame(mtype, data)


async def test_frames_of_one_iteration_leave_in_one_write_in_and_out_of_delivery() -> None:
    async with adapter() as (rec, server, _):
        loop = asyncio.get_running_loop()

        def burst(conn: Any, data: bytes) -> None:
            n = int(data)
            for i in range(n):
                conn.send(b"%d/%d" % (i, n))
            # and a burst from a later callback, outside any delivery
            loop.call_soon(lambda: [conn.send(b"later %d" % i) for i in range(n)])

        rec.react = burst
        peer = await Peer.open(server.port)
        await until(lambda: rec.conns)
        spy = _WriteSpy(rec.conns[0]._box)
        await peer.send(frame(BINARY, b"3"))
        assert [await peer.recv_binary() for _ in range(6)] == [
            b"0/3",
            b"1/3",
            b"2/3",
            b"later 0",
            b"later 1",
            b"later 2",
        ]
        assert (spy.writes, spy.frame_writes) == (2, 0)
        await peer.send(frame(BINARY, b"1"))
        assert [await peer.recv_binary() for _ in range(2)] == [b"0/1", b"later 0"]
        assert (spy.writes, spy.frame_writes) == (2, 2)  # a lone frame goes out as it is
        peer.abort()


async def test_a_failing_flush_strands_no_other_connection(caplog: pytest.LogCaptureFixture) -> None:
    async with adapter() as (rec, server, _):

        def fan_out(conn: Any, data: bytes) -> None:
            for c in rec.conns:  # the first connection's flush fails, then this one's runs
                c.send(b"to %d" % c.id)

        rec.react = fan_out
        first = await Peer.open(server.port)
        await until(lambda: len(rec.conns) == 1)
        second = await Peer.open(server.port)
        await until(lambda: len(rec.conns) == 2)
        spy = _WriteSpy(rec.conns[0]._box)
        spy.fail = 1
        await second.send(frame(BINARY, b"go"))
        assert await second.recv_binary() == b"to %d" % rec.conns[1].id
        assert "flushing a connection's frames failed" in caplog.text
        await second.send(frame(BINARY, b"again"))  # later flushes are scheduled as usual
        assert await second.recv_binary() == b"to %d" % rec.conns[1].id
        assert await first.recv_binary() == b"to %d" % rec.conns[0].id
        assert spy.frame_writes == 1
        for peer in (first, second):
            peer.abort()


async def test_frames_queued_for_a_peer_that_is_gone_are_dropped() -> None:
    async with adapter() as (rec, server, _):
        peer = await Peer.open(server.port)
        await until(lambda: rec.conns)
        conn = rec.conns[0]
        peer.abort()
        await until(lambda: rec.closed == 1)
        conn.send(b"into the void")
        assert conn.closed and conn.outbound_bytes() == 0 and conn._box.first is None


async def test_a_gone_connection_is_not_held_by_its_frame_handler() -> None:
    async with adapter() as (rec, server, _):
        rec.react = echo
        peer = await Peer.open(server.port)
        await peer.send(frame(BINARY, b"hi"))
        assert await peer.recv_binary() == b"re:hi"
        conn = rec.conns[0]
        held = [cell.cell_contents for cell in conn.on_ws_frame.__closure__ or ()]
        assert conn in held  # the handler picows calls is bound to its connection...
        peer.abort()
        await until(lambda: rec.closed == 1)
        held = [cell.cell_contents for cell in conn.on_ws_frame.__closure__ or ()]
        assert conn not in held  # ...and lets go of it when the peer is gone
