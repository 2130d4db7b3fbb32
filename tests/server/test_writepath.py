"""The write path's per-op core on both twins: what the grid and the write handler rely on.

Every example feeds the same changes (or ops) to the compiled and the pure
twin, each with its own LWW-Map, clock and write batch, and compares
everything observable: outcomes, effective changes, staged rows and their
count, the map's records and Merkle root, and the clock.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from support.clocks import Wall
from topgun.core.records import LWWRecord, ORMapRecord, Timestamp
from topgun.protocol import codec
from topgun.protocol.messages import ClientOp, InvalidOp, OpAck, OpResult, OpType, WriteConcern
from topgun.server.changes import APPLIED, UNCHANGED, Change, ChangeKind, OutcomeStatus
from topgun.server.storage.base import WriteBatch

WALL = 1_700_000_000_000
DRIFT = 60_000
# The twin fixtures are stateless module accessors: sharing them across examples is fine.
PROPS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _state(twin: Any, preload: list[tuple[str, LWWRecord]]) -> tuple[Any, Any, WriteBatch]:
    hlc = twin.hlc.HLC("srv-test", max_drift_ms=DRIFT, wall_clock=Wall(WALL))
    lww = twin.lww.LWWMap(hlc, wall_clock=Wall(WALL))
    lww.merge_many(preload)
    return lww, hlc, WriteBatch()


def _run(
    twin: Any,
    preload: list[tuple[str, LWWRecord]],
    changes: list[Change],
    horizon: Timestamp | None,
    keeps_rows: bool = True,
) -> Any:
    lww, hlc, batch = _state(twin, preload)
    target = batch if keeps_rows else None
    outcomes: list[Any] = []
    effective: list[Change] = []
    ends = []
    raised = None
    i = 0
    try:
        while i < len(changes):
            kind = changes[i].kind
            if kind is not ChangeKind.PUT and kind is not ChangeKind.REMOVE:
                i += 1
                continue
            i = twin.writepath.apply_lww_run(
                lww, hlc, target, changes, i, WALL, DRIFT, horizon, outcomes, effective
            )
            ends.append(i)
    except OverflowError as exc:
        # Only a server-side source can send a counter beyond 64 bits (the codec caps it at
        # 2**32): both twins refuse it alike, leaving the same state behind.
        raised = str(exc)
    return {
        "raised": raised,
        "ends": ends,
        "outcomes": outcomes,
        "effective": effective,
        "rows": batch.lww,
        "recorded": batch.recorded,
        "records": sorted(lww.records()),
        "root": lww.root_hash,
        "clock": hlc.now(),
    }


class _Opaque:
    """A value MsgPack cannot encode (a change from a server-side source could carry one)."""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Opaque)

    __hash__ = object.__hash__


keys = st.sampled_from(["a", "b", "c", "d", "e\x00", ""])
nodes = st.sampled_from(["n1", "n2", "zz", "n\x00"])
millis = st.one_of(
    st.integers(WALL - 5_000, WALL + 5_000),
    st.integers(WALL + DRIFT - 2, WALL + DRIFT + 2),
    st.sampled_from([0, -1, 2**63 - 1, 2**63, 2**64 + 3]),
)
counters = st.one_of(st.integers(0, 3), st.sampled_from([2**63 - 1, 2**63, -1]))
stamps = st.builds(Timestamp, millis, counters, nodes)
values = st.one_of(
    st.none(),
    st.integers(-(2**63), 2**64 - 1),
    st.text(max_size=5),
    st.dictionaries(st.text(max_size=3), st.integers(0, 9), max_size=2),
    st.just(2**70),  # too big for MsgPack
    st.just(_Opaque()),
)
ttls = st.one_of(st.none(), st.integers(-5, 10**6), st.sampled_from([2**63 - 1, 2**63]))
records = st.builds(LWWRecord, values, stamps, ttls)


@st.composite
def changes_strategy(draw: Any) -> list[Change]:
    out = []
    for _ in range(draw(st.integers(0, 14))):
        shape = draw(st.sampled_from(["put", "put", "put", "no-record", "other-map", "or", "float-ts"]))
        key = draw(keys)
        if shape == "or":
            out.append(Change.or_remove("m", key, "tag-1"))
            continue
        rec = draw(records)
        if shape == "no-record":
            out.append(Change("m", key, ChangeKind.REMOVE))
            continue
        if shape == "float-ts":
            ts = rec.timestamp
            rec = LWWRecord(
                rec.value, Timestamp(float(ts.millis % 2**52), ts.counter, ts.node_id), rec.ttl_ms
            )
        name = "other" if shape == "other-map" else "m"
        out.append(Change.put(name, key, rec))
    return out


preloads = st.lists(
    st.tuples(
        st.sampled_from(["a", "b", "c"]),
        st.builds(
            LWWRecord,
            st.integers(0, 9),
            st.builds(
                Timestamp,
                st.integers(WALL - 5_000, WALL + 5_000),
                st.integers(0, 3),
                st.sampled_from(["n1", "n2"]),
            ),
            st.none(),
        ),
    ),
    max_size=4,
)
horizons = st.one_of(
    st.none(), st.builds(Timestamp, st.integers(WALL - 6_000, WALL), st.integers(0, 3), nodes)
)


@PROPS
@given(preload=preloads, changes=changes_strategy(), horizon=horizons, keeps_rows=st.booleans())
def test_lww_runs_agree(
    pure: Any, compiled: Any, preload: Any, changes: list[Change], horizon: Any, keeps_rows: bool
) -> None:
    got = _run(compiled, preload, changes, horizon, keeps_rows)
    assert got == _run(pure, preload, changes, horizon, keeps_rows)
    if not keeps_rows:
        assert got["rows"] == {} and got["recorded"] == 0


def test_run_rules(twin: Any) -> None:
    """The §5.6 rules as the grid applies them, on each twin."""
    old = LWWRecord("old", Timestamp(WALL, 5, "n1"))
    changes = [
        Change.put("m", "k", LWWRecord("newer", Timestamp(WALL, 6, "n1"))),  # wins
        Change.put("m", "k", LWWRecord("older", Timestamp(WALL, 1, "n1"))),  # loses: winner reported
        Change.put("m", "k", LWWRecord("newer", Timestamp(WALL, 6, "n1"))),  # a tie: unchanged
        Change.put("m", "far", LWWRecord(1, Timestamp(WALL + DRIFT + 1, 0, "n1"))),  # drift
        Change.put("m", "gone", LWWRecord(1, Timestamp(WALL - 10_000, 0, "n1"))),  # before the horizon
        Change.put("m", "nul\x00", LWWRecord(1, Timestamp(WALL, 0, "n1"))),  # storage cannot hold it
        Change("m", "x", ChangeKind.REMOVE),  # no record
        Change.put("m", "t", LWWRecord(None, Timestamp(WALL, 9, "n2"))),  # a tombstone
        Change.put("other", "o", LWWRecord(1, Timestamp(WALL, 0, "n1"))),  # ends the run
    ]
    got = _run(twin, [("k", old)], changes, Timestamp(WALL - 5_000, 0, "n1"))
    assert got["ends"] == [8, 9]
    o = got["outcomes"]
    assert o[0] is APPLIED and o[2] is UNCHANGED and o[7] is APPLIED
    assert o[1].status is OutcomeStatus.UNCHANGED and o[1].winner == changes[0].record
    assert (o[3].code, o[4].code, o[5].code, o[6].code) == (422, 409, 400, 400)
    assert "NUL" in o[5].reason
    assert o[8] is APPLIED  # the other map's run, applied to the same LWWMap by this test
    assert [(c.key, c.kind, c.previous) for c in got["effective"][:2]] == [
        ("k", ChangeKind.PUT, old),
        ("t", ChangeKind.REMOVE, None),
    ]
    assert got["rows"][("m", "k")][0] is not None and got["rows"][("m", "t")][0] is None
    assert got["recorded"] == 3
    # A losing op still advances the clock past its timestamp (§3.2 step 1).
    assert got["clock"] > Timestamp(WALL, 6, "n1")
    # A store that keeps no rows gets none, but what the others refuse is refused alike (the
    # NUL key); only the value encoding is skipped.
    unstaged = _run(twin, [("k", old)], changes, Timestamp(WALL - 5_000, 0, "n1"), keeps_rows=False)
    assert unstaged["rows"] == {} and unstaged["outcomes"] == got["outcomes"]
    assert unstaged["records"] == got["records"] and unstaged["root"] == got["root"]


def _ops(n: int, wc: WriteConcern | None = None, **over: Any) -> list[Any]:
    ops: list[Any] = []
    for i in range(n):
        fields: dict[str, Any] = {
            "id": f"op-{i}" if i % 3 else None,
            "map_name": "m" if i % 4 else "n",
            "key": f"k{i}",
            "op_type": OpType.PUT if i % 2 else OpType.REMOVE,
            "record": LWWRecord(i if i % 2 else None, Timestamp(WALL, i, "n1")),
            "write_concern": wc if i == 2 else None,
        }
        fields.update(over)
        ops.append(ClientOp(**fields))
    return ops


@pytest.mark.parametrize("batch_wc", [None, WriteConcern.MEMORY, WriteConcern.PERSISTED])
def test_plain_changes(pure: Any, compiled: Any, batch_wc: WriteConcern | None) -> None:
    ops = _ops(9, WriteConcern.APPLIED)
    got = compiled.writepath.plain_changes(ops, batch_wc)
    assert got == pure.writepath.plain_changes(ops, batch_wc)
    changes, maps, wc = got
    assert maps == ["n", "m"]
    assert wc is (WriteConcern.PERSISTED if batch_wc is WriteConcern.PERSISTED else WriteConcern.APPLIED)
    assert [(c.map_name, c.key, c.kind, c.record) for c in changes] == [
        (op.map_name, op.key, ChangeKind.PUT if op.op_type is OpType.PUT else ChangeKind.REMOVE, op.record)
        for op in ops
    ]


@pytest.mark.parametrize(
    "odd",
    [
        InvalidOp(id="x", reason="bad", code=400),
        ClientOp(id="x", map_name="m", key="k", op_type=OpType.REMOVE, timestamp=Timestamp(WALL, 0, "n")),
        ClientOp(id="x", map_name="m", key="k", op_type=OpType.OR_REMOVE, or_tag="t"),
    ],
)
def test_plain_changes_refuses_other_ops(twin: Any, odd: Any) -> None:
    assert twin.writepath.plain_changes([*_ops(3), odd], None) is None


@pytest.mark.parametrize("n", [0, 1, 7, 15, 16, 40, 70_000])
@pytest.mark.parametrize(
    "level", [WriteConcern.APPLIED, WriteConcern.PERSISTED, WriteConcern.FIRE_AND_FORGET]
)
def test_ok_ack_frame(pure: Any, compiled: Any, n: int, level: WriteConcern) -> None:
    ops = _ops(n)
    if n == 40:  # ids of every msgpack str width, non-ASCII included
        ops = [ClientOp(**{**_fields(op), "id": "é" * i + "x" * (i * 9)}) for i, op in enumerate(ops)]
    got = compiled.writepath.ok_ack_frame(ops, level)
    assert got == pure.writepath.ok_ack_frame(ops, level)
    with_id = [op for op in ops if op.id is not None]
    want = OpAck(
        last_id=with_id[-1].id if with_id else "0",
        achieved_level=level,
        results=[OpResult(op_id=op.id, success=True, achieved_level=level) for op in with_id],
    )
    assert got == codec.encode(want)
    assert codec.decode(got, codec.Limits(max_frame_bytes=1 << 24)) == want


def _fields(op: ClientOp) -> dict[str, Any]:
    return {f: getattr(op, f) for f in ("id", "map_name", "key", "op_type", "record", "write_concern")}


# -- the grid's merge step (Grid.apply's body) on both twins ------------------------------------


class _Listener:
    """Records what it hears; fails on demand (the others must still hear)."""

    def __init__(self, fail: bool, watched_maps: set[str] | None = None) -> None:
        self.fail = fail
        self.heard: list[tuple[list[Change], Any]] = []
        if watched_maps is not None:
            self.watched_maps = watched_maps

    def on_changes(self, changes: Any, origin: Any) -> None:
        self.heard.append((list(changes), origin))
        if self.fail:
            raise RuntimeError("listener failure")


@st.composite
def grid_changes(draw: Any) -> list[Change]:
    """Writes to known LWW maps, to an OR map, to maps seen for the first time (some of them
    refused, so they must not come to exist), and OR changes to an LWW map."""
    out = []
    for _ in range(draw(st.integers(0, 12))):
        name = draw(st.sampled_from(["m", "m", "o", "fresh", "fresh2"]))
        shape = draw(st.sampled_from(["put", "put", "or-add", "or-remove", "stale"]))
        key = draw(st.sampled_from(["a", "b", "c"]))
        ts = Timestamp(draw(st.integers(WALL - 3, WALL + 3)), draw(st.integers(0, 2)), "n1")
        if shape == "put":
            out.append(Change.put(name, key, LWWRecord(draw(st.integers(0, 9)), ts)))
        elif shape == "stale":  # far ahead: refused, so a fresh map it names is not created
            out.append(Change.put(name, key, LWWRecord(1, Timestamp(WALL + DRIFT + 5, 0, "n1"))))
        elif shape == "or-add":
            tag = f"{ts.millis}:{ts.counter}:n1"
            out.append(Change.or_add(name, key, ORMapRecord(draw(st.integers(0, 9)), ts, tag)))
        else:
            out.append(Change.or_remove(name, key, f"{WALL}:0:n1", ts))
    return out


async def _grid_apply(twin: Any, url: str, changes: list[Change], fail_first: bool) -> dict[str, Any]:
    from topgun.server.changes import ChangeSource, Origin
    from topgun.server.grid import Grid
    from topgun.server.storage import open_storage

    storage = open_storage(url)
    await storage.open()
    grid = Grid(storage, wall_clock=Wall(WALL), node_id="srv-test", max_drift_ms=DRIFT)
    await grid.start()
    try:
        # One LWW map and one OR map exist before the batch.
        first = Origin(ChangeSource.CLIENT, 1)
        grid.apply([Change.put("m", "a", LWWRecord(0, Timestamp(WALL, 1, "n1")))], first)
        tag = f"{WALL}:0:n1"
        grid.apply([Change.or_add("o", "a", ORMapRecord(0, Timestamp(WALL, 0, "n1"), tag))], first)
        await grid.committer.drain()  # type: ignore[union-attr]
        # The third one only acts on "fresh" (and says so); it is added before that map exists.
        listeners = [_Listener(fail_first), _Listener(False), _Listener(False, {"fresh"})]
        for listener in listeners:
            grid.add_listener(listener)
        batch = grid.committer.batch  # type: ignore[union-attr]
        origin = Origin(ChangeSource.CLIENT, 7)
        result = twin.writepath.apply_changes(grid, changes, origin)
        return {
            "outcomes": result.outcomes,
            "effective": result.changes,
            "commit": result.commit is not None,
            "heard": [listener.heard for listener in listeners],
            "rows": [dict(getattr(batch, f)) for f in ("lww", "or_records", "or_tombstones", "map_kinds")],
            "recorded": batch.recorded,
            "kinds": {n: grid.kind(n) for n in grid.map_names()},
            "lww": {n: sorted(m.records()) for n in grid.map_names() if (m := grid.lww(n)) is not None},
            "or": {
                n: (sorted(map(repr, orm.entries())), sorted(orm.tombstone_tags()), orm.root_hash)
                for n in grid.map_names()
                if (orm := grid.ormap(n)) is not None
            },
            "clock": grid.hlc.now(),
        }
    finally:
        await grid.close()
        await storage.close()


@PROPS
@given(changes=grid_changes(), keeps_rows=st.booleans(), fail_first=st.booleans())
async def test_grid_apply_twins_agree(
    pure: Any, compiled: Any, changes: list[Change], keeps_rows: bool, fail_first: bool
) -> None:
    import uuid

    def url() -> str:
        return f"memory://twin-{uuid.uuid4().hex}" if keeps_rows else "memory://"

    got = await _grid_apply(compiled, url(), changes, fail_first)
    assert got == await _grid_apply(pure, url(), changes, fail_first)
    # A map of the other kind refuses the change; a refused first write creates no map.
    for ch, outcome in zip(changes, got["outcomes"], strict=True):
        lww_change = ch.kind in (ChangeKind.PUT, ChangeKind.REMOVE)
        if (ch.map_name == "o" and lww_change) or (ch.map_name == "m" and not lww_change):
            assert outcome.code == 409
    for name in ("fresh", "fresh2"):
        if name in got["kinds"]:
            assert any(c.map_name == name for c in got["effective"])
    assert got["heard"][1] == ([(got["effective"], got["heard"][1][0][1])] if got["effective"] else [])
    # A listener with watched_maps hears a batch (all of it) only when a change names one of them.
    touches = any(c.map_name == "fresh" for c in got["effective"])
    assert got["heard"][2] == (got["heard"][1] if touches else [])


async def test_grid_apply_falls_back_beyond_62_bits(twin: Any) -> None:
    """A wall clock the compiled arithmetic cannot hold takes the specification's path."""
    from topgun.server.changes import ChangeSource, Origin
    from topgun.server.grid import Grid
    from topgun.server.storage import open_storage

    storage = open_storage("memory://")
    await storage.open()
    grid = Grid(storage, wall_clock=Wall(2**62 + 5), node_id="srv-test", max_drift_ms=DRIFT)
    await grid.start()
    try:
        change = Change.put("m", "k", LWWRecord(1, Timestamp(2**62 + 5, 0, "n1")))
        result = twin.writepath.apply_changes(grid, [change], Origin(ChangeSource.CLIENT, 1))
        assert result.outcomes == [APPLIED]
        assert grid.lww("m").get("k") == 1  # type: ignore[union-attr]
    finally:
        await grid.close()
        await storage.close()


