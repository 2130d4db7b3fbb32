"""SQLite local storage for the client SDK.

WAL journal; ``synchronous=NORMAL`` by default (a commit survives a crash of the
process; ``FULL`` additionally survives power loss). Statements are plain
strings so the ``sqlite3`` statement cache prepares each one once; the
connection runs in autocommit mode and transactions are explicit
``BEGIN``/``COMMIT`` so that one local write is exactly one commit and a
:meth:`SQLiteStorage.begin` block is exactly one commit.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
from collections.abc import Iterable, Iterator
from enum import Enum
from typing import Any

from topgun.client._wire import pack, unpack
from topgun.client.storage.base import MapKind, OpKind, StoredOp
from topgun.core.records import LWWRecord, ORMapRecord, Timestamp
from topgun.errors import ConfigError, StorageError

__all__ = ["SQLiteStorage", "Synchronous"]

log = logging.getLogger("topgun.client.storage")


class Synchronous(str, Enum):
    """SQLite ``PRAGMA synchronous`` levels this storage accepts."""

    NORMAL = "NORMAL"
    FULL = "FULL"


_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS maps (name TEXT PRIMARY KEY, kind TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS lww (
    map TEXT NOT NULL, key TEXT NOT NULL, value BLOB,
    millis INTEGER NOT NULL, counter INTEGER NOT NULL, node TEXT NOT NULL, ttl INTEGER,
    PRIMARY KEY (map, key)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS or_records (
    map TEXT NOT NULL, tag TEXT NOT NULL, key TEXT NOT NULL, value BLOB,
    millis INTEGER NOT NULL, counter INTEGER NOT NULL, node TEXT NOT NULL, ttl INTEGER,
    PRIMARY KEY (map, tag)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS or_records_key ON or_records (map, key);
CREATE TABLE IF NOT EXISTS or_tombstones (
    map TEXT NOT NULL, tag TEXT NOT NULL, key TEXT NOT NULL,
    PRIMARY KEY (map, tag)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS lww_segments (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, map TEXT NOT NULL, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS oplog (
    id INTEGER PRIMARY KEY AUTOINCREMENT, map TEXT NOT NULL, kind INTEGER NOT NULL,
    key TEXT NOT NULL, value BLOB, millis INTEGER, counter INTEGER, node TEXT, ttl INTEGER, tag TEXT);
"""

_PUT_LWW = "INSERT OR REPLACE INTO lww (map, key, value, millis, counter, node, ttl) VALUES (?,?,?,?,?,?,?)"
_PUT_OP = (
    "INSERT INTO oplog (id, map, kind, key, value, millis, counter, node, ttl, tag) "
    "VALUES (?,?,?,?,?,?,?,?,?,?)"
)
# A local LWW write's op-log row only names the key: its record is the row of ``lww`` written in
# the same transaction. Should that row later be replaced (a newer local or remote write), the op
# is re-sent with the newer record, which is equivalent under LWW (the older record would lose).
_PUT_LWW_OP = "INSERT INTO oplog (id, map, kind, key) VALUES (?,?,0,?)"
# Newer-wins upsert, used when a segment is folded into ``lww``.
_MERGE_LWW = (
    "INSERT INTO lww (map, key, value, millis, counter, node, ttl) VALUES (?,?,?,?,?,?,?) "
    "ON CONFLICT (map, key) DO UPDATE SET value = excluded.value, millis = excluded.millis, "
    "counter = excluded.counter, node = excluded.node, ttl = excluded.ttl "
    "WHERE (excluded.millis, excluded.counter, excluded.node) > (lww.millis, lww.counter, lww.node)"
)
#: Op-log kind of a row standing for every LWW op of one segment (never part of ``OpKind``).
_KIND_SEGMENT = 3
#: A transaction with at least this many local LWW writes to one map stores them as one segment.
SEGMENT_MIN = 256
_PUT_OR = (
    "INSERT OR REPLACE INTO or_records (map, tag, key, value, millis, counter, node, ttl) "
    "VALUES (?,?,?,?,?,?,?,?)"
)


