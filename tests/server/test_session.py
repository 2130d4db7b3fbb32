"""Session behaviour over real sockets, on both transports: handshakes, heartbeat, timeouts,
malformed input, ordering, cleanup, slow consumers (PROTOCOL §1, §4.1-4.2, §5.1-5.5, §5.15)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import msgpack
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from rawclient import SECRET, RawClient, make_token, pack
from websockets.exceptions import ConnectionClosed

from support.servers import eventually, serving
from topgun.errors import ProtocolError
from topgun.protocol.messages import MessageType, TopicMessage
from topgun.server.app import TopGunServer
from topgun.server.interfaces import RequestContext

pytestmark = pytest.mark.timeout(60)


def url(server: TopGunServer, path: str = "/ws") -> str:
    return f"ws://127.0.0.1:{server.port}{path}"


async def authed(server: TopGunServer, token: str | None = None) -> RawClient:
    c = await RawClient.open(url(server))
    assert (await c.recv())["type"] == "AUTH_REQUIRED"
    await c.send({"type": "AUTH", "token": token or make_token()})
    ack = await c.recv()
    assert ack["type"] == "AUTH_ACK", ack
    return c


# ----------------------------------------------------------------------------------- no-auth mode


async def test_no_auth_sends_nothing_on_accept_and_answers_auth(transport: str) -> None:
    async with serving(transport) as server, await RawClient.open(url(server)) as c:
        await c.expect_silence(0.3)
        await c.send({"type": "AUTH", "token": "anything"})
        ack = await c.recv()
        assert ack["type"] == "AUTH_ACK"
        assert "userId" not in ack
        assert isinstance(ack["deviceId"], str) and ack["deviceToken"].startswith(ack["deviceId"] + ".")
        # later AUTH frames are ignored, and so is DEVICE_HELLO once a device is bound
        await c.send({"type": "AUTH", "token": "again"})
        await c.send({"type": "DEVICE_HELLO"})
        await c.expect_silence(0.3)
        pong = await c.ping(5)
        assert pong["timestamp"] == 5


async def test_device_hello_present_or_mint(transport: str) -> None:
    async with serving(transport) as server:
        async with await RawClient.open(url(server, "/")) as c:
            await c.send({"type": "DEVICE_HELLO"})
            first = await c.recv()
            assert first["type"] == "DEVICE_ACK"
            device_id, token = first["deviceId"], first["deviceToken"]
            assert token.split(".")[0] == device_id and len(token.split(".")[1]) >= 32
            await c.send({"type": "DEVICE_HELLO", "deviceToken": token})  # answered once only
            await c.expect_silence(0.3)
        # a valid token re-binds its device id and issues nothing new
        async with await RawClient.open(url(server)) as c:
            await c.send({"type": "DEVICE_HELLO", "deviceToken": token})
            again = await c.recv()
            assert again == {"type": "DEVICE_ACK", "deviceId": device_id}
        # a forged secret for a known id mints a new identity
        async with await RawClient.open(url(server)) as c:
            await c.send({"type": "DEVICE_HELLO", "deviceToken": device_id + ".00ff"})
            forged = await c.recv()
            assert forged["deviceId"] != device_id and "deviceToken" in forged
        # the registry stores hashes, never the secret
        secret = token.split(".")[1]
        assert all(secret.encode() not in h for h in server.devices._hashes.values())


async def test_auth_with_device_token_rebinds_in_no_auth_mode(transport: str) -> None:
    async with serving(transport) as server:
        async with await RawClient.open(url(server)) as c:
            await c.send({"type": "DEVICE_HELLO"})
            token = (await c.recv())["deviceToken"]
        async with await RawClient.open(url(server)) as c:
            await c.send({"type": "AUTH", "token": "t", "deviceToken": token})
            ack = await c.recv()
            assert ack == {"type": "AUTH_ACK", "deviceId": token.split(".")[0]}


# ----------------------------------------------------------------------------------- JWT mode


async def test_jwt_handshake_duplicate_auth_ignored(transport: str) -> None:
    async with serving(transport, jwt_secret=SECRET) as server:
        c = await RawClient.open(url(server))
        assert await c.recv() == {"type": "AUTH_REQUIRED"}
        token = make_token(sub="bob", roles=["admin", "dev"])
        # the TS client sends AUTH on open and again after AUTH_REQUIRED
        await c.send({"type": "AUTH", "token": token})
        await c.send({"type": "AUTH", "token": token})
        ack = await c.recv()
        assert ack["type"] == "AUTH_ACK" and ack["userId"] == "bob"
        assert "deviceId" in ack and "deviceToken" in ack
        await c.expect_silence(0.3)
        (session,) = server.sessions.values()
        assert session.user_id == "bob" and session.roles == ("admin", "dev")
        assert (await c.ping(7))["timestamp"] == 7
        await c.close()


async def test_jwt_drops_everything_before_auth(transport: str) -> None:
    async with serving(transport, jwt_secret=SECRET) as server:
        c = await RawClient.open(url(server))
        assert (await c.recv())["type"] == "AUTH_REQUIRED"
        await c.send({"type": "DEVICE_HELLO"})
        await c.send({"type": "PING", "timestamp": 1})
        await c.send({"type": "OP_BATCH", "payload": {"ops": []}})
        await c.send({"type": "NO_SUCH_KIND"})
        await c.send_raw(b"\xc1\xc1 not msgpack")
        await c.send_raw(pack([1, 2, 3]))
        await c.expect_silence(0.4)
        await c.send({"type": "AUTH", "token": make_token()})
        assert (await c.recv())["type"] == "AUTH_ACK"
        # DEVICE_HELLO in OPEN: the device is already bound through AUTH, so it is ignored
        await c.send({"type": "DEVICE_HELLO"})
        await c.expect_silence(0.3)
        await c.close()


async def test_jwt_device_hello_in_open_answered_once_without_device_identity(transport: str) -> None:
    async with serving(transport, jwt_secret=SECRET, device_identity=False) as server:
        c = await authed(server)
        await c.send({"type": "DEVICE_HELLO"})
        assert await c.recv() == {"type": "DEVICE_ACK"}
        await c.send({"type": "DEVICE_HELLO"})
        await c.expect_silence(0.3)
        await c.close()


@pytest.mark.parametrize(
    "token",
    [
        pytest.param(make_token("wrong-secret-wrong-secret-wrong-secret"), id="bad-signature"),
        pytest.param(make_token(exp_in=-3600), id="expired"),
        pytest.param(make_token(sub=None), id="missing-sub"),
        pytest.param(make_token(sub=""), id="empty-sub"),
        pytest.param(make_token(exp_in=None), id="missing-exp"),
        pytest.param("not.a.jwt", id="garbage"),
        pytest.param(make_token(algorithm="HS512"), id="wrong-alg"),
    ],
)
async def test_jwt_bad_token_gets_auth_fail_and_close(transport: str, token: str) -> None:
    async with serving(transport, jwt_secret=SECRET) as server:
        c = await RawClient.open(url(server))
        assert (await c.recv())["type"] == "AUTH_REQUIRED"
        await c.send({"type": "AUTH", "token": token})
        assert await c.recv() == {"type": "AUTH_FAIL", "error": "Authentication failed", "code": 401}
        code, _ = await c.wait_closed()
        assert code == 1008
        assert server.metrics.auth_failures.value() == 1
        # the server keeps serving other clients
        ok = await authed(server)
        await ok.close()


async def test_jwt_non_string_token_is_dropped_silently(transport: str) -> None:
    async with serving(transport, jwt_secret=SECRET) as server:
        c = await RawClient.open(url(server))
        assert (await c.recv())["type"] == "AUTH_REQUIRED"
        # a wrongly typed AUTH is a malformed frame: dropped without an answer before auth
        await c.send({"type": "AUTH", "token": 12345})
        await c.expect_silence(0.3)
        await c.send({"type": "AUTH", "token": make_token()})
        assert (await c.recv())["type"] == "AUTH_ACK"
        await c.close()


async def test_expired_within_leeway_is_accepted(transport: str) -> None:
    async with serving(transport, jwt_secret=SECRET, jwt_leeway=120) as server:
        c = await authed(server, make_token(exp_in=-60))
        await c.close()


async def test_rs256_handshake(transport: str, tmp_path: Any) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pub = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    path = tmp_path / "pub.pem"
    path.write_bytes(pub)
    priv = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    async with serving(transport, jwt_public_key=str(path)) as server:
        assert server.auth_mode == "rs256"
        good = make_token(priv.decode(), sub="carol", algorithm="RS256")
        c = await authed(server, good)
        await c.close()
        # an HS256 token signed with the public key as secret must not pass (algorithm confusion)
        import hmac as _hmac  # noqa: F401  (documents intent; PyJWT refuses PEM keys as HMAC secrets)

        forged = _forge_hs256_with_public_key(pub)
        c = await RawClient.open(url(server))
        assert (await c.recv())["type"] == "AUTH_REQUIRED"
        await c.send({"type": "AUTH", "token": forged})
        assert (await c.recv())["type"] == "AUTH_FAIL"
        await c.wait_closed()


def _forge_hs256_with_public_key(pub: bytes) -> str:
    import base64
    import hashlib
    import hmac
    import json

    def b64(b: bytes) -> bytes:
        return base64.urlsafe_b64encode(b).rstrip(b"=")

    header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(json.dumps({"sub": "mallory", "exp": int(time.time()) + 300}).encode())
    sig = b64(hmac.new(pub, header + b"." + body, hashlib.sha256).digest())
    return (header + b"." + body + b"." + sig).decode()


async def test_auth_deadline_closes_silently(transport: str) -> None:
    async with serving(transport, jwt_secret=SECRET, auth_timeout=0.4) as server:
        c = await RawClient.open(url(server))
        assert (await c.recv())["type"] == "AUTH_REQUIRED"
        t0 = time.monotonic()
        frames: list[Any] = []
        try:
            async with asyncio.timeout(5):
                while True:
                    frames.append(await c.ws.recv())
        except ConnectionClosed:
            pass
        assert frames == []
        assert 0.3 <= time.monotonic() - t0 < 3.0
        await eventually(lambda: not server.sessions)


# ----------------------------------------------------------------------------------- heartbeat


async def test_ping_pong_echoes_integer_timestamp(transport: str) -> None:
    async with serving(transport) as server, await RawClient.open(url(server)) as c:
        raw_ts = 1_732_000_000_123.0  # float64, as the TS client sends epoch millis
        await c.send({"type": "PING", "timestamp": raw_ts})
        data = await asyncio.wait_for(c.ws.recv(), 2)
        pong = msgpack.unpackb(data)
        assert pong["type"] == "PONG"
        assert pong["timestamp"] == 1_732_000_000_123 and type(pong["timestamp"]) is int
        assert abs(pong["serverTime"] - time.time() * 1000) < 5000 and type(pong["serverTime"]) is int
        # the echo is an integer on the wire, not a float64 (0xcb)
        after_key = data[data.index(b"\xa9timestamp") + 10]
        assert after_key in (0xCF, 0xCE, 0xD3, 0xD2), hex(after_key)


async def test_idle_timeout_closes_without_ping(transport: str) -> None:
    async with serving(transport, idle_timeout=0.5) as server:
        alive = await RawClient.open(url(server))
        idle = await RawClient.open(url(server))
        t0 = time.monotonic()
        for _ in range(8):  # 1.2 s of heartbeats on one connection only
            await alive.ping()
            await asyncio.sleep(0.15)
        code, reason = await idle.wait_closed(3)
        assert code == 1001 and reason == "idle timeout"
        assert time.monotonic() - t0 >= 0.4
        assert (await alive.ping())["type"] == "PONG"
        await alive.close()


# ----------------------------------------------------------------------------------- bad input


async def test_oversize_frame_closes_1009_others_unaffected(transport: str) -> None:
    async with serving(transport, max_message_size=64 * 1024) as server:
        victim = await RawClient.open(url(server))
        bystander = await RawClient.open(url(server))
        await victim.send({"type": "PING", "timestamp": 1, "pad": b"x" * (100 * 1024)})
        code, _ = await victim.wait_closed()
        assert code == 1009
        assert (await bystander.ping(3))["timestamp"] == 3
        # just under the limit still works
        await bystander.send({"type": "PING", "timestamp": 4, "pad": b"x" * (60 * 1024)})
        assert (await bystander.recv_type("PONG"))["timestamp"] == 4
        assert server.metrics.oversize_disconnects.value() == 1
        await bystander.close()


async def test_oversize_fragmented_message_closes_1009(transport: str) -> None:
    async with serving(transport, max_message_size=64 * 1024) as server:
        victim = await RawClient.open(url(server))
        chunk = b"\x00" * (16 * 1024)
        try:
            await victim.ws.send([chunk] * 8)  # 128 KiB in eight 16 KiB fragments
        except ConnectionClosed:
            pass
        code, _ = await victim.wait_closed()
        assert code == 1009
        ok = await RawClient.open(url(server))
        assert (await ok.ping())["type"] == "PONG"
        await ok.close()


async def test_malformed_and_unknown_frames_after_auth(transport: str) -> None:
    async with serving(transport, jwt_secret=SECRET) as server:
        c = await authed(server)
        other = await authed(server)
        await c.send({"type": "HYBRID_QUERY_SUBSCRIBE", "payload": {}})
        err = await c.recv()
        assert err == {
            "type": "ERROR",
            "payload": {"code": 400, "message": "unknown message type: HYBRID_QUERY_SUBSCRIBE"},
        }
        await c.send({"type": "SEARCH", "payload": {"requestId": "r"}})
        assert (await c.recv())["payload"] == {"code": 501, "message": "not implemented: SEARCH"}
        # core client kind without a processor
        server.processors.unregister(MessageType.TOPIC_SUB)
        await c.send({"type": "TOPIC_SUB", "payload": {"topic": "t"}})
        assert (await c.recv())["payload"]["code"] == 501
        # wrong field type
        await c.send({"type": "PING", "timestamp": "yesterday"})
        assert (await c.recv())["payload"]["code"] == 400
        # malformed msgpack, non-map, missing type, non-string type
        for junk in (b"\xc1", b"\x92\x01\x02", pack({"no": "type"}), pack({"type": 7}), b""):
            await c.send_raw(junk)
            err = await c.recv()
            assert err["type"] == "ERROR" and err["payload"]["code"] == 400, (junk, err)
        # QUERY_SYNC_INIT must be accepted and ignored; server-to-client kinds are ignored
        await c.send({"type": "QUERY_SYNC_INIT", "payload": {"queryId": "q"}})
        await c.send({"type": "OP_ACK", "payload": {"lastId": "1"}})
        await c.expect_silence(0.3)
        # still open and the other session is unaffected
        assert (await c.ping(11))["timestamp"] == 11
        assert (await other.ping(12))["timestamp"] == 12
        await c.close()
        await other.close()


async def test_junk_flood_keeps_server_up(transport: str) -> None:
    import random

    rnd = random.Random(1234)
    async with serving(transport, jwt_secret=SECRET) as server:
        pre = await RawClient.open(url(server))
        assert (await pre.recv())["type"] == "AUTH_REQUIRED"
        post = await authed(server)
        watcher = await authed(server)
        junk = [bytes(rnd.getrandbits(8) for _ in range(rnd.randint(0, 300))) for _ in range(300)]
        junk += [
            pack({
                "type": rnd.choice(["PING", "AUTH", "OP_BATCH", "SYNC_INIT", "X"]),
                "payload": rnd.choice([None, 1, "s", [1], {"ops": "nope"}]),
                "timestamp": rnd.choice([None, "x", 1.5, -1, 2**64 - 1, float("nan")]),
            })
            for _ in range(300)
        ]
        junk.append(b"\x91" * 2000 + b"\xc0")  # nesting far beyond the depth limit
        for frame in junk:
            await pre.send_raw(frame)
            await post.send_raw(frame)
        await pre.expect_silence(0.3)  # never answered before authentication
        errors = 0
        try:
            while True:
                msg = await post.recv(0.5)
                errors += msg["type"] == "ERROR"
        except asyncio.TimeoutError:
            pass
        assert errors > 0
        assert (await post.ping(1))["timestamp"] == 1
        assert (await watcher.ping(2))["timestamp"] == 2
        await pre.send({"type": "AUTH", "token": make_token()})
        assert (await pre.recv())["type"] == "AUTH_ACK"
        for c in (pre, post, watcher):
            await c.close()


async def test_text_frames_are_ignored(transport: str) -> None:
    async with serving(transport) as server, await RawClient.open(url(server)) as c:
        await c.send_raw('{"type":"PING","timestamp":1}')
        await c.ws.send(["frag", "mented text"])
        await c.expect_silence(0.3)
        assert (await c.ping(2))["timestamp"] == 2


async def test_batch_inner_messages_processed_in_order(transport: str) -> None:
    import struct

    async with serving(transport) as server, await RawClient.open(url(server)) as c:
        inner = [pack({"type": "PING", "timestamp": i}) for i in (1, 2, 3)]
        data_a = struct.pack("<I", 3) + b"".join(struct.pack("<I", len(f)) + f for f in inner)
        await c.send({"type": "BATCH", "count": 3, "data": data_a})
        assert [(await c.recv())["timestamp"] for _ in range(3)] == [1, 2, 3]
        data_b = b"".join(struct.pack(">I", len(f)) + f for f in inner[:2])
        await c.send({"type": "BATCH", "count": 2, "data": data_b})
        assert [(await c.recv())["timestamp"] for _ in range(2)] == [1, 2]
        await c.send({"type": "BATCH", "count": 1, "data": b"\x01\x02"})
        assert (await c.recv())["payload"]["code"] == 400


# ----------------------------------------------------------------------------------- processors


async def test_processor_order_pong_not_delayed_and_cleanup(transport: str) -> None:
    events: list[str] = []
    cleaned: list[int] = []

    class SlowTopics:
        async def _later(self, ctx: RequestContext, topic: str) -> None:
            await asyncio.sleep(0.3 if topic == "first" else 0)
            events.append(topic)
            ctx.send(TopicMessage(topic=topic, data=len(events), publisher_id=None, timestamp=0))

        def handle(self, ctx: RequestContext, msg: Any) -> Any:
            if msg.topic == "boom":
                raise ProtocolError("bad topic name", code=400)
            if msg.topic == "crash":
                raise RuntimeError("bug")
            if not ctx.data.get("registered"):
                ctx.data["registered"] = True
                ctx.add_cleanup(lambda c: cleaned.append(c.connection_id))
            return self._later(ctx, msg.topic)

    async with serving(transport) as server:
        server.processors.register(MessageType.TOPIC_SUB, SlowTopics())
        c = await RawClient.open(url(server))
        for topic in ("first", "second", "third"):
            await c.send({"type": "TOPIC_SUB", "payload": {"topic": topic}})
        await c.send({"type": "PING", "timestamp": 99})
        got = [await c.recv(3) for _ in range(4)]
        assert got[0] == {"type": "PONG", "timestamp": 99, "serverTime": got[0]["serverTime"]}
        assert [m["payload"]["topic"] for m in got[1:]] == ["first", "second", "third"]
        assert events == ["first", "second", "third"]
        await c.send({"type": "TOPIC_SUB", "payload": {"topic": "boom"}})
        assert (await c.recv())["payload"]["code"] == 400
        await c.send({"type": "TOPIC_SUB", "payload": {"topic": "crash"}})
        err = (await c.recv())["payload"]
        assert err == {"code": 500, "message": "internal error", "details": {"type": "TOPIC_SUB"}}
        (conn_id,) = server.sessions
        await c.close()
        await eventually(lambda: bool(cleaned))
        assert cleaned == [conn_id]
        await eventually(lambda: not server.sessions)


async def test_slow_consumer_is_disconnected(transport: str) -> None:
    frame = b"\x00" * (64 * 1024)
    sent = {"n": 0}

    def flood(ctx: RequestContext, msg: Any) -> None:
        for _ in range(4000):  # up to 256 MiB if nothing stopped it
            if ctx.closed:
                return
            ctx.send(TopicMessage(topic="t", data=frame, publisher_id=None, timestamp=0))
            sent["n"] += 1

    async with serving(transport, send_queue_max_bytes=1024 * 1024) as server:
        server.processors.register("TOPIC_SUB", flood)
        c = await RawClient.open(url(server), max_queue=1)
        await c.send({"type": "TOPIC_SUB", "payload": {"topic": "t"}})
        await asyncio.sleep(0.5)  # the client reads nothing meanwhile
        assert sent["n"] < 4000
        assert server.metrics.slow_consumer_disconnects.value() == 1
        code, reason = await c.wait_closed(15)
        assert code == 1013 and reason and "slow consumer" in reason
        ok = await RawClient.open(url(server))
        assert (await ok.ping())["type"] == "PONG"
        await ok.close()


async def test_registry_refuses_session_kinds() -> None:
    from topgun.errors import ConfigError
    from topgun.server.session import ProcessorRegistry

    reg = ProcessorRegistry()
    for kind in ("AUTH", "PING", "DEVICE_HELLO", "BATCH"):
        with pytest.raises(ConfigError):
            reg.register(kind, lambda ctx, msg: None)
    with pytest.raises(ValueError):
        reg.register("NOT_A_KIND", lambda ctx, msg: None)
    reg.register(MessageType.OP_BATCH, lambda ctx, msg: None)
    assert reg.kinds() == ["OP_BATCH"]
    reg.unregister("OP_BATCH")
    assert reg.kinds() == []


async def test_inbound_queue_bound_disconnects_flooding_client(transport: str) -> None:
    gate = asyncio.Event()
    handled: list[str] = []

    async def blocked(ctx: RequestContext, msg: Any) -> None:
        handled.append(msg.topic)
        await gate.wait()

    async with serving(transport, recv_queue_max_frames=5) as server:
        server.processors.register(MessageType.TOPIC_SUB, blocked)
        c = await RawClient.open(url(server))
        for i in range(10):
            await c.send({"type": "TOPIC_SUB", "payload": {"topic": f"t{i}"}})
        code, reason = await c.wait_closed()
        assert code == 1013 and reason == "inbound queue over limit"
        gate.set()
        assert handled == ["t0"]  # queued messages of a dropped connection are discarded
        ok = await RawClient.open(url(server))
        assert (await ok.ping())["type"] == "PONG"
        await ok.close()


async def test_nested_batches_work_but_deep_nesting_is_refused(transport: str) -> None:
    import struct

    def batch_of(frames: list[bytes]) -> bytes:
        data = struct.pack("<I", len(frames)) + b"".join(struct.pack("<I", len(f)) + f for f in frames)
        return pack({"type": "BATCH", "count": len(frames), "data": data})

    async with serving(transport) as server, await RawClient.open(url(server)) as c:
        inner = batch_of([pack({"type": "PING", "timestamp": 1})])
        await c.send_raw(batch_of([inner, pack({"type": "PING", "timestamp": 2})]))
        assert [(await c.recv())["timestamp"] for _ in range(2)] == [1, 2]
        deep = pack({"type": "PING", "timestamp": 3})
        for _ in range(5000):  # would exhaust the interpreter stack if followed
            deep = batch_of([deep])
        await c.send_raw(deep)
        err = await c.recv()
        assert err["payload"] == {"code": 400, "message": "BATCH nested too deeply"}
        assert (await c.ping(4))["timestamp"] == 4