async def test_grid_apply_with_a_huge_drift_setting_or_no_kept_state(twin: Any) -> None:
    """A drift bound beyond 62 bits takes the specification's path; a grid whose kept state is
    missing (or stale) is read afresh. Both give what the other twin gives."""
    from topgun.server.changes import ChangeSource, Origin
    from topgun.server.grid import Grid
    from topgun.server.storage import open_storage

    for drift, drop_state in ((2**62 + 5, False), (DRIFT, True)):
        storage = open_storage("memory://")
        await storage.open()
        grid = Grid(storage, wall_clock=Wall(WALL), node_id="srv-test", max_drift_ms=drift)
        await grid.start()
        try:
            if drop_state:
                grid._apply_state = None
            far = Change.put("m", "far", LWWRecord(1, Timestamp(WALL + DRIFT + 10, 0, "n1")))
            near = Change.put("m", "k", LWWRecord(2, Timestamp(WALL, 0, "n1")))
            result = twin.writepath.apply_changes(grid, [far, near], Origin(ChangeSource.CLIENT, 1))
            # far ahead of the clock: accepted only under the huge bound
            assert [o.code for o in result.outcomes] == ([0, 0] if drift > DRIFT else [422, 0])
            assert grid.lww("m").get("k") == 2  # type: ignore[union-attr]
        finally:
            await grid.close()
            await storage.close()


