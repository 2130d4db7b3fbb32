"""The load-generator process of ``topgun bench`` (``python -m topgun.bench.worker MODE JSON``).

It runs in its own process (picows client on uvloop) so the figures measure
the server, and reports to the parent through JSON lines on stdout:
``{"event": "ready"}``, ``{"event": "start"}`` (measurement window opens),
``{"event": "progress", "n": …}``, ``{"event": "end"}`` and finally one
``{"event": "result", …}`` line carrying the counts, its own CPU seconds over
the window and latency histograms.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import resource
import select
import socket
import struct
import sys
import time
from array import array
from collections.abc import Callable
from typing import Any

import msgpack
from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

from topgun.bench.frames import BatchTemplate, auth_frame, encode, wall_millis
from topgun.bench.histogram import Histogram
from topgun.protocol.messages import WriteConcern

__all__ = ["main"]

_Q = struct.Struct(">Q")
_T_PLACE = 0x5B5B_0000_0000_0001
_T_MARK = b"\xa1t\xcf"
_BINARY = WSMsgType.BINARY
_LEVELS = tuple(wc.value for wc in WriteConcern)
_perf_ns = time.perf_counter_ns
#: Latencies held before they are folded into the histogram during a window (8 bytes each).
_FOLD_AT = 1 << 22


def emit(event: str, **fields: Any) -> None:
    """Write one JSON line to the parent."""
    fields["event"] = event
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


def cpu_seconds() -> float:
    """User + system CPU seconds of this process."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class Conn(WSListener):  # type: ignore[misc]
    """One client connection: authenticates, then hands every binary frame to ``on_message``."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.transport: WSTransport | None = None
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.on_message: Callable[[bytes], None] | None = None
        self.closed = False

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
        transport.send(_BINARY, auth_frame(self.token))

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.closed = True
        if not self.ready.done():
            self.ready.set_exception(ConnectionError("disconnected before AUTH_ACK"))

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type is not _BINARY:
            return
        data = frame.get_payload_as_bytes()
        handler = self.on_message
        if handler is not None:
            handler(data)
            return
        if not self.ready.done():
            if b"AUTH_ACK" in data:
                self.ready.set_result(None)
            elif b"AUTH_FAIL" in data:
                self.ready.set_exception(ConnectionError("AUTH_FAIL"))

    def send(self, data: bytes | bytearray) -> None:
        """Send one binary frame."""
        assert self.transport is not None
        self.transport.send(_BINARY, data)


async def connect(url: str, token: str) -> Conn:
    """Open one authenticated connection."""
    _t, listener = await ws_connect(lambda: Conn(token), url, websocket_handshake_timeout=30)
    conn: Conn = listener  # type: ignore[assignment]
    await conn.ready
    return conn


async def connect_many(url: str, token: str, n: int, concurrency: int = 256) -> list[Conn]:
    """Open ``n`` authenticated connections, at most ``concurrency`` handshakes at a time."""
    sem = asyncio.Semaphore(concurrency)

    async def one() -> Conn:
        async with sem:
            return await connect(url, token)

    return list(await asyncio.gather(*(one() for _ in range(n))))


async def window(warmup: float, duration: float, count: Callable[[], int]) -> tuple[int, float, float]:
    """Warm up, then measure ``count()`` over ``duration``; emits start/progress/end events.

    Returns ``(n, seconds, client_cpu_seconds)``.
    """
    await asyncio.sleep(warmup)
    n0, t0, c0 = count(), time.perf_counter(), cpu_seconds()
    emit("start")
    end = t0 + duration
    while True:
        now = time.perf_counter()
        if now >= end:
            break
        await asyncio.sleep(min(0.25, end - now))
        emit("progress", n=count() - n0, t=time.perf_counter() - t0)
    n1, t1, c1 = count(), time.perf_counter(), cpu_seconds()
    emit("end")
    return n1 - n0, t1 - t0, c1 - c0


def _close(conns: list[Conn]) -> None:
    for c in conns:
        if c.transport is not None and not c.closed:
            c.transport.disconnect()


def _ack_ok(data: bytes) -> tuple[bool, int, int]:
    """``(is_ack, ops_succeeded, ops_failed)`` of a server frame."""
    msg = msgpack.unpackb(data)
    kind = msg.get("type")
    if kind == "OP_ACK":
        results = msg["payload"].get("results") or []
        ok = sum(1 for r in results if r.get("success"))
        return True, ok, len(results) - ok
    return False, 0, 0


class AckingConn(Conn):
    """A connection that checks each ``OP_ACK`` by its bytes (base of the write scenarios' connections).

    Every op of a template frame has a fixed id, so the ack of a frame whose
    every op succeeded is a constant byte string (``BatchTemplate.ok_ack``):
    ``on_ws_frame`` compares the payload with the expected one and counts the
    frame's ops as acknowledged only on byte equality. Anything else goes to
    :meth:`other`: a success ack at another achieved level (found among the
    precomputed ones, which then becomes the expected one), or the full unpack
    of :func:`_ack_ok`, which counts failures, mixed results and
    ``OP_REJECTED`` frames as the load client always has.

    The equality test does not read the frame's opcode (picows builds a Python
    enum for it on every frame): no other frame can carry those bytes. A text
    frame must be UTF-8, which never starts with a MsgPack map header (0x8X);
    a CLOSE payload would start with close code 0x82A4, which is none; picows
    answers PINGs itself, and this client sends none, so gets no PONG.
    """

    ok: bytes
    ok_ops: int
    oks: dict[bytes, int]
    acked: int
    failed: int
    rejected: int
    unpacked: int

    def arm_acks(self, template: BatchTemplate, level: str) -> None:
        """Expect ``template``'s all-success ack at ``level`` first; know it at every level."""
        self.ok = template.ok_ack(level)
        self.ok_ops = template.ops
        self.oks = {template.ok_ack(lv): template.ops for lv in _LEVELS}
        self.acked = self.failed = self.rejected = self.unpacked = 0

    def other(self, frame: WSFrame, data: bytes) -> bool:
        """Count a frame that is not the expected success ack; True when it is an ``OP_ACK``."""
        if frame.msg_type is not _BINARY:
            return False
        n = self.oks.get(data)
        if n is not None:  # every op succeeded, at another level than expected: expect that one now
            self.ok = data
            self.acked += n
            return True
        if b"OP_ACK" in data:
            is_ack, ok, bad = _ack_ok(data)
            if is_ack:
                self.unpacked += 1
                self.acked += ok
                self.failed += bad
                return True
        if b"OP_REJECTED" in data:
            self.rejected += 1
        return False


