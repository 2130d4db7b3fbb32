"""Every storage backend against the same contract: write() then load() after a restart."""

from __future__ import annotations

import asyncio
import os
import sqlite3
from pathlib import Path
from typing import Any

import msgpack
import pytest

from support.stores import reload
from topgun.core.records import LWWRecord, ORMapRecord, Timestamp
from topgun.errors import StorageError
from topgun.server.storage import (
    SCHEMA_VERSION,
    MapKind,
    Storage,
    StorageKind,
    WriteBatch,
    open_storage,
)

pytestmark = pytest.mark.timeout(120)

PG_URL = os.environ.get("TOPGUN_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")

T1 = Timestamp(1_700_000_000_000, 0, "node-a")
T2 = Timestamp(1_700_000_000_000, 1, "node-a")
T3 = Timestamp(1_700_000_000_500, 0, "node-b")


async def opened(url: str) -> Storage:
    s = open_storage(url)
    await s.open()
    return s


async def write_once(url: str, fill: Any) -> None:
    s = await opened(url)
    try:
        b = WriteBatch()
        fill(b)
        await s.write(b)
    finally:
        await s.close()


# Values of every MsgPack shape, including extension types, which must survive byte for byte.
TRICKY_VALUES: list[Any] = [
    0,
    -1,
    2**63 - 1,
    -(2**63),
    2**64 - 1,
    1.5,
    1e300,
    float("inf"),
    True,
    False,
    "",
    "héllo ✓ \U0001f600",
    b"\x00\x01binary\xff",
    b"",
    [],
    {},
    [1, "two", [3.0, None], {"four": b"4"}],
    {"nested": {"deeper": {"list": [1, 2, {"x": None}]}}, "n": None},
    msgpack.Timestamp(1_700_000_000, 0),  # 32-bit form
    msgpack.Timestamp(1_700_000_000, 123_456_789),  # 64-bit form
    msgpack.Timestamp(2**40, 5),  # 96-bit form
    msgpack.Timestamp(-5, 1),  # before the epoch: 96-bit form
    msgpack.ExtType(5, b"\x01\x02\x03"),
    msgpack.ExtType(127, b""),
    {"when": msgpack.Timestamp(1_700_000_000, 1_000_000), "ext": msgpack.ExtType(1, b"x" * 300)},
]


async def test_kind_and_ping(storage_url: str, storage_kind: str) -> None:
    s = open_storage(storage_url)
    assert s.kind is StorageKind(storage_kind)
    assert isinstance(s, Storage)
    assert await s.ping() is False  # not open yet
    await s.open()
    assert await s.ping() is True
    await s.close()
    assert await s.ping() is False


async def test_empty_store_loads_empty(storage_url: str) -> None:
    snap = await reload(storage_url)
    assert snap.maps == {} and snap.counters == {} and snap.fencing == {} and snap.meta == {}