# -- which listeners hear a batch ---------------------------------------------------------------

_names = st.sampled_from(["m", "n", "o"])
_watchers = st.frozensets(st.sampled_from([1, 2, 7]), max_size=3)
_watched = st.one_of(
    st.frozensets(_names, max_size=3).map(set),
    st.dictionaries(_names, _watchers.map(set), max_size=3),
)


def _watches_oracle(watched: Any, changes: list[Change], cid: int | None) -> bool:
    for ch in changes:
        if ch.map_name not in watched:
            continue
        if isinstance(watched, dict) and watched[ch.map_name] == {cid}:
            continue  # only the writer itself watches this map
        return True
    return False


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    watched=_watched,
    names=st.lists(_names, max_size=4),
    cid=st.sampled_from([None, 1, 2, 7]),
)
def test_watches_twins_agree(twin: Any, watched: Any, names: list[str], cid: int | None) -> None:
    from topgun.server.changes import ChangeSource, Origin

    ts = Timestamp(WALL, 0, "n1")
    changes = [Change.put(name, "k", LWWRecord(1, ts)) for name in names]
    origin = Origin(ChangeSource.CLIENT if cid is not None else ChangeSource.SERVER, cid)
    assert twin.writepath.watches(watched, changes, origin) is _watches_oracle(watched, changes, cid)


