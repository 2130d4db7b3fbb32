"""The grid's merge entry point, prune horizons and node id, the map ACL and the grid config fields."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from topgun.core.records import LWWRecord, ORMapRecord, Timestamp
from topgun.errors import ConfigError
from topgun.server.config import ServerConfig
from topgun.server.grid import (
    SERVER_ORIGIN,
    Change,
    ChangeKind,
    Grid,
    Origin,
    OutcomeStatus,
    valid_node_id,
)
from topgun.server.handlers.acl import AllowAll, MapAcl, acl_from_config
from topgun.server.storage import open_storage
from topgun.server.storage.base import MapKind

pytestmark = pytest.mark.timeout(60)

WALL = 1_700_000_000_000


class Clock:
    def __init__(self, now: int = WALL) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


async def open_grid(url: str, clock: Clock, **kw: Any) -> Grid:
    storage = open_storage(url)
    await storage.open()
    grid = Grid(storage, wall_clock=clock, **kw)
    await grid.start()
    return grid


async def close_grid(grid: Grid) -> None:
    await grid.close()
    await grid.storage.close()


def rec(value: Any, millis: int, counter: int = 0, node: str = "n1") -> LWWRecord:
    return LWWRecord(value, Timestamp(millis, counter, node))


async def test_apply_judges_each_change_and_tells_listeners_once(storage_url: str) -> None:
    clock = Clock()
    grid = await open_grid(storage_url, clock, max_drift_ms=1000)
    calls: list[tuple[list[Change], Origin]] = []

    class L:
        def on_changes(self, changes: Any, origin: Origin) -> None:
            calls.append((list(changes), origin))

    class Broken:
        def on_changes(self, changes: Any, origin: Origin) -> None:
            raise RuntimeError("listener bug")

    grid.add_listener(Broken())
    grid.add_listener(L())
    try:
        tag = f"{WALL}:0:n1"
        res = grid.apply(
            [
                Change.put("m", "a", rec(1, WALL)),
                Change.put("m", "a", rec(0, WALL - 5)),  # loses to a strictly newer record
                Change.put("m", "a", rec(1, WALL)),  # same timestamp: no-op, no winner
                Change.put("m", "b", rec(1, WALL + 5000)),  # drift
                Change.or_add("m", "x", ORMapRecord(1, Timestamp(WALL, 0, "n1"), tag)),  # kind
                Change.or_add("s", "x", ORMapRecord(1, Timestamp(WALL, 0, "n1"), tag)),
                Change.or_remove("s", "x", tag),
                Change.or_add("s", "x", ORMapRecord(1, Timestamp(WALL, 0, "n1"), tag)),  # tombstoned tag
                Change.put("m", "c", rec(object(), WALL)),  # storage cannot encode it
            ],
            Origin.client(7),
        )
        st = [(o.status, o.code) for o in res.outcomes]
        assert st == [
            (OutcomeStatus.APPLIED, 0),
            (OutcomeStatus.UNCHANGED, 0),
            (OutcomeStatus.UNCHANGED, 0),
            (OutcomeStatus.REJECTED, 422),
            (OutcomeStatus.REJECTED, 409),
            (OutcomeStatus.APPLIED, 0),
            (OutcomeStatus.APPLIED, 0),
            (OutcomeStatus.UNCHANGED, 0),
            (OutcomeStatus.REJECTED, 400),
        ]
        assert res.outcomes[1].winner == rec(1, WALL) and res.outcomes[2].winner is None
        assert [c.kind for c in res.changes] == [ChangeKind.PUT, ChangeKind.OR_ADD, ChangeKind.OR_REMOVE]
        remove = res.changes[2]
        assert remove.key == "x" and remove.or_tag == tag and remove.or_record is not None
        assert len(calls) == 1 and calls[0][1] == Origin.client(7) and calls[0][0] == res.changes
        assert grid.kind("m") is MapKind.LWW and grid.kind("s") is MapKind.OR
        assert grid.lww("m").get_record("c") is None  # type: ignore[union-attr]
        assert res.commit is not None
        await res.commit
        # a batch of pure no-ops stages nothing and tells nobody
        again = grid.apply([Change.put("m", "a", rec(1, WALL))], SERVER_ORIGIN)
        assert again.changes == [] and again.commit is None and len(calls) == 1
    finally:
        await close_grid(grid)
    grid = await open_grid(storage_url, clock)
    try:
        assert grid.lww("m").get_record("a") == rec(1, WALL)  # type: ignore[union-attr]
        orm = grid.ormap("s")
        assert orm is not None and orm.is_tombstoned(tag) and orm.get("x") == []
        assert orm.tombstones_for("x") == [tag]
    finally:
        await close_grid(grid)


async def test_gc_sets_and_persists_horizons_and_refuses_resurrection(storage_url: str) -> None:
    clock = Clock()
    day = 86_400_000
    grid = await open_grid(storage_url, clock, retention_ms=day)
    try:
        grid.apply(
            [
                Change.put("m", "dead", rec(None, WALL - 2 * day)),
                Change.put("m", "alive", rec("v", WALL - 2 * day)),
                Change.put("fresh", "t", rec(None, WALL)),
            ],
            SERVER_ORIGIN,
        )
        report = grid.gc()
        assert report.pruned == {"m": 1}
        assert report.horizon == Timestamp(WALL - day, 0, grid.node_id)
        assert grid.prune_horizon("m") == report.horizon and grid.prune_horizon("fresh") is None
        assert report.commit is not None
        await report.commit
        res = grid.apply(
            [
                Change.put("m", "dead", rec("zombie", WALL - 2 * day, 1)),
                Change.put("m", "alive", rec("w", WALL - 2 * day, 1)),
                Change.put("m", "new", rec("n", WALL - day, 1)),  # just after the horizon
            ],
            SERVER_ORIGIN,
        )
        assert [(o.status, o.code) for o in res.outcomes] == [
            (OutcomeStatus.REJECTED, 409),
            (OutcomeStatus.APPLIED, 0),
            (OutcomeStatus.APPLIED, 0),
        ]
        node = grid.node_id
    finally:
        await close_grid(grid)
    grid = await open_grid(storage_url, clock, retention_ms=day)
    try:
        assert grid.node_id == node and valid_node_id(node)
        assert grid.prune_horizon("m") == Timestamp(WALL - day, 0, node)
        assert grid.lww("m").get_record("dead") is None  # type: ignore[union-attr]
    finally:
        await close_grid(grid)


async def test_configured_node_id_is_used_and_validated() -> None:
    clock = Clock()
    grid = await open_grid(f"memory://{uuid.uuid4().hex}", clock, node_id="edge-1")
    try:
        assert grid.node_id == "edge-1" and grid.hlc.now().node_id == "edge-1"
    finally:
        await close_grid(grid)
    with pytest.raises(ValueError):
        Grid(open_storage("memory://"), node_id="Edge_1")
    with pytest.raises(ConfigError):
        ServerConfig(node_id="Upper")


def test_acl_rules_first_match_wins_and_defaults() -> None:
    class Ctx:
        def __init__(self, *roles: str) -> None:
            self.roles = roles

    acl = MapAcl.from_config(
        [
            {"map": "admin.*", "read": ["admin"], "write": ["admin"]},
            {"map": "pub*", "write": []},
            {"map": "*", "read": ["*"], "write": ["user", "admin"]},
        ]
    )
    anon, user, admin = Ctx(), Ctx("user"), Ctx("admin")
    assert not acl.can_read(anon, "admin.x") and acl.can_read(admin, "admin.x")  # type: ignore[arg-type]
    assert acl.can_read(anon, "public") and not acl.can_write(admin, "public")  # type: ignore[arg-type]
    assert acl.can_write(user, "notes") and not acl.can_write(anon, "notes")  # type: ignore[arg-type]
    deny = acl_from_config({"default": "deny", "rules": [{"map": "open", "read": ["*"]}]})
    assert deny.can_read(anon, "open") and deny.can_write(anon, "open")  # type: ignore[arg-type]
    assert not deny.can_read(anon, "other")  # type: ignore[arg-type]
    assert isinstance(acl_from_config([]), AllowAll) and isinstance(acl_from_config(""), AllowAll)
    assert isinstance(acl_from_config('[{"map": "x", "read": ["r"]}]'), MapAcl)
    with pytest.raises(ConfigError):
        MapAcl.from_config([{"read": ["r"]}])
    with pytest.raises(ConfigError):
        MapAcl.from_config([{"map": "x", "write": 5}])


def test_grid_config_fields_validate() -> None:
    cfg = ServerConfig(write_concern="applied", map_acl='[{"map": "a*"}]', tombstone_retention=10)
    assert cfg.write_concern == "APPLIED" and cfg.map_acl == [{"map": "a*"}]
    assert cfg.tombstone_retention == 10.0 and isinstance(cfg.tombstone_retention, float)
    for bad in (
        {"write_concern": "ALWAYS"},
        {"gc_interval": -1},
        {"max_drift_ms": 1.5},
        {"map_acl": "{nope"},
    ):
        with pytest.raises(ConfigError):
            ServerConfig(**bad)  # type: ignore[arg-type]
    from topgun.server.config import load_config

    env = {
        "TOPGUN_TOMBSTONE_RETENTION": "60",
        "TOPGUN_MAX_DRIFT_MS": "5000",
        "TOPGUN_MAP_ACL": '[{"map": "x"}]',
    }
    cfg = load_config(env=env)
    assert cfg.tombstone_retention == 60.0 and cfg.max_drift_ms == 5000 and cfg.map_acl == [{"map": "x"}]


async def test_or_tag_reused_under_another_key_moves_and_persists_once(storage_url: str) -> None:
    clock = Clock()
    grid = await open_grid(storage_url, clock)
    tag = "dup-tag"
    try:
        grid.apply([Change.or_add("s", "a", ORMapRecord(1, Timestamp(WALL, 0, "n1"), tag))], SERVER_ORIGIN)
        res = grid.apply(
            [Change.or_add("s", "b", ORMapRecord(2, Timestamp(WALL, 1, "n1"), tag))], SERVER_ORIGIN
        )
        assert res.outcomes[0].status is OutcomeStatus.APPLIED
        orm = grid.ormap("s")
        assert orm is not None and orm.get("a") == [] and orm.get("b") == [2] and orm.key_of(tag) == "b"
        root = orm.root_hash
    finally:
        await close_grid(grid)
    for _ in range(2):  # stable across restarts whatever order the rows load in
        grid = await open_grid(storage_url, clock)
        try:
            orm = grid.ormap("s")
            assert orm is not None and orm.get("a") == [] and orm.get("b") == [2] and orm.root_hash == root
        finally:
            await close_grid(grid)


async def test_commit_observer_times_every_commit_and_keeps_the_storage_concurrency(storage_url: str) -> None:
    seen: list[float] = []
    storage = open_storage(storage_url)
    await storage.open()
    grid = Grid(storage, wall_clock=Clock(), commit_observer=seen.append)
    await grid.start()
    try:
        assert grid.committer is not None
        # The timing wrapper must not hide a backend's overlapping transactions.
        assert grid.committer.concurrency == max(1, getattr(storage, "write_concurrency", 1))
        result = grid.apply([Change.put("m", "k", rec(1, WALL))], SERVER_ORIGIN)
        assert result.commit is not None
        await result.commit
        assert seen and all(s >= 0 for s in seen)
    finally:
        await close_grid(grid)


async def test_a_store_that_keeps_no_rows_gets_no_lww_rows_but_the_same_refusals() -> None:
    clock = Clock()
    private = await open_grid("memory://", clock)
    named = await open_grid(f"memory://{uuid.uuid4().hex}", clock)
    try:
        changes = [
            Change.put("m", "k", rec(1, WALL)),
            Change.put("m", "nul\x00", rec(2, WALL)),
            Change.put("m", "k", rec(3, WALL, 1)),
        ]
        results = [g.apply(changes, SERVER_ORIGIN) for g in (private, named)]
        assert [o.code for o in results[0].outcomes] == [o.code for o in results[1].outcomes] == [0, 400, 0]
        assert results[0].changes == results[1].changes
        for g in (private, named):
            lww = g.lww("m")
            assert lww is not None and lww.get("k") == 3
        assert private.committer is not None and named.committer is not None
        # Only the map kind is staged for the private store (its first write), no row per write.
        assert not private.committer.batch.lww and named.committer.batch.lww
    finally:
        await close_grid(private)
        await close_grid(named)
