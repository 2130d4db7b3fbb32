"""The write path (PROTOCOL §5.6, §7 decisions 1, 4, 5, 6): ``OP_BATCH`` and ``CLIENT_OP``.

Every op of a batch is judged on its own, in order: shape (the codec hands
invalid ops over as :class:`InvalidOp`, code 400), write permission (403), then
the grid's checks (map kind 409, drift 422, retention 409) and merge. The whole
batch is applied synchronously inside ``handle()`` — one ``Grid.apply`` call,
no ``await`` — so the connection's next message sees its effects (§1.8).
``OP_REJECTED`` frames and corrective ``SERVER_EVENT`` s go out at once; the
batch's ``OP_ACK`` goes out when the requested level is reached: at once for
``APPLIED`` and below (and on non-durable storage), else once the storage
transaction holding the batch committed. Acks of one connection leave in batch
order through a per-connection :class:`AckQueue`, without holding back the
connection's later messages.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

from topgun.core.records import LWWRecord
from topgun.errors import StorageError
from topgun.protocol.messages import (
    ClientOp,
    InvalidOp,
    OpAck,
    OpRejected,
    OpResult,
    OpType,
    ServerEvent,
    ServerEventType,
    WriteConcern,
)
from topgun.server._writepath_py import ACKS_KEY
from topgun.server.changes import (
    APPLIED,
    UNCHANGED,
    Change,
    ChangeKind,
    ChangeSource,
    Origin,
    Outcome,
    OutcomeStatus,
)
from topgun.server.interfaces import RequestContext
from topgun.server.writepath import ok_ack_frame, write_message

if TYPE_CHECKING:
    from topgun.server.handlers import CoreServices
    from topgun.server.persistence import GroupCommitter

__all__ = ["AckQueue", "WriteHandler"]

log = logging.getLogger("topgun.write")

_KIND = {
    OpType.PUT: ChangeKind.PUT,
    OpType.REMOVE: ChangeKind.REMOVE,
    OpType.OR_ADD: ChangeKind.OR_ADD,
    OpType.OR_REMOVE: ChangeKind.OR_REMOVE,
}
_REJECTED = OutcomeStatus.REJECTED
_CLIENT = ChangeSource.CLIENT
_PUT = ChangeKind.PUT
_REMOVE = ChangeKind.REMOVE
_OR_ADD = ChangeKind.OR_ADD
_APPLIED = APPLIED
_UNCHANGED = UNCHANGED
# Enum properties (``.rank``, ``.value``, rich comparisons) are Python calls: looked up once here.
_WC_RANK = {wc: wc.rank for wc in WriteConcern}
_APPLIED_RANK = WriteConcern.APPLIED.rank
_OP_NAMES = {t: t.value for t in OpType}
# Changes built without the NamedTuple's Python-level constructor (all nine fields, in declaration
# order, checked in server/changes.py): the constructor cost as much as the rest of the op's step.
_tuple_new = tuple.__new__
_RETRY_MIN_S = 0.05
_RETRY_MAX_S = 2.0
#: Uncommitted rows above which a writing connection waits for the backlog to commit before its
#: next message is processed (backpressure towards clients that write faster than storage commits).
BACKLOG_HIGH_WATER = 200_000


def _send(ctx: RequestContext, message: Any) -> None:
    # Replies are typed messages or frames the write path encoded itself.
    if type(message) is bytes:
        ctx.send_frame(message)
    else:
        ctx.send(message)


class AckQueue:
    """Per-connection FIFO of replies that wait for a commit future; sends them in order.

    A reply whose future failed (storage error) is not sent at a lower level:
    it waits for the committer's retry (the committer keeps failed rows and
    retries them first) as long as the connection is open.
    """

    __slots__ = ("_core", "_ctx", "_items", "_retry_s")

    def __init__(self, core: CoreServices, ctx: RequestContext) -> None:
        self._core = core
        self._ctx = ctx
        self._items: deque[list[Any]] = deque()  # [future | None, message]
        self._retry_s = _RETRY_MIN_S

    def push(self, future: asyncio.Future[None] | None, message: Any) -> None:
        """Send ``message`` once ``future`` (``None``: no wait) and all earlier entries are done."""
        items = self._items
        if not items and (future is None or (future.done() and not future.cancelled()
                                             and future.exception() is None)):
            _send(self._ctx, message)
            return
        items.append([future, message])
        if future is not None and len(items) == 1:
            future.add_done_callback(self._on_done)
        elif len(items) == 1:
            self._pump()

    def __len__(self) -> int:
        return len(self._items)

    def _on_done(self, fut: asyncio.Future[None]) -> None:
        self._pump()

    def _pump(self) -> None:
        items = self._items
        ctx = self._ctx
        while items:
            if ctx.closed:
                items.clear()
                return
            fut, message = items[0]
            if fut is not None:
                if not fut.done():
                    fut.add_done_callback(self._on_done)
                    return
                if fut.cancelled() or fut.exception() is not None:
                    self._rearm()
                    return
            items.popleft()
            self._retry_s = _RETRY_MIN_S
            _send(ctx, message)

    def _rearm(self) -> None:
        delay = self._retry_s
        self._retry_s = min(self._retry_s * 2, _RETRY_MAX_S)
        asyncio.get_running_loop().call_later(delay, self._retry)

    def _retry(self) -> None:
        if not self._items:
            return
        if self._ctx.closed:
            self._items.clear()
            return
        committer = self._core.committer
        try:
            fut = committer.sync_point() if committer is not None else None
        except StorageError:
            self._rearm()
            return
        self._items[0][0] = fut
        self._pump()


async def _wait_backlog(fut: asyncio.Future[None]) -> None:
    # A failed commit is retried by the committer; the ack path reports it, here we only pace.
    try:
        await asyncio.shield(fut)
    except StorageError:
        await asyncio.sleep(_RETRY_MIN_S)


def _mixed_results(
    ops: list[ClientOp | InvalidOp], outcomes: list[Outcome] | list[Outcome | None], achieved: WriteConcern
) -> tuple[list[OpResult], str]:
    last_id = "0"
    results: list[OpResult] = []
    for op, outcome in zip(ops, outcomes, strict=True):
        op_id = op.id
        if op_id is None:
            continue
        last_id = op_id
        assert outcome is not None
        if outcome.status is _REJECTED:
            results.append(OpResult(op_id=op_id, success=False,
                                    achieved_level=WriteConcern.FIRE_AND_FORGET, error=outcome.reason))
        else:
            results.append(OpResult(op_id=op_id, success=True, achieved_level=achieved))
    return results, last_id


class WriteHandler:
    """Processor of ``OP_BATCH`` and ``CLIENT_OP``."""

    #: Apply one batch synchronously and schedule its replies; while the storage backlog is over
    #: its bound, return an awaitable that holds the connection's next message back (the twin
    #: :func:`topgun.server.writepath.write_message`: the plain batch never leaves it).
    handle = write_message

    def __init__(self, core: CoreServices) -> None:
        self.core = core
        self._ops_series = core.metrics.ops.series
        #: uncommitted rows above which a writer waits (read when the handler is built)
        self.backlog_high_water = BACKLOG_HIGH_WATER
        # what the compiled write_message keeps of this handler and its grid
        self._write_state: Any = None

    def _admit(self, ctx: RequestContext, map_name: str) -> bool:
        """Whether ``ctx`` may write ``map_name``; if so it becomes interested in the map's pushes."""
        core = self.core
        if not core.acl.can_write(ctx, map_name):
            return False
        core.push.add_interest(ctx, map_name)
        return True

    def _general(
        self, ctx: RequestContext, ops: list[ClientOp | InvalidOp], batch_wc: WriteConcern | None
    ) -> None:
        """A batch that is not plain: judged and answered op by op."""
        self._reply(ctx, ops, *self._judge(ctx, ops, batch_wc))

    def _backlog(self, committer: GroupCommitter) -> Awaitable[None]:
        """What holds the writer's next message back until the backlog committed."""
        return _wait_backlog(committer.sync_point())

    def _ack(self, ctx: RequestContext, future: asyncio.Future[None] | None, ack: OpAck | bytes) -> None:
        """Send ``ack`` once ``future`` resolved, after the connection's earlier acks."""
        queue: AckQueue | None = ctx.data.get(ACKS_KEY)
        if queue is None:
            if future is None:
                _send(ctx, ack)
                return
            queue = ctx.data[ACKS_KEY] = AckQueue(self.core, ctx)
        queue.push(future, ack)

    def _judge(
        self, ctx: RequestContext, ops: list[ClientOp | InvalidOp], batch_wc: WriteConcern | None
    ) -> tuple[list[Outcome | None], WriteConcern | None]:
        """Every op on its own: shape (400), permission (403), then the grid's checks."""
        core = self.core
        grid = core.grid
        acl = core.acl
        push = core.push
        n = len(ops)
        outcomes: list[Outcome | None] = [None] * n
        changes: list[Change] = []
        positions: list[int] = []
        requested = batch_wc
        interest_done: set[str] = set()
        hlc = grid.hlc
        for i, op in enumerate(ops):
            if isinstance(op, InvalidOp):
                outcomes[i] = Outcome(OutcomeStatus.REJECTED, op.code, op.reason)
                continue
            name = op.map_name
            if name not in interest_done:
                interest_done.add(name)
                if not acl.can_write(ctx, name):
                    outcomes[i] = Outcome(OutcomeStatus.REJECTED, 403, f"no permission to write map {name!r}")
                    interest_done.discard(name)
                    continue
                push.add_interest(ctx, name)
            if op.write_concern is not None and (requested is None or op.write_concern > requested):
                requested = op.write_concern
            kind = _KIND[op.op_type]
            if kind is _PUT or kind is _REMOVE:
                record = op.record
                if record is None:
                    # REMOVE without a record: op-level timestamp, else the server clock (§5.6 step 1).
                    record = LWWRecord(None, op.timestamp if op.timestamp is not None else hlc.now())
                changes.append(_tuple_new(Change, (name, op.key, kind, record, None, None, None, True, None)))
            elif kind is _OR_ADD:
                changes.append(Change(name, op.key, kind, or_record=op.or_record))
            else:
                changes.append(Change(name, op.key, kind, or_tag=op.or_tag, timestamp=op.timestamp))
            positions.append(i)
        if changes:
            result = grid.apply(changes, Origin(_CLIENT, ctx.connection_id))
            for pos, outcome in zip(positions, result.outcomes, strict=True):
                outcomes[pos] = outcome
        return outcomes, requested

    def _report_refusals(
        self,
        ctx: RequestContext,
        ops: list[ClientOp | InvalidOp],
        outcomes: list[Outcome] | list[Outcome | None],
        counts: dict[OpType, int],
    ) -> int:
        """Send ``OP_REJECTED`` s and corrective events; count accepted ops by type; return how many."""
        metrics = self.core.metrics
        accepted = 0
        for op, outcome in zip(ops, outcomes, strict=True):
            assert outcome is not None
            if outcome.status is _REJECTED:
                metrics.rejected_ops.inc(str(outcome.code))
                ctx.send(OpRejected(op_id=op.id or "", reason=outcome.reason, code=outcome.code))
                continue
            accepted += 1
            assert isinstance(op, ClientOp)
            t = op.op_type
            counts[t] = counts.get(t, 0) + 1
            winner = outcome.winner
            if winner is not None:
                # The op lost to a strictly newer stored record: correct the writer right away.
                ctx.send(
                    ServerEvent(
                        map_name=op.map_name,
                        event_type=ServerEventType.REMOVE if winner.value is None else ServerEventType.PUT,
                        key=op.key,
                        record=winner,
                    )
                )
        return accepted

    def _reply(
        self,
        ctx: RequestContext,
        ops: list[ClientOp | InvalidOp],
        outcomes: list[Outcome] | list[Outcome | None],
        requested: WriteConcern | None,
    ) -> None:
        core = self.core
        metrics = core.metrics
        n = len(ops)
        # Keyed by the enum member: ``.value`` is a descriptor call (names come from _OP_NAMES).
        counts: dict[OpType, int] = {}
        if outcomes.count(_APPLIED) + outcomes.count(_UNCHANGED) == n:
            # Every op accepted without a winner to report (list.count compares by identity first).
            accepted = n
            for op in ops:
                t = op.op_type  # type: ignore[union-attr]
                counts[t] = counts.get(t, 0) + 1
        else:
            accepted = self._report_refusals(ctx, ops, outcomes, counts)
        for t, c in counts.items():
            metrics.ops.inc(_OP_NAMES[t], amount=c)
        level = requested if requested is not None else core.default_concern
        future: asyncio.Future[None] | None = None
        if accepted == 0:
            achieved = WriteConcern.FIRE_AND_FORGET
        elif _WC_RANK[level] > _APPLIED_RANK and core.durable:
            achieved = WriteConcern.PERSISTED
            committer = core.committer
            assert committer is not None
            future = committer.sync_point()
        else:
            achieved = WriteConcern.APPLIED
        ack: OpAck | bytes
        if accepted == n:
            ack = ok_ack_frame(ops, achieved)  # encoded already: no OpResult objects
        else:
            results, last_id = _mixed_results(ops, outcomes, achieved)
            ack = OpAck(last_id=last_id, achieved_level=achieved, results=results)
        self._ack(ctx, future, ack)
