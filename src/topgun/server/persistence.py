"""Group commit: many changes per storage transaction, off the hot path.

The server records changes synchronously on the event loop, with no ``await``
per op::

    fut = committer.submit(lambda b: b.lww_put(map_name, key, record))
    ...                              # reply APPLIED now if asked
    await fut                        # resolves when the transaction holding the change committed

or, to record several changes of one message::

    batch = committer.batch          # the open WriteBatch
    batch.lww_put(...); batch.set_map_kind(...)
    fut = committer.commit_future()  # no await between recording and this call

A background task writes the open batch whenever no transaction is in flight
(or, on a storage that takes several at once, whenever a slot is free and the
batch shares no row with those in flight; see :class:`GroupCommitter`).
While transactions run, the next batch accumulates, so under load each
transaction carries everything that arrived during the previous one (natural
group commit) without adding latency when idle. A batch that reaches
``max_batch_ops`` distinct rows is sealed and queued so transactions stay
bounded; :attr:`GroupCommitter.backlog_rows` tells the server when to apply
backpressure.

Futures are shared by every change of the same transaction. Do not cancel one:
wrap it in :func:`asyncio.shield` to wait with a timeout.

Failure policy: when a transaction fails, its future gets the
:class:`~topgun.errors.StorageError` (so nothing is acknowledged ``PERSISTED``
that is not durable), but its changes are **kept** and retried, first, with
exponential backoff (``retry_min_ms`` … ``retry_max_ms``), ahead of everything
staged later: an accepted change is never dropped while the process lives.
Changes staged after the failure keep their own futures, which resolve when
they (and the retried changes before them) finally commit. :meth:`drain`
raises if the storage still fails; :meth:`close` then gives up, logs how many
rows were lost and raises. Retrying forever is safe because a batch can only
fail for reasons outside it (disk full, database down, connection lost):
``WriteBatch`` refuses, when a change is recorded, every row that a backend
could never store.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import enum
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from topgun.errors import StorageError

from .storage.base import Storage, WriteBatch, batches_overlap

__all__ = ["CommitStats", "GroupCommitter", "LatencyHistogram"]

log = logging.getLogger("topgun.persistence")

#: Upper bounds (seconds) of the commit latency buckets, Prometheus style.
DEFAULT_LATENCY_BUCKETS: tuple[float, ...] = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


class LatencyHistogram:
    """A cumulative histogram of durations in seconds (``count``, ``sum``, ``buckets``)."""

    def __init__(self, bounds: Sequence[float] = DEFAULT_LATENCY_BUCKETS) -> None:
        self.bounds: tuple[float, ...] = tuple(sorted(bounds))
        self._counts = [0] * (len(self.bounds) + 1)
        self.count = 0
        self.sum = 0.0
        self.max = 0.0

    def observe(self, seconds: float) -> None:
        """Record one duration."""
        self._counts[bisect.bisect_left(self.bounds, seconds)] += 1
        self.count += 1
        self.sum += seconds
        if seconds > self.max:
            self.max = seconds

    @property
    def buckets(self) -> list[tuple[float, int]]:
        """``[(upper_bound, cumulative_count), …]`` ending with ``(inf, count)``."""
        out: list[tuple[float, int]] = []
        acc = 0
        for bound, n in zip((*self.bounds, float("inf")), self._counts, strict=True):
            acc += n
            out.append((bound, acc))
        return out

    def quantile(self, q: float) -> float:
        """Upper bound of the bucket holding the ``q`` quantile (an over-estimate; ``0.0`` when empty)."""
        if self.count == 0:
            return 0.0
        rank = q * self.count
        for bound, acc in self.buckets:
            if acc >= rank:
                return bound if bound != float("inf") else self.max
        return self.max

    @property
    def mean(self) -> float:
        return self.sum / self.count if self.count else 0.0

    def snapshot(self) -> dict[str, Any]:
        """A plain dict for metrics endpoints."""
        return {"count": self.count, "sum": self.sum, "max": self.max, "buckets": self.buckets}


class CommitStats:
    """Counters of a :class:`GroupCommitter`, for metrics."""

    def __init__(self) -> None:
        #: duration of successful ``Storage.write`` calls
        self.latency = LatencyHistogram()
        #: transactions committed
        self.commits = 0
        #: failed write attempts
        self.failures = 0
        #: rows written by successful transactions (after coalescing)
        self.rows = 0
        #: recording calls covered by successful transactions (before coalescing)
        self.recorded = 0

    def snapshot(self) -> dict[str, Any]:
        return {
            "commits": self.commits,
            "failures": self.failures,
            "rows": self.rows,
            "recorded": self.recorded,
            "latency": self.latency.snapshot(),
        }


class _State(enum.Enum):
    """Where a sealed batch is: waiting to start (or for its retry), being written, committed."""

    QUEUED = 0
    RUNNING = 1
    COMMITTED = 2


# Module-level aliases: enum attribute access goes through a descriptor.
_QUEUED = _State.QUEUED
_RUNNING = _State.RUNNING
_COMMITTED = _State.COMMITTED


class _Pending:
    __slots__ = ("batch", "failed", "future", "rows", "state")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.batch = WriteBatch()
        #: len(batch) when it was sealed (what it added to the committer's sealed row count)
        self.rows = 0
        self.future: asyncio.Future[None] = _new_future(loop)
        #: _QUEUED (sealed, not started or waiting for its retry), _RUNNING or _COMMITTED
        self.state = _QUEUED
        #: a write of this batch failed and it has not committed since
        self.failed = False


def _consume(fut: asyncio.Future[None]) -> None:
    # Mark the exception as retrieved: a shared future nobody awaited must not log
    # "exception was never retrieved" at garbage collection.
    if not fut.cancelled():
        fut.exception()


def _new_future(loop: asyncio.AbstractEventLoop) -> asyncio.Future[None]:
    fut: asyncio.Future[None] = loop.create_future()
    fut.add_done_callback(_consume)
    return fut


class GroupCommitter:
    """Batches changes into storage transactions on a background task.

    ``max_batch_ops``: distinct rows per transaction before the open batch is
    sealed and a new one started. ``max_delay_ms``: how long an idle committer
    waits after the first change before writing (0 = write at once; a small
    value trades latency for fewer transactions at low load). ``retry_min_ms``
    / ``retry_max_ms``: backoff between attempts after a failure.

    Transactions in flight: one, unless the storage offers more. A storage with a
    ``write_concurrency`` attribute above 1 (its ``write`` calls may run at the
    same time, with the same result as one after the other in call order) gets
    up to that many ``write`` calls at once, but only for batches that do not
    :func:`overlap <batches_overlap>` any batch still uncommitted before them;
    anything else waits for every earlier batch and holds back every later one.
    The open batch joins the transactions in flight once it holds as many rows as
    the smallest of them (until then it keeps growing).
    So concurrent transactions touch disjoint rows, the order in which they
    commit cannot change what is stored, and a failed batch retried after later
    ones committed cannot overwrite their rows. Futures still resolve in staging
    order (a batch's future only once every batch staged before it committed too).

    Create it inside a running event loop; :meth:`start` is called by the first
    ``submit`` if you did not call it.
    """

    def __init__(
        self,
        storage: Storage,
        *,
        max_batch_ops: int = 10_000,
        max_delay_ms: float = 0.0,
        retry_min_ms: float = 50.0,
        retry_max_ms: float = 5_000.0,
    ) -> None:
        if max_batch_ops < 1:
            raise ValueError("max_batch_ops must be >= 1")
        self.storage = storage
        self.max_batch_ops = int(max_batch_ops)
        self.max_delay_s = max(0.0, float(max_delay_ms)) / 1000.0
        self.retry_min_s = max(0.001, float(retry_min_ms) / 1000.0)
        self.retry_max_s = max(self.retry_min_s, float(retry_max_ms) / 1000.0)
        self.stats = CommitStats()
        self._loop = asyncio.get_running_loop()
        concurrency = getattr(storage, "write_concurrency", 1)
        #: transactions allowed in flight at once
        self.concurrency = concurrency if isinstance(concurrency, int) and concurrency > 1 else 1
        self._open = _Pending(self._loop)
        #: The open batch, ``None`` once closed: what :attr:`batch` returns, as a plain attribute
        #: for the per-message write path (a property read costs several attribute reads).
        self.open_batch: WriteBatch | None = self._open.batch
        # Sealed batches in staging order, from the oldest whose future has not resolved yet:
        # queued, running, and committed ones that still wait for an earlier batch.
        self._sealed: deque[_Pending] = deque()
        #: Rows of the sealed batches not committed yet, kept up to date so that
        #: :attr:`backlog_rows` and :meth:`over_backlog` (asked per message) are O(1).
        self.sealed_rows = 0
        self._running = 0
        self._writes: set[asyncio.Task[None]] = set()
        self._backoff = self.retry_min_s
        self._retry_at = 0.0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._closed = False
        self._last_error: StorageError | None = None

    # -- recording (synchronous, on the event loop) -------------------------------------------
    @property
    def batch(self) -> WriteBatch:
        """The open batch: record changes into it, then call :meth:`commit_future`."""
        if self._closed:
            raise StorageError("the group committer is closed")
        return self._open.batch

    def commit_future(self) -> asyncio.Future[None]:
        """The future of the open batch (resolves when it commits); seals it if it is full."""
        if self._closed:
            raise StorageError("the group committer is closed")
        p = self._open
        rows = len(p.batch)
        if not rows:
            # Nothing to write: an empty batch would never be flushed, so its future would hang.
            return self.sync_point()
        if rows >= self.max_batch_ops:
            self._seal()
        self._kick()
        return p.future

    def submit(self, fn: Callable[[WriteBatch], object]) -> asyncio.Future[None]:
        """Call ``fn(batch)`` on the open batch now; return the future of its transaction.

        If ``fn`` raises, the exception propagates and whatever ``fn`` recorded
        before raising stays in the batch.
        """
        fn(self.batch)
        return self.commit_future()

    def sync_point(self) -> asyncio.Future[None]:
        """A future that resolves once everything recorded so far is committed.

        Useful to acknowledge a re-sent, idempotent op (which records nothing)
        only after the earlier change it duplicates is durable.
        """
        if self._open.batch:
            return self.commit_future()
        if self._sealed:
            # Futures resolve in staging order, so the newest one covers every batch before it.
            return self._sealed[-1].future
        done = _new_future(self._loop)
        done.set_result(None)
        return done

    @property
    def backlog_rows(self) -> int:
        """Rows recorded but not yet committed (open, sealed and in-flight batches)."""
        return len(self._open.batch) + self.sealed_rows

    def over_backlog(self, limit: int) -> bool:
        """``backlog_rows > limit``, answered from the recording count while that settles it:
        a batch holds at most as many rows as recording calls made on it."""
        if self._open.batch.recorded + self.sealed_rows <= limit:
            return False
        return self.backlog_rows > limit

    def _seal(self) -> None:
        # Sealed batches get no more changes (recording goes to the open batch), so their
        # row count can be added up once here.
        p = self._open
        self._sealed.append(p)
        p.rows = len(p.batch)
        self.sealed_rows += p.rows
        self._open = _Pending(self._loop)
        self.open_batch = self._open.batch

    @property
    def last_error(self) -> StorageError | None:
        """The error of the last failed attempt, cleared by the next successful commit."""
        return self._last_error

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        """Start the background writer (idempotent)."""
        if self._task is None and not self._closed:
            self._task = self._loop.create_task(self._run(), name="topgun-group-commit")
            self._task.add_done_callback(self._writer_done)

    @staticmethod
    def _writer_done(task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("the group commit writer died", exc_info=task.exception())

    def _kick(self) -> None:
        if self._task is None:
            self.start()
        self._wake.set()

    async def drain(self) -> None:
        """Wait until everything recorded so far is committed; raise ``StorageError`` if that write fails."""
        fut = self.sync_point()
        if fut.done():
            fut.result()
        else:
            await asyncio.shield(fut)

    async def close(self, *, timeout_s: float | None = 30.0) -> None:
        """Drain, then stop the background task.

        If the storage keeps failing for ``timeout_s`` seconds, the pending rows
        are abandoned (logged as an error) and the last ``StorageError`` is raised.
        """
        if self._closed:
            return
        self._closing = True
        self._kick()
        error: BaseException | None = None
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while self.backlog_rows:
            try:
                remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                await asyncio.wait_for(self.drain(), remaining)
            except (StorageError, asyncio.TimeoutError) as exc:
                if deadline is not None and time.monotonic() >= deadline:
                    error = self._last_error or exc
                    break
        self._closed = True
        self.open_batch = None
        task, self._task = self._task, None
        for t in (*self._writes, task):
            if t is not None:
                t.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await t
        lost = self.backlog_rows
        if lost:
            gave_up = StorageError(f"group committer closed with {lost} uncommitted rows: {error}")
            for p in (*self._sealed, self._open):
                if not p.future.done():
                    p.future.set_exception(gave_up)
            log.error("%s", gave_up)
            raise gave_up from error

    # -- the writer --------------------------------------------------------------------------
    async def _run(self) -> None:
        while True:
            self._wake.clear()
            wait = self._retry_at - self._loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
                continue
            if (
                self.max_delay_s
                and not self._closing
                and not self._sealed
                and self._open.batch
            ):
                # Idle until now: let the first change's neighbours join it.
                await asyncio.sleep(self.max_delay_s)
            self._dispatch()
            await self._wake.wait()

    def _dispatch(self) -> None:
        """Start every sealed (or, with a free slot, the open) batch that may run now, in order."""
        while self._running < self.concurrency:
            earlier: list[_Pending] = []
            nxt: _Pending | None = None
            for p in self._sealed:
                if p.state is _QUEUED:
                    nxt = p
                    break
                if p.state is _RUNNING:
                    earlier.append(p)
            if nxt is None:
                if not self._open.batch:
                    return
                if earlier and (
                    len(self._open.batch) < min(r.rows for r in earlier)
                    or not self._may_join(self._open, earlier)
                ):
                    # Keep recording into it: it starts when the batches it depends on committed,
                    # or next to them once it is as big as the smallest of them. Starting it at
                    # once would split the load into transactions half the size, which cost the
                    # database more per row (fire-and-forget PostgreSQL: -5 to -10 %).
                    return
                # Seal whatever accumulated; changes recorded from now on go to the next transaction.
                self._seal()
                nxt = self._sealed[-1]
            elif earlier and not self._may_join(nxt, earlier):
                return
            self._start(nxt)

    def _may_join(self, p: _Pending, running: list[_Pending]) -> bool:
        # A failed batch is retried alone before anything staged after it starts; otherwise a batch
        # may overlap the transactions in flight only if it shares no row with any of them.
        if p.failed:
            return False
        for r in running:
            if r.failed or batches_overlap(p.batch, r.batch):
                return False
        return True

    def _start(self, p: _Pending) -> None:
        p.state = _RUNNING
        self._running += 1
        task = self._loop.create_task(self._write_one(p))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _write_one(self, p: _Pending) -> None:
        t0 = time.perf_counter()
        try:
            await self.storage.write(p.batch)
        except asyncio.CancelledError:
            self._running -= 1
            p.state = _QUEUED
            raise
        except Exception as exc:
            self._running -= 1
            self._failed(p, exc)
        else:
            self._running -= 1
            self._committed(p, time.perf_counter() - t0)
        self._wake.set()

    def _failed(self, p: _Pending, exc: Exception) -> None:
        err = exc if isinstance(exc, StorageError) else StorageError(f"storage write failed: {exc}")
        if err is not exc:
            err.__cause__ = exc
        self._last_error = err
        self.stats.failures += 1
        backoff = self._backoff
        log.warning("commit of %d rows failed (%s); retrying in %.3f s", len(p.batch), err, backoff)
        self._retry_at = self._loop.time() + backoff
        self._backoff = min(backoff * 2, self.retry_max_s)
        # Fail the waiters now, keep the rows for the retry under a fresh future.
        p.state = _QUEUED
        p.failed = True
        failed = p.future
        p.future = _new_future(self._loop)
        if not failed.done():
            failed.set_exception(err)

    def _committed(self, p: _Pending, elapsed: float) -> None:
        p.state = _COMMITTED
        p.failed = False
        self.sealed_rows -= p.rows
        self._backoff = self.retry_min_s
        self._last_error = None
        st = self.stats
        st.latency.observe(elapsed)
        st.commits += 1
        st.rows += len(p.batch)
        st.recorded += p.batch.recorded
        # Resolve in staging order: a future promises that everything staged before it is durable.
        sealed = self._sealed
        while sealed and sealed[0].state is _COMMITTED:
            done = sealed.popleft()
            if not done.future.done():
                done.future.set_result(None)
