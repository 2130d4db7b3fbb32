"""The local-storage contract of the client SDK.

A client keeps four kinds of durable state: LWW records per map, OR records and
OR tombstones per map, the op log (writes not yet acknowledged by the server)
and a few meta values (node id, ``lastSyncTimestamp``, device token, …).

Every method is synchronous on purpose: ``set()`` on a map handle is
synchronous by contract and must have committed the record *and* its op-log
entry before it returns. Mutating methods may be called outside a transaction
(each then commits on its own) or between :meth:`ClientStorage.begin` and
:meth:`ClientStorage.commit`; transactions nest, only the outermost commit
writes.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from enum import Enum, IntEnum
from typing import Any, NamedTuple, Protocol, runtime_checkable

from topgun.core.records import LWWRecord, ORMapRecord, Timestamp

__all__ = [
    "ClientStorage",
    "MapKind",
    "MetaKey",
    "OpKind",
    "StoredOp",
    "transaction",
]


class MapKind(str, Enum):
    """Which CRDT a map name holds."""

    LWW = "lww"
    OR = "or"


class MetaKey(str, Enum):
    """Keys of the meta store."""

    NODE_ID = "node_id"
    LAST_SYNC_TIMESTAMP = "last_sync_timestamp"
    NEXT_OP_ID = "next_op_id"
    DEVICE_TOKEN = "device_token"
    CLAIMED_EPOCH = "claimed_epoch"


class OpKind(IntEnum):
    """Kind of an op-log entry (the storage's compact form of ``opType``)."""

    LWW = 0  # PUT, or REMOVE when ``value`` is None
    OR_ADD = 1
    OR_REMOVE = 2


class StoredOp(NamedTuple):
    """One op-log entry.

    ``timestamp`` is the record's timestamp (LWW, OR_ADD) or the op's own clock
    reading (OR_REMOVE); ``tag`` is the OR tag (OR_ADD, OR_REMOVE).
    """

    op_id: int
    map_name: str
    kind: OpKind
    key: str
    value: Any
    timestamp: Timestamp
    ttl_ms: int | None = None
    tag: str | None = None


@runtime_checkable
class ClientStorage(Protocol):
    """Durable local state of one client (see the module docstring for the rules)."""

    def open(self) -> None:
        """Create or open the store (idempotent)."""

    def close(self) -> None:
        """Flush and release the store; an open transaction is committed first."""

    # -- transactions ------------------------------------------------------------------------------

    def begin(self) -> None:
        """Start a (possibly nested) transaction."""

    def commit(self) -> None:
        """End the innermost transaction; the outermost one makes everything durable."""

    def rollback(self) -> None:
        """Abandon the whole open transaction (every nesting level)."""

    @property
    def in_transaction(self) -> bool:
        """True between an outermost :meth:`begin` and its :meth:`commit`/:meth:`rollback`."""

    # -- meta --------------------------------------------------------------------------------------

    def get_meta(self, key: str) -> str | None:
        """The meta value of ``key`` or None."""

    def set_meta(self, key: str, value: str) -> None:
        """Store a meta value."""

    # -- maps --------------------------------------------------------------------------------------

    def list_maps(self) -> list[tuple[str, MapKind]]:
        """Every map this store knows, with its kind."""

    def add_map(self, name: str, kind: MapKind) -> None:
        """Remember that ``name`` exists with ``kind`` (idempotent)."""

    def clear_map(self, name: str) -> None:
        """Delete every record and tombstone of ``name`` (the map stays registered)."""

    # -- LWW ---------------------------------------------------------------------------------------

    def load_lww(self, name: str) -> list[tuple[str, LWWRecord]]:
        """Every stored ``(key, record)`` of an LWW map, tombstones included."""

    def put_lww(self, name: str, key: str, record: LWWRecord) -> None:
        """Insert or replace one record."""

    def put_lww_many(self, name: str, items: Iterable[tuple[str, LWWRecord]]) -> None:
        """Insert or replace many records."""

    def delete_lww_many(self, name: str, keys: Iterable[str]) -> None:
        """Delete records (used by tombstone GC)."""

    def write_lww(self, name: str, key: str, record: LWWRecord, op_id: int) -> None:
        """A local LWW write: the record and its op-log entry ``op_id`` in one transaction.

        Inside a transaction an implementation may buffer these rows until the
        next statement or the commit (bulk loads through ``client.batch()``).
        """

    # -- OR ----------------------------------------------------------------------------------------

    def load_or(self, name: str) -> tuple[list[tuple[str, ORMapRecord]], list[tuple[str, str]]]:
        """``(records as (key, record), tombstones as (tag, key))`` of an OR map."""

    def replace_or_key(self, name: str, key: str, records: Iterable[ORMapRecord]) -> None:
        """Make the stored records of ``key`` exactly ``records``."""

    def add_or_tombstones(self, name: str, pairs: Iterable[tuple[str, str]]) -> None:
        """Remember tombstoned tags as ``(tag, key)`` pairs (and delete records carrying them)."""

    def delete_or_tombstones(self, name: str, tags: Iterable[str]) -> None:
        """Forget tombstoned tags (tombstone GC)."""

    # -- op log ------------------------------------------------------------------------------------

    def append_ops(self, ops: Iterable[StoredOp]) -> None:
        """Append op-log entries (ids strictly increasing)."""

    def load_ops(self) -> list[StoredOp]:
        """Every op-log entry, ascending id."""

    def delete_ops_upto(self, op_id: int) -> None:
        """Delete every op-log entry whose id is ``<= op_id``."""

    def delete_ops(self, op_ids: Iterable[int]) -> None:
        """Delete the given op-log entries."""

    def max_op_id(self) -> int:
        """The highest op id ever stored (0 if none); ids are never reused."""


@contextmanager
def transaction(storage: ClientStorage) -> Iterator[None]:
    """``with transaction(storage):`` — begin, then commit on success or roll back on error."""
    storage.begin()
    try:
        yield
    except BaseException:
        storage.rollback()
        raise
    storage.commit()