async def test_round_trip_of_every_kind_of_change(storage_url: str) -> None:
    def fill(b: WriteBatch) -> None:
        b.set_map_kind("users", MapKind.LWW)
        b.lww_put("users", "alice", LWWRecord({"name": "Alice", "age": 30}, T1))
        b.lww_put("users", "bob", LWWRecord(None, T2))  # tombstone
        b.lww_put("users", "carol", LWWRecord("temp", T1, 1000))  # expires (long ago)
        b.set_prune_horizon("users", Timestamp(1_600_000_000_000, 0, "server-1"))
        b.set_map_kind("tags", MapKind.OR)
        b.or_put("tags", "k1", ORMapRecord("red", T1, str(T1)))
        b.or_put("tags", "k1", ORMapRecord("blue", T2, str(T2), 60_000))
        b.or_put("tags", "k2", ORMapRecord({"v": 1}, T3, "custom-tag"))
        b.or_tombstone_put("tags", "1699999999999:0:node-z", "k1", 1_700_000_000_100)
        b.set_counter("likes", {"p": {"node-a": 5, "node-b": 2}, "n": {"node-a": 1}})
        b.set_fencing("lock-1", 7)
        b.set_meta("node_id", "server-1")

    await write_once(storage_url, fill)
    snap = await reload(storage_url)

    assert set(snap.maps) == {"users", "tags"}
    users = snap.maps["users"]
    assert users.kind is MapKind.LWW
    assert users.lww == {
        "alice": LWWRecord({"name": "Alice", "age": 30}, T1, None),
        "bob": LWWRecord(None, T2, None),
        "carol": LWWRecord("temp", T1, 1000),
    }
    assert users.lww["bob"].is_tombstone
    assert users.lww["carol"].is_expired(1_800_000_000_000)
    assert users.prune_horizon == Timestamp(1_600_000_000_000, 0, "server-1")
    assert isinstance(users.prune_horizon, Timestamp)
    assert users.or_records == {} and users.or_tombstones == {}

    tags = snap.maps["tags"]
    assert tags.kind is MapKind.OR
    assert sorted(tags.or_records) == ["k1", "k2"]
    assert sorted(tags.or_records["k1"], key=lambda r: r.tag) == sorted(
        [ORMapRecord("red", T1, str(T1), None), ORMapRecord("blue", T2, str(T2), 60_000)],
        key=lambda r: r.tag,
    )
    assert tags.or_records["k2"] == [ORMapRecord({"v": 1}, T3, "custom-tag", None)]
    assert tags.or_tombstones == {"1699999999999:0:node-z": ("k1", 1_700_000_000_100)}
    assert tags.prune_horizon is None
    assert tags.lww == {}

    assert snap.counters == {"likes": {"p": {"node-a": 5, "node-b": 2}, "n": {"node-a": 1}}}
    assert snap.fencing == {"lock-1": 7}
    assert snap.meta == {"node_id": "server-1"}
    # Timestamp fields come back as exact ints and a str, never floats.
    rec = users.lww["alice"]
    assert type(rec.timestamp.millis) is int and type(rec.timestamp.counter) is int
    assert type(rec.timestamp) is Timestamp and type(rec) is LWWRecord


async def test_kind_inferred_when_not_recorded(storage_url: str) -> None:
    def fill(b: WriteBatch) -> None:
        b.lww_put("implicit-lww", "k", LWWRecord(1, T1))
        b.or_tombstone_put("implicit-or", "t", "k", 5)

    await write_once(storage_url, fill)
    snap = await reload(storage_url)
    assert snap.maps["implicit-lww"].kind is MapKind.LWW
    assert snap.maps["implicit-or"].kind is MapKind.OR


@pytest.mark.parametrize("value", TRICKY_VALUES, ids=[f"v{i}" for i in range(len(TRICKY_VALUES))])
async def test_values_survive_byte_exact(storage_url: str, value: Any) -> None:
    def fill(b: WriteBatch) -> None:
        b.lww_put("m", "k", LWWRecord(value, T1))
        b.or_put("o", "k", ORMapRecord(value, T1, "tag"))

    await write_once(storage_url, fill)
    snap = await reload(storage_url)
    for got in (snap.maps["m"].lww["k"].value, snap.maps["o"].or_records["k"][0].value):
        assert msgpack.packb(got, use_bin_type=True) == msgpack.packb(value, use_bin_type=True)
        assert type(got) is type(value)
        assert got == value


async def test_timestamp_extension_bytes_unchanged(storage_url: str) -> None:
    # What the TS client sends for a JavaScript Date (ext -1, 64-bit form), decoded as the codec does.
    wire = b"\xd7\xff" + ((123_000_000 << 34) | 1_700_000_000).to_bytes(8, "big")
    value = msgpack.unpackb(wire, timestamp=0)
    assert isinstance(value, msgpack.Timestamp)
    await write_once(storage_url, lambda b: b.lww_put("m", "d", LWWRecord({"at": value}, T1)))
    snap = await reload(storage_url)
    got = snap.maps["m"].lww["d"].value["at"]
    assert isinstance(got, msgpack.Timestamp)
    assert msgpack.packb(got) == wire


