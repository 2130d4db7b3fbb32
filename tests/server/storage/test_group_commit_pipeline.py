"""GroupCommitter with a storage that takes several transactions at once (``write_concurrency``).

Only LWW batches that share no row with any uncommitted earlier batch overlap; futures still
resolve in staging order, and a failed batch is retried before anything staged after it starts.
"""

from __future__ import annotations

import asyncio

import pytest

from support.stores import Wrapped, reload
from topgun.core.records import LWWRecord, Timestamp
from topgun.errors import StorageError
from topgun.server.persistence import GroupCommitter
from topgun.server.storage import Storage, WriteBatch, open_storage

pytestmark = pytest.mark.timeout(120)


def rec(value: object, i: int = 0) -> LWWRecord:
    return LWWRecord(value, Timestamp(1_700_000_000_000 + i, 0, "node-a"))


class Pipelined(Wrapped):
    """A real storage offered to the committer as one that takes two transactions at once.

    Every ``write`` call waits for a gate of its own (in call order, ``gates[i]``),
    so a test decides when each transaction reaches the inner storage and in which order they
    finish. ``fail_next`` makes the next released call raise instead of writing (a lost
    connection, as the committer sees it).
    """

    write_concurrency = 2

    def __init__(self, inner: Storage) -> None:
        self.inner = inner
        self.gates: list[asyncio.Event] = []
        self.started: list[WriteBatch] = []
        self.running = 0
        self.max_running = 0
        self.fail_next = False
        self.changed = asyncio.Event()


    async def write(self, batch: WriteBatch) -> None:
        gate = asyncio.Event()
        self.gates.append(gate)
        self.started.append(batch)
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        self.changed.set()
        try:
            await gate.wait()
            if self.fail_next:
                self.fail_next = False
                raise StorageError("injected: connection lost")
            await self.inner.write(batch)
        finally:
            self.running -= 1

    async def until_started(self, n: int) -> None:
        while len(self.started) < n:
            self.changed.clear()
            await asyncio.wait_for(self.changed.wait(), 10)

    def release_all(self) -> None:
        for g in self.gates:
            g.set()


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0.01)


async def test_disjoint_batches_overlap_and_futures_resolve_in_order(storage_url: str) -> None:
    store = Pipelined(open_storage(storage_url))
    await store.open()
    committer = GroupCommitter(store)
    assert committer.concurrency == 2
    try:
        a = committer.submit(lambda b: b.lww_put("m", "a", rec("a")))
        await store.until_started(1)
        b = committer.submit(lambda b: b.lww_put("m", "b", rec("b")))
        await store.until_started(2)  # starts while the first is still in flight
        assert store.running == 2
        store.gates[1].set()  # the later transaction commits first...
        await settle()
        assert not b.done()  # ...but its future waits for everything staged before it
        assert committer.backlog_rows == 1
        store.gates[0].set()
        await asyncio.wait_for(asyncio.gather(a, b), 10)
        assert committer.backlog_rows == 0
        assert (await reload(storage_url)).maps["m"].lww == {"a": rec("a"), "b": rec("b")}
    finally:
        store.release_all()
        await committer.close()
        await store.close()


async def test_batch_sharing_a_row_waits_for_the_earlier_one(storage_url: str) -> None:
    store = Pipelined(open_storage(storage_url))
    await store.open()
    committer = GroupCommitter(store)
    try:
        first = committer.submit(lambda b: b.lww_put("m", "k", rec("old", 1)))
        await store.until_started(1)
        second = committer.submit(lambda b: b.lww_put("m", "k", rec("new", 2)))
        third = committer.submit(lambda b: b.lww_put("m", "other", rec("x")))
        await settle()
        assert len(store.started) == 1  # k is in flight: nothing that writes it may overlap
        assert second is third  # so the open batch keeps growing instead
        store.gates[0].set()
        await store.until_started(2)
        store.gates[1].set()
        await asyncio.wait_for(asyncio.gather(first, second), 10)
        assert (await reload(storage_url)).maps["m"].lww == {"k": rec("new", 2), "other": rec("x")}
    finally:
        store.release_all()
        await committer.close()
        await store.close()


async def test_other_rows_go_one_transaction_at_a_time(storage_url: str) -> None:
    store = Pipelined(open_storage(storage_url))
    await store.open()
    committer = GroupCommitter(store)
    try:
        lww = committer.submit(lambda b: b.lww_put("m", "k", rec(1)))
        await store.until_started(1)
        counter = committer.submit(lambda b: b.set_counter("c", {"p": {"n": 1}, "n": {}}))
        await settle()
        assert len(store.started) == 1  # a counter row never overlaps another transaction
        store.gates[0].set()
        await store.until_started(2)
        later = committer.submit(lambda b: b.lww_put("m", "j", rec(2)))
        await settle()
        assert len(store.started) == 2  # nor does anything start next to it
        store.gates[1].set()
        await store.until_started(3)
        store.gates[2].set()
        await asyncio.wait_for(asyncio.gather(lww, counter, later), 10)
        assert store.max_running == 1
        snap = await reload(storage_url)
        assert snap.counters == {"c": {"p": {"n": 1}, "n": {}}}
        assert snap.maps["m"].lww == {"k": rec(1), "j": rec(2)}
    finally:
        store.release_all()
        await committer.close()
        await store.close()


