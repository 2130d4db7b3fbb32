"""The session without any WebSocket library: driven through the transport seam directly.

This is the sans-I/O contract: a transport calls ``on_message``/``on_close``
and implements ``Connection``; timeouts come from ``SessionHub.sweep`` with an
injected clock, so no real time passes.
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgpack
import pytest
from rawclient import SECRET, make_token

from topgun.server.auth import make_authenticator
from topgun.server.config import ServerConfig
from topgun.server.session import SessionHub, SessionState


class RecordingConnection:
    """A complete in-memory ``Connection``: frames go to a list, the backlog size is settable."""

    _next = 1000

    def __init__(self) -> None:
        RecordingConnection._next += 1
        self.id = RecordingConnection._next
        self.remote = "test:0"
        self.frames: list[dict[str, Any]] = []
        self.close_args: tuple[int, str, bool] | None = None
        self.backlog_bytes = 0
        self.backlog_frames = 0

    def send(self, data: bytes) -> None:
        assert self.close_args is None, "send after close"
        self.frames.append(msgpack.unpackb(data))

    def close(self, code: int, reason: str = "", *, drop_pending: bool = False) -> None:
        self.close_args = (code, reason, drop_pending)

    def outbound_bytes(self) -> int:
        return self.backlog_bytes

    def outbound_frames(self) -> int:
        return self.backlog_frames

    @property
    def closed(self) -> bool:
        return self.close_args is not None


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def hub_for(clock: Clock, **cfg: Any) -> SessionHub:
    config = ServerConfig(storage="memory://", **cfg)
    return SessionHub(config, authenticator=make_authenticator(config), clock=clock)


def feed(session: Any, obj: Any) -> None:
    session.on_message(msgpack.packb(obj))


def test_auth_deadline_and_idle_timeout_with_injected_clock() -> None:
    clock = Clock()
    hub = hub_for(clock, jwt_secret=SECRET, auth_timeout=10, idle_timeout=60)
    slow, quick = RecordingConnection(), RecordingConnection()
    s_slow, s_quick = hub.open_session(slow), hub.open_session(quick)
    assert slow.frames == [{"type": "AUTH_REQUIRED"}]
    feed(s_quick, {"type": "AUTH", "token": make_token()})
    assert s_quick.state is SessionState.OPEN
    clock.now += 9.9
    assert hub.sweep() == 0
    clock.now += 0.2
    assert hub.sweep() == 1
    assert slow.close_args == (1008, "authentication timeout", False)
    assert slow.frames == [{"type": "AUTH_REQUIRED"}]  # nothing but the close
    s_slow.on_close()
    # idle: PINGs keep the session alive; silence for 60 s closes it
    for _ in range(5):
        clock.now += 50
        feed(s_quick, {"type": "PING", "timestamp": 1})
        assert hub.sweep() == 0
    clock.now += 60
    assert hub.sweep() == 1
    assert quick.close_args == (1001, "idle timeout", False)
    s_quick.on_close()
    assert hub.sessions == {}
    assert hub.metrics.connections.value() == 0


def test_slow_consumer_policy_drops_the_connection() -> None:
    hub = hub_for(Clock(), send_queue_max_bytes=1000, send_queue_max_frames=3)
    conn = RecordingConnection()
    session = hub.open_session(conn)
    conn.backlog_bytes = 1000
    feed(session, {"type": "PING", "timestamp": 1})
    assert conn.close_args is None  # at the bound is fine
    conn.backlog_bytes = 1001
    feed(session, {"type": "PING", "timestamp": 2})
    assert conn.close_args == (1013, "slow consumer: outbound queue over limit", True)
    assert session.closed
    feed(session, {"type": "PING", "timestamp": 3})  # ignored once closed
    assert [f["timestamp"] for f in conn.frames] == [1, 2]
    assert hub.metrics.slow_consumer_disconnects.value() == 1

    conn2 = RecordingConnection()
    s2 = hub.open_session(conn2)
    conn2.backlog_frames = 4
    feed(s2, {"type": "PING", "timestamp": 1})
    assert conn2.close_args is not None and conn2.close_args[0] == 1013


async def test_cleanup_hooks_run_once_and_are_drained() -> None:
    hub = hub_for(Clock())
    done: list[str] = []

    async def slow_cleanup(ctx: Any) -> None:
        await asyncio.sleep(0.05)
        done.append(f"async-{ctx.connection_id}")

    hub.processors.add_cleanup(lambda ctx: done.append(f"global-{ctx.connection_id}"))
    hub.processors.add_cleanup(slow_cleanup)
    conn = RecordingConnection()
    session = hub.open_session(conn)
    session.add_cleanup(lambda ctx: done.append("local"))
    session.add_cleanup(lambda ctx: 1 / 0)  # a failing hook does not stop the others
    session.on_close()
    session.on_close()
    assert done == ["local", f"global-{conn.id}"]
    assert await hub.drain(2.0)
    assert done == ["local", f"global-{conn.id}", f"async-{conn.id}"]


@pytest.mark.parametrize("device_identity", [True, False])
def test_no_auth_auth_ack_and_device_ack(device_identity: bool) -> None:
    hub = hub_for(Clock(), device_identity=device_identity)
    conn = RecordingConnection()
    session = hub.open_session(conn)
    assert conn.frames == []
    feed(session, {"type": "AUTH", "token": "x", "protocolVersion": 1})
    feed(session, {"type": "DEVICE_HELLO"})
    ack = conn.frames[0]
    assert ack["type"] == "AUTH_ACK" and "userId" not in ack
    if device_identity:
        assert session.device_id == ack["deviceId"]
        assert conn.frames[1:] == []  # already bound through AUTH
    else:
        assert ack == {"type": "AUTH_ACK"} and conn.frames[1:] == [{"type": "DEVICE_ACK"}]
