"""Client storage backends: the same contract on memory and on a real SQLite file."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from topgun.client.storage import MapKind, MemoryStorage, SQLiteStorage, StoredOp, transaction
from topgun.client.storage.base import OpKind
from topgun.core.records import LWWRecord, ORMapRecord, Timestamp
from topgun.errors import ConfigError

TS = Timestamp(1_700_000_000_000, 3, "node-a")


@pytest.fixture(params=["memory", "sqlite"])
def storage(request: pytest.FixtureRequest, tmp_path: Path):
    st = MemoryStorage() if request.param == "memory" else SQLiteStorage(tmp_path / "c.db")
    st.open()
    yield st
    st.close()


def test_meta_and_maps(storage) -> None:
    assert storage.get_meta("node_id") is None
    storage.set_meta("node_id", "abc")
    storage.set_meta("node_id", "def")
    assert storage.get_meta("node_id") == "def"
    storage.add_map("todos", MapKind.LWW)
    storage.add_map("tags", MapKind.OR)
    storage.add_map("todos", MapKind.LWW)
    assert storage.list_maps() == [("tags", MapKind.OR), ("todos", MapKind.LWW)]


def test_lww_records_roundtrip_values_and_tombstones(storage) -> None:
    recs = {
        "a": LWWRecord({"text": "milk", "n": [1, 2.5, None, True]}, TS, None),
        "b": LWWRecord(None, Timestamp(5, 0, "n"), None),
        "c": LWWRecord(b"\x00\xff", Timestamp(6, 1, "n"), 5000),
        "d": LWWRecord(0, Timestamp(7, 0, "n")),
    }
    storage.put_lww_many("m", recs.items())
    storage.put_lww("m", "e", LWWRecord("x", TS))
    got = dict(storage.load_lww("m"))
    assert got == {**recs, "e": LWWRecord("x", TS)}
    assert got["b"].value is None and got["d"].value == 0
    storage.delete_lww_many("m", ["a", "b"])
    assert sorted(k for k, _ in storage.load_lww("m")) == ["c", "d", "e"]
    assert storage.load_lww("other") == []


def test_write_lww_commits_record_and_op(storage) -> None:
    r1 = LWWRecord({"v": 1}, TS)
    storage.write_lww("m", "k", r1, 1)
    r2 = LWWRecord(None, Timestamp(TS.millis + 1, 0, "node-a"))
    storage.write_lww("m", "j", r2, 2)
    ops = storage.load_ops()
    assert [(o.op_id, o.map_name, o.kind, o.key, o.value, o.timestamp) for o in ops] == [
        (1, "m", OpKind.LWW, "k", {"v": 1}, TS),
        (2, "m", OpKind.LWW, "j", None, r2.timestamp),
    ]
    assert dict(storage.load_lww("m")) == {"k": r1, "j": r2}
    assert storage.max_op_id() == 2


def test_op_log_delete_and_ids_never_reused(storage) -> None:
    storage.append_ops(
        [
            StoredOp(1, "t", OpKind.OR_ADD, "k", "v", TS, None, str(TS)),
            StoredOp(2, "t", OpKind.OR_REMOVE, "k", None, TS, None, "1:0:x"),
            StoredOp(3, "t", OpKind.OR_ADD, "k", [1], TS, 100, "1:1:x"),
        ]
    )
    assert [o.op_id for o in storage.load_ops()] == [1, 2, 3]
    assert storage.load_ops()[2] == StoredOp(3, "t", OpKind.OR_ADD, "k", [1], TS, 100, "1:1:x")
    storage.delete_ops_upto(2)
    assert [o.op_id for o in storage.load_ops()] == [3]
    storage.delete_ops([3])
    assert storage.load_ops() == []
    assert storage.max_op_id() == 3


def test_or_records_and_tombstones(storage) -> None:
    r1 = ORMapRecord("a", Timestamp(1, 0, "x"), "1:0:x")
    r2 = ORMapRecord({"z": 1}, Timestamp(1, 1, "x"), "1:1:x", 500)
    storage.replace_or_key("tags", "k", [r1, r2])
    recs, tombs = storage.load_or("tags")
    assert sorted(recs, key=lambda p: p[1].tag) == [("k", r1), ("k", r2)] and tombs == []
    storage.add_or_tombstones("tags", [("1:0:x", "k")])
    recs, tombs = storage.load_or("tags")
    assert recs == [("k", r2)] and tombs == [("1:0:x", "k")]
    storage.replace_or_key("tags", "k", [])
    assert storage.load_or("tags")[0] == []
    storage.delete_or_tombstones("tags", ["1:0:x"])
    assert storage.load_or("tags") == ([], [])


def test_clear_map_keeps_other_maps(storage) -> None:
    storage.put_lww("a", "k", LWWRecord(1, TS))
    storage.put_lww("b", "k", LWWRecord(2, TS))
    storage.replace_or_key("a", "k", [ORMapRecord(1, TS, str(TS))])
    storage.clear_map("a")
    assert storage.load_lww("a") == [] and storage.load_or("a") == ([], [])
    assert storage.load_lww("b") == [("k", LWWRecord(2, TS))]


def test_nested_transactions_commit_once(tmp_path: Path) -> None:
    st = SQLiteStorage(tmp_path / "n.db")
    st.open()
    other = SQLiteStorage(tmp_path / "n.db")
    other.open()
    with transaction(st):
        st.write_lww("m", "a", LWWRecord(1, TS), 1)
        with transaction(st):
            st.write_lww("m", "b", LWWRecord(2, TS), 2)
        assert st.in_transaction
        # Not visible to another connection before the outermost commit.
        assert other.load_lww("m") == []
    assert not st.in_transaction
    assert sorted(k for k, _ in other.load_lww("m")) == ["a", "b"]
    assert [o.op_id for o in other.load_ops()] == [1, 2]
    st.close()
    other.close()


def test_rollback_discards_buffered_writes(tmp_path: Path) -> None:
    st = SQLiteStorage(tmp_path / "r.db")
    st.open()
    with pytest.raises(RuntimeError):
        with transaction(st):
            st.write_lww("m", "a", LWWRecord(1, TS), 1)
            st.put_lww("m", "b", LWWRecord(1, TS))
            raise RuntimeError("boom")
    assert st.load_lww("m") == [] and st.load_ops() == []
    st.close()


def test_sqlite_survives_reopen_and_rejects_bad_sync(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        SQLiteStorage(tmp_path / "x.db", synchronous="OFF")
    st = SQLiteStorage(tmp_path / "x.db", synchronous="full")
    st.open()
    assert st.conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert st.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    st.write_lww("m", "k", LWWRecord("v", TS), 7)
    st.delete_ops_upto(7)
    st.close()
    st2 = SQLiteStorage(tmp_path / "x.db")
    st2.open()
    assert st2.load_lww("m") == [("k", LWWRecord("v", TS))]
    assert st2.max_op_id() == 7  # AUTOINCREMENT remembers ids of deleted entries
    st2.close()


def test_write_survives_kill_9(tmp_path: Path) -> None:
    """A write that returned is durable even if the process dies right after (no close)."""
    db = tmp_path / "k.db"
    code = textwrap.dedent(
        f"""
        import os, signal, sys
        from topgun.client.storage import SQLiteStorage
        from topgun.core.records import LWWRecord, Timestamp
        st = SQLiteStorage({str(db)!r})
        st.open()
        for i in range(1, 101):
            st.write_lww("m", f"k{{i}}", LWWRecord(i, Timestamp(i, 0, "n")), i)
        sys.stdout.write("written\\n"); sys.stdout.flush()
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={**os.environ})
    assert proc.returncode == -9 and "written" in proc.stdout
    st = SQLiteStorage(db)
    st.open()
    assert len(st.load_lww("m")) == 100
    assert [o.op_id for o in st.load_ops()] == list(range(1, 101))
    st.close()