async def test_failed_batch_is_retried_before_later_ones_start(storage_url: str) -> None:
    store = Pipelined(open_storage(storage_url))
    await store.open()
    committer = GroupCommitter(store, retry_min_ms=10, retry_max_ms=20)
    try:
        a = committer.submit(lambda b: b.lww_put("m", "a", rec("a")))
        await store.until_started(1)
        b = committer.submit(lambda b: b.lww_put("m", "b", rec("b")))
        await store.until_started(2)
        store.gates[1].set()  # b commits
        await settle()
        store.fail_next = True
        store.gates[0].set()  # a fails
        with pytest.raises(StorageError):
            await asyncio.wait_for(a, 10)
        assert not b.done()  # committed, but a (staged before it) is not durable yet
        assert committer.backlog_rows == 1
        c = committer.submit(lambda b: b.lww_put("m", "c", rec("c")))
        await store.until_started(3)
        assert store.started[2] is store.started[0]  # the retry of a, alone
        await settle()
        assert len(store.started) == 3 and not c.done()
        store.gates[2].set()
        await asyncio.wait_for(b, 10)
        await store.until_started(4)
        store.gates[3].set()
        await asyncio.wait_for(c, 10)
        assert committer.last_error is None and committer.backlog_rows == 0
        assert (await reload(storage_url)).maps["m"].lww == {"a": rec("a"), "b": rec("b"), "c": rec("c")}
    finally:
        store.release_all()
        await committer.close()
        await store.close()


async def test_postgres_committer_pipelines_and_last_write_wins(pg_url: str) -> None:
    # The real backend with its own concurrency: producers rewrite a shared set of keys, so batches
    # both overlap (and must wait) and are disjoint (and may run together).
    store = open_storage(pg_url)
    await store.open()
    committer = GroupCommitter(store, max_batch_ops=40)
    assert committer.concurrency == 2
    last: dict[str, int] = {}

    async def producer(p: int) -> None:
        for i in range(60):
            key = f"k{(p * 7 + i) % 50}"
            n = p * 1000 + i
            fut = committer.submit(lambda b, key=key, n=n: b.lww_put("m", key, rec(n, n)))
            last[key] = n
            if i % 10 == 9:
                await fut

    try:
        await asyncio.wait_for(asyncio.gather(*(producer(p) for p in range(8))), 60)
        await asyncio.wait_for(committer.drain(), 30)
    finally:
        await committer.close()
        await store.close()
    lww = (await reload(pg_url)).maps["m"].lww
    assert {k: r.value for k, r in lww.items()} == last


async def test_postgres_concurrent_writes_keep_call_order(pg_url: str) -> None:
    # Disjoint LWW batches may run at once; a batch sharing a row with one in flight, or holding
    # another kind of row, waits: the outcome is that of the calls one after the other.
    store = open_storage(pg_url)
    await store.open()
    try:
        batches = []
        for i in range(30):
            b = WriteBatch()
            for j in range(300):  # past the COPY threshold
                b.lww_put("m", f"own{i}-{j}", rec([i, j], i))
            if i % 3 == 0:
                b.lww_put("m", "shared", rec(i, i))
            if i % 10 == 5:
                b.set_fencing("lock", i)
            batches.append(b)
        await asyncio.gather(*(store.write(b) for b in batches))
    finally:
        await store.close()
    snap = await reload(pg_url)
    lww = snap.maps["m"].lww
    assert len(lww) == 30 * 300 + 1
    assert lww["shared"] == rec(27, 27)
    assert snap.fencing == {"lock": 25}
    assert all(lww[f"own{i}-{j}"].value == [i, j] for i in range(30) for j in range(300))


async def test_open_batch_joins_once_as_big_as_the_transaction_in_flight(storage_url: str) -> None:
    store = Pipelined(open_storage(storage_url))
    await store.open()
    committer = GroupCommitter(store)
    try:
        first = committer.submit(lambda b: [b.lww_put("m", f"a{i}", rec(i)) for i in range(3)])
        await store.until_started(1)
        second = committer.submit(lambda b: b.lww_put("m", "b0", rec(0)))
        await settle()
        assert len(store.started) == 1  # 1 row next to 3 in flight: keep accumulating
        committer.submit(lambda b: [b.lww_put("m", f"b{i}", rec(i)) for i in (1, 2)])
        await store.until_started(2)  # 3 rows: worth a transaction of its own now
        assert len(store.started[1].lww) == 3
        store.release_all()
        await asyncio.wait_for(asyncio.gather(first, second), 10)
    finally:
        store.release_all()
        await committer.close()
        await store.close()
