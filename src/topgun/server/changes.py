"""The values that flow through the grid's merge entry point: changes in, outcomes out.

Kept apart from :mod:`topgun.server.grid` so the compiled and pure twins of the
LWW run (:mod:`topgun.server.writepath`) can build them without importing the grid.
"""

from __future__ import annotations

import asyncio
import enum
from typing import NamedTuple

from topgun.core.records import LWWRecord, ORMapRecord, Timestamp

__all__ = [
    "APPLIED",
    "SERVER_ORIGIN",
    "UNCHANGED",
    "ApplyResult",
    "Change",
    "ChangeKind",
    "ChangeSource",
    "Origin",
    "Outcome",
    "OutcomeStatus",
    "drift_outcome",
]


class ChangeKind(str, enum.Enum):
    """What a change does; the values equal the protocol's ``ServerEventType``."""

    PUT = "PUT"
    REMOVE = "REMOVE"
    OR_ADD = "OR_ADD"
    OR_REMOVE = "OR_REMOVE"


class ChangeSource(str, enum.Enum):
    """Where a change came from."""

    CLIENT = "client"  #: a client op (OP_BATCH / CLIENT_OP)
    SYNC = "sync"  #: a client's sync traffic (ORMAP_PUSH_DIFF)
    SERVER = "server"  #: the server itself (server-originated writes)
    NODE = "node"  #: another cluster node (later)
    STORAGE = "storage"  #: a storage change feed (later)


class Origin(NamedTuple):
    """Who caused a set of changes: pushes skip ``connection_id`` (the writer, §5.7)."""

    source: ChangeSource
    connection_id: int | None = None

    @classmethod
    def client(cls, connection_id: int) -> Origin:
        return cls(ChangeSource.CLIENT, connection_id)

    @classmethod
    def sync(cls, connection_id: int) -> Origin:
        return cls(ChangeSource.SYNC, connection_id)


#: The origin of server-originated writes (no connection to exclude).
SERVER_ORIGIN = Origin(ChangeSource.SERVER, None)


class Change(NamedTuple):
    """One change to merge (input of :meth:`Grid.apply`) or one effective change (its output).

    * ``PUT``/``REMOVE``: ``record`` (a tombstone for ``REMOVE``); ``previous`` (output only) is
      the record it replaced, if any.
    * ``OR_ADD``: ``or_record``. ``replace`` chooses the rule for a tag already stored: ``True``
      (ops, §5.6 step 7) stores the new record when it differs; ``False`` (sync/push-diff, §3.3
      mergeKey) only when its timestamp is greater.
    * ``OR_REMOVE``: ``or_tag``; ``timestamp`` is the op-level timestamp checked for drift. As an
      effective change ``key`` is the key the removed record was under (else the op's key) and
      ``or_record`` the record that was removed, if any.
    """

    map_name: str
    key: str
    kind: ChangeKind
    record: LWWRecord | None = None
    or_record: ORMapRecord | None = None
    or_tag: str | None = None
    timestamp: Timestamp | None = None
    replace: bool = True
    previous: LWWRecord | None = None

    @classmethod
    def put(cls, map_name: str, key: str, record: LWWRecord) -> Change:
        kind = ChangeKind.REMOVE if record.value is None else ChangeKind.PUT
        return cls(map_name, key, kind, record=record)

    @classmethod
    def or_add(cls, map_name: str, key: str, record: ORMapRecord, *, replace: bool = True) -> Change:
        return cls(map_name, key, ChangeKind.OR_ADD, or_record=record, replace=replace)

    @classmethod
    def or_remove(cls, map_name: str, key: str, tag: str, timestamp: Timestamp | None = None) -> Change:
        return cls(map_name, key, ChangeKind.OR_REMOVE, or_tag=tag, timestamp=timestamp)


class OutcomeStatus(str, enum.Enum):
    APPLIED = "applied"  #: the state changed
    UNCHANGED = "unchanged"  #: accepted, but a no-op (duplicate, lost an LWW merge, tombstoned tag)
    REJECTED = "rejected"  #: refused; ``code``/``reason`` say why


class Outcome(NamedTuple):
    """What happened to one input change."""

    status: OutcomeStatus
    code: int = 0
    reason: str = ""
    #: for an LWW change that lost to a *strictly newer* stored record: that record
    winner: LWWRecord | None = None

    @property
    def accepted(self) -> bool:
        return self.status is not OutcomeStatus.REJECTED


# ``Change(...)`` runs the NamedTuple's Python-level ``__new__``; the write path builds changes
# with ``tuple.__new__(Change, (all nine fields))`` instead, which costs less than half as much.
assert Change._fields == (
    "map_name",
    "key",
    "kind",
    "record",
    "or_record",
    "or_tag",
    "timestamp",
    "replace",
    "previous",
)


#: The outcome of every change that changed the state (one shared instance).
APPLIED = Outcome(OutcomeStatus.APPLIED)
#: The outcome of an accepted no-op without a winner to report (one shared instance).
UNCHANGED = Outcome(OutcomeStatus.UNCHANGED)


def drift_outcome(millis: int, wall: int) -> Outcome:
    """The 422 refusal of a timestamp too far ahead of the server clock (§5.6 step 4)."""
    return Outcome(
        OutcomeStatus.REJECTED, 422, f"timestamp {millis} is {millis - wall} ms ahead of the server clock"
    )


class ApplyResult(NamedTuple):
    """Result of :meth:`topgun.server.grid.Grid.apply`."""

    #: one per input change, in input order
    outcomes: list[Outcome]
    #: the effective changes, in order (what listeners were told)
    changes: list[Change]
    #: resolves once the transaction holding the staged rows committed; ``None`` when nothing was staged
    commit: asyncio.Future[None] | None
