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
from topgun.protocol.messages import ClientOp, OpAck, OpResult, OpType, WriteConcern
from topgun.server.changes import (
    APPLIED,
    UNCHANGED,
    ApplyResult,
    Change,
    ChangeKind,
    Origin,
    Outcome,
    OutcomeStatus,
    drift_outcome,
)
from topgun.server.storage.base import MapKind, WriteBatch, check_lww_row

__all__ = ["apply_changes", "apply_lww_run", "apply_one", "apply_state", "ok_ack_frame", "plain_changes"]

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
    registration order (one whose ``watched_maps`` names no map of the batch is
    skipped); a listener that raises is logged and the others still run.

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
            if watched is not None and not any(ch.map_name in watched for ch in effective):
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