def test_orphaned_lww_op_is_dropped_on_load(tmp_path: Path) -> None:
    st = SQLiteStorage(tmp_path / "o.db")
    st.open()
    st.write_lww("m", "k", LWWRecord(None, TS), 1)
    st.delete_lww_many("m", ["k"])  # tombstone GC removed the record the op pointed at
    assert st.load_ops() == []
    assert st.max_op_id() == 1
    st.close()


def _segment_count(st: SQLiteStorage) -> int:
    return int(st.conn.execute("SELECT COUNT(*) FROM lww_segments").fetchone()[0])


def test_bulk_transaction_is_stored_as_a_segment_and_compacted_on_open(tmp_path: Path) -> None:
    from topgun.client.storage.sqlite import SEGMENT_MIN

    db = tmp_path / "seg.db"
    st = SQLiteStorage(db)
    st.open()
    n = SEGMENT_MIN * 3
    with transaction(st):
        for i in range(1, n + 1):
            st.write_lww("m", f"k{i % 500}", LWWRecord({"i": i}, Timestamp(1000 + i, 0, "n")), i)
        st.write_lww("small", "x", LWWRecord(1, Timestamp(5, 0, "n")), n + 1)
    assert _segment_count(st) == 1
    # Reads see the segment: the newest record of every key wins, every op is pending.
    recs: dict[str, LWWRecord] = {}
    for k, r in st.load_lww("m"):
        if k not in recs or r.timestamp > recs[k].timestamp:
            recs[k] = r
    assert len(recs) == 500 and recs["k1"].value == {"i": 501}
    ops = st.load_ops()
    assert [o.op_id for o in ops] == list(range(1, n + 2))
    assert ops[0] == StoredOp(1, "m", OpKind.LWW, "k1", {"i": 1}, Timestamp(1001, 0, "n"), None, None)
    # A partial ack inside the segment: the acknowledged prefix is gone, also after a reopen.
    st.delete_ops_upto(100)
    assert next(o.op_id for o in st.load_ops()) == 101
    # A newer single write to a key of the segment must survive compaction.
    st.write_lww("m", "k2", LWWRecord("newer", Timestamp(10**12, 0, "n")), n + 2)
    st.close()
    st2 = SQLiteStorage(db)
    st2.open()  # compacts
    assert _segment_count(st2) == 0
    rows = dict(st2.load_lww("m"))
    assert len(rows) == 500 and rows["k2"].value == "newer" and rows["k1"].value == {"i": 501}
    ops2 = st2.load_ops()
    assert [o.op_id for o in ops2] == list(range(101, n + 3))
    assert st2.max_op_id() == n + 2
    st2.delete_ops_upto(n + 2)
    assert st2.load_ops() == []
    st2.close()