async def test_coalescing_last_write_wins_within_a_batch() -> None:
    b = WriteBatch()
    for i in range(1000):
        b.lww_put("m", "hot", LWWRecord(i, Timestamp(1_700_000_000_000 + i, 0, "n")))
    assert len(b) == 1 and b.recorded == 1000
    b.or_put("o", "k", ORMapRecord("a", T1, "t1"))
    b.or_delete("o", "k", "t1")
    b.or_tombstone_put("o", "t1", "k", 10)
    b.or_tombstone_put("o", "t1", "k", 20)
    b.set_counter("c", {"p": {"x": 1}, "n": {}})
    b.set_counter("c", {"p": {"x": 2}, "n": {}})
    b.set_fencing("l", 1)
    b.set_fencing("l", 2)
    assert len(b) == 5
    assert b.lww[("m", "hot")] is not None and b.lww[("m", "hot")][1] == 1_700_000_000_999
    assert b.or_records == {("o", "k", "t1"): None}
    assert b.or_tombstones == {("o", "t1"): ("k", 20)}


async def test_coalesced_batch_is_stored_as_its_last_state(storage_url: str) -> None:
    def fill(b: WriteBatch) -> None:
        for i in range(1000):
            b.lww_put("m", "hot", LWWRecord(i, Timestamp(1_700_000_000_000 + i, 0, "n")))
        b.lww_put("m", "gone", LWWRecord("x", T1))
        b.lww_delete("m", "gone")  # put then delete in one batch: no row
        b.lww_delete("m", "back")
        b.lww_put("m", "back", LWWRecord("y", T2))  # delete then put: the put
        b.or_put("o", "k", ORMapRecord("a", T1, "t1"))
        b.or_delete("o", "k", "t1")
        b.or_put("o", "k", ORMapRecord("b", T2, "t2"))
        b.set_fencing("l", 1)
        b.set_fencing("l", 9)
        b.set_meta("node_id", "a")
        b.set_meta("node_id", "b")

    await write_once(storage_url, fill)
    snap = await reload(storage_url)
    assert snap.maps["m"].lww == {
        "hot": LWWRecord(999, Timestamp(1_700_000_000_999, 0, "n")),
        "back": LWWRecord("y", T2),
    }
    assert snap.maps["o"].or_records == {"k": [ORMapRecord("b", T2, "t2")]}
    assert snap.fencing == {"l": 9}
    assert snap.meta == {"node_id": "b"}


async def test_later_batches_overwrite_rows(storage_url: str) -> None:
    s = await opened(storage_url)
    try:
        b = WriteBatch()
        b.lww_put("m", "k", LWWRecord("v1", T1, 5))
        b.or_tombstone_put("o", "t", "k1", 1)
        b.set_counter("c", {"p": {"a": 1}, "n": {}})
        b.set_prune_horizon("m", T1)
        b.set_map_kind("m", MapKind.LWW)
        await s.write(b)
        b = WriteBatch()
        b.lww_put("m", "k", LWWRecord("v2", T2))  # ttl removed by the newer record
        b.or_tombstone_put("o", "t", "k2", 2)
        b.set_counter("c", {"p": {"a": 3}, "n": {"b": 1}})
        b.set_prune_horizon("m", T3)
        await s.write(b)
    finally:
        await s.close()
    snap = await reload(storage_url)
    assert snap.maps["m"].lww == {"k": LWWRecord("v2", T2, None)}
    assert snap.maps["m"].prune_horizon == T3
    assert snap.maps["m"].kind is MapKind.LWW
    assert snap.maps["o"].or_tombstones == {"t": ("k2", 2)}
    assert snap.counters == {"c": {"p": {"a": 3}, "n": {"b": 1}}}


