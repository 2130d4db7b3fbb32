"""PN-counters over real sockets (PROTOCOL §2.8, §4.10, §5.14, §5.15): reply shapes with both state
spellings, merge by per-node max, fan-out to subscribers, persistence across restarts on every backend."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from rawclient import RawClient

from support.servers import serving
from topgun.protocol.messages import MessageType
from topgun.server.app import TopGunServer
from topgun.server.handlers.counters import CounterRegistry

pytestmark = pytest.mark.timeout(60)


def counters_of(server: TopGunServer) -> CounterRegistry:
    owner = getattr(server.processors.get(MessageType.COUNTER_SYNC), "__self__", None)
    assert isinstance(owner, CounterRegistry)
    return owner


async def client(server: TopGunServer) -> RawClient:
    return await RawClient.open(f"ws://127.0.0.1:{server.port}/ws")


def both(p: dict[str, Any], n: dict[str, Any]) -> dict[str, Any]:
    return {"p": p, "n": n, "positive": p, "negative": n}


async def counter_request(c: RawClient, name: str) -> dict[str, Any]:
    await c.send({"type": "COUNTER_REQUEST", "payload": {"name": name}})
    reply = await c.recv()
    assert reply["type"] == "COUNTER_RESPONSE", reply
    assert reply["payload"]["name"] == name
    return reply["payload"]["state"]


async def counter_sync(c: RawClient, name: str, state: dict[str, Any]) -> dict[str, Any]:
    await c.send({"type": "COUNTER_SYNC", "payload": {"name": name, "state": state}})
    reply = await c.recv()
    assert reply["type"] == "COUNTER_UPDATE", reply
    assert reply["payload"]["name"] == name
    return reply["payload"]["state"]


def value(state: dict[str, Any]) -> int | float:
    assert state["p"] == state["positive"] and state["n"] == state["negative"]
    return sum(state["p"].values()) - sum(state["n"].values())


async def test_request_of_unknown_counter_is_empty_state_in_both_spellings() -> None:
    async with serving() as server:
        c = await client(server)
        await c.send({"type": "COUNTER_REQUEST", "payload": {"name": "likes"}})
        reply = await c.recv()
        assert reply == {"type": "COUNTER_RESPONSE", "payload": {"name": "likes", "state": both({}, {})}}
        assert counters_of(server).subscribers("likes") != []
        await c.close()


async def test_sync_merges_replies_and_fans_out_to_other_subscribers() -> None:
    async with serving() as server:
        a = await client(server)
        b = await client(server)
        outsider = await client(server)
        assert value(await counter_request(b, "likes")) == 0
        # Schema spelling {p, n}.
        merged = await counter_sync(a, "likes", {"p": {"node-a": 5}, "n": {"node-a": 2}})
        assert merged == both({"node-a": 5}, {"node-a": 2})
        pushed = await b.recv()
        assert pushed == {"type": "COUNTER_UPDATE", "payload": {"name": "likes", "state": merged}}
        # TS spelling {positive, negative}; a's stale total loses to the max.
        merged = await counter_sync(b, "likes", {"positive": {"node-b": 3, "node-a": 1}, "negative": {}})
        assert merged == both({"node-a": 5, "node-b": 3}, {"node-a": 2})
        assert value(merged) == 6
        assert (await a.recv())["payload"]["state"] == merged
        # Both spellings in one state: merged per node with max.
        mixed = {"p": {"node-a": 7}, "positive": {"node-a": 6, "node-c": 1}, "negative": {"node-c": 4}}
        merged = await counter_sync(a, "likes", mixed)
        assert merged == both({"node-a": 7, "node-b": 3, "node-c": 1}, {"node-a": 2, "node-c": 4})
        assert (await b.recv())["payload"]["state"] == merged
        await outsider.expect_silence(0.15)
        assert counters_of(server).value("likes") == 5
        await a.close()
        await b.close()
        await outsider.close()


async def test_resending_a_known_state_is_answered_but_not_broadcast() -> None:
    async with serving() as server:
        a = await client(server)
        b = await client(server)
        s1 = await counter_sync(a, "c", {"p": {"x": 2}, "n": {}})
        await counter_request(b, "c")
        again = await counter_sync(a, "c", {"p": {"x": 1}, "n": {}})
        assert again == s1
        await b.expect_silence(0.2)
        await a.close()
        await b.close()


async def test_float_totals_and_integral_floats() -> None:
    async with serving() as server:
        a = await client(server)
        merged = await counter_sync(a, "f", {"positive": {"n1": 3.0, "n2": 0.5}, "negative": {"n1": 1.25}})
        # Integral floats (how the TS client encodes some numbers) come back as integers.
        assert merged["p"] == {"n1": 3, "n2": 0.5} and type(merged["p"]["n1"]) is int
        assert value(merged) == 2.25
        await a.close()


@pytest.mark.parametrize(
    "state",
    [
        {"p": {"x": -1}, "n": {}},
        {"p": {"x": "1"}, "n": {}},
        {"p": [1, 2], "n": {}},
        {"p": {"x": float("nan")}},
        "not a map",
    ],
)
async def test_invalid_state_is_error_400_and_changes_nothing(state: Any) -> None:
    async with serving() as server:
        a = await client(server)
        await a.send({"type": "COUNTER_SYNC", "payload": {"name": "bad", "state": state}})
        err = await a.recv()
        assert err["type"] == "ERROR" and err["payload"]["code"] == 400
        assert counters_of(server).value("bad") == 0
        assert value(await counter_request(a, "bad")) == 0
        await a.close()


async def test_empty_name_is_error_400() -> None:
    async with serving() as server:
        a = await client(server)
        await a.send({"type": "COUNTER_REQUEST", "payload": {"name": ""}})
        assert (await a.recv())["payload"]["code"] == 400
        await a.close()


async def test_disconnect_removes_counter_subscriptions() -> None:
    async with serving() as server:
        a = await client(server)
        b = await client(server)
        await counter_request(a, "d")
        await counter_request(b, "d")
        reg = counters_of(server)
        assert len(reg.subscribers("d")) == 2
        await a.close()
        deadline = time.monotonic() + 3
        while len(reg.subscribers("d")) != 1:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        assert value(await counter_sync(b, "d", {"p": {"b": 1}, "n": {}})) == 1
        await b.close()


async def test_counters_survive_restart_and_offline_replicas_converge(storage_url: str) -> None:
    # Three replicas change the counter independently (as offline clients do), then sync one by one.
    replicas = {
        "r1": ({"r1": 10}, {"r1": 1}),
        "r2": ({"r2": 4}, {}),
        "r3": ({"r3": 0}, {"r3": 6}),
    }
    async with serving(storage=storage_url) as server:
        for p, n in list(replicas.values())[:2]:
            c = await client(server)
            await counter_sync(c, "likes", {"positive": p, "negative": n})
            await c.close()
        c = await client(server)
        await counter_sync(c, "other", {"p": {"z": 1.5}, "n": {}})
        await c.close()
    async with serving(storage=storage_url) as server:
        reg = counters_of(server)
        assert reg.value("likes") == 13
        assert reg.value("other") == 1.5
        c = await client(server)
        state = await counter_request(c, "likes")
        assert state == both({"r1": 10, "r2": 4}, {"r1": 1})
        p3, n3 = replicas["r3"]
        merged = await counter_sync(c, "likes", {"p": p3, "n": n3})
        assert value(merged) == 7
        # A replica that was offline with an old copy of r1 and its own change converges too.
        merged = await counter_sync(c, "likes", {"p": {"r1": 3, "r4": 2}, "n": {}})
        assert value(merged) == 9
        await c.close()
    async with serving(storage=storage_url) as server:
        c = await client(server)
        state = await counter_request(c, "likes")
        assert state == both({"r1": 10, "r2": 4, "r3": 0, "r4": 2}, {"r1": 1, "r3": 6})
        assert value(state) == 9
        await c.close()