async def test_grid_skips_a_listener_whose_only_watcher_is_the_writer(twin: Any) -> None:
    from topgun.server.changes import ChangeSource, Origin
    from topgun.server.grid import Grid
    from topgun.server.storage import open_storage

    storage = open_storage("memory://")
    await storage.open()
    grid = Grid(storage, wall_clock=Wall(WALL), node_id="srv-test", max_drift_ms=DRIFT)
    await grid.start()
    try:
        interest: dict[str, set[int]] = {"m": {7}}
        listener = _Listener(False)
        listener.watched_maps = interest  # type: ignore[attr-defined]
        grid.add_listener(listener)
        ts = iter(range(1, 100))

        def write(origin: Origin) -> None:
            change = Change.put("m", "k", LWWRecord(1, Timestamp(WALL, next(ts), "n1")))
            assert twin.writepath.apply_changes(grid, [change], origin).outcomes == [APPLIED]

        write(Origin(ChangeSource.CLIENT, 7))  # the only watcher wrote: not called
        assert listener.heard == []
        write(Origin(ChangeSource.CLIENT, 8))  # someone else wrote
        write(Origin(ChangeSource.SERVER))  # a server-side change has no connection
        interest["m"].add(9)  # the table is live: a second watcher makes the writer's own count
        write(Origin(ChangeSource.CLIENT, 7))
        assert [origin.connection_id for _changes, origin in listener.heard] == [8, None, 7]
    finally:
        await grid.close()
        await storage.close()