async def test_tombstones_and_prune_deletes(storage_url: str) -> None:
    def fill(b: WriteBatch) -> None:
        for i in range(10):
            b.lww_put("m", f"dead{i}", LWWRecord(None, Timestamp(1_000 + i, 0, "n")))
        b.lww_put("m", "live", LWWRecord("v", Timestamp(5, 0, "n")))
        b.lww_put("m", "expired", LWWRecord("v", Timestamp(5, 0, "n"), 1))
        for i in range(5):
            b.or_tombstone_put("o", f"{i}:0:n", "k", 100 + i)
        b.or_put("o", "k", ORMapRecord("x", T1, "keep"))
        b.or_put("o", "k", ORMapRecord("y", T1, "drop"))

    await write_once(storage_url, fill)
    snap = await reload(storage_url)
    assert len(snap.maps["m"].lww) == 12
    assert sum(r.is_tombstone for r in snap.maps["m"].lww.values()) == 10

    horizon = Timestamp(1_004, 5, "server")

    def prune(b: WriteBatch) -> None:
        # What a GC pass records: the tombstones older than H, and P(M) = H.
        for key, rec in snap.maps["m"].lww.items():
            if rec.is_tombstone and rec.timestamp < horizon:
                b.lww_delete("m", key)
        for tag, (_key, removed_at) in snap.maps["o"].or_tombstones.items():
            if removed_at < 103:
                b.or_tombstone_delete("o", tag)
        b.or_delete("o", "k", "drop")
        b.set_prune_horizon("m", horizon)
        b.lww_delete("m", "never-existed")  # deleting a missing row is harmless

    await write_once(storage_url, prune)
    snap = await reload(storage_url)
    lww = snap.maps["m"].lww
    assert sorted(lww) == sorted(["dead5", "dead6", "dead7", "dead8", "dead9", "live", "expired"])
    assert lww["expired"].ttl_ms == 1  # expired records are never pruned
    assert snap.maps["m"].prune_horizon == horizon
    assert snap.maps["o"].or_tombstones == {"3:0:n": ("k", 103), "4:0:n": ("k", 104)}
    assert snap.maps["o"].or_records == {"k": [ORMapRecord("x", T1, "keep")]}


async def test_empty_batch_is_a_no_op(storage_url: str) -> None:
    s = await opened(storage_url)
    try:
        await s.write(WriteBatch())
        assert (await s.load()).maps == {}
    finally:
        await s.close()


async def test_large_batch(storage_url: str) -> None:
    n = 5000

    # Big enough for the PostgreSQL COPY path (copy_threshold defaults to 200 rows).
    def fill(b: WriteBatch) -> None:
        for i in range(n):
            value = None if i % 10 == 3 else {"i": i, "pad": "x" * (i % 50)}
            b.lww_put(
                "big", f"key-{i:05d}", LWWRecord(value, Timestamp(i, i, "n"), 500 if i % 7 == 0 else None)
            )
            b.or_put("bigor", f"k{i % 100}", ORMapRecord(i, Timestamp(i, 0, "n"), f"{i}:0:n"))

    await write_once(storage_url, fill)
    snap = await reload(storage_url)
    lww = snap.maps["big"].lww
    assert len(lww) == n
    assert lww["key-01234"] == LWWRecord({"i": 1234, "pad": "x" * 34}, Timestamp(1234, 1234, "n"))
    assert lww["key-01233"] == LWWRecord(None, Timestamp(1233, 1233, "n"))
    assert lww["key-01232"] == LWWRecord({"i": 1232, "pad": "x" * 32}, Timestamp(1232, 1232, "n"), 500)
    assert sum(r.is_tombstone for r in lww.values()) == n // 10
    # A second big batch over the same rows takes the update path.
    await write_once(storage_url, lambda b: [b.lww_put("big", k, LWWRecord("v2", T3)) for k in list(lww)])
    assert all(r == LWWRecord("v2", T3) for r in (await reload(storage_url)).maps["big"].lww.values())
    assert sum(len(v) for v in snap.maps["bigor"].or_records.values()) == n
    assert {r.value for r in snap.maps["bigor"].or_records["k7"]} == set(range(7, n, 100))


