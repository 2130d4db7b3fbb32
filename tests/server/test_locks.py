"""Distributed locks over real sockets (PROTOCOL §4.9, §5.13, §5.15): every reply shape, mutual
exclusion under contention, fencing tokens that keep growing across restarts, lease expiry, release
on disconnect — on every storage backend."""

from __future__ import annotations

import asyncio
import random
import uuid
from typing import Any

import pytest
from rawclient import RawClient

from support.servers import eventually, serving
from topgun.protocol.messages import MessageType
from topgun.server.app import TopGunServer
from topgun.server.handlers.counters import install_coordination_handlers
from topgun.server.handlers.locks import LockManager

pytestmark = pytest.mark.timeout(90)


def locks_of(server: TopGunServer) -> LockManager:
    proc = server.processors.get(MessageType.LOCK_REQUEST)
    owner = getattr(proc, "__self__", None)
    assert isinstance(owner, LockManager), proc
    return owner


async def open_client(server: TopGunServer) -> RawClient:
    c = await RawClient.open(f"ws://127.0.0.1:{server.port}/ws")
    await c.send({"type": "AUTH", "token": "no-auth"})
    assert (await c.recv())["type"] == "AUTH_ACK"
    return c


async def request(c: RawClient, name: str, ttl: Any = None, rid: str | None = None) -> dict[str, Any]:
    rid = rid or uuid.uuid4().hex
    payload: dict[str, Any] = {"requestId": rid, "name": name}
    if ttl is not None:
        payload["ttl"] = ttl
    await c.send({"type": "LOCK_REQUEST", "payload": payload})
    reply = await c.recv(5.0)
    assert reply["type"] in {"LOCK_GRANTED", "LOCK_RELEASED"}, reply
    assert reply["payload"]["requestId"] == rid
    assert reply["payload"]["name"] == name
    return reply


async def release(c: RawClient, name: str, token: Any, rid: str | None = "rel") -> dict[str, Any]:
    payload: dict[str, Any] = {"name": name, "fencingToken": token}
    if rid is not None:
        payload["requestId"] = rid
    await c.send({"type": "LOCK_RELEASE", "payload": payload})
    reply = await c.recv(5.0)
    assert reply["type"] == "LOCK_RELEASED", reply
    return reply


def granted_token(reply: dict[str, Any]) -> int:
    assert reply["type"] == "LOCK_GRANTED", reply
    token = reply["payload"]["fencingToken"]
    assert type(token) is int
    return token


# ----------------------------------------------------------------------------------- reply shapes


async def test_grant_regrant_busy_and_release_shapes() -> None:
    async with serving() as server:
        a = await open_client(server)
        b = await open_client(server)
        g = await request(a, "invoice-42", ttl=10_000, rid="r1")
        assert g == {
            "type": "LOCK_GRANTED",
            "payload": {"requestId": "r1", "name": "invoice-42", "fencingToken": 1},
        }
        # Same connection again: the existing token, no new one.
        again = await request(a, "invoice-42", ttl=10_000, rid="r2")
        assert granted_token(again) == 1
        # Another connection: refused with LOCK_RELEASED success false and its own requestId.
        busy = await request(b, "invoice-42", ttl=10_000, rid="r3")
        assert busy == {
            "type": "LOCK_RELEASED",
            "payload": {"requestId": "r3", "name": "invoice-42", "success": False},
        }
        # A wrong token does not free the lock.
        wrong = await release(b, "invoice-42", 2, rid="r4")
        assert wrong["payload"] == {"requestId": "r4", "name": "invoice-42", "success": False}
        assert locks_of(server).holder("invoice-42") is not None
        ok = await release(a, "invoice-42", 1, rid="r5")
        assert ok["payload"] == {"requestId": "r5", "name": "invoice-42", "success": True}
        assert locks_of(server).holder("invoice-42") is None
        # Releasing twice fails; a release without requestId is answered with "".
        twice = await release(a, "invoice-42", 1, rid=None)
        assert twice["payload"] == {"requestId": "", "name": "invoice-42", "success": False}
        # The next grant gets the next token, for whoever asks.
        assert granted_token(await request(b, "invoice-42")) == 2
        await a.close()
        await b.close()