# -- one write message through the handler on both twins ----------------------------------------


class _Conn:
    """A Connection that keeps the frames it is sent (as bytes, the twins must send equal bytes)."""

    def __init__(self, cid: int) -> None:
        self.id = cid
        self.remote = "test:0"
        self.frames: list[bytes] = []
        self.closed = False

    def send(self, data: bytes) -> None:
        self.frames.append(data)

    def close(self, code: int, reason: str = "", *, drop_pending: bool = False) -> None:
        self.closed = True

    def outbound_bytes(self) -> int:
        return 0

    def outbound_frames(self) -> int:
        return 0


_ACL = [{"map": "ro*", "read": ["*"], "write": ["admin"]}]


@st.composite
def write_scripts(draw: Any) -> list[tuple[int, dict[str, Any]]]:
    """Messages of two connections: plain batches, CLIENT_OPs, stale writes that lose to a newer
    stored record, clock drift, a map the connections may not write, OR ops, removes without a
    record, invalid ops, write concerns and empty batches."""
    script = []
    op_id = iter(range(1, 10_000))
    for _ in range(draw(st.integers(1, 8))):
        ops = []
        for _ in range(draw(st.integers(0, 4))):
            name = draw(st.sampled_from(["m", "m", "n", "ro", "o"]))
            key = draw(st.sampled_from(["a", "b"]))
            shape = draw(st.sampled_from(["put", "put", "put", "old", "drift", "or", "remove", "bad"]))
            millis, counter = WALL + draw(st.integers(-3, 3)), draw(st.integers(0, 2))
            stamp = {"millis": millis, "counter": counter, "nodeId": "c"}
            op: dict[str, Any] = {"mapName": name, "key": key}
            if draw(st.booleans()):
                op["id"] = str(next(op_id))
            if shape in ("put", "old", "drift"):
                if shape == "old":
                    stamp["millis"] = WALL - 1_000
                elif shape == "drift":
                    stamp["millis"] = WALL + DRIFT + 1_000
                op.update(opType="PUT", record={"value": draw(st.integers(0, 9)), "timestamp": stamp})
            elif shape == "or":
                tag = f"{stamp['millis']}:{stamp['counter']}:c"
                op.update(opType="OR_ADD", orRecord={"value": 1, "timestamp": stamp, "tag": tag})
            elif shape == "remove":
                op.update(opType="REMOVE", timestamp=stamp)
            else:
                op.update(opType="PUT")  # no record: refused with 400 by the codec
            wc = draw(st.sampled_from([None, None, "MEMORY", "APPLIED", "PERSISTED"]))
            if wc is not None:
                op["writeConcern"] = wc
            ops.append(op)
        conn = draw(st.integers(0, 1))
        if len(ops) == 1 and draw(st.booleans()):
            script.append((conn, {"type": "CLIENT_OP", "payload": ops[0]}))
        else:
            payload: dict[str, Any] = {"ops": ops}
            wc = draw(st.sampled_from([None, "APPLIED", "PERSISTED"]))
            if wc is not None:
                payload["writeConcern"] = wc
            script.append((conn, {"type": "OP_BATCH", "payload": payload}))
    return script


