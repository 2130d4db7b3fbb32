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
        rcvd = self.ws.close_rcvd
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
