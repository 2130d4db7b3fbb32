"""Ephemeral topics over real sockets (PROTOCOL §4.8, §5.12, §5.15): fan-out to every subscriber but
the publisher, publisher id and timestamp, opaque data, unsubscribe and disconnect, bad names."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import msgpack
import pytest
from rawclient import SECRET, RawClient, make_token

from support.servers import serving
from topgun.protocol.messages import MessageType
from topgun.server.app import TopGunServer
from topgun.server.handlers.topics import TopicRegistry

pytestmark = pytest.mark.timeout(60)


def topics_of(server: TopGunServer) -> TopicRegistry:
    owner = getattr(server.processors.get(MessageType.TOPIC_PUB), "__self__", None)
    assert isinstance(owner, TopicRegistry)
    return owner


async def no_auth_client(server: TopGunServer) -> tuple[RawClient, str]:
    """A connection in no-auth mode; returns it with its device id."""
    c = await RawClient.open(f"ws://127.0.0.1:{server.port}/ws")
    await c.send({"type": "DEVICE_HELLO"})
    ack = await c.recv()
    assert ack["type"] == "DEVICE_ACK"
    return c, ack["deviceId"]


async def jwt_client(server: TopGunServer, sub: str) -> RawClient:
    c = await RawClient.open(f"ws://127.0.0.1:{server.port}/ws")
    assert (await c.recv())["type"] == "AUTH_REQUIRED"
    await c.send({"type": "AUTH", "token": make_token(sub=sub)})
    assert (await c.recv())["type"] == "AUTH_ACK"
    return c


async def sub(c: RawClient, topic: str) -> None:
    await c.send({"type": "TOPIC_SUB", "payload": {"topic": topic}})


async def pub(c: RawClient, topic: str, data: Any) -> None:
    await c.send({"type": "TOPIC_PUB", "payload": {"topic": topic, "data": data}})


async def synced(*clients: RawClient) -> None:
    # PONG follows everything the server processed before the PING on that connection (§1.8).
    for c in clients:
        await c.ping()


async def test_fan_out_to_all_subscribers_but_the_publisher(transport: str) -> None:
    async with serving(transport) as server:
        conns = [await no_auth_client(server) for _ in range(4)]
        for c, _ in conns:
            await sub(c, "chat")
        await synced(*(c for c, _ in conns))
        assert len(topics_of(server).subscribers("chat")) == 4
        publisher, publisher_device = conns[0]
        before = time.time() * 1000
        await pub(publisher, "chat", {"text": "hi", "n": 1})
        for c, _ in conns[1:]:
            msg = await c.recv()
            after = time.time() * 1000
            assert msg["type"] == "TOPIC_MESSAGE"
            p = msg["payload"]
            assert p["topic"] == "chat"
            assert p["data"] == {"text": "hi", "n": 1}
            assert p["publisherId"] == publisher_device
            assert type(p["timestamp"]) is int and before - 5 <= p["timestamp"] <= after + 5
            assert set(p) == {"topic", "data", "publisherId", "timestamp"}
        # No echo to the publisher, and nothing else to anyone.
        await publisher.expect_silence(0.2)
        for c, _ in conns[1:]:
            await c.expect_silence(0.05)
        for c, _ in conns:
            await c.close()


async def test_publisher_need_not_be_subscribed_and_topics_are_separate() -> None:
    async with serving("websockets") as server:
        a, _ = await no_auth_client(server)
        b, _ = await no_auth_client(server)
        c, c_dev = await no_auth_client(server)
        await sub(a, "room/1")
        await sub(b, "room/2")
        await synced(a, b)
        await pub(c, "room/1", "one")
        await pub(c, "room/2", "two")
        await pub(c, "room/3", "nobody")
        m1 = await a.recv()
        m2 = await b.recv()
        p1 = m1["payload"]
        assert (p1["topic"], p1["data"], p1["publisherId"]) == ("room/1", "one", c_dev)
        assert (m2["payload"]["topic"], m2["payload"]["data"]) == ("room/2", "two")
        await a.expect_silence(0.15)
        await b.expect_silence(0.05)
        await c.expect_silence(0.05)
        assert topics_of(server).published == 3
        for x in (a, b, c):
            await x.close()


async def test_data_is_opaque_and_messages_are_in_order() -> None:
    async with serving("websockets") as server:
        a, _ = await no_auth_client(server)
        b, _ = await no_auth_client(server)
        await sub(b, "t")
        await synced(b)
        stamp = msgpack.ExtType(5, b"\x01\x02")
        values: list[Any] = [None, 0, -1, 1.5, 2**40, "s", b"\x00\xff", [1, [2]], {"k": {"n": None}}, True]
        for v in values:
            await pub(a, "t", v)
        await a.send_raw(msgpack.packb({"type": "TOPIC_PUB", "payload": {"topic": "t", "data": stamp}}))
        got = [(await b.recv())["payload"] for _ in range(len(values))]
        assert [g["data"] for g in got] == values
        assert all("data" in g for g in got)  # nil data is sent as nil, not omitted
        raw = await asyncio.wait_for(b.ws.recv(), 2)
        assert isinstance(raw, bytes)
        ext = msgpack.unpackb(raw, raw=False)["payload"]["data"]
        assert ext == stamp
        await a.close()
        await b.close()


async def test_publisher_id_is_the_user_id_in_jwt_mode() -> None:
    async with serving("websockets", jwt_secret=SECRET) as server:
        alice = await jwt_client(server, "alice")
        bob = await jwt_client(server, "bob")
        await sub(bob, "news")
        await sub(alice, "news")
        await synced(alice, bob)
        await pub(alice, "news", "from alice")
        msg = await bob.recv()
        assert msg["payload"]["publisherId"] == "alice"
        await alice.expect_silence(0.15)
        await alice.close()
        await bob.close()


async def test_unsubscribe_and_disconnect_stop_delivery() -> None:
    async with serving("websockets") as server:
        a, _ = await no_auth_client(server)
        b, _ = await no_auth_client(server)
        c, _ = await no_auth_client(server)
        for x in (a, b, c):
            await sub(x, "u")
        await synced(a, b, c)
        await b.send({"type": "TOPIC_UNSUB", "payload": {"topic": "u"}})
        # Unsubscribing from a topic never subscribed is silently ignored.
        await b.send({"type": "TOPIC_UNSUB", "payload": {"topic": "never"}})
        await c.close()
        reg = topics_of(server)
        deadline = time.monotonic() + 3
        while len(reg.subscribers("u")) != 1:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        await synced(b)
        await pub(b, "u", 42)
        assert (await a.recv())["payload"]["data"] == 42
        await pub(a, "u", 43)
        await b.expect_silence(0.2)
        await a.close()
        deadline = time.monotonic() + 3
        while reg.topics():
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        await b.close()


@pytest.mark.parametrize("kind", ["TOPIC_SUB", "TOPIC_UNSUB", "TOPIC_PUB"])
async def test_bad_topic_name_is_error_400(kind: str) -> None:
    async with serving("websockets") as server:
        c, _ = await no_auth_client(server)
        for bad in ["", "with space", "t" * 257, "émoji", "a,b", "tab\t"]:
            payload: dict[str, Any] = {"topic": bad}
            if kind == "TOPIC_PUB":
                payload["data"] = 1
            await c.send({"type": kind, "payload": payload})
            err = await c.recv()
            assert err["type"] == "ERROR", err
            assert err["payload"]["code"] == 400
            assert isinstance(err["payload"]["message"], str) and err["payload"]["message"]
        # A missing topic is a decode error, also 400; the connection stays usable.
        await c.send({"type": kind, "payload": {}})
        assert (await c.recv())["payload"]["code"] == 400
        await c.send({"type": "TOPIC_SUB", "payload": {"topic": ("Az09_-.:/" * 30)[:256]}})
        await c.expect_silence(0.15)
        assert topics_of(server).topics() == [("Az09_-.:/" * 30)[:256]]
        await c.close()