async def test_invalid_requests_are_refused_with_lock_released() -> None:
    async with serving() as server:
        c = await open_client(server)
        for bad in ["", "has space", "x" * 257, "ünïcode", "semi;colon"]:
            reply = await request(c, bad, ttl=1000)
            assert reply["type"] == "LOCK_RELEASED" and reply["payload"]["success"] is False, bad
        zero = await request(c, "ok-name", ttl=0)
        assert zero["payload"]["success"] is False
        neg = await request(c, "ok-name", ttl=-5)
        assert neg["payload"]["success"] is False
        # Nothing was granted by the refused requests.
        assert locks_of(server).fencing_counter("ok-name") == 0
        # The whole alphabet at the maximum length is a valid name.
        longest = ("AZaz09_-.:/" * 24)[:256]
        assert granted_token(await request(c, longest)) == 1
        # A float ttl (how the TS client encodes large numbers) is accepted.
        assert granted_token(await request(c, "floaty", ttl=10_000.0)) == 1
        # A request without requestId cannot be correlated: the codec answers ERROR 400.
        await c.send({"type": "LOCK_REQUEST", "payload": {"name": "x"}})
        err = await c.recv()
        assert err["type"] == "ERROR" and err["payload"]["code"] == 400
        await c.close()


async def test_every_request_gets_exactly_one_reply() -> None:
    async with serving() as server:
        a = await open_client(server)
        b = await open_client(server)
        sent: list[str] = []
        for i in range(60):
            rid = f"q{i}"
            sent.append(rid)
            name = f"lock-{i % 4}"
            who = a if i % 2 else b
            await who.send({"type": "LOCK_REQUEST", "payload": {"requestId": rid, "name": name, "ttl": 5000}})
        replies: dict[str, int] = {}
        for who, n in ((a, 30), (b, 30)):
            for _ in range(n):
                msg = await who.recv(5.0)
                rid = msg["payload"]["requestId"]
                replies[rid] = replies.get(rid, 0) + 1
        assert sorted(replies) == sorted(sent)
        assert set(replies.values()) == {1}
        await a.expect_silence(0.2)
        await b.expect_silence(0.2)
        await a.close()
        await b.close()


async def test_tokens_are_per_name() -> None:
    async with serving() as server:
        c = await open_client(server)
        assert granted_token(await request(c, "a")) == 1
        assert granted_token(await request(c, "b")) == 1
        assert await release(c, "a", 1)
        assert granted_token(await request(c, "a")) == 2
        assert granted_token(await request(c, "b")) == 1  # still held by c: same token
        await c.close()


# ----------------------------------------------------------------------------------- expiry, disconnect


async def test_lease_expiry_frees_the_lock_silently() -> None:
    async with serving() as server:
        a = await open_client(server)
        b = await open_client(server)
        t1 = granted_token(await request(a, "lease", ttl=300))
        assert (await request(b, "lease", ttl=300))["payload"]["success"] is False
        await asyncio.sleep(0.45)
        # Nobody is told about the expiry.
        await a.expect_silence(0.05)
        t2 = granted_token(await request(b, "lease", ttl=5000))
        assert t2 == t1 + 1
        # The expired holder's token no longer releases anything, and a is now refused.
        assert (await release(a, "lease", t1))["payload"]["success"] is False
        assert (await request(a, "lease"))["payload"]["success"] is False
        assert locks_of(server).holder("lease")[1] == t2  # type: ignore[index]
        await a.close()
        await b.close()


async def test_lock_without_ttl_is_held_until_released() -> None:
    async with serving() as server:
        a = await open_client(server)
        b = await open_client(server)
        t = granted_token(await request(a, "forever"))
        await asyncio.sleep(0.3)
        assert (await request(b, "forever"))["payload"]["success"] is False
        assert (await release(a, "forever", t))["payload"]["success"] is True
        assert granted_token(await request(b, "forever")) == t + 1
        await a.close()
        await b.close()


async def test_disconnect_frees_every_lock_of_the_connection() -> None:
    async with serving() as server:
        a = await open_client(server)
        b = await open_client(server)
        ta = granted_token(await request(a, "d1"))
        granted_token(await request(a, "d2", ttl=60_000))
        assert (await request(b, "d1"))["payload"]["success"] is False
        await a.close()
        mgr = locks_of(server)
        await eventually(lambda: mgr.held_names() == [])
        assert granted_token(await request(b, "d1")) == ta + 1
        assert granted_token(await request(b, "d2")) == 2
        await b.close()


