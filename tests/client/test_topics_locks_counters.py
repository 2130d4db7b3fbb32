"""Topics, locks and counters through the Python client against real servers: in-process
``TopGunServer`` over real sockets, and ``topgun serve`` subprocesses (killed and restarted) on
SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import pytest

from support.clients import FAST, closing, connected, free_port, until
from topgun.client import MemoryStorage, SQLiteStorage, TopGunClient
from topgun.client.topic import TopicEvent
from topgun.errors import ConfigError, LockTimeout, NotConnectedError

pytestmark = pytest.mark.timeout(120)

# ------------------------------------------------------------------------------------------- topics


async def test_topic_fans_out_to_other_subscribers_not_the_publisher(mem_server: Any) -> None:
    a, b, c = [await connected(mem_server.url) for _ in range(3)]
    try:
        got: dict[str, list[TopicEvent]] = {"a": [], "b": [], "c": []}
        a.topic("chat").subscribe(got["a"].append)
        b.topic("chat").subscribe(got["b"].append)
        c.topic("chat").subscribe(got["c"].append)
        topics = mem_server.coordination.topics
        await until(lambda: len(topics.subscribers("chat")) == 3, what="subscriptions")
        t0 = time.time() * 1000
        a.topic("chat").publish({"text": "hello", "n": 1})
        await until(lambda: got["b"] and got["c"], what="delivery")
        for who in ("b", "c"):
            (ev,) = got[who]
            assert ev.topic == "chat" and ev.data == {"text": "hello", "n": 1}
            assert ev.publisher_id == a.engine.device_id and ev.publisher_id
            assert isinstance(ev.timestamp, int) and abs(ev.timestamp - t0) < 5000
        # The publisher never gets its own message; b publishing reaches a and c.
        b.topic("chat").publish("second")
        await until(lambda: len(got["a"]) == 1 and len(got["c"]) == 2, what="second delivery")
        await asyncio.sleep(0.1)
        assert [e.data for e in got["a"]] == ["second"]
        assert [e.data for e in got["b"]] == [{"text": "hello", "n": 1}]
    finally:
        await closing(a, b, c)


async def test_topic_unsubscribe_and_async_callbacks(mem_server: Any) -> None:
    a, b = await connected(mem_server.url), await connected(mem_server.url)
    try:
        seen: list[Any] = []

        async def slow(ev: TopicEvent) -> None:
            await asyncio.sleep(0.01)
            seen.append(ev.data)

        off = b.topic("t").subscribe(slow)
        assert b.topic("t").subscribed
        await until(lambda: mem_server.coordination.topics.subscribers("t") != [], what="sub")
        a.topic("t").publish(1)
        await until(lambda: seen == [1], what="first")
        off()
        assert not b.topic("t").subscribed
        await until(lambda: mem_server.coordination.topics.subscribers("t") == [], what="unsub")
        a.topic("t").publish(2)
        await asyncio.sleep(0.2)
        assert seen == [1]
    finally:
        await closing(a, b)


async def test_publish_offline_raises_or_queues_with_a_bound(mem_server: Any) -> None:
    port = mem_server.port
    # A client of a server that is not there (yet): nothing connects.
    dead_url = f"ws://127.0.0.1:{free_port()}/ws"
    async with TopGunClient(dead_url, storage=MemoryStorage(), settings=FAST) as off:
        with pytest.raises(NotConnectedError):
            off.topic("news").publish("x")
        q = off.topic("news", offline_queue=2)
        for i in range(5):
            q.publish(i)
        assert q.queued == 2 and q.dropped == 3
        with pytest.raises(ConfigError):
            off.topic("bad name")
        with pytest.raises(ConfigError):
            off.topic("x" * 257)
    assert port  # the in-process server stays untouched by the offline client


async def test_queued_publications_and_subscriptions_survive_a_server_restart(server_process: Any) -> None:
    sp = server_process()
    sub = TopGunClient(sp.url, storage=MemoryStorage(), settings=FAST)
    # The publisher stays offline (connect=False) until the subscriber is subscribed.
    pub = TopGunClient(sp.url, storage=MemoryStorage(), settings=FAST, connect=False)
    await sub.start()
    await pub.start()
    try:
        got: list[Any] = []
        sub.topic("jobs").subscribe(lambda ev: got.append(ev.data))  # subscribed while offline
        queue = pub.topic("jobs", offline_queue=3)
        for i in range(4):
            queue.publish(i)  # 0 is dropped: the queue holds 3
        assert queue.queued == 3 and queue.dropped == 1
        await sp.start()
        await sub.wait_connected(15)
        # TOPIC_SUB went out right after authentication; a PING round trip would not prove it was
        # processed, so publish probes from a third connection until one arrives.
        probe = await connected(sp.url)
        try:
            n = 0
            while "probe" not in got:
                probe.topic("jobs").publish("probe")
                n += 1
                assert n < 200, "the subscriber never subscribed"
                await asyncio.sleep(0.05)
        finally:
            await probe.close()
        got.clear()
        pub.connect()
        await pub.wait_connected(15)
        await until(lambda: got == [1, 2, 3], what="queued publications", timeout=10)
        assert queue.queued == 0
        # Kill the server; the subscriber re-subscribes on the new connection.
        await sp.kill()
        await until(lambda: not sub.connected and not pub.connected, what="disconnect")
        with pytest.raises(NotConnectedError):
            pub.topic("other").publish("lost")
        await sp.start()
        await sub.wait_connected(15)
        await pub.wait_connected(15)
        deadline = time.monotonic() + 10
        while "after restart" not in got:
            assert time.monotonic() < deadline, "no delivery after the restart"
            pub.topic("jobs").publish("after restart")
            await asyncio.sleep(0.1)
    finally:
        await closing(sub, pub)


# -------------------------------------------------------------------------------------------- locks


async def test_acquire_release_timeout_and_tokens(mem_server: Any) -> None:
    a, b = await connected(mem_server.url), await connected(mem_server.url)
    try:
        la = a.lock("invoice-42", ttl=10.0)
        t1 = await la.acquire(timeout=2)
        assert t1 == 1 and la.held and la.fencing_token == 1
        lb = b.lock("invoice-42", ttl=10.0)
        t0 = time.monotonic()
        with pytest.raises(LockTimeout):
            await lb.acquire(timeout=0.4)
        assert 0.35 <= time.monotonic() - t0 < 2.0
        assert not lb.held
        # b waits while a holds; a's release lets b in with the next token.
        waiter = asyncio.create_task(lb.acquire(timeout=5))
        await asyncio.sleep(0.2)
        assert not waiter.done()
        assert await la.release() is True
        assert not la.held and la.fencing_token is None
        assert await waiter == 2
        assert await la.release() is False  # not held any more
        # Not re-entrant: acquiring a held handle again waits for its own release.
        with pytest.raises(LockTimeout):
            await lb.acquire(timeout=0.2)
        assert lb.held and lb.fencing_token == 2
        assert await lb.release() is True
        assert await la.acquire(timeout=2) == 3
    finally:
        await closing(a, b)


async def test_async_with_gives_the_token_and_releases(mem_server: Any) -> None:
    a = await connected(mem_server.url)
    try:
        lock = a.lock("ctx", ttl=5.0, timeout=2.0)
        async with lock as token:
            assert token == lock.fencing_token and lock.held
            assert mem_server.coordination.locks.holder("ctx")[1] == token
        assert not lock.held
        await until(lambda: mem_server.coordination.locks.holder("ctx") is None, what="release")
        async with lock as token2:
            assert token2 == token + 1
        with pytest.raises(ConfigError):
            a.lock("ctx", ttl=0)
        with pytest.raises(ConfigError):
            a.lock("no spaces")
    finally:
        await a.close()


async def test_waiters_inside_one_client_are_served_in_arrival_order(mem_server: Any) -> None:
    a = await connected(mem_server.url)
    try:
        order: list[int] = []
        tokens: list[int] = []

        async def worker(i: int) -> None:
            lock = a.lock("fifo", ttl=5.0)
            tok = await lock.acquire(timeout=10)
            order.append(i)
            tokens.append(tok)
            await asyncio.sleep(0.01)
            await lock.release()

        tasks = []
        for i in range(8):
            tasks.append(asyncio.create_task(worker(i)))
            await asyncio.sleep(0)  # each task reaches the queue before the next is created
        await asyncio.gather(*tasks)
        assert order == list(range(8))
        assert tokens == sorted(tokens) and len(set(tokens)) == 8
    finally:
        await a.close()


async def test_timeout_zero_tries_exactly_once(mem_server: Any) -> None:
    a, b = await connected(mem_server.url), await connected(mem_server.url)
    try:
        la = a.lock("once", ttl=5.0)
        assert await la.acquire(timeout=0) == 1  # free: granted on the single attempt
        with pytest.raises(LockTimeout):
            await b.lock("once").acquire(timeout=0)  # busy on the server
        with pytest.raises(LockTimeout):
            await a.lock("once").acquire(timeout=0)  # busy inside this client
        refusals = mem_server.coordination.locks.denials
        assert refusals == 1  # one request from b, none from a's second handle
        await la.release()
        assert await b.lock("once").acquire(timeout=0) == 2
    finally:
        await closing(a, b)


async def test_offline_acquire_fails_fast() -> None:
    async with TopGunClient(f"ws://127.0.0.1:{free_port()}/ws", storage=MemoryStorage(), settings=FAST) as c:
        lock = c.lock("x")
        t0 = time.monotonic()
        with pytest.raises(NotConnectedError):
            await lock.acquire(timeout=5)
        assert time.monotonic() - t0 < 0.5


async def test_lease_expiry_and_release_on_disconnect(mem_server: Any) -> None:
    a, b = await connected(mem_server.url), await connected(mem_server.url)
    try:
        short = a.lock("lease", ttl=0.3)
        t1 = await short.acquire()
        # b is refused until the lease runs out on the server, then granted by its retry loop.
        t0 = time.monotonic()
        t2 = await b.lock("lease", ttl=5.0).acquire(timeout=5)
        assert 0.2 <= time.monotonic() - t0 < 3.0
        assert t2 == t1 + 1
        assert not short.held  # lease over locally too
        assert await short.release() is False  # the server refuses the stale token

        held = a.lock("until-disconnect", ttl=None)
        t3 = await held.acquire()
        other = asyncio.create_task(b.lock("until-disconnect", ttl=None).acquire(timeout=10))
        await asyncio.sleep(0.2)
        assert not other.done()
        await a.close()  # the server frees a's locks when its connection closes
        assert await other == t3 + 1
        assert held.lost and not held.held
    finally:
        await closing(a, b)


async def test_connection_loss_frees_local_waiters(mem_server: Any) -> None:
    a = await connected(mem_server.url)
    try:
        first = a.lock("shared", ttl=None)
        await first.acquire(timeout=2)
        second = asyncio.create_task(a.lock("shared", ttl=None).acquire(timeout=30))
        await asyncio.sleep(0.1)
        assert not second.done()
        await a.disconnect()
        # The waiter is not stuck behind the lost holder: it fails fast, offline.
        with pytest.raises(NotConnectedError):
            await asyncio.wait_for(second, 2)
        assert first.lost and not first.held
        await until(lambda: mem_server.coordination.locks.holder("shared") is None, what="server release")
        assert await first.release() is False
        a.connect()
        await a.wait_connected(10)
        assert await a.lock("shared").acquire(timeout=2) == 2
    finally:
        await a.close()


async def test_contention_many_clients_mutual_exclusion(mem_server: Any) -> None:
    clients = [await connected(mem_server.url) for _ in range(6)]
    try:
        inside = 0
        overlaps = 0
        grants: list[int] = []

        async def work(c: TopGunClient) -> None:
            nonlocal inside, overlaps
            for _ in range(4):
                async with c.lock("hot", ttl=10.0, timeout=30) as token:
                    inside += 1
                    if inside > 1:
                        overlaps += 1
                    grants.append(token)
                    await asyncio.sleep(0.005)
                    inside -= 1

        await asyncio.gather(*(work(c) for c in clients))
        assert overlaps == 0
        assert grants == list(range(1, 25))
    finally:
        await closing(*clients)


async def test_fencing_tokens_keep_growing_across_server_kill(server_process: Any) -> None:
    sp = server_process()
    await sp.start()
    c = TopGunClient(sp.url, storage=MemoryStorage(), settings=FAST)
    await c.start()
    try:
        await c.wait_connected(15)
        tokens = []
        for _ in range(3):
            async with c.lock("deploy", ttl=30.0, timeout=5) as t:
                tokens.append(t)
        held = c.lock("deploy", ttl=None)
        tokens.append(await held.acquire(timeout=5))
        assert tokens == [1, 2, 3, 4]
        await sp.kill()  # SIGKILL: no clean shutdown, no flush
        await until(lambda: not c.connected, what="disconnect")
        assert held.lost and not held.held
        with pytest.raises(NotConnectedError):
            await c.lock("deploy").acquire(timeout=1)
        assert await held.release() is False
        await sp.start()
        await c.wait_connected(15)
        t5 = await c.lock("deploy", ttl=5.0).acquire(timeout=5)
        assert t5 == 5
    finally:
        await c.close()


# ------------------------------------------------------------------------------------------ counters


async def test_counters_converge_between_online_clients(mem_server: Any) -> None:
    a, b = await connected(mem_server.url), await connected(mem_server.url)
    try:
        seen_b: list[Any] = []
        ca, cb = a.counter("likes"), b.counter("likes")
        assert a.counter("likes") is ca
        cb.subscribe(seen_b.append)
        assert ca.increment() == 1
        ca.increment(4)
        cb.decrement(2)
        await until(lambda: ca.value == 3 and cb.value == 3, what="convergence")
        assert seen_b[-1] == 3 and -2 in seen_b  # local change first, then the merged value
        assert mem_server.coordination.counters.value("likes") == 3
        st = ca.state()
        assert st["p"] == {a.node_id: 5} and st["n"] == {b.node_id: 2}
        with pytest.raises(ConfigError):
            ca.increment(-1)
        with pytest.raises(ConfigError):
            ca.decrement(float("nan"))
    finally:
        await closing(a, b)


async def test_offline_counters_converge_and_survive_restarts(server_process: Any, tmp_path: Any) -> None:
    sp = server_process()
    dbs = [tmp_path / f"c{i}.db" for i in range(3)]
    clients = [TopGunClient(sp.url, storage=SQLiteStorage(db), settings=FAST) for db in dbs]
    for c in clients:
        await c.start()
    try:
        # All offline: each changes its replica; values are local only.
        handles = [c.counter("votes") for c in clients]
        handles[0].increment(10)
        handles[1].increment(3)
        handles[1].decrement(1)
        handles[2].decrement(4)
        assert [h.value for h in handles] == [10, 2, -4]
        # A client restart keeps the offline state (client storage).
        await clients[2].close()
        clients[2] = TopGunClient(sp.url, storage=SQLiteStorage(dbs[2]), settings=FAST)
        await clients[2].start()
        handles[2] = clients[2].counter("votes")
        assert handles[2].value == -4
        await sp.start()
        for c in clients:
            await c.wait_connected(15)
        await until(lambda: [h.value for h in handles] == [8, 8, 8], what="offline replicas converge")
        # The server persisted the merged state: after a SIGKILL and restart a fresh client sees it.
        await asyncio.sleep(0.2)
        await sp.kill()
        await sp.start()
        fresh = TopGunClient(sp.url, storage=MemoryStorage(), settings=FAST)
        await fresh.start()
        try:
            await fresh.wait_connected(15)
            h = fresh.counter("votes")
            await until(lambda: h.value == 8, what="persisted state")
            # Reconnected clients keep counting against the restored state.
            for c in clients:
                await c.wait_connected(15)
            handles[0].increment()
            await until(lambda: h.value == 9 and all(x.value == 9 for x in handles), what="post-restart sync")
        finally:
            await fresh.close()
    finally:
        await closing(*clients)


async def test_counter_replica_that_lost_its_storage_keeps_both_histories(mem_server: Any) -> None:
    node = "node-" + uuid.uuid4().hex[:8]
    first = await connected(mem_server.url, node_id=node)
    try:
        h = first.counter("visits")
        h.increment(5)
        h.decrement(1)
        await until(lambda: mem_server.coordination.counters.value("visits") == 4, what="first life synced")
    finally:
        await first.close()
    # Same node id, fresh (empty) storage, counting offline before it ever hears from the server.
    third = TopGunClient(mem_server.url, storage=MemoryStorage(), settings=FAST, node_id=node, connect=False)
    await third.start()
    try:
        h3 = third.counter("visits")
        h3.increment(2)
        h3.decrement(3)
        assert h3.value == -1
        observer = await connected(mem_server.url)
        try:
            seen = observer.counter("visits")
            await until(lambda: seen.value == 4, what="observer initial")
            third.connect()
            await third.wait_connected(10)
            # 4 from the first life plus -1 from the second: neither history is swallowed.
            await until(lambda: h3.value == 3 and seen.value == 3, what="both histories")
            assert h3.state()["p"] == {node: 7} and h3.state()["n"] == {node: 4}
        finally:
            await observer.close()
    finally:
        await third.close()


class SlowCommits:
    """A real SQLite storage whose commits can be slowed down (grants wait for their commit)."""

    def __init__(self, url: str) -> None:
        from topgun.server.storage import open_storage

        self.inner = open_storage(url)
        self.delay = 0.0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def write(self, batch: Any) -> None:
        if self.delay:
            await asyncio.sleep(self.delay)
        await self.inner.write(batch)


async def test_a_grant_arriving_after_the_timeout_is_given_back(tmp_path: Any) -> None:
    from topgun.server.app import TopGunServer

    storage = SlowCommits(f"sqlite:///{tmp_path / 'slow.db'}")
    srv = TopGunServer(port=0, storage=storage)  # type: ignore[arg-type]
    await srv.start()
    try:
        a, b = await connected(srv.url), await connected(srv.url)
        try:
            storage.delay = 0.6
            with pytest.raises(LockTimeout):
                await a.lock("slow", ttl=None).acquire(timeout=0.2)
            # The server did grant (after its commit) and the client released the orphan at once.
            locks = srv.coordination.locks
            await until(lambda: locks.fencing_counter("slow") == 1, what="late grant")
            await until(lambda: locks.holder("slow") is None, what="orphan released")
            storage.delay = 0.0
            assert await b.lock("slow", ttl=None).acquire(timeout=5) == 2
        finally:
            await closing(a, b)
    finally:
        await srv.stop()
