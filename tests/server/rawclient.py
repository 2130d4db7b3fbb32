"""A raw protocol client for server tests: ``websockets`` client + plain msgpack dicts.

Deliberately independent of ``topgun.protocol`` so the tests check the bytes a
real peer (the TS client) would see, not our own codec's round trip.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import msgpack
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed


def pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def unpack(data: bytes) -> dict[str, Any]:
    value = msgpack.unpackb(data, raw=False, strict_map_key=False)
    assert isinstance(value, dict), f"server sent a non-map frame: {value!r}"
    return value


class RawClient:
    """One WebSocket to the server, speaking msgpack dicts."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws

    @classmethod
    async def open(cls, url: str, **kwargs: Any) -> RawClient:
        kwargs.setdefault("max_size", 64 * 1024 * 1024)
        kwargs.setdefault("ping_interval", None)
        kwargs.setdefault("compression", None)
        ws = await connect(url, **kwargs)
        return cls(ws)

    async def send(self, obj: Any) -> None:
        await self.ws.send(pack(obj))

    async def send_raw(self, data: bytes | str) -> None:
        await self.ws.send(data)

    async def recv(self, timeout: float = 2.0) -> dict[str, Any]:
        data = await asyncio.wait_for(self.ws.recv(), timeout)
        assert isinstance(data, bytes), f"server sent a text frame: {data!r}"
        return unpack(data)

    async def recv_type(self, type_name: str, timeout: float = 2.0) -> dict[str, Any]:
        """Receive frames until one of ``type_name`` arrives (others are discarded)."""
        deadline = time.monotonic() + timeout
        while True:
            msg = await self.recv(max(0.01, deadline - time.monotonic()))
            if msg.get("type") == type_name:
                return msg

    async def expect_silence(self, duration: float = 0.3) -> None:
        """Assert the server sends nothing for ``duration`` seconds (and keeps the socket open)."""
        try:
            data = await asyncio.wait_for(self.ws.recv(), duration)
        except asyncio.TimeoutError:
            return
        raise AssertionError(f"expected no frame, got {unpack(data) if isinstance(data, bytes) else data!r}")

    async def wait_closed(self, timeout: float = 3.0) -> tuple[int | None, str | None]:
        """Drain until the server closes; return (close code, reason)."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    await self.ws.recv()
        except ConnectionClosed:
            pass
        rcvd = self.ws.protocol.close_rcvd
        return (rcvd.code, rcvd.reason) if rcvd is not None else (None, None)

    async def ping(self, timestamp: int | float = 1_700_000_000_000.0) -> dict[str, Any]:
        await self.send({"type": "PING", "timestamp": timestamp})
        return await self.recv_type("PONG")

    async def close(self) -> None:
        await self.ws.close()

    async def __aenter__(self) -> RawClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


# ---------------------------------------------------------------------------------------------- helpers

TRANSPORTS = ["picows", "websockets"]
SECRET = "test-secret-" + "0123456789abcdef" * 4


def make_token(
    secret: str = SECRET,
    *,
    sub: str | None = "alice",
    exp_in: float | None = 300.0,
    algorithm: str = "HS256",
    **claims: Any,
) -> str:
    """A JWT with ``sub`` and ``exp`` (``None`` omits the claim)."""
    import jwt

    body: dict[str, Any] = dict(claims)
    if sub is not None:
        body["sub"] = sub
    if exp_in is not None:
        body["exp"] = int(time.time() + exp_in)
    return jwt.encode(body, secret, algorithm=algorithm)


async def http_get(port: int, path: str, host: str = "127.0.0.1") -> tuple[int, dict[str, str], bytes]:
    """A minimal HTTP/1.1 GET over a raw socket: (status, headers, body)."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(-1), 5)
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    if "content-length" in headers:
        body = body[: int(headers["content-length"])]
    return status, headers, body