async def test_concurrent_writes_apply_in_call_order(storage_url: str) -> None:
    s = await opened(storage_url)
    try:
        batches = []
        for i in range(20):
            b = WriteBatch()
            b.lww_put("m", "shared", LWWRecord(i, Timestamp(1_000 + i, 0, "n")))
            for j in range(50):
                b.lww_put("m", f"w{i}-{j}", LWWRecord([i, j], T1))
            b.set_fencing("lock", i)
            batches.append(b)
        await asyncio.gather(*(s.write(b) for b in batches))
    finally:
        await s.close()
    snap = await reload(storage_url)
    lww = snap.maps["m"].lww
    assert len(lww) == 1 + 20 * 50
    assert lww["shared"].value == 19
    assert snap.fencing == {"lock": 19}
    assert all(lww[f"w{i}-{j}"].value == [i, j] for i in range(20) for j in range(50))


async def test_closed_storage_refuses_io(storage_url: str) -> None:
    s = await opened(storage_url)
    await s.close()
    b = WriteBatch()
    b.lww_put("m", "k", LWWRecord(1, T1))
    with pytest.raises(StorageError):
        await s.write(b)
    with pytest.raises(StorageError):
        await s.load()
    await s.close()  # closing twice is harmless
    never_opened = open_storage(storage_url)
    with pytest.raises(StorageError):
        await never_opened.write(b)


async def test_reopen_is_idempotent_and_keeps_data(storage_url: str) -> None:
    await write_once(storage_url, lambda b: b.lww_put("m", "k", LWWRecord("v", T1)))
    for _ in range(3):
        s = await opened(storage_url)
        await s.open()  # a second open() on an open storage does nothing
        assert getattr(s, "schema_version", SCHEMA_VERSION) == SCHEMA_VERSION
        assert (await s.load()).maps["m"].lww == {"k": LWWRecord("v", T1)}
        await s.close()


def test_unencodable_value_fails_when_recorded() -> None:
    b = WriteBatch()
    with pytest.raises(StorageError):
        b.lww_put("m", "k", LWWRecord(object(), T1))
    with pytest.raises(StorageError):
        b.or_put("m", "k", ORMapRecord({1j}, T1, "t"))
    assert not b and len(b) == 0


async def test_value_mutated_after_recording_is_not_stored(storage_url: str) -> None:
    value = {"n": 1}
    s = await opened(storage_url)
    try:
        b = WriteBatch()
        b.lww_put("m", "k", LWWRecord(value, T1))
        value["n"] = 2
        await s.write(b)
        assert (await s.load()).maps["m"].lww["k"].value == {"n": 1}
    finally:
        await s.close()


# -- schema versioning (SQL backends) ---------------------------------------------------------


async def test_sqlite_schema_version_and_pragmas(tmp_path: Path) -> None:
    path = tmp_path / "v.db"
    url = f"sqlite:///{path}"
    for _ in range(2):
        s = await opened(url)
        await s.close()
    db = sqlite3.connect(path)
    try:
        assert db.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert {"lww_records", "or_records", "or_tombstones", "maps", "prune_horizons"} <= tables
        assert {"counters", "fencing_tokens", "meta", "schema_version"} <= tables
        db.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
        db.commit()
    finally:
        db.close()
    with pytest.raises(StorageError, match="newer"):
        await opened(url)


async def test_sqlite_synchronous_option(tmp_path: Path) -> None:
    from topgun.server.storage.sqlite import SqliteStorage

    for url, level in ((f"sqlite:///{tmp_path}/a.db", 1), (f"sqlite:///{tmp_path}/b.db?synchronous=full", 2)):
        s = open_storage(url)
        assert isinstance(s, SqliteStorage)
        await s.open()
        try:
            got = await s._call(lambda s=s: s._db().execute("PRAGMA synchronous").fetchone()[0])
            assert got == level  # 1 = NORMAL, 2 = FULL
        finally:
            await s.close()


