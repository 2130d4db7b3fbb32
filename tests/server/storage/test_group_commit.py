"""GroupCommitter over every real backend: futures, grouping, size cap, drain, failures."""

from __future__ import annotations

import asyncio

import pytest

from support.stores import Wrapped, reload
from topgun.core.records import LWWRecord, ORMapRecord, Timestamp
from topgun.errors import StorageError
from topgun.server.persistence import GroupCommitter, LatencyHistogram
from topgun.server.storage import Storage, WriteBatch, open_storage

pytestmark = pytest.mark.timeout(120)


def rec(value: object, i: int = 0) -> LWWRecord:
    return LWWRecord(value, Timestamp(1_700_000_000_000 + i, 0, "node-a"))


class Gated(Wrapped):
    """A real storage whose writes wait for ``gate`` and are recorded (sizes, order).

    Holding the gate closed keeps one transaction in flight, which is how a slow
    disk looks to the committer.
    """

    def __init__(self, inner: Storage) -> None:
        self.inner = inner
        self.gate = asyncio.Event()
        self.gate.set()
        self.started = asyncio.Event()
        self.sizes: list[int] = []
        self.recorded: list[int] = []


    async def write(self, batch: WriteBatch) -> None:
        self.started.set()
        await self.gate.wait()
        await self.inner.write(batch)
        self.sizes.append(len(batch))
        self.recorded.append(batch.recorded)


async def test_submit_resolves_only_after_commit(storage_url: str) -> None:
    inner = open_storage(storage_url)
    store = Gated(inner)
    await store.open()
    committer = GroupCommitter(store)
    try:
        store.gate.clear()
        fut = committer.submit(lambda b: b.lww_put("m", "k", rec("v")))
        await asyncio.wait_for(store.started.wait(), 10)
        await asyncio.sleep(0.05)
        assert not fut.done()
        assert "m" not in (await reload(storage_url)).maps  # nothing durable yet
        assert committer.backlog_rows == 1
        store.gate.set()
        await asyncio.wait_for(fut, 10)
        assert (await reload(storage_url)).maps["m"].lww == {"k": rec("v")}
        assert committer.backlog_rows == 0
    finally:
        store.gate.set()  # never leave close() waiting on a shut gate
        await committer.close()
        await store.close()


async def test_changes_accumulate_while_a_commit_is_in_flight(storage_url: str) -> None:
    store = Gated(open_storage(storage_url))
    await store.open()
    committer = GroupCommitter(store)
    try:
        store.gate.clear()
        first = committer.submit(lambda b: b.lww_put("m", "first", rec(0)))
        await asyncio.wait_for(store.started.wait(), 10)
        futs = [committer.submit(lambda b, i=i: b.lww_put("m", f"k{i}", rec(i, i))) for i in range(100)]
        hot = [committer.submit(lambda b, i=i: b.lww_put("m", "hot", rec(i, i))) for i in range(1000)]
        # Everything recorded during the in-flight commit shares one transaction and one future.
        assert len({id(f) for f in futs + hot}) == 1
        assert futs[0] is not first
        store.gate.set()
        await asyncio.wait_for(asyncio.gather(first, *futs, *hot), 10)
        assert store.sizes == [1, 101]  # the hot key written 1000 times is one row
        assert store.recorded == [1, 1100]
        assert committer.stats.commits == 2
        snap = await reload(storage_url)
        assert len(snap.maps["m"].lww) == 102
        assert snap.maps["m"].lww["hot"] == rec(999, 999)
    finally:
        store.gate.set()  # never leave close() waiting on a shut gate
        await committer.close()
        await store.close()


async def test_batch_size_cap_bounds_transactions(storage_url: str) -> None:
    store = Gated(open_storage(storage_url))
    await store.open()
    committer = GroupCommitter(store, max_batch_ops=10)
    try:
        store.gate.clear()
        futs = []
        for i in range(35):
            futs.append(committer.submit(lambda b, i=i: b.lww_put("m", f"k{i}", rec(i))))
            # the plain attribute follows the open batch across seals
            assert committer.open_batch is committer.batch
        assert committer.backlog_rows == 35
        # Rewrites of one key coalesce: recorded calls outnumber rows, the backlog counts rows.
        hot = [committer.submit(lambda b, i=i: b.lww_put("m", "k34", rec(100 + i))) for i in range(20)]
        assert committer.backlog_rows == 35
        assert [committer.over_backlog(limit) for limit in (0, 34, 35, 36, 60)] == [
            True, True, False, False, False
        ]
        futs += hot
        store.gate.set()
        await asyncio.wait_for(asyncio.gather(*futs), 10)
        assert store.sizes == [10, 10, 10, 5]
        assert len({id(f) for f in futs}) == 4
        assert len((await reload(storage_url)).maps["m"].lww) == 35
        assert not committer.over_backlog(0)
    finally:
        store.gate.set()  # never leave close() waiting on a shut gate
        await committer.close()
        await store.close()