def test_deleting_rows_folds_segments_first(tmp_path: Path) -> None:
    from topgun.client.storage.sqlite import SEGMENT_MIN

    st = SQLiteStorage(tmp_path / "segdel.db")
    st.open()
    with transaction(st):
        for i in range(SEGMENT_MIN):
            st.write_lww("m", f"k{i}", LWWRecord(None if i == 0 else i, Timestamp(10 + i, 0, "n")), i + 1)
    assert _segment_count(st) == 1
    st.delete_lww_many("m", ["k0"])  # tombstone GC must not leave the tombstone inside a segment
    assert _segment_count(st) == 0
    assert "k0" not in dict(st.load_lww("m")) and len(st.load_lww("m")) == SEGMENT_MIN - 1
    st.clear_map("m")
    assert st.load_lww("m") == []
    st.close()


def test_large_put_lww_many_is_a_segment_with_newer_wins(tmp_path: Path) -> None:
    from topgun.client.storage.sqlite import SEGMENT_MIN

    db = tmp_path / "segput.db"
    st = SQLiteStorage(db)
    st.open()
    st.put_lww("m", "k0", LWWRecord("newest", Timestamp(10**12, 0, "n")))
    items = [(f"k{i}", LWWRecord(i, Timestamp(100 + i, 0, "s"))) for i in range(SEGMENT_MIN + 10)]
    st.put_lww_many("m", items)
    assert _segment_count(st) == 1
    assert st.load_ops() == []  # sync records have no op-log entries
    st.close()
    st2 = SQLiteStorage(db)
    st2.open()
    rows = dict(st2.load_lww("m"))
    assert _segment_count(st2) == 0 and len(rows) == SEGMENT_MIN + 10
    assert rows["k0"].value == "newest" and rows["k5"] == LWWRecord(5, Timestamp(105, 0, "s"))
    st2.close()