async def _write_script(
    twin: Any, url: str, script: list[tuple[int, dict[str, Any]]], high_water: int = 200_000
) -> dict[str, Any]:
    import msgpack

    from topgun.protocol.messages import MessageType
    from topgun.server.app import TopGunServer
    from topgun.server.grid import Grid
    from topgun.server.session import SessionHub
    from topgun.server.storage import open_storage

    storage = open_storage(url)
    server = TopGunServer(storage=storage, map_acl=_ACL)
    await storage.open()
    core = server.core
    assert core is not None
    grid = Grid(storage, wall_clock=Wall(WALL), node_id="srv-test", max_drift_ms=DRIFT)
    await grid.start()
    for listener in core._listeners:
        grid.add_listener(listener)
    core._grid = grid
    try:
        hub = SessionHub(
            server.config, authenticator=None, processors=server.processors, metrics=server.metrics
        )
        conns = [_Conn(501), _Conn(502)]
        sessions = [hub.open_session(c) for c in conns]
        handler = server.processors.get(MessageType.OP_BATCH)
        # a low bound makes writers wait for the backlog: both twins must say so alike
        handler.backlog_high_water = high_water  # type: ignore[union-attr]
        # An older record under "m"/"a" and "n"/"b": stale writes lose to it and are corrected.
        seed = {"type": "OP_BATCH", "payload": {"ops": [
            {"id": "s1", "mapName": m, "key": k, "opType": "PUT",
             "record": {"value": "seed", "timestamp": {"millis": WALL + 2, "counter": 9, "nodeId": "z"}}}
            for m, k in (("m", "a"), ("n", "b"))
        ]}}
        script = [(0, seed), *script]
        returned = []
        for who, obj in script:
            msg = hub.decode(msgpack.packb(obj), hub.limits)
            result = twin.writepath.write_message(handler, sessions[who], msg)
            returned.append(result is not None)
            if result is not None:
                await result
        await grid.committer.drain()  # type: ignore[union-attr]
        for _ in range(3):
            await asyncio.sleep(0)  # acks waiting for that commit go out
        return {
            "frames": [[msgpack.unpackb(f) for f in c.frames] for c in conns],
            "returned": returned,
            "ops": dict(server.metrics.ops.series),
            "rejected": dict(server.metrics.rejected_ops.series),
            "lww": {n: sorted(m.records()) for n in grid.map_names() if (m := grid.lww(n)) is not None},
            "kinds": {n: grid.kind(n) for n in grid.map_names()},
            "clock": grid.hlc.now(),
        }
    finally:
        await grid.close()
        await storage.close()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(script=write_scripts(), durable=st.booleans(), high_water=st.sampled_from([0, 2, 200_000]))