async def test_batch_and_commit_future_record_several_changes(storage_url: str) -> None:
    store = open_storage(storage_url)
    await store.open()
    committer = GroupCommitter(store)
    try:
        b = committer.batch
        b.set_map_kind("o", "or")  # type: ignore[arg-type]
        b.or_put("o", "k", ORMapRecord("x", Timestamp(1, 0, "n"), "1:0:n"))
        b.or_tombstone_put("o", "0:0:n", "k", 99)
        b.set_counter("c", {"p": {"n": 4}, "n": {}})
        b.set_fencing("lock", 3)
        b.set_meta("node_id", "srv")
        await asyncio.wait_for(committer.commit_future(), 10)
        snap = await reload(storage_url)
        assert snap.maps["o"].or_records == {"k": [ORMapRecord("x", Timestamp(1, 0, "n"), "1:0:n")]}
        assert snap.maps["o"].or_tombstones == {"0:0:n": ("k", 99)}
        assert (snap.counters, snap.fencing, snap.meta) == (
            {"c": {"p": {"n": 4}, "n": {}}},
            {"lock": 3},
            {"node_id": "srv"},
        )
    finally:
        await committer.close()
        await store.close()


async def test_many_concurrent_producers(storage_url: str) -> None:
    store = Gated(open_storage(storage_url))
    await store.open()
    committer = GroupCommitter(store, max_batch_ops=500)

    async def producer(p: int) -> None:
        for i in range(100):
            await committer.submit(lambda b, i=i: b.lww_put("m", f"p{p}-{i}", rec([p, i], i)))

    try:
        await asyncio.wait_for(asyncio.gather(*(producer(p) for p in range(20))), 60)
        assert sum(store.sizes) == 2000
        # Each producer awaits its own commit, so transactions carry work of many producers.
        assert committer.stats.commits < 2000
        assert max(store.sizes) > 1
        snap = await reload(storage_url)
        assert len(snap.maps["m"].lww) == 2000
        assert snap.maps["m"].lww["p7-42"].value == [7, 42]
    finally:
        store.gate.set()  # never leave close() waiting on a shut gate
        await committer.close()
        await store.close()


async def test_drain_flushes_everything(storage_url: str) -> None:
    store = open_storage(storage_url)
    await store.open()
    committer = GroupCommitter(store, max_batch_ops=64, max_delay_ms=5)
    try:
        for i in range(1000):
            committer.submit(lambda b, i=i: b.lww_put("m", f"k{i}", rec(i)))
        assert committer.backlog_rows == 1000
        await asyncio.wait_for(committer.drain(), 30)
        assert committer.backlog_rows == 0
        assert len((await reload(storage_url)).maps["m"].lww) == 1000
        await committer.drain()  # nothing pending: returns at once
        assert committer.sync_point().done()
    finally:
        await committer.close()
        await store.close()


async def test_close_flushes_and_refuses_new_changes(storage_url: str) -> None:
    store = open_storage(storage_url)
    await store.open()
    committer = GroupCommitter(store)
    futs = [committer.submit(lambda b, i=i: b.set_fencing(f"l{i}", i)) for i in range(10)]
    await asyncio.wait_for(committer.close(), 30)
    assert all(f.done() and f.exception() is None for f in futs)
    assert committer.open_batch is None
    with pytest.raises(StorageError):
        committer.submit(lambda b: b.set_fencing("late", 1))
    assert (await reload(storage_url)).fencing == {f"l{i}": i for i in range(10)}
    await store.close()