async def test_postgres_schema_version(pg_url: str, pg_schema: str) -> None:
    import asyncpg

    for _ in range(2):
        s = await opened(pg_url)
        assert getattr(s, "schema_version", None) == SCHEMA_VERSION
        await s.close()
    conn = await asyncpg.connect(PG_URL)
    try:
        rows = await conn.fetch(f'SELECT version FROM "{pg_schema}".schema_version')
        assert [r[0] for r in rows] == [SCHEMA_VERSION]
        await conn.execute(f'UPDATE "{pg_schema}".schema_version SET version = $1', SCHEMA_VERSION + 1)
    finally:
        await conn.close()
    with pytest.raises(StorageError, match="newer"):
        await opened(pg_url)


async def test_postgres_concurrent_opens_migrate_once(pg_url: str) -> None:
    stores = [open_storage(pg_url) for _ in range(4)]
    await asyncio.gather(*(s.open() for s in stores))
    try:
        assert all(getattr(s, "schema_version", None) == SCHEMA_VERSION for s in stores)
    finally:
        await asyncio.gather(*(s.close() for s in stores))


def test_rows_no_backend_can_store_are_refused_when_recorded() -> None:
    b = WriteBatch()
    ok = Timestamp(1, 0, "n")
    cases = [
        lambda: b.lww_put("m", "k\x00", LWWRecord(1, ok)),
        lambda: b.lww_put("m\x00", "k", LWWRecord(1, ok)),
        lambda: b.lww_put("m", "k", LWWRecord(1, Timestamp(1, 0, "n\x00"))),
        lambda: b.lww_put("m", "k", LWWRecord(1, Timestamp(2**63, 0, "n"))),
        lambda: b.lww_put("m", "k", LWWRecord(1, ok, 2**63)),
        lambda: b.or_put("m", "k", ORMapRecord(1, ok, "t\x00")),
        lambda: b.or_put("m", "k", ORMapRecord(1, Timestamp(0, 2**64, "n"), "t")),
        lambda: b.or_tombstone_put("m", "t", "k", 2**64),
        lambda: b.or_tombstone_put("m", "t\x00", "k", 1),
        lambda: b.set_map_kind("m\x00", MapKind.LWW),
        lambda: b.set_prune_horizon("m", Timestamp(-1, 0, "n")),
        lambda: b.set_counter("c\x00", {"p": {}, "n": {}}),
        lambda: b.set_fencing("l", 2**63),
        lambda: b.set_meta("k", "v\x00"),
    ]
    for i, case in enumerate(cases):
        with pytest.raises(StorageError):
            case()
        assert not b, f"case {i} left a row behind"


async def test_64_bit_boundaries_round_trip(storage_url: str) -> None:
    big = Timestamp(2**63 - 1, 2**32 - 1, "n")

    def fill(b: WriteBatch) -> None:
        b.lww_put("m", "max", LWWRecord("v", big, 2**63 - 1))
        b.or_put("o", "k", ORMapRecord("v", big, str(big), 1))
        b.or_tombstone_put("o", "old", "k", 2**63 - 1)
        b.set_fencing("l", 2**63 - 1)
        b.set_prune_horizon("m", big)

    await write_once(storage_url, fill)
    snap = await reload(storage_url)
    assert snap.maps["m"].lww["max"] == LWWRecord("v", big, 2**63 - 1)
    assert snap.maps["o"].or_records["k"] == [ORMapRecord("v", big, str(big), 1)]
    assert snap.maps["o"].or_tombstones["old"] == ("k", 2**63 - 1)
    assert snap.fencing["l"] == 2**63 - 1
    assert snap.maps["m"].prune_horizon == big