# ----------------------------------------------------------------------------------- contention, restart


async def _contend(server: TopGunServer, clients: int, rounds: int) -> list[int]:
    """Many connections take turns on one lock with jittered retries; return tokens in grant order."""
    inside: list[int] = []
    order: list[int] = []
    overlaps = 0

    async def worker(i: int) -> None:
        nonlocal overlaps
        c = await open_client(server)
        try:
            for r in range(rounds):
                delay = 0.002
                while True:
                    reply = await request(c, "hot", ttl=5000, rid=f"w{i}-{r}-{uuid.uuid4().hex[:6]}")
                    if reply["type"] == "LOCK_GRANTED":
                        break
                    await asyncio.sleep(delay * (0.5 + random.random()))
                    delay = min(delay * 2, 0.05)
                token = reply["payload"]["fencingToken"]
                if inside:
                    overlaps += 1
                inside.append(i)
                order.append(token)
                await asyncio.sleep(0.003)
                inside.remove(i)
                rel = await release(c, "hot", token, rid=f"rel{i}-{r}")
                assert rel["payload"]["success"] is True
        finally:
            await c.close()

    await asyncio.gather(*(worker(i) for i in range(clients)))
    assert overlaps == 0
    return order


async def test_mutual_exclusion_under_contention_and_tokens_grow_across_restart(storage_url: str) -> None:
    clients, rounds = 8, 5
    async with serving(storage=storage_url) as server:
        order = await _contend(server, clients, rounds)
        # One grant per critical section, tokens strictly increasing in grant order.
        assert len(order) == clients * rounds
        assert order == sorted(order) and len(set(order)) == len(order)
        assert order == list(range(1, clients * rounds + 1))
        # Hold one lock across the restart: the server forgets the holder, not the counter.
        c = await open_client(server)
        before_restart = granted_token(await request(c, "hot", ttl=60_000))
        assert before_restart == clients * rounds + 1
        other = granted_token(await request(c, "other"))
        await c.close()
    async with serving(storage=storage_url) as server:
        mgr = locks_of(server)
        assert mgr.fencing_counter("hot") == before_restart
        assert mgr.held_names() == []
        c = await open_client(server)
        after = granted_token(await request(c, "hot", ttl=1000))
        assert after == before_restart + 1
        assert granted_token(await request(c, "other")) == other + 1
        await c.close()
        order2 = await _contend(server, 4, 3)
        assert order2 == list(range(after + 1, after + 1 + 12))
    # And once more: a third start continues from the highest token ever issued.
    async with serving(storage=storage_url) as server:
        c = await open_client(server)
        assert granted_token(await request(c, "hot")) == max(order2) + 1
        await c.close()


class FlakyStorage:
    """A real SQLite storage whose commits can be made to fail (to test the failure path)."""

    def __init__(self, url: str) -> None:
        from topgun.server.storage import open_storage

        self.inner = open_storage(url)
        self.fail = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def write(self, batch: Any) -> None:
        if self.fail:
            from topgun.errors import StorageError

            raise StorageError("injected commit failure")
        await self.inner.write(batch)


async def test_grant_is_withdrawn_when_the_fencing_counter_cannot_be_persisted(tmp_path: Any) -> None:
    url = f"sqlite:///{tmp_path / 'flaky.db'}"
    storage = FlakyStorage(url)
    server = TopGunServer(port=0, storage=storage)  # type: ignore[arg-type]
    if server.processors.get(MessageType.LOCK_REQUEST) is None:
        install_coordination_handlers(server)
    await server.start()
    try:
        c = await open_client(server)
        t1 = granted_token(await request(c, "durable"))
        assert (await release(c, "durable", t1))["payload"]["success"] is True
        storage.fail = True
        refused = await request(c, "durable", rid="during-outage")
        assert refused["type"] == "LOCK_RELEASED" and refused["payload"]["success"] is False
        assert locks_of(server).holder("durable") is None
        storage.fail = False
        # The withdrawn token is never handed out: the next grant skips it.
        t3 = granted_token(await request(c, "durable"))
        assert t3 == t1 + 2
        await c.close()
    finally:
        await server.stop()
    async with serving(storage=url) as again:
        assert locks_of(again).fencing_counter("durable") == t3