async def test_sync_point_waits_for_earlier_changes(storage_url: str) -> None:
    store = Gated(open_storage(storage_url))
    await store.open()
    committer = GroupCommitter(store)
    try:
        assert committer.sync_point().done()
        store.gate.clear()
        fut = committer.submit(lambda b: b.lww_put("m", "k", rec(1)))
        await asyncio.wait_for(store.started.wait(), 10)
        point = committer.sync_point()  # a duplicate op that records nothing waits for the same commit
        assert point is fut and not point.done()
        store.gate.set()
        await asyncio.wait_for(point, 10)
    finally:
        store.gate.set()  # never leave close() waiting on a shut gate
        await committer.close()
        await store.close()


async def test_failed_commit_fails_futures_and_keeps_changes_for_retry(storage_url: str) -> None:
    store = open_storage(storage_url)
    await store.open()
    committer = GroupCommitter(store, retry_min_ms=10, retry_max_ms=50)
    try:
        await store.close()  # the storage goes away under the committer
        fut = committer.submit(lambda b: b.lww_put("m", "k", rec("kept")))
        with pytest.raises(StorageError):
            await asyncio.wait_for(fut, 10)
        assert committer.stats.failures >= 1
        assert isinstance(committer.last_error, StorageError)
        assert committer.backlog_rows == 1  # nothing accepted is dropped
        later = committer.submit(lambda b: b.lww_put("m", "k2", rec("later")))
        await asyncio.sleep(0.1)
        assert not later.done()  # queued behind the retried changes
        await store.open()  # the storage comes back; the retry loop commits both
        await asyncio.wait_for(later, 10)
        await asyncio.wait_for(committer.drain(), 10)
        assert committer.backlog_rows == 0 and committer.last_error is None
        assert (await reload(storage_url)).maps["m"].lww == {"k": rec("kept"), "k2": rec("later")}
    finally:
        await committer.close()
        await store.close()


async def test_close_gives_up_on_a_dead_storage(storage_url: str) -> None:
    store = open_storage(storage_url)
    await store.open()
    await store.close()
    committer = GroupCommitter(store, retry_min_ms=10, retry_max_ms=20)
    fut = committer.submit(lambda b: b.lww_put("m", "k", rec(1)))
    with pytest.raises(StorageError, match="uncommitted"):
        await committer.close(timeout_s=0.3)
    assert fut.done() and isinstance(fut.exception(), StorageError)


async def test_commit_latency_is_recorded(storage_url: str) -> None:
    store = open_storage(storage_url)
    await store.open()
    committer = GroupCommitter(store)
    try:
        for i in range(5):
            await committer.submit(lambda b, i=i: b.lww_put("m", f"k{i}", rec(i)))
        st = committer.stats
        assert st.commits == 5 and st.rows == 5 and st.recorded == 5
        assert st.latency.count == 5 and st.latency.sum > 0
        buckets = st.latency.buckets
        counts = [n for _, n in buckets]
        assert counts == sorted(counts) and counts[-1] == 5
        assert buckets[-1][0] == float("inf")
        snap = st.snapshot()
        assert snap["commits"] == 5 and snap["latency"]["count"] == 5
    finally:
        await committer.close()
        await store.close()


def test_latency_histogram_buckets() -> None:
    h = LatencyHistogram(bounds=(0.001, 0.01, 0.1))
    for v in (0.0005, 0.001, 0.002, 0.05, 0.5, 2.0):
        h.observe(v)
    assert h.count == 6
    assert h.sum == pytest.approx(2.5535)
    assert h.buckets == [(0.001, 2), (0.01, 3), (0.1, 4), (float("inf"), 6)]
    assert h.quantile(0.5) == 0.01
    assert h.quantile(1.0) == 2.0
    assert h.max == 2.0
    assert LatencyHistogram().quantile(0.99) == 0.0


async def test_commit_future_of_an_empty_batch_does_not_hang(storage_url: str) -> None:
    store = Gated(open_storage(storage_url))
    await store.open()
    committer = GroupCommitter(store)
    try:
        assert committer.commit_future().done()  # nothing recorded, nothing pending
        store.gate.clear()
        fut = committer.submit(lambda b: b.set_meta("k", "v"))
        await asyncio.wait_for(store.started.wait(), 10)
        empty = committer.commit_future()  # nothing new recorded: waits for the in-flight commit
        assert empty is fut and not empty.done()
        store.gate.set()
        await asyncio.wait_for(empty, 10)
    finally:
        store.gate.set()
        await committer.close()
        await store.close()
