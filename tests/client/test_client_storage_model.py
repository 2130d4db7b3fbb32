"""Model check: SQLiteStorage (rows, segments, compaction, reopen) behaves like MemoryStorage."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from topgun.client.storage import MemoryStorage, SQLiteStorage, transaction
from topgun.client.storage import sqlite as sqlite_mod
from topgun.core.records import LWWRecord, Timestamp

MAPS = ["a", "b"]
KEYS = [f"k{i}" for i in range(6)]

write = st.tuples(st.just("write"), st.sampled_from(MAPS), st.sampled_from(KEYS),
                  st.one_of(st.none(), st.integers(0, 9), st.text(max_size=3)))
action = st.one_of(
    write,
    st.tuples(st.just("batch"), st.lists(write, min_size=1, max_size=8)),
    st.tuples(st.just("put_many"), st.sampled_from(MAPS),
              st.lists(st.sampled_from(KEYS), min_size=1, max_size=6)),
    st.tuples(st.just("ack"), st.integers(0, 3)),
    st.tuples(st.just("delete"), st.sampled_from(MAPS), st.lists(st.sampled_from(KEYS), max_size=3)),
    st.tuples(st.just("clear"), st.sampled_from(MAPS)),
    st.tuples(st.just("reopen"),),
)


def newest(pairs: list[tuple[str, LWWRecord]]) -> dict[str, LWWRecord]:
    out: dict[str, LWWRecord] = {}
    for k, r in pairs:
        if k not in out or r.timestamp > out[k].timestamp:
            out[k] = r
    return out


def run(actions: list[tuple[Any, ...]], db: Path) -> None:
    mem = MemoryStorage()
    mem.open()
    sql = SQLiteStorage(db)
    sql.open()
    clock = [0]
    next_op = [1]

    def ts() -> Timestamp:
        clock[0] += 1
        return Timestamp(1_000 + clock[0], 0, "n")

    def do_write(w: tuple[Any, ...]) -> None:
        _, m, k, v = w
        rec = LWWRecord(v, ts())
        op = next_op[0]
        next_op[0] += 1
        mem.write_lww(m, k, rec, op)
        sql.write_lww(m, k, rec, op)

    for act in actions:
        kind = act[0]
        if kind == "write":
            do_write(act)
        elif kind == "batch":
            with transaction(mem), transaction(sql):
                for w in act[1]:
                    do_write(w)
        elif kind == "put_many":
            items = [(k, LWWRecord(f"r{i}", ts())) for i, k in enumerate(dict.fromkeys(act[2]))]
            mem.put_lww_many(act[1], items)
            sql.put_lww_many(act[1], items)
        elif kind == "ack":
            upto = max(0, next_op[0] - 1 - act[1])
            mem.delete_ops_upto(upto)
            sql.delete_ops_upto(upto)
        elif kind == "delete":
            mem.delete_lww_many(act[1], act[2])
            sql.delete_lww_many(act[1], act[2])
        elif kind == "clear":
            mem.clear_map(act[1])
            sql.clear_map(act[1])
        elif kind == "reopen":
            sql.close()
            sql = SQLiteStorage(db)
            sql.open()
        for m in MAPS:
            assert newest(sql.load_lww(m)) == newest(mem.load_lww(m)), (m, act)
        # LWW op-log entries of the SQLite store point at the key's current row, so only ids and
        # keys are comparable (and ops whose row is gone are dropped there).
        sql_ops = [(o.op_id, o.map_name, o.key) for o in sql.load_ops()]
        gone = [o.op_id for o in mem.load_ops() if o.key not in newest(mem.load_lww(o.map_name))]
        mem.delete_ops(gone)  # the SQLite store forgets them for good when it notices
        mem_ops = [(o.op_id, o.map_name, o.key) for o in mem.load_ops()]
        assert sql_ops == mem_ops, act
        assert sql.max_op_id() == next_op[0] - 1 or next_op[0] == 1
    sql.close()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(actions=st.lists(action, max_size=25))
def test_sqlite_store_matches_the_memory_model(monkeypatch: pytest.MonkeyPatch, actions) -> None:
    monkeypatch.setattr(sqlite_mod, "SEGMENT_MIN", 3)  # small, so batches and puts become segments
    with tempfile.TemporaryDirectory() as d:
        run(actions, Path(d) / "m.db")
