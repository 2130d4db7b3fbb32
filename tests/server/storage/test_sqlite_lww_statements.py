"""The SQLite backend's LWW upserts: chunked multi-row statements, padded tails, autocommit batches,
and two writes in flight at once applied in call order."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from support.stores import reload
from topgun.core.records import LWWRecord, Timestamp
from topgun.server.persistence import GroupCommitter
from topgun.server.storage import WriteBatch, open_storage

T1 = Timestamp(1_700_000_000_000, 0, "node-a")
T2 = Timestamp(1_700_000_000_500, 3, "node-b")


def record(i: int, ts: Timestamp) -> LWWRecord:
    # Every shape a row can take: a value with and without a TTL, a tombstone with and without.
    value = None if i % 5 == 0 else {"i": i, "b": bytes([i % 256]) * (i % 7)}
    return LWWRecord(value, ts, (i % 3) * 1000 if i % 2 else None)


async def write(url: str, batch: WriteBatch) -> None:
    s = open_storage(url)
    await s.open()
    try:
        await s.write(batch)
    finally:
        await s.close()


@pytest.mark.parametrize("rows", [1, 7, 8, 9, 1000, 2047, 2048, 2049, 4100])
async def test_lww_upserts_land_whatever_the_statement_split(tmp_path: Path, rows: int) -> None:
    url = f"sqlite:///{tmp_path / 'lww.db'}"
    b = WriteBatch()
    for i in range(rows + 3):
        b.lww_put("m", f"k{i}", record(i, T1))
    await write(url, b)  # only LWW upserts: one autocommit statement up to the chunk size
    assert (await reload(url)).maps["m"].lww == {f"k{i}": record(i, T1) for i in range(rows + 3)}

    b = WriteBatch()
    for i in range(rows):
        b.lww_put("m", f"k{i}", record(i + 1, T2))
    for i in range(rows, rows + 3):
        b.lww_delete("m", f"k{i}")  # deletes in the same batch: one transaction
    await write(url, b)
    assert (await reload(url)).maps["m"].lww == {f"k{i}": record(i + 1, T2) for i in range(rows)}


async def test_stored_columns_keep_their_types(tmp_path: Path) -> None:
    # Values are bound as bytearray and missing values and TTLs as '' turned back into NULL by the
    # statement: the file must hold exactly BLOB / NULL / INTEGER, as other readers expect.
    path = tmp_path / "types.db"
    b = WriteBatch()
    b.lww_put("m", "live", LWWRecord("v", T1, 5))
    b.lww_put("m", "tomb", LWWRecord(None, T1))
    b.lww_put("m", "empty", LWWRecord("", T1, 0))
    await write(f"sqlite:///{path}", b)
    db = sqlite3.connect(path)
    try:
        rows = {
            key: rest
            for key, *rest in db.execute(
                "SELECT key, typeof(value), typeof(millis), typeof(counter), typeof(ttl_ms) FROM lww_records"
            )
        }
    finally:
        db.close()
    assert rows == {
        "live": ["blob", "integer", "integer", "integer"],
        "tomb": ["null", "integer", "integer", "null"],
        "empty": ["blob", "integer", "integer", "integer"],
    }


@pytest.mark.parametrize("rows", [1, 9, 700, 2049])
async def test_statements_store_exactly_the_batch_rows(tmp_path: Path, rows: int) -> None:
    # Statements are filled up to a power-of-two size with rows they skip (their map is the
    # integer 0): none of those may land, while a map named "0" (text) must.
    path = tmp_path / "pad.db"
    b = WriteBatch()
    for i in range(rows):
        b.lww_put("0" if i % 2 else "m", f"k{i}", record(i, T1))
    await write(f"sqlite:///{path}", b)
    db = sqlite3.connect(path)
    try:
        stored = db.execute("SELECT map, key, typeof(map) FROM lww_records").fetchall()
    finally:
        db.close()
    assert sorted(stored) == sorted(("0" if i % 2 else "m", f"k{i}", "text") for i in range(rows))


async def test_values_and_ttls_like_the_null_marker_are_stored_as_given(tmp_path: Path) -> None:
    # A missing value or TTL is bound as the float 0.5 and stored as NULL; a value that is 0.5
    # (stored as MsgPack bytes) and TTLs around it must not be taken for it.
    url = f"sqlite:///{tmp_path / 'marker.db'}"
    records = {
        "half": LWWRecord(0.5, T1, 0),
        "zero": LWWRecord(0, T1, 1),
        "empty": LWWRecord(b"", T1, -1),
        "none": LWWRecord(None, T1, None),
    }
    b = WriteBatch()
    for key, rec in records.items():
        b.lww_put("m", key, rec)
    await write(url, b)
    assert (await reload(url)).maps["m"].lww == records


async def test_writes_in_flight_together_apply_in_call_order(tmp_path: Path) -> None:
    # The storage offers the group committer two transactions at once: its one worker thread
    # must still apply them in call order, so the last write of a row wins.
    url = f"sqlite:///{tmp_path / 'order.db'}"
    s = open_storage(url)
    await s.open()
    try:
        assert GroupCommitter(s).concurrency == 2
        batches = []
        for n in range(6):
            b = WriteBatch()
            for i in range(300):
                b.lww_put("m", f"k{i}", LWWRecord(n, Timestamp(1_700_000_000_000 + n, 0, "node-a")))
            batches.append(b)
        await asyncio.gather(*(s.write(b) for b in batches))
    finally:
        await s.close()
    stored = (await reload(url)).maps["m"].lww
    assert {k: r.value for k, r in stored.items()} == {f"k{i}": 5 for i in range(300)}
