"""A session's per-message steps on both twins: the same messages give the same replies.

Each example drives two sessions, one whose ``on_message``/``send_frame`` are the
compiled twin's and one with the pure specification's, through the same frames
(authentication, pings, processors that answer, fail or queue, malformed and
unknown frames, ``BATCH`` envelopes, server-to-client kinds, a closed session)
and compares the frames sent, the close, the state and the receive counters.
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rawclient import SECRET, make_token

from topgun.errors import ProtocolError
from topgun.protocol.messages import MessageType
from topgun.server.auth import make_authenticator
from topgun.server.config import ServerConfig
from topgun.server.session import Session, SessionHub


class _Conn:
    def __init__(self, cid: int, bounded: bool) -> None:
        self.id = cid
        self.remote = "test:0"
        self.frames: list[Any] = []
        self.close_args: tuple[int, str, bool] | None = None
        self.backlog = 0
        if bounded:
            self.send_bounded = self._send_bounded

    def _send_bounded(self, data: bytes, max_bytes: int, max_frames: int) -> bool:
        self.send(data)
        return self.backlog > max_bytes

    def send(self, data: bytes) -> None:
        msg = msgpack.unpackb(data)
        if msg.get("type") == "PONG":
            msg["serverTime"] = 0  # the wall clock differs between the two runs
        self.frames.append(msg)

    def close(self, code: int, reason: str = "", *, drop_pending: bool = False) -> None:
        self.close_args = (code, reason, drop_pending)

    def outbound_bytes(self) -> int:
        return self.backlog

    def outbound_frames(self) -> int:
        return 0


def _pack(obj: Any) -> bytes:
    return msgpack.packb(obj)


def _echo(ctx: Any, msg: Any) -> None:
    ctx.send({"type": "ECHO", "kind": msg.TYPE.value})


async def _queued(ctx: Any) -> None:
    await asyncio.sleep(0)
    ctx.send({"type": "QUEUED"})


def _queue(ctx: Any, msg: Any) -> Any:
    return _queued(ctx)


def _refuse(ctx: Any, msg: Any) -> None:
    raise ProtocolError("refused here", code=403)


def _crash(ctx: Any, msg: Any) -> None:
    raise RuntimeError("processor bug")


_OP = {"mapName": "m", "key": "k", "opType": "PUT",
       "record": {"value": 1, "timestamp": {"millis": 1, "counter": 0, "nodeId": "n"}}}
FRAMES = {
    "auth": _pack({"type": "AUTH", "token": make_token()}),
    "auth-bad": _pack({"type": "AUTH", "token": "not-a-jwt"}),
    "ping": _pack({"type": "PING", "timestamp": 7}),
    "op": _pack({"type": "CLIENT_OP", "payload": {"id": "1", **_OP}}),
    "sync": _pack({"type": "SYNC_INIT", "mapName": "m"}),
    "refused": _pack({"type": "QUERY_SUB", "payload": {"queryId": "q", "mapName": "m", "query": {}}}),
    "crash": _pack({"type": "TOPIC_PUB", "payload": {"topic": "t", "data": 1}}),
    "no-processor": _pack({"type": "LOCK_REQUEST", "payload": {"requestId": "r", "name": "l"}}),
    "server-kind": _pack({"type": "PONG", "timestamp": 1, "serverTime": 2}),
    "unknown": _pack({"type": "NOPE"}),
    "malformed": b"\xc1\x00",
    "not-a-map": _pack([1, 2]),
    "batch": _pack({"type": "BATCH", "count": 2, "data": bytes(
        [0, 0, 0, len(p := _pack({"type": "PING", "timestamp": 9}))]) + p + bytes(
        [0, 0, 0, len(q := _pack({"type": "SYNC_INIT", "mapName": "m"}))]) + q}),
}


def _hub(auth: bool) -> SessionHub:
    config = ServerConfig(storage="memory://", jwt_secret=SECRET if auth else None, device_identity=False)
    hub = SessionHub(config, authenticator=make_authenticator(config))
    reg = hub.processors
    reg.register(MessageType.CLIENT_OP, _echo)
    reg.register(MessageType.SYNC_INIT, _queue)
    reg.register(MessageType.QUERY_SUB, _refuse)
    reg.register(MessageType.TOPIC_PUB, _crash)
    return hub


async def _drive(
    twin: Any, script: list[str], auth: bool, bounded: bool, close_at: int | None
) -> dict[str, Any]:
    path = twin.sessionpath

    class TwinSession(Session):
        on_message = path.on_message
        send_frame = path.send_frame

    hub = _hub(auth)
    conn = _Conn(77, bounded)
    session = TwinSession(hub, conn)
    hub.sessions[conn.id] = session
    session.start()
    for i, name in enumerate(script):
        if i == close_at:
            session.close(1000, "bye")
        if name == "backlog":
            conn.backlog = 10**12  # the next frame finds the outbound queue over its bound
            continue
        session.on_message(FRAMES[name])
        for _ in range(3):
            await asyncio.sleep(0)
    for _ in range(5):
        await asyncio.sleep(0)
    return {
        "frames": conn.frames,
        "close": conn.close_args,
        "state": session.state,
        "received": dict(hub.received),
        "malformed": hub.metrics.malformed_frames.value(),
        "slow": hub.metrics.slow_consumer_disconnects.value(),
    }


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    script=st.lists(st.sampled_from([*FRAMES, "backlog"]), max_size=12),
    auth=st.booleans(),
    bounded=st.booleans(),
    close_at=st.one_of(st.none(), st.integers(0, 12)),
)
async def test_session_paths_agree(
    pure: Any, compiled: Any, script: list[str], auth: bool, bounded: bool, close_at: int | None
) -> None:
    got = await _drive(compiled, script, auth, bounded, close_at)
    assert got == await _drive(pure, script, auth, bounded, close_at)


async def test_the_session_steps_answer_as_the_protocol_says(twin: Any) -> None:
    script = ["ping", "op", "auth", "op", "sync", "op", "refused", "crash", "malformed"]
    got = await _drive(twin, script, True, True, None)
    types = [f["type"] for f in got["frames"]]
    # before AUTH only silence (the PING included); then the processors' answers in order, the
    # queued one before the CLIENT_OP that arrived after it
    assert types == ["AUTH_REQUIRED", "AUTH_ACK", "ECHO", "QUEUED", "ECHO", "ERROR", "ERROR", "ERROR"]
    assert [f["payload"]["code"] for f in got["frames"][5:]] == [403, 500, 400]
    assert got["received"][("CLIENT_OP",)] == 3
