"""SQLite storage on one dedicated thread.

Every SQLite call (open, migrate, load, write, ping, close) runs on a single
worker thread that owns the only connection, so the event loop never blocks on
disk I/O and no two transactions ever interleave: writes are applied in the
order they were submitted.

Durability: the database runs in WAL mode. ``synchronous=NORMAL`` is the
default because in WAL mode a commit appends the transaction to the WAL with a
``write()`` before ``COMMIT`` returns; the data is then in the operating
system's page cache, which survives the death of our process (``kill -9``, an
exception, an OOM kill). What NORMAL skips is the ``fsync`` of the WAL at each
commit (it syncs at checkpoints instead), so a power loss or kernel crash can
lose the last commits. That meets the server's ``PERSISTED`` promise
("survives a crash of the server process") at a fraction of FULL's cost.
``synchronous=full`` (``?synchronous=full`` in the URL) fsyncs the WAL on
every commit and also survives power loss; with group commit the extra fsync is
paid once per transaction, not per op.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import enum
import functools
import logging
import operator
import os
import sqlite3
from collections.abc import Callable
from typing import TypeVar, cast

from topgun.errors import ConfigError, StorageError

from .base import SCHEMA_VERSION, LWWRow, Snapshot, SnapshotBuilder, StorageKind, WriteBatch

__all__ = ["MIGRATIONS", "SqliteStorage", "Synchronous"]

log = logging.getLogger("topgun.storage")

T = TypeVar("T")


class Synchronous(str, enum.Enum):
    """SQLite ``PRAGMA synchronous`` levels we allow."""

    NORMAL = "normal"
    FULL = "full"


#: (version, statements) applied in order inside one transaction each; never edit a released entry.
MIGRATIONS: list[tuple[int, list[str]]] = [
    (
        1,
        [
            "CREATE TABLE maps (name TEXT PRIMARY KEY, kind TEXT NOT NULL)",
            "CREATE TABLE prune_horizons (map TEXT PRIMARY KEY, millis INTEGER NOT NULL,"
            " counter INTEGER NOT NULL, node_id TEXT NOT NULL)",
            "CREATE TABLE lww_records (map TEXT NOT NULL, key TEXT NOT NULL, value BLOB,"
            " millis INTEGER NOT NULL, counter INTEGER NOT NULL, node_id TEXT NOT NULL,"
            " ttl_ms INTEGER, PRIMARY KEY (map, key))",
            "CREATE TABLE or_records (map TEXT NOT NULL, key TEXT NOT NULL, tag TEXT NOT NULL,"
            " value BLOB NOT NULL, millis INTEGER NOT NULL, counter INTEGER NOT NULL,"
            " node_id TEXT NOT NULL, ttl_ms INTEGER, PRIMARY KEY (map, key, tag))",
            "CREATE TABLE or_tombstones (map TEXT NOT NULL, tag TEXT NOT NULL, key TEXT NOT NULL,"
            " removed_at_ms INTEGER NOT NULL, PRIMARY KEY (map, tag))",
            "CREATE TABLE counters (name TEXT PRIMARY KEY, state BLOB NOT NULL)",
            "CREATE TABLE fencing_tokens (name TEXT PRIMARY KEY, token INTEGER NOT NULL)",
            "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        ],
    ),
]
assert MIGRATIONS[-1][0] == SCHEMA_VERSION



def _upsert_lww_sql(rows: int) -> str:
    """The LWW upsert of up to ``rows`` rows in one statement (7 parameters a row, see :func:`_lww_params`).

    Rows whose map is the integer 0 (:data:`_PAD_ROW`) are skipped: stored map names are text.
    """
    return (
        "INSERT INTO lww_records (map, key, value, millis, counter, node_id, ttl_ms)"
        " SELECT column1, column2, nullif(column3, 0.5), column4, column5, column6, nullif(column7, 0.5)"
        " FROM (VALUES " + ", ".join(["(?, ?, ?, ?, ?, ?, ?)"] * rows) + ") WHERE column1 IS NOT 0"
        " ON CONFLICT (map, key) DO UPDATE SET value = excluded.value,"
        " millis = excluded.millis, counter = excluded.counter, node_id = excluded.node_id,"
        " ttl_ms = excluded.ttl_ms"
    )


#: Rows per multi-row LWW upsert when the library allows 999 parameters only (the lowest
#: SQLITE_MAX_VARIABLE_NUMBER any SQLite build has had); builds since 3.32 allow 32,766.
_LWW_CHUNK_MIN = 128
_LWW_CHUNK_MAX = 2048
#: Parameters of a row that fills a statement up to its size; the statement skips it. Integers
#: bind at a fraction of the cost of text, and nothing of the row reaches the table.
_PAD_ROW = (0,) * 7
#: Bound for a missing value or TTL; the statement stores NULL instead (see :func:`_lww_params`).
_NULL = 0.5

_key_map = operator.itemgetter(0)
_key_key = operator.itemgetter(1)
_row_value = operator.itemgetter(0)
_row_millis = operator.itemgetter(1)
_row_counter = operator.itemgetter(2)
_row_node = operator.itemgetter(3)
_row_ttl = operator.itemgetter(4)


def _lww_params(lww: dict[tuple[str, str], LWWRow | None]) -> list[object]:
    """The parameters of the LWW upserts of a batch (its deletes left out), 7 a row in one flat list.

    This runs on the writer thread with the GIL held, which the event loop waits for: the
    columns are gathered with ``map`` over the batch's own tuples, no tuple is built per row.
    Binding ``bytes`` or ``None`` goes through the sqlite3 module's adaptation lookup (~0.3 us
    each, with the GIL held), ``bytearray``, ``str``, ``int`` and ``float`` do not, and a
    ``float`` binds without the copy a ``str`` takes: values go as ``bytearray`` and a missing
    value or TTL as :data:`_NULL`, which the statement turns back into NULL (a stored value is
    a BLOB, a TTL an integer: neither is ever equal to it).
    """
    rows = list(cast("dict[tuple[str, str], LWWRow]", lww).values())
    try:
        values = list(map(_row_value, rows))
    except TypeError:  # a delete (None) among the rows: the rare slower pass
        live = [(mk, row) for mk, row in lww.items() if row is not None]
        keys = [mk for mk, _ in live]
        rows = [row for _, row in live]
        values = list(map(_row_value, rows))
    else:
        keys = list(lww)
    n = len(rows)
    flat: list[object] = [_NULL] * (7 * n)
    flat[0::7] = map(_key_map, keys)
    flat[1::7] = map(_key_key, keys)
    try:
        flat[2::7] = map(bytearray, values)
    except TypeError:  # tombstones (no value) among the rows
        flat[2::7] = [_NULL if v is None else bytearray(v) for v in values]
    flat[3::7] = map(_row_millis, rows)
    flat[4::7] = map(_row_counter, rows)
    flat[5::7] = map(_row_node, rows)
    ttls = list(map(_row_ttl, rows))
    if ttls.count(None) != n:  # otherwise every TTL is the _NULL already there
        flat[6::7] = [_NULL if t is None else t for t in ttls]
    return flat


def _upsert_lww(db: sqlite3.Connection, params: list[object], chunk: int) -> None:
    # Multi-row statements instead of executemany: executemany releases the GIL around every
    # row's sqlite3_step and must win it back for the next row, while under load the event loop
    # thread holds it most of the time (each win can wait a whole switch interval). Big chunks
    # keep those hand-overs to one or two per transaction. The batch's rows have distinct
    # (map, key), so one statement never upserts the same row twice.
    rows = len(params) // 7
    full = rows - rows % chunk
    width = 7 * chunk
    if full:
        sql = _upsert_sql(chunk)
        if full == rows == chunk:
            db.execute(sql, params)
            return
        for start in range(0, 7 * full, width):
            db.execute(sql, params[start : start + width])
    if full == rows:
        return
    # The rest goes in a statement of the next power-of-two size, filled up with rows it skips:
    # a prepared 1,000-row statement takes ~2 MB, so the statements kept by sqlite3's cache must
    # be few.
    rest = params[7 * full :] if full else params
    size = _LWW_PAD_MIN
    while size < rows - full:
        size *= 2
    rest.extend(_PAD_ROW * (size - (rows - full)))
    db.execute(_upsert_sql(size), rest)


_upsert_sql = functools.lru_cache(maxsize=None)(_upsert_lww_sql)
#: Smallest padded LWW statement (rows).
_LWW_PAD_MIN = 8


_DELETE_LWW = "DELETE FROM lww_records WHERE map = ? AND key = ?"
_UPSERT_OR = (
    "INSERT INTO or_records (map, key, tag, value, millis, counter, node_id, ttl_ms)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (map, key, tag) DO UPDATE SET value = excluded.value,"
    " millis = excluded.millis, counter = excluded.counter, node_id = excluded.node_id,"
    " ttl_ms = excluded.ttl_ms"
)
_DELETE_OR = "DELETE FROM or_records WHERE map = ? AND key = ? AND tag = ?"
_UPSERT_TOMB = (
    "INSERT INTO or_tombstones (map, tag, key, removed_at_ms) VALUES (?, ?, ?, ?)"
    " ON CONFLICT (map, tag) DO UPDATE SET key = excluded.key, removed_at_ms = excluded.removed_at_ms"
)
_DELETE_TOMB = "DELETE FROM or_tombstones WHERE map = ? AND tag = ?"
_UPSERT_KIND = (
    "INSERT INTO maps (name, kind) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET kind = excluded.kind"
)
_UPSERT_HORIZON = (
    "INSERT INTO prune_horizons (map, millis, counter, node_id) VALUES (?, ?, ?, ?)"
    " ON CONFLICT (map) DO UPDATE SET millis = excluded.millis, counter = excluded.counter,"
    " node_id = excluded.node_id"
)
_UPSERT_COUNTER = (
    "INSERT INTO counters (name, state) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET state = excluded.state"
)
_UPSERT_FENCING = (
    "INSERT INTO fencing_tokens (name, token) VALUES (?, ?)"
    " ON CONFLICT (name) DO UPDATE SET token = excluded.token"
)
_UPSERT_META = (
    "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value"
)


class SqliteStorage:
    """Storage in one SQLite file (``sqlite:///path.db``).

    ``synchronous`` is ``"normal"`` (default: survives process crashes) or
    ``"full"`` (also survives power loss); see the module docstring.
    ``busy_timeout_ms`` is how long to wait for another process's lock.
    """

    #: ``write`` calls the group committer may have in flight. The one worker thread runs them
    #: one after the other in call order (the executor's queue is FIFO), which is the contract
    #: of a storage that declares this. The second call waits in the queue and starts the moment
    #: the first committed, instead of after the event loop noticed that commit and handed the
    #: next batch over (under load the loop is busy with the acknowledged clients' next batches
    #: then); the committer also lets a second batch start only once it is as big as the one in
    #: flight, which keeps the two alternating transactions of similar size.
    write_concurrency = 2

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        synchronous: Synchronous | str = Synchronous.NORMAL,
        busy_timeout_ms: int = 5000,
    ) -> None:
        self.path = os.fspath(path)
        try:
            self.synchronous = Synchronous(str(getattr(synchronous, "value", synchronous)).lower())
        except ValueError:
            raise ConfigError(
                f"sqlite synchronous must be one of {[s.value for s in Synchronous]}, got {synchronous!r}"
            ) from None
        self.busy_timeout_ms = int(busy_timeout_ms)
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None
        self.schema_version: int | None = None
        self._lww_chunk = _LWW_CHUNK_MIN

    @property
    def kind(self) -> StorageKind:
        return StorageKind.SQLITE

    # -- thread plumbing ---------------------------------------------------------------------
    async def _call(self, fn: Callable[[], T]) -> T:
        ex = self._executor
        if ex is None:
            raise StorageError(f"sqlite storage {self.path!r} is not open")
        try:
            return await asyncio.get_running_loop().run_in_executor(ex, fn)
        except sqlite3.Error as exc:
            raise StorageError(f"sqlite {self.path!r}: {exc}") from exc
        except RuntimeError as exc:
            # The executor was shut down by a concurrent close().
            raise StorageError(f"sqlite storage {self.path!r} is closed") from exc

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StorageError(f"sqlite storage {self.path!r} is not open")
        return self._conn

    # -- lifecycle ---------------------------------------------------------------------------
    async def open(self) -> None:
        if self._executor is not None:
            return
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="topgun-sqlite"
        )
        try:
            self.schema_version = await self._call(self._open_sync)
        except BaseException:
            ex, self._executor = self._executor, None
            ex.shutdown(wait=False)
            raise

    def _open_sync(self) -> int:
        parent = os.path.dirname(os.path.abspath(self.path))
        try:
            os.makedirs(parent, exist_ok=True)
        except OSError as exc:
            raise StorageError(
                f"cannot create the directory of sqlite database {self.path!r}: {exc}"
            ) from exc
        conn = sqlite3.connect(self.path, isolation_level=None)
        try:
            conn.execute(f"PRAGMA busy_timeout = {self.busy_timeout_ms}")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StorageError(f"sqlite {self.path!r}: cannot switch to WAL mode (got {mode!r})")
            conn.execute(f"PRAGMA synchronous = {self.synchronous.value.upper()}")
            version = self._migrate(conn)
            variables = conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
            self._lww_chunk = max(_LWW_CHUNK_MIN, min(_LWW_CHUNK_MAX, variables // 7))
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        return version

    @staticmethod
    def _migrate(conn: sqlite3.Connection) -> int:
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = conn.execute("SELECT max(version) FROM schema_version").fetchone()
            current = int(row[0]) if row and row[0] is not None else 0
            if current > SCHEMA_VERSION:
                raise StorageError(
                    f"database schema version {current} is newer than this topgun supports"
                    f" ({SCHEMA_VERSION}); upgrade topgun"
                )
            for version, statements in MIGRATIONS:
                if version <= current:
                    continue
                for stmt in statements:
                    conn.execute(stmt)
                conn.execute("DELETE FROM schema_version")
                conn.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))
                log.info("sqlite schema migrated to version %d", version)
                current = version
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return current

    async def close(self) -> None:
        ex = self._executor
        if ex is None:
            return
        try:
            await self._call(self._close_sync)
        finally:
            self._executor = None
            ex.shutdown(wait=True)

    def _close_sync(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    async def ping(self) -> bool:
        try:
            return await self._call(lambda: self._db().execute("SELECT 1").fetchone()[0] == 1)
        except Exception:
            return False

    # -- data --------------------------------------------------------------------------------
    async def load(self) -> Snapshot:
        return await self._call(self._load_sync)

    def _load_sync(self) -> Snapshot:
        db = self._db()
        b = SnapshotBuilder()
        for name, kind in db.execute("SELECT name, kind FROM maps"):
            b.kind(name, kind)
        for row in db.execute("SELECT map, millis, counter, node_id FROM prune_horizons"):
            b.horizon(*row)
        for row in db.execute("SELECT map, key, value, millis, counter, node_id, ttl_ms FROM lww_records"):
            b.lww(*row)
        for row in db.execute(
            "SELECT map, key, tag, value, millis, counter, node_id, ttl_ms FROM or_records"
        ):
            b.or_record(*row)
        for row in db.execute("SELECT map, tag, key, removed_at_ms FROM or_tombstones"):
            b.or_tombstone(*row)
        for name, state in db.execute("SELECT name, state FROM counters"):
            b.counter(name, state)
        for name, token in db.execute("SELECT name, token FROM fencing_tokens"):
            b.fencing(name, token)
        for key, value in db.execute("SELECT key, value FROM meta"):
            b.meta(key, value)
        return b.build()

    async def write(self, batch: WriteBatch) -> None:
        if not batch:
            if self._executor is None:
                raise StorageError(f"sqlite storage {self.path!r} is not open")
            return
        await self._call(lambda: self._write_sync(batch))

    def _write_sync(self, batch: WriteBatch) -> None:
        db = self._db()
        lww = batch.lww
        # This thread holds the GIL while it builds and binds parameters, which the event loop
        # waits for: no tuple per row, no adaptation (see _lww_params).
        params = _lww_params(lww) if lww else []
        rows = len(params) // 7
        if rows and rows == len(batch) and rows <= self._lww_chunk:
            # Only LWW upserts, one statement: a transaction of its own (autocommit), without the
            # BEGIN and COMMIT that would each hand the GIL over and wait to win it back.
            _upsert_lww(db, params, self._lww_chunk)
            return
        db.execute("BEGIN IMMEDIATE")
        try:
            if params:
                _upsert_lww(db, params, self._lww_chunk)
            if rows != len(lww):
                db.executemany(_DELETE_LWW, [mk for mk, row in lww.items() if row is None])
            if batch.or_records:
                oups, odels = batch.or_split()
                if oups:
                    db.executemany(_UPSERT_OR, [(m, k, t, *row) for m, k, t, row in oups])
                if odels:
                    db.executemany(_DELETE_OR, odels)
            if batch.or_tombstones:
                tups, tdels = batch.tombstone_split()
                if tups:
                    db.executemany(_UPSERT_TOMB, tups)
                if tdels:
                    db.executemany(_DELETE_TOMB, tdels)
            if batch.map_kinds:
                db.executemany(_UPSERT_KIND, [(m, k.value) for m, k in batch.map_kinds.items()])
            if batch.horizons:
                db.executemany(
                    _UPSERT_HORIZON, [(m, t.millis, t.counter, t.node_id) for m, t in batch.horizons.items()]
                )
            if batch.counters:
                db.executemany(_UPSERT_COUNTER, list(batch.counters.items()))
            if batch.fencing:
                db.executemany(_UPSERT_FENCING, list(batch.fencing.items()))
            if batch.meta:
                db.executemany(_UPSERT_META, list(batch.meta.items()))
            db.execute("COMMIT")
        except BaseException:
            try:
                db.execute("ROLLBACK")
            except sqlite3.Error:
                log.exception("sqlite rollback failed")
            raise

    def __repr__(self) -> str:
        return f"SqliteStorage({self.path!r}, synchronous={self.synchronous.value})"