class Streamer(AckingConn):
    """A fire-and-forget connection: ``window`` batches in flight; each ack sends the next batch."""

    def arm(self, templates: list[BatchTemplate], level: str, inflight: int) -> None:
        """Start streaming ``templates`` round-robin with ``inflight`` batches outstanding."""
        first = templates[0]
        if any(t.op_ids != first.op_ids for t in templates):
            raise ValueError("the templates of one connection must share their op ids (one success ack)")
        self.arm_acks(first, level)
        self.next_template = itertools.cycle(templates).__next__
        self.seq = 0
        assert self.transport is not None
        for _ in range(inflight):
            self.seq += 1
            self.transport.send(_BINARY, self.next_template().stamp(wall_millis(), self.seq))

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        data = frame.get_payload_as_bytes()
        if data == self.ok:
            self.acked += self.ok_ops
        elif not self.other(frame, data):
            return
        self.seq = seq = self.seq + 1
        transport.send(_BINARY, self.next_template().stamp(wall_millis(), seq))


async def fire_and_forget(a: dict[str, Any]) -> dict[str, Any]:
    """C connections stream OP_BATCH frames of B ops, ``window`` batches in flight each; counts acked ops."""
    conns = await connect_many(a["url"], a["token"], a["connections"])
    batch, keyspace, inflight = a["batch"], a["keyspace"], a["window"]
    emit("ready")
    streamers: list[Streamer] = []
    for ci, conn in enumerate(conns):
        node = f"bench-ff-{os.getpid()}-{ci}"
        map_name = f"bench-ff-{a['run']}-{os.getpid()}-{ci}"
        templates = [
            BatchTemplate(
                map_name,
                [f"k{j:07d}" for j in range(f * batch, (f + 1) * batch)],
                {"n": ci, "v": "x" * 40},
                node_id=node,
                write_concern=a["ack"],
            )
            for f in range(max(1, keyspace // batch))
        ]
        conn.__class__ = Streamer
        assert isinstance(conn, Streamer)
        conn.arm(templates, a["ack"], inflight)
        streamers.append(conn)
    n, secs, cpu = await window(a["warmup"], a["duration"], lambda: sum(c.acked for c in streamers))
    _close(conns)
    return {
        "ops": n,
        "seconds": secs,
        "client_cpu": cpu,
        "failed": sum(c.failed for c in streamers),
        "rejected": sum(c.rejected for c in streamers),
        "unpacked_acks": sum(c.unpacked for c in streamers),
    }


class Waiter(AckingConn):
    """A fire-and-wait connection: one CLIENT_OP in flight; its ack is checked, timed and answered here.

    The whole per-op client path is this one method: the ack's bytes compared,
    the latency appended to ``record`` (an ``array.append``; folded into the
    histogram outside the hot path), the next op stamped and sent. The receive
    time of an ack is also the send time of the next op, so a latency includes
    the client's own turnaround (well under a microsecond): it errs high, never low.
    """

    def arm(
        self, template: BatchTemplate, level: str, record: Callable[[int], None], wall_offset: int
    ) -> None:
        """Send the first op; ``wall_offset`` turns ``perf_counter_ns`` into wall-clock nanoseconds."""
        self.arm_acks(template, level)
        self.stamp = template.stamp
        self.record = record
        self.wall_offset = wall_offset
        self.seq = 1
        self.sent = now = _perf_ns()
        assert self.transport is not None
        self.transport.send(_BINARY, template.stamp((now + wall_offset) // 1_000_000, 1))

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        data = frame.get_payload_as_bytes()
        now = _perf_ns()
        if data == self.ok:
            self.acked += 1
        elif not self.other(frame, data):
            return
        self.record(now - self.sent)
        self.sent = now
        self.seq = seq = self.seq + 1
        # HLC millis from the monotonic clock (wall clock at the start plus elapsed): never steps back.
        transport.send(_BINARY, self.stamp((now + self.wall_offset) // 1_000_000, seq))


async def fire_and_wait(a: dict[str, Any]) -> dict[str, Any]:
    """C connections each send one CLIENT_OP and wait for its OP_ACK before the next; latency histogram."""
    conns = await connect_many(a["url"], a["token"], a["connections"])
    hist = Histogram()
    lats = array("q")  # latencies (ns) since the window opened, or since the last fold
    wall_offset = time.time_ns() - _perf_ns()
    emit("ready")
    waiters: list[Waiter] = []
    for ci, conn in enumerate(conns):
        t = BatchTemplate(
            f"bench-fw-{a['run']}-{os.getpid()}-{ci}",
            ["k"],
            {"n": ci, "v": "x" * 40},
            node_id=f"bench-fw-{os.getpid()}-{ci}",
            write_concern=a["ack"],
            single=True,
        )
        conn.__class__ = Waiter
        assert isinstance(conn, Waiter)
        conn.arm(t, a["ack"], lats.append, wall_offset)
        waiters.append(conn)
    measuring = [False]

    def count() -> int:
        if not measuring[0]:  # the window opens: drop the warm-up's latencies
            measuring[0] = True
            del lats[:]
        elif len(lats) >= _FOLD_AT:  # a long run: bound the memory (this fold is client CPU in the window)
            hist.record_many(lats)
            del lats[:]
        return sum(c.acked for c in waiters)

    n, secs, cpu = await window(a["warmup"], a["duration"], count)
    # No await since the window's last count(): ``lats`` holds exactly the window's remaining latencies.
    hist.record_many(lats)
    _close(conns)
    return {
        "ops": n,
        "seconds": secs,
        "client_cpu": cpu,
        "failed": sum(c.failed for c in waiters),
        "rejected": sum(c.rejected for c in waiters),
        "unpacked_acks": sum(c.unpacked for c in waiters),
        "latency": hist.to_json(),
    }


async def _subscribe(conn: Conn, map_name: str, qid: str) -> str:
    """Open a live query on ``map_name``; falls back to ``SYNC_INIT`` (push interest) when queries are absent.

    Returns ``"query"`` or ``"sync"``: which mechanism the connection listens with.
    """
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[str] = loop.create_future()

    def on_message(data: bytes) -> None:
        if fut.done():
            return
        if b"QUERY_RESP" in data:
            fut.set_result("query")
        elif b"ERROR" in data:
            fut.set_result("error")

    conn.on_message = on_message
    conn.send(encode({"type": "QUERY_SUB", "payload": {"queryId": qid, "mapName": map_name, "query": {}}}))
    how = await asyncio.wait_for(fut, 60)
    if how == "query":
        return how
    fut2: asyncio.Future[str] = loop.create_future()

    def on_root(data: bytes) -> None:
        if not fut2.done() and b"SYNC_RESP_ROOT" in data:
            fut2.set_result("sync")

    conn.on_message = on_root
    conn.send(encode({"type": "SYNC_INIT", "mapName": map_name}))
    return await asyncio.wait_for(fut2, 60)


class _FanCounts:
    """What a fan-out reader counts, whichever way it reads its subscribers."""

    def __init__(self, marker: bytes, record: Callable[[int], None]) -> None:
        self.marker = marker
        self.record = record
        #: deliveries seen; latencies are recorded only while ``measuring``
        self.deliveries = 0
        self.measuring = False
        #: frames that were not final binary frames (none expected)
        self.other_frames = 0
        #: sockets the peer closed
        self.closed = 0
        #: the first protocol error (its socket is no longer read)
        self.error: Exception | None = None


class FanIn(_FanCounts):
    """Reads the subscribers' sockets itself: one epoll set, one ``recv_into`` per ready socket.

    The fan-out client receives ~100,000 frames/s on 1,000 sockets, on the
    same 2 cores as the server it measures. Through picows every frame costs
    an event-loop callback, a buffered-protocol round trip, a ``WSFrame`` and a
    Python ``on_ws_frame`` call; here the subscriber sockets (authenticated and
    subscribed through picows, whose reading is then paused: :meth:`of`) sit in
    one epoll set that the event loop watches as a single reader, and each
    ready socket costs one ``recv_into`` into a shared buffer and a scan of the
    WebSocket frames in place (a server's frames are never masked, RFC 6455
    §5.1). Measured here: ~1.5 µs less client CPU per delivery (of ~6-8).

    What is measured does not change: every frame whose payload holds
    ``marker`` is a delivery, every ``_T_MARK`` stamp in it is timed against
    ``perf_counter_ns()`` read right after the ``recv`` that returned it, and a
    frame split across reads is kept and finished by the next read of its
    socket. Frames that are not final binary frames are counted in
    :attr:`other_frames` (the server sends none to a subscriber).
    """

    def __init__(
        self,
        socks: list[socket.socket],
        marker: bytes,
        record: Callable[[int], None],
        buffer: int = 1 << 18,
    ) -> None:
        super().__init__(marker, record)
        self._buf = bytearray(buffer)
        self._view = memoryview(self._buf)
        self._ep = select.epoll()
        self._socks: dict[int, socket.socket] = {}
        self._recv: dict[int, Callable[..., int]] = {}
        #: the unread part of a frame cut by the end of a read, per socket
        self._carry: dict[int, bytes] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        for sock in socks:
            sock.setblocking(False)
            fd = sock.fileno()
            self._socks[fd] = sock
            self._recv[fd] = sock.recv_into
            self._ep.register(fd, select.EPOLLIN)

    @classmethod
    def of(cls, conns: list[Conn], marker: bytes, record: Callable[[int], None]) -> FanIn:
        """Take over reading ``conns`` (picows stops reading them) and start on the running loop."""
        socks = []
        for c in conns:
            assert c.transport is not None
            under = c.transport.underlying_transport
            under.pause_reading()
            # A socket object of our own on a duplicate descriptor: picows keeps (and closes) its own.
            socks.append(socket.socket(fileno=os.dup(under.get_extra_info("socket").fileno())))
        fan = cls(socks, marker, record)
        fan.start(asyncio.get_running_loop())
        return fan

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Read whenever a socket is ready: the epoll set is one reader of ``loop``."""
        self._loop = loop
        loop.add_reader(self._ep.fileno(), self.drain)

    def drain(self) -> None:
        """Read every ready socket once and account for the frames read (the event loop's reader)."""
        buf = self._buf
        find = buf.find
        marker = self.marker
        recv = self._recv
        carry = self._carry
        perf_ns = _perf_ns
        unpack_q = _Q.unpack_from
        mark = _T_MARK
        found = 0
        for fd, _ev in self._ep.poll(0, len(recv) or 1):
            kept = carry.pop(fd, None)
            try:
                if kept is None:
                    n = recv[fd](buf)
                else:
                    buf[: len(kept)] = kept
                    n = recv[fd](self._view[len(kept) :])
            except (BlockingIOError, InterruptedError):
                if kept is not None:
                    carry[fd] = kept
                continue
            except OSError:  # reset by the server: as closed
                n = 0
            now = perf_ns()
            if n == 0:  # the server closed this subscriber
                self.closed += 1
                self._drop(fd)
                continue
            if kept is not None:
                n += len(kept)
            i = 0
            while n - i >= 2:
                size = buf[i + 1]
                if size & 0x80:
                    self._fail(fd, ConnectionError("a masked frame from the server (RFC 6455 §5.1)"))
                    break
                if size < 126:
                    start = i + 2
                elif size == 126:
                    if n - i < 4:
                        break
                    size = (buf[i + 2] << 8) | buf[i + 3]
                    start = i + 4
                else:
                    if n - i < 10:
                        break
                    size = int.from_bytes(buf[i + 2 : i + 10], "big")
                    start = i + 10
                end = start + size
                if end > n:
                    if end - i > len(buf):
                        self._fail(fd, ConnectionError(f"a frame of {end - i} bytes exceeds the read buffer"))
                    break
                if buf[i] != 0x82:  # not a final binary frame
                    self.other_frames += 1
                elif find(marker, start, end) >= 0:
                    k = find(mark, start, end)
                    while k >= 0:
                        found += 1
                        if self.measuring:
                            self.record(now - unpack_q(buf, k + 3)[0])
                        k = find(mark, k + 11, end)
                i = end
            if i < n and fd in recv:  # a frame cut by the end of the read (not one that failed)
                carry[fd] = bytes(buf[i:n])
        self.deliveries += found

    def _fail(self, fd: int, exc: Exception) -> None:
        # Raised by fan_out after the window (an exception here would only be logged by the loop).
        if self.error is None:
            self.error = exc
        self._drop(fd)

    def _drop(self, fd: int) -> None:
        self._ep.unregister(fd)
        self._recv.pop(fd)
        self._carry.pop(fd, None)
        self._socks.pop(fd).close()

    def close(self) -> None:
        """Stop reading and close the sockets (from :meth:`of`: duplicates; picows keeps the connections)."""
        if self._loop is not None:
            self._loop.remove_reader(self._ep.fileno())
            self._loop = None
        for fd in list(self._recv):
            self._drop(fd)
        self._ep.close()


class Subscriber(Conn):
    """Receives pushes in ``on_ws_frame`` itself (where :class:`FanIn` cannot run: no epoll)."""

    fan: _PicowsFan

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        # No msg_type test (picows builds a Python enum for it on every frame): the server
        # sends no text, and a control frame's payload never holds the marker.
        data = frame.get_payload_as_bytes()
        fan = self.fan
        if fan.marker not in data:
            return
        now = _perf_ns()
        i = data.find(_T_MARK)
        while i >= 0:
            fan.deliveries += 1
            if fan.measuring:
                fan.record(now - _Q.unpack_from(data, i + 3)[0])
            i = data.find(_T_MARK, i + 11)


class _PicowsFan(_FanCounts):
    """The counters of :class:`FanIn` for subscribers read through picows (:class:`Subscriber`)."""

    def __init__(self, conns: list[Conn], marker: bytes, record: Callable[[int], None]) -> None:
        super().__init__(marker, record)
        for c in conns:
            c.on_message = None
            c.__class__ = Subscriber
            assert isinstance(c, Subscriber)
            c.fan = self

    def close(self) -> None:
        return None


async def fan_out(a: dict[str, Any]) -> dict[str, Any]:
    """W writers write at ``rate``/s into one map; S subscribers with live queries receive every write."""
    map_name = f"bench-fanout-{a['run']}"
    subs = await connect_many(a["url"], a["token"], a["subscribers"])
    hows = await asyncio.gather(*(_subscribe(c, map_name, f"q{i}") for i, c in enumerate(subs)))
    mode = "query" if all(h == "query" for h in hows) else "sync"
    marker = b"QUERY_UPDATE" if mode == "query" else b"SERVER_"
    writers = await connect_many(a["url"], a["token"], a["writers"])
    hist = Histogram()
    state = {"writes": 0, "acked": 0, "measuring": False}
    perf_ns = time.perf_counter_ns
    # Latencies of the measured window, folded into the histogram after it: this process shares
    # the machine with the server, so the per-delivery work here is kept to an append.
    lats = array("q")
    reader = a.get("reader", "epoll")
    fan: FanIn | _PicowsFan
    if reader == "epoll" and hasattr(select, "epoll"):
        fan = FanIn.of(subs, marker, lats.append)
    else:
        reader = "picows"
        fan = _PicowsFan(subs, marker, lats.append)
    templates = []
    for wi, w in enumerate(writers):
        t = BatchTemplate(
            map_name,
            ["k"],
            {"t": _T_PLACE},
            node_id=f"bench-fo-{os.getpid()}-{wi}",
            write_concern="APPLIED",
            single=True,
        )
        off = t.frame.index(b"\xcf" + _Q.pack(_T_PLACE)) + 1
        templates.append((w, t, off))

        def on_ack(data: bytes) -> None:
            if b"OP_ACK" in data:
                state["acked"] += 1

        w.on_message = on_ack
    emit("ready")
    stop = asyncio.Event()

    async def pace() -> None:
        interval = 1.0 / a["rate"]
        seq = 0
        next_t = time.perf_counter()
        while not stop.is_set():
            for w, t, off in templates:
                seq += 1
                frame = bytearray(t.stamp(wall_millis(), seq))
                _Q.pack_into(frame, off, perf_ns())
                w.send(frame)
                if state["measuring"]:
                    state["writes"] += 1
                next_t += interval / len(templates)
            now = time.perf_counter()
            if next_t > now:
                await asyncio.sleep(next_t - now)
            elif now - next_t > 1.0:  # fell far behind: do not burst to catch up
                next_t = now

    pacer = asyncio.create_task(pace())

    def count() -> int:
        state["measuring"] = fan.measuring = True
        return fan.deliveries

    n, secs, cpu = await window(a["warmup"], a["duration"], count)
    writes = state["writes"]
    state["measuring"] = fan.measuring = False
    stop.set()
    await pacer
    fan.close()
    _close(subs + writers)
    if fan.error is not None:
        raise fan.error
    hist.record_many(lats)
    return {
        "deliveries": n,
        "seconds": secs,
        "client_cpu": cpu,
        "writes": writes,
        "mode": mode,
        "reader": reader,
        "other_frames": fan.other_frames,
        "closed_subscribers": fan.closed,
        "subscribers": len(subs),
        "latency": hist.to_json(),
        "expected": writes * len(subs),
    }


async def connections(a: dict[str, Any]) -> dict[str, Any]:
    """Open N authenticated connections, each with one live query; hold them while the parent samples RSS."""
    t0 = time.perf_counter()
    c0 = cpu_seconds()
    emit("start")
    conns: list[Conn] = []
    sem = asyncio.Semaphore(a["concurrency"])
    hows: dict[str, int] = {}

    async def one(i: int) -> None:
        async with sem:
            c = await connect(a["url"], a["token"])
            conns.append(c)
            how = await _subscribe(c, f"bench-conns-{a['run']}-{i % 100}", f"q{i}")
            hows[how] = hows.get(how, 0) + 1
            c.on_message = _ignore

    async def progress() -> None:
        while True:
            await asyncio.sleep(0.25)
            emit("progress", n=len(conns), t=time.perf_counter() - t0)

    prog = asyncio.create_task(progress())
    results = await asyncio.gather(*(one(i) for i in range(a["n"])), return_exceptions=True)
    elapsed = time.perf_counter() - t0
    prog.cancel()
    errors = [repr(r) for r in results if isinstance(r, BaseException)]
    cpu = cpu_seconds() - c0
    emit("end")
    emit("hold", connected=len(conns), seconds=elapsed)
    await asyncio.sleep(a["hold"])
    open_now = sum(1 for c in conns if not c.closed)
    _close(conns)
    return {
        "connected": sum(hows.values()),
        "opened": len(conns),
        "still_open": open_now,
        "seconds": elapsed,
        "client_cpu": cpu,
        "errors": errors[:5],
        "error_count": len(errors),
        "modes": hows,
    }


def _ignore(data: bytes) -> None:
    return None


async def _load(
    conn: Conn,
    map_name: str,
    keys: list[str],
    value_of: Callable[[int], Any],
    batch: int,
    ack: str,
    node: str,
    inflight: int = 4,
    first: int = 0,
) -> int:
    """Write ``keys`` (value ``value_of(i)``) through ``conn`` in OP_BATCHes; returns ops acknowledged."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    frames: list[bytes] = []
    millis = wall_millis()
    for s in range(0, len(keys), batch):
        ops = [
            {
                "id": str(s + j + 1),
                "mapName": map_name,
                "key": k,
                "opType": "PUT",
                "record": {
                    "value": value_of(first + s + j),
                    "timestamp": {"millis": millis, "counter": s + j, "nodeId": node},
                },
            }
            for j, k in enumerate(keys[s : s + batch])
        ]
        frames.append(encode({"type": "OP_BATCH", "payload": {"ops": ops, "writeConcern": ack}}))
    state = {"next": 0, "acked": 0, "out": 0}

    def pump() -> None:
        while state["out"] < inflight and state["next"] < len(frames):
            conn.send(frames[state["next"]])
            state["next"] += 1
            state["out"] += 1
        if state["out"] == 0 and not done.done():
            done.set_result(None)

    def on_message(data: bytes) -> None:
        is_ack, ok, _bad = _ack_ok(data)
        if is_ack:
            state["acked"] += ok
            state["out"] -= 1
            pump()

    conn.on_message = on_message
    pump()
    await done
    return state["acked"]


def _value(i: int) -> str:
    # About 100 bytes, different per record so no two values share memory in the server.
    return f"{i:010d}" + "v" * 90


async def fill(a: dict[str, Any]) -> dict[str, Any]:
    """Write ``records`` LWW records of ~100-byte values into one map (the memory scenario's load)."""
    conn = await connect(a["url"], a["token"])
    emit("ready")
    t0, c0 = time.perf_counter(), cpu_seconds()
    emit("start")
    total = 0
    step = 100_000
    for s in range(0, a["records"], step):
        keys = [f"r{i:09d}" for i in range(s, min(s + step, a["records"]))]
        total += await _load(conn, a["map"], keys, _value, a["batch"], a["ack"], "bench-fill", first=s)
        emit("progress", n=total, t=time.perf_counter() - t0)
    secs, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    emit("end")
    _close([conn])
    return {"records": total, "seconds": secs, "client_cpu": cpu}


async def _walk(conn: Conn, map_name: str, local: Any | None) -> tuple[dict[str, Any], int]:
    """One Merkle sync walk; returns the records received (key → record dict) and the requests sent.

    With ``local`` (a :class:`~topgun.core.merkle.MerkleTree` of what the
    client already holds) only buckets whose hash differs are descended.
    """
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    records: dict[str, Any] = {}
    state = {"out": 0, "requests": 0}

    def request(path: str) -> None:
        state["out"] += 1
        state["requests"] += 1
        conn.send(encode({"type": "MERKLE_REQ_BUCKET", "payload": {"mapName": map_name, "path": path}}))

    def finish_one() -> None:
        state["out"] -= 1
        if state["out"] == 0 and not done.done():
            done.set_result(None)

    def on_message(data: bytes) -> None:
        msg = msgpack.unpackb(data)
        kind = msg.get("type")
        p = msg.get("payload") or {}
        if kind == "SYNC_RESP_ROOT":
            if local is not None and p.get("rootHash") == local.root_hash:
                finish_one()
                return
            request("")
            finish_one()
        elif kind == "SYNC_RESP_BUCKETS":
            path = p["path"]
            mine = local.buckets(path) if local is not None else {}
            for child, h in p["buckets"].items():
                if mine.get(child) != h:
                    request(path + child)
            finish_one()
        elif kind == "SYNC_RESP_LEAF":
            for item in p["records"]:
                records[item["key"]] = item["record"]
            finish_one()

    conn.on_message = on_message
    state["out"] += 1
    conn.send(encode({"type": "SYNC_INIT", "mapName": map_name}))
    await done
    return records, state["requests"]


async def sync(a: dict[str, Any]) -> dict[str, Any]:
    """Initial Merkle sync of an R-record map, then catch-up after 1 % of it changed."""
    from topgun.core.hashing import lww_item_hash
    from topgun.core.merkle import MerkleTree
    from topgun.core.records import Timestamp

    map_name = f"bench-sync-{a['run']}"
    r = a["records"]
    loader = await connect(a["url"], a["token"])
    keys = [f"s{i:08d}" for i in range(r)]
    t0 = time.perf_counter()
    loaded = await _load(
        loader, map_name, keys, lambda i: {"n": i, "v": "x" * 40}, 1000, a["ack"], "bench-sync-a"
    )
    load_s = time.perf_counter() - t0
    emit("progress", n=loaded, t=load_s)
    syncer = await connect(a["url"], a["token"])
    emit("ready")
    emit("start")
    c0 = cpu_seconds()
    t0 = time.perf_counter()
    got, requests = await _walk(syncer, map_name, None)
    initial_s = time.perf_counter() - t0
    tree = MerkleTree()
    tree.update_many(
        [
            (
                k,
                lww_item_hash(
                    k,
                    Timestamp(
                        rec["timestamp"]["millis"], rec["timestamp"]["counter"], rec["timestamp"]["nodeId"]
                    ),
                ),
            )
            for k, rec in got.items()
        ]
    )
    changed = max(1, r // 100)
    step = max(1, r // changed)
    ckeys = keys[::step][:changed]
    await _load(loader, map_name, ckeys, lambda i: {"n": -i, "v": "y" * 40}, 1000, a["ack"], "bench-sync-b")
    t1 = time.perf_counter()
    got2, requests2 = await _walk(syncer, map_name, tree)
    catchup_s = time.perf_counter() - t1
    cpu = cpu_seconds() - c0
    emit("end")
    fresh = sum(1 for k in ckeys if k in got2 and got2[k]["timestamp"]["nodeId"] == "bench-sync-b")
    _close([loader, syncer])
    return {
        "records": r,
        "loaded": loaded,
        "load_seconds": load_s,
        "initial_records": len(got),
        "initial_seconds": initial_s,
        "initial_requests": requests,
        "changed": len(ckeys),
        "catchup_changed_received": fresh,
        "catchup_records": len(got2),
        "catchup_seconds": catchup_s,
        "catchup_requests": requests2,
        "client_cpu": cpu,
    }


MODES: dict[str, Callable[[dict[str, Any]], Any]] = {
    "fire-and-forget": fire_and_forget,
    "fire-and-wait": fire_and_wait,
    "fan-out": fan_out,
    "connections": connections,
    "fill": fill,
    "sync": sync,
}


def main(argv: list[str] | None = None) -> None:
    """``python -m topgun.bench.worker MODE JSON_ARGS``."""
    argv = sys.argv[1:] if argv is None else argv
    mode, args = argv[0], json.loads(argv[1])
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:  # pragma: no cover
        runner = asyncio.run
    result = runner(MODES[mode](args))
    emit("result", **result)


if __name__ == "__main__":
    main()