def _lww_row(name: str, key: str, r: LWWRecord) -> tuple[Any, ...]:
    ts = r.timestamp
    return (name, key, None if r.value is None else pack(r.value), ts[0], ts[1], ts[2], r.ttl_ms)


class SQLiteStorage:
    """Client storage in one SQLite file (``":memory:"`` works too, for tests).

    Its methods implement :class:`~topgun.client.storage.base.ClientStorage`; see the
    docstrings there.
    """

    def __init__(self, path: str | os.PathLike[str], synchronous: str = "NORMAL") -> None:
        try:
            self.synchronous = Synchronous(str(synchronous).upper())
        except ValueError:
            raise ConfigError(f"synchronous must be NORMAL or FULL, not {synchronous!r}") from None
        self.path = os.fspath(path)
        self._conn: sqlite3.Connection | None = None
        self._depth = 0
        # Local LWW writes made inside a transaction, per map: [op_id, key, value, millis, counter,
        # node, ttl]. At the end they become rows, or, for a bulk load, one *segment*: a single
        # MsgPack blob in ``lww_segments`` plus one op-log row (kind 3, id = its last op id)
        # standing for all its ops. Segments are folded into ``lww`` and per-op rows by
        # :meth:`compact` (on open, and before anything deletes LWW rows of their map).
        self._seg_buf: dict[str, list[list[Any]]] = {}
        # Every op id <= this has been acknowledged (segments keep their acked entries).
        self._acked_upto = 0

    # -- lifecycle ---------------------------------------------------------------------------------

    def open(self) -> None:
        if self._conn is not None:
            return
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={self.synchronous.value}")
            conn.execute("PRAGMA foreign_keys=OFF")
            # One commit per write makes many tiny WAL appends; checkpointing (with its fsyncs)
            # every 10,000 pages instead of every 1,000 keeps single writes fast.
            conn.execute("PRAGMA wal_autocheckpoint=10000")
            conn.execute("PRAGMA journal_size_limit=67108864")
            conn.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise StorageError(f"cannot open client store {self.path!r}: {exc}") from exc
        self._conn = conn
        v = self.get_meta("acked_upto")
        self._acked_upto = int(v) if v is not None and v.isdecimal() else 0
        self.compact()

    def close(self) -> None:
        conn = self._conn
        if conn is None:
            return
        if self._depth:
            self._depth = 1
            self.commit()
        with contextlib.suppress(sqlite3.Error):
            conn.execute("PRAGMA optimize")
        conn.close()
        self._conn = None

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StorageError("client store is not open")
        return self._conn

    # -- transactions ------------------------------------------------------------------------------

    def begin(self) -> None:
        if self._depth == 0:
            self.conn.execute("BEGIN")
        elif self._seg_buf:
            self._flush()
        self._depth += 1

    def _flush(self) -> None:
        """Write the buffered local LWW writes (inside the open transaction)."""
        bufs, self._seg_buf = self._seg_buf, {}
        conn = self.conn
        for name, entries in bufs.items():
            if len(entries) >= SEGMENT_MIN:
                cur = conn.execute(
                    "INSERT INTO lww_segments (map, data) VALUES (?, ?)", (name, pack(entries))
                )
                conn.execute(
                    "INSERT INTO oplog (id, map, kind, key, millis) VALUES (?,?,?,?,?)",
                    (entries[-1][0], name, _KIND_SEGMENT, "", cur.lastrowid),
                )
            else:
                conn.executemany(
                    _PUT_LWW,
                    [(name, k, None if v is None else pack(v), m, c, n, t)
                     for _, k, v, m, c, n, t in entries],
                )
                conn.executemany(_PUT_LWW_OP, [(e[0], name, e[1]) for e in entries])

    def compact(self, name: str | None = None) -> None:
        """Fold segments (of ``name``, or all) into ``lww`` rows and per-op op-log rows."""
        conn = self.conn
        self._flush_if_open()
        if name is None:
            segs = conn.execute("SELECT seq, map, data FROM lww_segments ORDER BY seq").fetchall()
        else:
            segs = conn.execute(
                "SELECT seq, map, data FROM lww_segments WHERE map = ? ORDER BY seq", (name,)
            ).fetchall()
        if not segs:
            return
        self.begin()
        try:
            for seq, mp, data in segs:
                entries = unpack(data)
                conn.executemany(
                    _MERGE_LWW,
                    [(mp, k, None if v is None else pack(v), m, c, n, t) for _, k, v, m, c, n, t in entries],
                )
                conn.execute("DELETE FROM oplog WHERE kind = ? AND millis = ?", (_KIND_SEGMENT, seq))
                conn.executemany(
                    _PUT_LWW_OP, [(e[0], mp, e[1]) for e in entries if e[0] > self._acked_upto]
                )
                conn.execute("DELETE FROM lww_segments WHERE seq = ?", (seq,))
        except BaseException:
            self.rollback()
            raise
        self.commit()

    def commit(self) -> None:
        if self._depth == 0:
            return
        self._depth -= 1
        if self._depth == 0:
            try:
                self._flush()
                self.conn.execute("COMMIT")
            except sqlite3.Error as exc:
                raise StorageError(f"commit failed: {exc}") from exc

    def rollback(self) -> None:
        if self._depth == 0:
            return
        self._depth = 0
        self._seg_buf = {}
        self.conn.execute("ROLLBACK")

    @property
    def in_transaction(self) -> bool:
        return self._depth > 0

    @contextlib.contextmanager
    def _writing(self) -> Iterator[sqlite3.Connection]:
        """The connection for one write: inside the caller's open transaction (staged segments
        flushed first, so they land before it), else in a transaction of its own."""
        conn = self.conn
        if self._depth:
            if self._seg_buf:
                self._flush()
            yield conn
            return
        conn.execute("BEGIN")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def _run(self, sql: str, params: tuple[Any, ...] = ()) -> None:
        with self._writing() as conn:
            conn.execute(sql, params)

    def _run_many(self, sql: str, rows: Iterable[tuple[Any, ...]]) -> None:
        with self._writing() as conn:
            conn.executemany(sql, rows)

    # -- meta --------------------------------------------------------------------------------------

    def get_meta(self, key: str) -> str | None:
        row = self.conn.execute("SELECT v FROM meta WHERE k = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        self._run("INSERT OR REPLACE INTO meta (k, v) VALUES (?, ?)", (key, value))

    # -- maps --------------------------------------------------------------------------------------

    def list_maps(self) -> list[tuple[str, MapKind]]:
        rows = self.conn.execute("SELECT name, kind FROM maps ORDER BY name").fetchall()
        return [(name, MapKind(kind)) for name, kind in rows]

    def add_map(self, name: str, kind: MapKind) -> None:
        self._run("INSERT OR IGNORE INTO maps (name, kind) VALUES (?, ?)", (name, MapKind(kind).value))

    def clear_map(self, name: str) -> None:
        self.compact(name)
        self.begin()
        try:
            conn = self.conn
            conn.execute("DELETE FROM lww WHERE map = ?", (name,))
            conn.execute("DELETE FROM or_records WHERE map = ?", (name,))
            conn.execute("DELETE FROM or_tombstones WHERE map = ?", (name,))
        except BaseException:
            self.rollback()
            raise
        self.commit()

    # -- LWW ---------------------------------------------------------------------------------------

    def load_lww(self, name: str) -> list[tuple[str, LWWRecord]]:
        """Rows and segment entries of ``name``; a key may appear more than once (merge by timestamp)."""
        self._flush_if_open()
        conn = self.conn
        rows = conn.execute("SELECT key, value, millis, counter, node, ttl FROM lww WHERE map = ?", (name,))
        out = [
            (k, LWWRecord(None if v is None else unpack(v), Timestamp(m, c, n), ttl))
            for k, v, m, c, n, ttl in rows
        ]
        for (data,) in conn.execute("SELECT data FROM lww_segments WHERE map = ? ORDER BY seq", (name,)):
            out.extend((k, LWWRecord(v, Timestamp(m, c, n), t)) for _, k, v, m, c, n, t in unpack(data))
        return out

    def put_lww(self, name: str, key: str, record: LWWRecord) -> None:
        self._run(_PUT_LWW, _lww_row(name, key, record))

    def put_lww_many(self, name: str, items: Iterable[tuple[str, LWWRecord]]) -> None:
        """Store records; a large set becomes one segment (newer-wins against existing rows)."""
        items = list(items)
        if len(items) < SEGMENT_MIN:
            self._run_many(_PUT_LWW, [_lww_row(name, k, r) for k, r in items])
            return
        # Op id 0: these records (a sync's leaves) have no op-log entry.
        entries = [[0, k, r[0], r[1][0], r[1][1], r[1][2], r[2]] for k, r in items]
        self._run("INSERT INTO lww_segments (map, data) VALUES (?, ?)", (name, pack(entries)))

    def delete_lww_many(self, name: str, keys: Iterable[str]) -> None:
        self.compact(name)
        self._run_many("DELETE FROM lww WHERE map = ? AND key = ?", [(name, k) for k in keys])

    def write_lww(self, name: str, key: str, record: LWWRecord, op_id: int) -> None:
        ts = record.timestamp
        value = record.value
        m, c, n = ts
        ttl = record.ttl_ms
        if self._depth:
            buf = self._seg_buf.get(name)
            if buf is None:
                buf = self._seg_buf[name] = []
            buf.append([op_id, key, value, m, c, n, ttl])
            return
        blob = None if value is None else pack(value)
        conn = self.conn
        conn.execute("BEGIN")
        try:
            conn.execute(_PUT_LWW, (name, key, blob, m, c, n, ttl))
            conn.execute(_PUT_LWW_OP, (op_id, name, key))
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    # -- OR ----------------------------------------------------------------------------------------

    def load_or(self, name: str) -> tuple[list[tuple[str, ORMapRecord]], list[tuple[str, str]]]:
        conn = self.conn
        records = [
            (k, ORMapRecord(None if v is None else unpack(v), Timestamp(m, c, n), tag, ttl))
            for tag, k, v, m, c, n, ttl in conn.execute(
                "SELECT tag, key, value, millis, counter, node, ttl FROM or_records WHERE map = ?",
                (name,),
            )
        ]
        tombstones = [
            (str(t), str(k))
            for t, k in conn.execute("SELECT tag, key FROM or_tombstones WHERE map = ?", (name,))
        ]
        return records, tombstones

    def replace_or_key(self, name: str, key: str, records: Iterable[ORMapRecord]) -> None:
        rows = [
            (name, r.tag, key, None if r.value is None else pack(r.value),
             r.timestamp[0], r.timestamp[1], r.timestamp[2], r.ttl_ms)
            for r in records
        ]
        self.begin()
        try:
            self.conn.execute("DELETE FROM or_records WHERE map = ? AND key = ?", (name, key))
            if rows:
                self.conn.executemany(_PUT_OR, rows)
        except BaseException:
            self.rollback()
            raise
        self.commit()

    def add_or_tombstones(self, name: str, pairs: Iterable[tuple[str, str]]) -> None:
        pairs = list(pairs)
        if not pairs:
            return
        self.begin()
        try:
            conn = self.conn
            conn.executemany(
                "INSERT OR REPLACE INTO or_tombstones (map, tag, key) VALUES (?,?,?)",
                [(name, t, k) for t, k in pairs],
            )
            conn.executemany(
                "DELETE FROM or_records WHERE map = ? AND tag = ?", [(name, t) for t, _ in pairs]
            )
        except BaseException:
            self.rollback()
            raise
        self.commit()

    def delete_or_tombstones(self, name: str, tags: Iterable[str]) -> None:
        self._run_many("DELETE FROM or_tombstones WHERE map = ? AND tag = ?", [(name, t) for t in tags])

    # -- op log ------------------------------------------------------------------------------------

    def append_ops(self, ops: Iterable[StoredOp]) -> None:
        self._run_many(
            _PUT_OP,
            [
                (op.op_id, op.map_name, int(op.kind), op.key,
                 None if op.value is None else pack(op.value),
                 op.timestamp[0], op.timestamp[1], op.timestamp[2], op.ttl_ms, op.tag)
                for op in ops
            ],
        )

    def load_ops(self) -> list[StoredOp]:
        self._flush_if_open()
        out: list[StoredOp] = []
        orphans: list[int] = []
        rows = self.conn.execute(
            "SELECT o.id, o.map, o.kind, o.key, o.value, o.millis, o.counter, o.node, o.ttl, o.tag, "
            "l.value, l.millis, l.counter, l.node, l.ttl "
            "FROM oplog o LEFT JOIN lww l ON o.kind = 0 AND l.map = o.map AND l.key = o.key "
            "ORDER BY o.id"
        )
        for i, mp, kind, k, v, m, c, n, ttl, tag, lv, lm, lc, ln, lttl in rows.fetchall():
            if kind == _KIND_SEGMENT:
                seg = self.conn.execute("SELECT data FROM lww_segments WHERE seq = ?", (m,)).fetchone()
                if seg is None:
                    orphans.append(int(i))
                    continue
                out.extend(
                    StoredOp(op_id, str(mp), OpKind.LWW, sk, sv, Timestamp(sm, sc, sn), st, None)
                    for op_id, sk, sv, sm, sc, sn, st in unpack(seg[0])
                    if op_id > self._acked_upto
                )
                continue
            if kind == OpKind.LWW:
                if lm is None:
                    # The record is gone (tombstone GC): nothing left to send.
                    orphans.append(int(i))
                    continue
                v, m, c, n, ttl = lv, lm, lc, ln, lttl
            out.append(StoredOp(int(i), str(mp), OpKind(kind), k, None if v is None else unpack(v),
                                Timestamp(m, c, n), ttl, tag))
        if orphans:
            self.delete_ops(orphans)
        out.sort(key=lambda op: op.op_id)
        return out

    def _flush_if_open(self) -> None:
        if self._depth and self._seg_buf:
            self._flush()

    def delete_ops_upto(self, op_id: int) -> None:
        self.begin()
        try:
            self.conn.execute("DELETE FROM oplog WHERE id <= ?", (op_id,))
            if op_id > self._acked_upto:
                self._acked_upto = op_id
                self.conn.execute(
                    "INSERT OR REPLACE INTO meta (k, v) VALUES ('acked_upto', ?)", (str(op_id),)
                )
        except BaseException:
            self.rollback()
            raise
        self.commit()

    def delete_ops(self, op_ids: Iterable[int]) -> None:
        self._run_many("DELETE FROM oplog WHERE id = ?", [(i,) for i in op_ids])

    def max_op_id(self) -> int:
        self._flush_if_open()
        conn = self.conn
        best = 0
        row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'oplog'").fetchone()
        if row is not None and row[0] is not None:
            best = int(row[0])
        row = conn.execute("SELECT MAX(id) FROM oplog").fetchone()
        if row is not None and row[0] is not None:
            best = max(best, int(row[0]))
        meta = self.get_meta("next_op_id")
        if meta is not None and meta.isdecimal():
            best = max(best, int(meta) - 1)
        return best

    def __repr__(self) -> str:
        return f"SQLiteStorage({self.path!r}, synchronous={self.synchronous.value!r})"