async def test_write_message_twins_agree(
    pure: Any,
    compiled: Any,
    tmp_path_factory: Any,
    script: list[tuple[int, dict[str, Any]]],
    durable: bool,
    high_water: int,
) -> None:
    def url() -> str:
        return f"sqlite:///{tmp_path_factory.mktemp('wm')}/t.db" if durable else "memory://"

    got = await _write_script(compiled, url(), script, high_water)
    assert got == await _write_script(pure, url(), script, high_water)
    if durable and high_water != 2:
        # the seed batch stages rows (two records, two map kinds): a bound of 0 holds its writer
        # back, the default one does not
        assert got["returned"][0] is (high_water == 0)
    # Nothing written to the map the connections may not write; every frame is a reply or a push.
    assert "ro" not in got["lww"]
    kinds = {f["type"] for frames in got["frames"] for f in frames}
    assert kinds <= {"OP_ACK", "OP_REJECTED", "SERVER_EVENT", "SERVER_BATCH_EVENT"}


async def test_grid_apply_on_the_default_wall_clock(twin: Any) -> None:
    """With the grid's default clock (read from C by the compiled twin) drift is judged against
    the real time, for LWW and OR changes alike."""
    import time

    from topgun.server.changes import ChangeSource, Origin
    from topgun.server.grid import Grid
    from topgun.server.storage import open_storage

    storage = open_storage("memory://")
    await storage.open()
    grid = Grid(storage, node_id="srv-test", max_drift_ms=DRIFT)
    await grid.start()
    try:
        now = time.time_ns() // 1_000_000
        near, far = Timestamp(now, 0, "n1"), Timestamp(now + DRIFT + 60_000, 0, "n1")
        changes = [
            Change.put("m", "near", LWWRecord(1, near)),
            Change.put("m", "far", LWWRecord(1, far)),
            Change.or_add("o", "near", ORMapRecord(1, near, "t1")),
            Change.or_add("o", "far", ORMapRecord(1, far, "t2")),
        ]
        result = twin.writepath.apply_changes(grid, changes, Origin(ChangeSource.CLIENT, 1))
        assert [o.code for o in result.outcomes] == [0, 422, 0, 422]
    finally:
        await grid.close()
        await storage.close()
