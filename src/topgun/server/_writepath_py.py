"""The per-op core of the write path (pure twin): merging a run of LWW changes, building acks.

This is the specification of :mod:`topgun._speedups._writepath`: the compiled twin
must give the same outcomes, stage the same rows, announce the same effective
changes, leave the map, its Merkle tree and the clock in the same state, and
build equal ``OP_ACK`` results.

:func:`apply_lww_run` judges each change as PROTOCOL §5.6 steps 4-8 do (the
map kind is already known to be LWW): no record (400), clock drift (422),
retention horizon for a key with no stored record (409), a loss or a tie
against the stored record (accepted, the clock still advances; a strictly
newer stored record is reported as the winner), staging into the open
:class:`~topgun.server.storage.base.WriteBatch` (a row storage cannot hold is
refused with 400 before it touches memory), then the merge.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

from topgun.core.records import Timestamp
from topgun.errors import StorageError
from topgun.protocol import _codec_py
from topgun.protocol.messages import ClientOp, ClientOpMessage, OpAck, OpResult, OpType, WriteConcern
from topgun.server.changes import (
    APPLIED,
    UNCHANGED,
    ApplyResult,
    Change,
    ChangeKind,
    ChangeSource,
    Origin,
    Outcome,
    OutcomeStatus,
    drift_outcome,
)
from topgun.server.storage.base import MapKind, WriteBatch, check_lww_row

__all__ = [
    "ACKS_KEY",
    "WRITER_KEY",
    "Writer",
    "apply_changes",
    "apply_lww_run",
    "apply_one",
    "apply_state",
    "ok_ack_frame",
    "plain_changes",
    "watches",
    "write_message",
]

log = logging.getLogger("topgun.grid")

_PUT = ChangeKind.PUT
_REMOVE = ChangeKind.REMOVE
_OR_ADD = ChangeKind.OR_ADD
_LWW_MAP = MapKind.LWW
_REJECTED = OutcomeStatus.REJECTED
_UNCHANGED_STATUS = OutcomeStatus.UNCHANGED
_tuple_new = tuple.__new__
_OP_PUT = OpType.PUT
_OP_REMOVE = OpType.REMOVE
_RANK = {wc: wc.rank for wc in WriteConcern}
_APPLIED_RANK = WriteConcern.APPLIED.rank
_APPLIED_WC = WriteConcern.APPLIED
_PERSISTED = WriteConcern.PERSISTED
_OP_KEYS = {t: (t.value,) for t in OpType}

#: ``ctx.data`` key of a connection's :class:`Writer`.
WRITER_KEY = "write.writer"
#: ``ctx.data`` key of a connection's queue of acks waiting for a commit (the write handler's).
ACKS_KEY = "write.acks"


class Writer:
    """What the plain path needs of one connection, looked up once: its origin, and the maps it
    may write that the push notifier already counts it interested in (permissions depend only on
    the connection's roles and the map name, both fixed for the connection's life)."""

    __slots__ = ("origin", "ready")

    def __init__(self, connection_id: int) -> None:
        self.origin = Origin(ChangeSource.CLIENT, connection_id)
        self.ready: set[str] = set()


def write_message(handler: Any, ctx: Any, msg: Any) -> Any:
    """The body of ``WriteHandler.handle`` for one ``CLIENT_OP`` or ``OP_BATCH``.

    A batch made only of plain ``PUT``/``REMOVE`` ops with records, to maps the
    connection may write (settled once per map and connection through
    ``handler._admit(ctx, map)``), is applied with one ``Grid.apply`` call and,
    when every op is accepted without a newer stored record winning, answered
    with the prebuilt ack: at once for ``APPLIED`` and below (behind acks still
    waiting for a commit), else through ``handler._ack`` once the batch commits.
    Anything else goes to ``handler._general(ctx, ops, batch_write_concern)``
    (which judges op by op) or, after the apply, ``handler._reply``. Then, while
    the committer's backlog is over ``handler.backlog_high_water`` rows, the
    awaitable of ``handler._backlog(committer)`` is returned (it holds the
    connection's next message back); else ``None``.

    ``handler`` is read through ``core`` (``_grid``, ``default_concern``) and
    ``_ops_series`` (the ops counter's series dict, keyed by ``(op type,)``).
    """
    if type(msg) is ClientOpMessage:
        ops: list[Any] = [msg.op]
        batch_wc: WriteConcern | None = None
    else:
        ops = msg.ops
        batch_wc = msg.write_concern
    core = handler.core
    grid = core._grid
    if ops:  # §5.6: an empty batch gets no reply at all
        plain = plain_changes(ops, batch_wc)
        if plain is None or not _write_plain(handler, ctx, ops, plain, grid):
            handler._general(ctx, ops, batch_wc)
    if grid is not None:
        committer = grid.committer
        if committer is not None and committer.over_backlog(handler.backlog_high_water):
            return handler._backlog(committer)
    return None


def _write_plain(
    handler: Any,
    ctx: Any,
    ops: list[Any],
    plain: tuple[list[Change], list[str], WriteConcern | None],
    grid: Any,
) -> bool:
    """Apply and answer a plain batch; False, having done nothing, when a map may not be written
    (the general path reports it)."""
    changes, maps, requested = plain
    data = ctx.data
    writer: Writer | None = data.get(WRITER_KEY)
    if writer is None:
        writer = data[WRITER_KEY] = Writer(ctx.connection_id)
    ready = writer.ready
    for name in maps:
        if name not in ready:
            if not handler._admit(ctx, name):
                return False
            ready.add(name)
    if grid is None:
        raise RuntimeError("the grid is not loaded yet (server not started)")
    outcomes = grid.apply(changes, writer.origin).outcomes
    n = len(ops)
    if outcomes.count(APPLIED) + outcomes.count(UNCHANGED) != n:
        handler._reply(ctx, ops, outcomes, requested)
        return True
    # Every op accepted, none lost to a newer record: count, then the prebuilt ack.
    series = handler._ops_series
    for op in ops:
        key = _OP_KEYS[op.op_type]
        series[key] = series.get(key, 0) + 1
    level = requested if requested is not None else handler.core.default_concern
    if _RANK[level] > _APPLIED_RANK and grid.durable:
        handler._ack(ctx, grid.committer.sync_point(), ok_ack_frame(ops, _PERSISTED))
        return True
    ack = ok_ack_frame(ops, _APPLIED_WC)
    if ACKS_KEY in data:
        data[ACKS_KEY].push(None, ack)  # behind acks still waiting for a commit
    else:
        ctx.send_frame(ack)
    return True


def watches(watched: Any, changes: Sequence[Change], origin: Origin) -> bool:
    """Whether a listener with ``watched_maps`` = ``watched`` hears of ``changes`` from ``origin``.

    True when some change names a map in ``watched``; when ``watched`` is a dict,
    its values are the connection ids watching each map, and a map watched by the
    origin's connection alone does not count (see ``ChangeListener``).
    """
    by_conn = type(watched) is dict
    cid = origin.connection_id
    for ch in changes:
        name = ch.map_name
        if name in watched:
            if by_conn:
                who = watched[name]
                if len(who) == 1 and cid in who:
                    continue
            return True
    return False


def apply_state(grid: Any) -> Any:
    """What :func:`apply_changes` keeps of a started grid: nothing, it reads the grid itself (the
    compiled twin holds the grid's dicts, clock, committer and listeners at C level)."""
    return None


def apply_changes(grid: Any, changes: Iterable[Change], origin: Origin) -> ApplyResult:
    """The body of :meth:`topgun.server.grid.Grid.apply`: judge, merge, stage and announce.

    Changes are taken in order, each judged on its own (PROTOCOL §5.6 steps 3-8):
    a map of the other kind refuses it (409); a run of ``PUT``/``REMOVE`` changes
    to one map goes to :func:`apply_lww_run` (a map seen for the first time
    exists only once one of its writes is staged: a refused first write creates
    nothing); OR-Map changes go to the grid's own ``_apply_or_add`` /
    ``_apply_or_remove``. Then the open batch's commit future is taken (if
    anything was staged) and every listener hears of the effective changes, in
    registration order (one whose ``watched_maps`` does not cover the batch, see
    :func:`watches`, is skipped); a listener that raises is logged and the others still run.

    ``grid`` is read through its ``committer``, ``max_drift_ms``, ``_wall``,
    ``_kinds``, ``_lww``, ``_horizons``, ``_keeps_rows``, ``_hlc`` and
    ``_listeners`` (``(listener, watched_maps or None)`` pairs) and the methods
    ``_new_lww``, ``_register``, ``_apply_or_add`` and ``_apply_or_remove``.
    """
    committer = grid.committer
    if committer is None:
        raise RuntimeError("grid not started")
    batch = committer.batch
    outcomes: list[Outcome] = []
    effective: list[Change] = []
    max_drift = grid.max_drift_ms
    wall = grid._wall()
    kinds = grid._kinds
    todo = changes if type(changes) is list else list(changes)
    rows = batch if grid._keeps_rows else None
    n = len(todo)
    i = 0
    while i < n:
        ch = todo[i]
        name = ch.map_name
        kind = ch.kind
        have = kinds.get(name)
        lww_change = kind is _PUT or kind is _REMOVE
        if have is not None and (have is _LWW_MAP) is not lww_change:
            outcomes.append(Outcome(_REJECTED, 409, f"map {name!r} is an {have.value.upper()} map"))
            i += 1
            continue
        if lww_change:
            found = grid._lww.get(name)
            lww = grid._new_lww() if found is None else found
            staged = len(effective)
            i = apply_lww_run(lww, grid._hlc, rows, todo, i, wall, max_drift, grid._horizons.get(name),
                              outcomes, effective)
            if found is None and len(effective) > staged:
                grid._register(name, lww, batch)
            continue
        if kind is _OR_ADD:
            outcomes.append(grid._apply_or_add(ch, have, wall, max_drift, batch, effective))
        else:
            outcomes.append(grid._apply_or_remove(ch, have, wall, max_drift, batch, effective))
        i += 1
    commit = committer.commit_future() if batch else None
    if effective:
        for listener, watched in grid._listeners:
            if watched is not None and not watches(watched, effective, origin):
                continue
            try:
                listener.on_changes(effective, origin)
            except Exception:
                log.exception("change listener %r failed", listener)
    return ApplyResult(outcomes, effective, commit)


def apply_lww_run(
    lww: Any,
    hlc: Any,
    batch: WriteBatch | None,
    changes: Sequence[Change],
    start: int,
    wall: int,
    max_drift: int,
    horizon: Timestamp | None,
    outcomes: list[Outcome],
    effective: list[Change],
) -> int:
    """Merge the run of ``PUT``/``REMOVE`` changes that starts at ``changes[start]``; return its end.

    The run is every following change of the same map with those kinds; ``lww``
    is that map's LWW-Map. Appends one :class:`Outcome` per change to
    ``outcomes`` and one effective :class:`Change` (with ``previous``) per
    applied change to ``effective``; stages every applied record into
    ``batch`` (``None``: the storage keeps no rows, so rows are only checked).
    ``wall`` is the server's wall clock (ms) read once for the batch,
    ``horizon`` the map's prune horizon. Returns the index of the first change
    after the run.
    """
    name = changes[start].map_name
    n = len(changes)
    i = start
    while i < n:
        ch = changes[i]
        if ch.map_name != name or (ch.kind is not _PUT and ch.kind is not _REMOVE):
            break
        apply_one(lww, hlc, batch, ch, wall, max_drift, horizon, outcomes, effective)
        i += 1
    return i


def apply_one(
    lww: Any,
    hlc: Any,
    batch: WriteBatch | None,
    ch: Change,
    wall: int,
    max_drift: int,
    horizon: Timestamp | None,
    outcomes: list[Outcome],
    effective: list[Change],
) -> None:
    """Judge, stage and merge one LWW change (the per-change rule of :func:`apply_lww_run`)."""
    record = ch.record
    if record is None:
        outcomes.append(Outcome(_REJECTED, 400, "LWW change without a record"))
        return
    ts = record.timestamp
    if ts[0] - wall > max_drift:
        outcomes.append(drift_outcome(ts[0], wall))
        return
    name = ch.map_name
    key = ch.key
    current = lww.get_record(key)
    if current is None:
        if horizon is not None and (ts[0], ts[1], ts[2]) < (horizon[0], horizon[1], horizon[2]):
            outcomes.append(Outcome(_REJECTED, 409, f"write is older than the retention horizon {horizon}"))
            return
    else:
        cts = current.timestamp
        if not (ts[0], ts[1], ts[2]) > (cts[0], cts[1], cts[2]):
            hlc.update(ts)  # an accepted op advances the clock even when it loses (§3.2 step 1)
            if (cts[0], cts[1], cts[2]) > (ts[0], ts[1], ts[2]):
                outcomes.append(Outcome(_UNCHANGED_STATUS, winner=current))
            else:
                outcomes.append(UNCHANGED)
            return
    try:
        # Stage first: a value storage cannot encode is refused before it touches memory.
        if batch is not None:
            batch.lww_put(name, key, record)
        else:
            check_lww_row(name, key, record)
    except StorageError as exc:
        outcomes.append(Outcome(_REJECTED, 400, str(exc)))
        return
    lww.merge(key, record)  # wins by construction; also runs hlc.update(ts)
    kind = _REMOVE if record.value is None else _PUT
    effective.append(_tuple_new(Change, (name, key, kind, record, None, None, None, True, current)))
    outcomes.append(APPLIED)


def plain_changes(
    ops: Sequence[Any], requested: WriteConcern | None
) -> tuple[list[Change], list[str], WriteConcern | None] | None:
    """The changes of a batch made only of decoded ``PUT``/``REMOVE`` ops that carry a record.

    Returns ``(changes, maps, write_concern)``: one ``PUT``/``REMOVE`` change per
    op, the distinct map names in first-seen order, and the strongest of
    ``requested`` and the ops' own write concerns. ``None`` when any op is
    something else (an ``InvalidOp``, an OR-Map op, a ``REMOVE`` without a record):
    such a batch is judged op by op.
    """
    changes: list[Change] = []
    maps: list[str] = []
    last: str | None = None
    top = -1 if requested is None else _RANK[requested]
    for op in ops:
        if type(op) is not ClientOp:
            return None
        record = op.record
        t = op.op_type
        if record is None or (t is not _OP_PUT and t is not _OP_REMOVE):
            return None
        name = op.map_name
        if name != last:
            if name not in maps:
                maps.append(name)
            last = name
        wc = op.write_concern
        if wc is not None and _RANK[wc] > top:
            requested, top = wc, _RANK[wc]
        kind = _PUT if t is _OP_PUT else _REMOVE
        changes.append(_tuple_new(Change, (name, op.key, kind, record, None, None, None, True, None)))
    return changes, maps, requested


def ok_ack_frame(ops: Sequence[Any], achieved: WriteConcern) -> bytes:
    """The encoded ``OP_ACK`` of a batch whose every op was accepted at ``achieved``.

    Byte for byte the codec's encoding of ``OpAck(lastId, achieved, results)``
    with one ``OpResult(op_id, success=True, achieved_level=achieved)`` per op that has an id.
    """
    with_id = [op.id for op in ops if op.id is not None]
    results = [OpResult(op_id=op_id, success=True, achieved_level=achieved) for op_id in with_id]
    last_id = with_id[-1] if with_id else "0"
    return _codec_py.encode(OpAck(last_id=last_id, achieved_level=achieved, results=results))