async def test_postgres_write_recovers_after_connection_loss(pg_url: str) -> None:
    import asyncpg

    from topgun.server.persistence import GroupCommitter

    app = "tg_kill_" + pg_url.rsplit("=", 1)[-1][-12:]
    url = f"{pg_url}&application_name={app}"
    s = await opened(url)
    committer = GroupCommitter(s, retry_min_ms=10, retry_max_ms=50)
    try:
        await committer.submit(lambda b: b.lww_put("m", "before", LWWRecord(1, T1)))
        admin = await asyncpg.connect(PG_URL)
        try:
            killed = await admin.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = $1",
                app,
            )
        finally:
            await admin.close()
        assert killed >= 1  # the writer's connection is gone under its feet
        fut = committer.submit(lambda b: b.lww_put("m", "after", LWWRecord(2, T2)))
        with pytest.raises(StorageError):
            await asyncio.wait_for(asyncio.shield(fut), 20)  # the attempt on the dead connection
        await asyncio.wait_for(committer.drain(), 20)
        assert committer.backlog_rows == 0
        assert committer.stats.failures >= 1  # the dead connection was hit, then replaced
    finally:
        await committer.close()
        await s.close()
    assert (await reload(pg_url)).maps["m"].lww == {"before": LWWRecord(1, T1), "after": LWWRecord(2, T2)}


async def test_postgres_least_privilege_role_in_its_own_schema(pg_schema: str) -> None:
    """A role that owns its schema but may not create schemas can run the server."""
    import urllib.parse

    import asyncpg

    role = "tg_role_" + pg_schema[-12:]
    admin = await asyncpg.connect(PG_URL)
    try:
        await admin.execute(f'CREATE ROLE "{role}" LOGIN')
        await admin.execute(f'CREATE SCHEMA "{pg_schema}" AUTHORIZATION "{role}"')
        can_create = await admin.fetchval(
            "SELECT has_database_privilege($1, current_database(), 'CREATE')", role
        )
        assert can_create is False
        parts = urllib.parse.urlsplit(PG_URL)
        url = urllib.parse.urlunsplit(
            parts._replace(
                netloc=f"{role}@{parts.hostname}:{parts.port or 5432}", query=f"schema={pg_schema}"
            )
        )
        big = WriteBatch()
        for i in range(2500):  # large enough for the COPY path and its TEMP staging table
            big.lww_put("m", f"k{i}", LWWRecord(i, T1))
        s = await opened(url)
        try:
            await s.write(big)
            assert len((await s.load()).maps["m"].lww) == 2500
        finally:
            await s.close()
    finally:
        await admin.execute(f'DROP SCHEMA IF EXISTS "{pg_schema}" CASCADE')
        await admin.execute(f'DROP ROLE IF EXISTS "{role}"')
        await admin.close()


@pytest.mark.parametrize("rows", [127, 128, 129, 257])
async def test_sqlite_multi_row_upsert_chunk_boundaries(tmp_path: Path, rows: int) -> None:
    # The SQLite backend upserts LWW rows 128 to a statement; every row must land, on insert and
    # on update, whatever the remainder, next to deletes of the same batch.
    url = f"sqlite:///{tmp_path / 'chunks.db'}"
    await write_once(url, lambda b: [b.lww_put("m", f"k{i}", LWWRecord(i, T1)) for i in range(rows + 5)])

    def second(b: WriteBatch) -> None:
        for i in range(rows):
            b.lww_put("m", f"k{i}", LWWRecord(None if i % 3 == 0 else f"v{i}", T3, 9 if i % 2 else None))
        for i in range(rows, rows + 5):
            b.lww_delete("m", f"k{i}")

    await write_once(url, second)
    lww = (await reload(url)).maps["m"].lww
    assert lww == {
        f"k{i}": LWWRecord(None if i % 3 == 0 else f"v{i}", T3, 9 if i % 2 else None) for i in range(rows)
    }
