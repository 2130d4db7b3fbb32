"""Typed messages of the TopGun v2 wire protocol (PROTOCOL.md §2, §4).

Every core message kind is a frozen, slotted, keyword-only dataclass with two
class attributes: ``TYPE`` (its :class:`MessageType`) and ``SHAPE``
(:class:`Shape.FLAT` or :class:`Shape.WRAPPED`). Attribute names are the
snake_case form of the wire's camelCase field names; :func:`wire_name` is the
one place that maps between them.

Integer fields are ``int``, HLC values are :class:`~topgun.core.records.Timestamp`,
records are :class:`~topgun.core.records.LWWRecord` /
:class:`~topgun.core.records.ORMapRecord`. Optional fields are ``None`` when
absent. User values (record values, topic data, ``where`` operands, …) are
opaque: they keep the types msgpack gave them, extension values are
:class:`Ext`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum, IntEnum
from typing import Any, ClassVar, Union

from msgpack import ExtType

from topgun.core.records import LWWRecord, ORMapRecord, Timestamp

__all__ = [
    "MESSAGE_CLASSES",
    "AggFunc",
    "Aggregation",
    "Auth",
    "AuthAck",
    "AuthFail",
    "AuthRequired",
    "Batch",
    "ChangeType",
    "ClientApplyAck",
    "ClientOp",
    "ClientOpMessage",
    "CounterRequest",
    "CounterResponse",
    "CounterState",
    "CounterSync",
    "CounterUpdate",
    "CursorStatus",
    "DeviceAck",
    "DeviceHello",
    "Error",
    "ErrorCode",
    "Ext",
    "GcPrune",
    "InvalidOp",
    "LeafRecord",
    "LockGranted",
    "LockRelease",
    "LockReleased",
    "LockRequest",
    "MerkleReqBucket",
    "Message",
    "MessageType",
    "ORMapDiffRequest",
    "ORMapDiffResponse",
    "ORMapEntry",
    "ORMapMerkleReqBucket",
    "ORMapPushDiff",
    "ORMapSyncInit",
    "ORMapSyncRespBuckets",
    "ORMapSyncRespLeaf",
    "ORMapSyncRespRoot",
    "OpAck",
    "OpBatch",
    "OpRejected",
    "OpResult",
    "OpType",
    "Ping",
    "Pong",
    "Query",
    "QueryErrorCode",
    "QueryResp",
    "QueryResultItem",
    "QuerySub",
    "QueryUnsub",
    "QueryUpdate",
    "ServerBatchEvent",
    "ServerEvent",
    "ServerEventType",
    "Shape",
    "SortDirection",
    "SortKey",
    "SyncInit",
    "SyncResetRequired",
    "SyncRespBuckets",
    "SyncRespLeaf",
    "SyncRespRoot",
    "TopicMessage",
    "TopicPub",
    "TopicSub",
    "TopicUnsub",
    "WriteConcern",
    "wire_name",
]


def wire_name(attr: str) -> str:
    """The wire (camelCase) name of a snake_case attribute: ``map_name`` -> ``mapName``."""
    head, *rest = attr.split("_")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


# --------------------------------------------------------------------------- enums


class Shape(str, Enum):
    """Envelope shape of a kind (§1.3): fields next to ``type`` or inside ``payload``."""

    FLAT = "flat"
    WRAPPED = "wrapped"


class MessageType(str, Enum):
    """Every message kind this implementation knows; see :attr:`is_extended`."""

    # core subset (§4.0)
    AUTH_REQUIRED = "AUTH_REQUIRED"
    AUTH = "AUTH"
    AUTH_ACK = "AUTH_ACK"
    AUTH_FAIL = "AUTH_FAIL"
    DEVICE_HELLO = "DEVICE_HELLO"
    DEVICE_ACK = "DEVICE_ACK"
    PING = "PING"
    PONG = "PONG"
    ERROR = "ERROR"
    CLIENT_OP = "CLIENT_OP"
    OP_BATCH = "OP_BATCH"
    OP_ACK = "OP_ACK"
    OP_REJECTED = "OP_REJECTED"
    SERVER_EVENT = "SERVER_EVENT"
    SERVER_BATCH_EVENT = "SERVER_BATCH_EVENT"
    SYNC_INIT = "SYNC_INIT"
    SYNC_RESP_ROOT = "SYNC_RESP_ROOT"
    MERKLE_REQ_BUCKET = "MERKLE_REQ_BUCKET"
    SYNC_RESP_BUCKETS = "SYNC_RESP_BUCKETS"
    SYNC_RESP_LEAF = "SYNC_RESP_LEAF"
    SYNC_RESET_REQUIRED = "SYNC_RESET_REQUIRED"
    GC_PRUNE = "GC_PRUNE"
    ORMAP_SYNC_INIT = "ORMAP_SYNC_INIT"
    ORMAP_SYNC_RESP_ROOT = "ORMAP_SYNC_RESP_ROOT"
    ORMAP_MERKLE_REQ_BUCKET = "ORMAP_MERKLE_REQ_BUCKET"
    ORMAP_SYNC_RESP_BUCKETS = "ORMAP_SYNC_RESP_BUCKETS"
    ORMAP_SYNC_RESP_LEAF = "ORMAP_SYNC_RESP_LEAF"
    ORMAP_DIFF_REQUEST = "ORMAP_DIFF_REQUEST"
    ORMAP_DIFF_RESPONSE = "ORMAP_DIFF_RESPONSE"
    ORMAP_PUSH_DIFF = "ORMAP_PUSH_DIFF"
    CLIENT_APPLY_ACK = "CLIENT_APPLY_ACK"
    QUERY_SUB = "QUERY_SUB"
    QUERY_UNSUB = "QUERY_UNSUB"
    QUERY_RESP = "QUERY_RESP"
    QUERY_UPDATE = "QUERY_UPDATE"
    TOPIC_SUB = "TOPIC_SUB"
    TOPIC_UNSUB = "TOPIC_UNSUB"
    TOPIC_PUB = "TOPIC_PUB"
    TOPIC_MESSAGE = "TOPIC_MESSAGE"
    LOCK_REQUEST = "LOCK_REQUEST"
    LOCK_RELEASE = "LOCK_RELEASE"
    LOCK_GRANTED = "LOCK_GRANTED"
    LOCK_RELEASED = "LOCK_RELEASED"
    COUNTER_REQUEST = "COUNTER_REQUEST"
    COUNTER_SYNC = "COUNTER_SYNC"
    COUNTER_RESPONSE = "COUNTER_RESPONSE"
    COUNTER_UPDATE = "COUNTER_UPDATE"
    BATCH = "BATCH"

    # extended kinds (§6): recognised, not implemented
    SEARCH = "SEARCH"
    SEARCH_RESP = "SEARCH_RESP"
    SEARCH_SUB = "SEARCH_SUB"
    SEARCH_UPDATE = "SEARCH_UPDATE"
    SEARCH_UNSUB = "SEARCH_UNSUB"
    VECTOR_SEARCH = "VECTOR_SEARCH"
    VECTOR_SEARCH_RESP = "VECTOR_SEARCH_RESP"
    HYBRID_SEARCH = "HYBRID_SEARCH"
    HYBRID_SEARCH_RESP = "HYBRID_SEARCH_RESP"
    HYBRID_SEARCH_SUB = "HYBRID_SEARCH_SUB"
    HYBRID_SEARCH_UPDATE = "HYBRID_SEARCH_UPDATE"
    HYBRID_SEARCH_UNSUB = "HYBRID_SEARCH_UNSUB"
    SQL_QUERY = "SQL_QUERY"
    SQL_QUERY_RESP = "SQL_QUERY_RESP"
    QUERY_SYNC_INIT = "QUERY_SYNC_INIT"
    JOURNAL_SUBSCRIBE = "JOURNAL_SUBSCRIBE"
    JOURNAL_UNSUBSCRIBE = "JOURNAL_UNSUBSCRIBE"
    JOURNAL_EVENT = "JOURNAL_EVENT"
    JOURNAL_READ = "JOURNAL_READ"
    JOURNAL_READ_RESPONSE = "JOURNAL_READ_RESPONSE"
    ENTRY_PROCESS = "ENTRY_PROCESS"
    ENTRY_PROCESS_BATCH = "ENTRY_PROCESS_BATCH"
    ENTRY_PROCESS_RESPONSE = "ENTRY_PROCESS_RESPONSE"
    ENTRY_PROCESS_BATCH_RESPONSE = "ENTRY_PROCESS_BATCH_RESPONSE"
    REGISTER_RESOLVER = "REGISTER_RESOLVER"
    REGISTER_RESOLVER_RESPONSE = "REGISTER_RESOLVER_RESPONSE"
    UNREGISTER_RESOLVER = "UNREGISTER_RESOLVER"
    UNREGISTER_RESOLVER_RESPONSE = "UNREGISTER_RESOLVER_RESPONSE"
    LIST_RESOLVERS = "LIST_RESOLVERS"
    LIST_RESOLVERS_RESPONSE = "LIST_RESOLVERS_RESPONSE"
    MERGE_REJECTED = "MERGE_REJECTED"
    PARTITION_MAP_REQUEST = "PARTITION_MAP_REQUEST"
    PARTITION_MAP = "PARTITION_MAP"
    CLUSTER_SUB_REGISTER = "CLUSTER_SUB_REGISTER"
    CLUSTER_SUB_ACK = "CLUSTER_SUB_ACK"
    CLUSTER_SUB_UPDATE = "CLUSTER_SUB_UPDATE"
    CLUSTER_SUB_UNREGISTER = "CLUSTER_SUB_UNREGISTER"
    CLUSTER_SEARCH_REQ = "CLUSTER_SEARCH_REQ"
    CLUSTER_SEARCH_RESP = "CLUSTER_SEARCH_RESP"
    CLUSTER_SEARCH_SUBSCRIBE = "CLUSTER_SEARCH_SUBSCRIBE"
    CLUSTER_SEARCH_UNSUBSCRIBE = "CLUSTER_SEARCH_UNSUBSCRIBE"
    CLUSTER_SEARCH_UPDATE = "CLUSTER_SEARCH_UPDATE"

    @property
    def is_extended(self) -> bool:
        """True for the §6 kinds that are recognised but not implemented."""
        return self.value not in _CORE_TYPE_NAMES


_CORE_TYPE_NAMES = frozenset(
    m.value for m in list(MessageType)[: list(MessageType).index(MessageType.BATCH) + 1]
)


class OpType(str, Enum):
    """The four kinds of client write (§2.6, classified per §5.6)."""

    PUT = "PUT"
    REMOVE = "REMOVE"
    OR_ADD = "OR_ADD"
    OR_REMOVE = "OR_REMOVE"


class WriteConcern(str, Enum):
    """Durability levels, ordered: ``FIRE_AND_FORGET < MEMORY < APPLIED < REPLICATED < PERSISTED``."""

    FIRE_AND_FORGET = "FIRE_AND_FORGET"
    MEMORY = "MEMORY"
    APPLIED = "APPLIED"
    REPLICATED = "REPLICATED"
    PERSISTED = "PERSISTED"

    @property
    def rank(self) -> int:
        """Position in the durability order (0 = weakest)."""
        return _WC_RANK[self.value]

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, WriteConcern):
            return NotImplemented
        return self.rank < other.rank

    def __le__(self, other: object) -> bool:
        if not isinstance(other, WriteConcern):
            return NotImplemented
        return self.rank <= other.rank

    def __gt__(self, other: object) -> bool:
        if not isinstance(other, WriteConcern):
            return NotImplemented
        return self.rank > other.rank

    def __ge__(self, other: object) -> bool:
        if not isinstance(other, WriteConcern):
            return NotImplemented
        return self.rank >= other.rank


_WC_RANK = {"FIRE_AND_FORGET": 0, "MEMORY": 1, "APPLIED": 2, "REPLICATED": 3, "PERSISTED": 4}


class ServerEventType(str, Enum):
    """``SERVER_EVENT.eventType``."""

    PUT = "PUT"
    REMOVE = "REMOVE"
    OR_ADD = "OR_ADD"
    OR_REMOVE = "OR_REMOVE"


class ChangeType(str, Enum):
    """``QUERY_UPDATE.changeType`` (ChangeEventType)."""

    ENTER = "ENTER"
    UPDATE = "UPDATE"
    LEAVE = "LEAVE"


class CursorStatus(str, Enum):
    """``QUERY_RESP.cursorStatus``."""

    VALID = "valid"
    EXPIRED = "expired"
    INVALID = "invalid"
    NONE = "none"


class SortDirection(str, Enum):
    ASC = "asc"
    DESC = "desc"


class AggFunc(str, Enum):
    COUNT = "count"
    SUM = "sum"
    MIN = "min"
    MAX = "max"
    AVG = "avg"


class QueryErrorCode(str, Enum):
    """Well-known values of ``QUERY_RESP.code`` (the field itself stays a plain ``str``)."""

    FORBIDDEN = "FORBIDDEN"
    INVALID_QUERY = "INVALID_QUERY"
    UNSUPPORTED_PREDICATE = "UNSUPPORTED_PREDICATE"
    QUERY_SNAPSHOT_OVERFLOW = "QUERY_SNAPSHOT_OVERFLOW"


class ErrorCode(IntEnum):
    """Integer error codes of ``OP_REJECTED``, ``ERROR`` and ``AUTH_FAIL`` (Appendix A)."""

    INVALID = 400
    UNAUTHENTICATED = 401
    FORBIDDEN = 403
    CONFLICT = 409
    TOO_LARGE = 413
    CLOCK_DRIFT = 422
    SLOW_DOWN = 429
    INTERNAL = 500
    NOT_IMPLEMENTED = 501


# --------------------------------------------------------------------------- values


class Ext(ExtType):
    """An opaque MsgPack extension value, any type code -128…127 (``Date`` arrives as code -1).

    ``msgpack.ExtType`` refuses negative codes, so this subclass builds the tuple
    directly; the packer accepts it as an ``ExtType`` and writes it back unchanged.
    """

    __slots__ = ()

    def __new__(cls, code: int, data: bytes) -> Ext:
        if type(code) is not int or not -128 <= code <= 127:
            raise ValueError("ext code must be an int in -128..127")
        if not isinstance(data, bytes):
            raise TypeError("ext data must be bytes")
        return tuple.__new__(cls, (code, data))


# --------------------------------------------------------------------------- structures


@dataclass(frozen=True, slots=True, kw_only=True)
class ORMapEntry:
    """The OR-Map sync unit of one key (§2.5)."""

    key: str
    records: list[ORMapRecord] = field(default_factory=list)
    tombstones: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True, kw_only=True)
class LeafRecord:
    """One ``{key, record}`` entry of ``SYNC_RESP_LEAF.records``."""

    key: str
    record: LWWRecord


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientOp:
    """One client write (§2.6); ``op_type`` is already classified per §5.6.

    A decoded op has passed the shape validation of §5.6 step 1: ``PUT`` carries
    ``record``; ``OR_ADD`` carries ``or_record``; ``OR_REMOVE`` carries ``or_tag``;
    a ``REMOVE`` may lack ``record`` (its timestamp then comes from ``timestamp``
    or the server clock). A ``PUT`` whose value is nil is classified ``REMOVE``.
    """

    id: str | None = None
    map_name: str
    key: str
    op_type: OpType
    record: LWWRecord | None = None
    or_record: ORMapRecord | None = None
    or_tag: str | None = None
    write_concern: WriteConcern | None = None
    timeout: int | None = None
    timestamp: Timestamp | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class InvalidOp:
    """An op of a batch that failed validation; answer it with ``OP_REJECTED`` (§7 decision 4).

    ``id`` is the op's id when it had a string one (else ``None``: reply with
    ``opId: ""``), ``code`` the Appendix A code, ``field`` the offending field path.
    """

    id: str | None
    reason: str
    code: int = 400
    field: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class OpResult:
    """One entry of ``OP_ACK.results``."""

    op_id: str
    success: bool
    achieved_level: WriteConcern
    error: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class SortKey:
    field: str
    direction: SortDirection = SortDirection.ASC


@dataclass(frozen=True, slots=True, kw_only=True)
class Aggregation:
    func: AggFunc
    field: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Query:
    """The ``query`` of ``QUERY_SUB`` (§4.7).

    ``predicate`` stays a plain dict tree (``{"op", "attribute", "value",
    "children", "valueRef"}``), checked for shape only. ``sort`` is normalised
    to the ordered list form whichever of the two wire forms arrived.
    """

    where: dict[str, Any] | None = None
    predicate: dict[str, Any] | None = None
    sort: list[SortKey] | None = None
    limit: int | None = None
    cursor: str | None = None
    group_by: list[str] | None = None
    aggregations: list[Aggregation] | None = None
    fields: list[str] | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class QueryResultItem:
    key: str
    value: Any


@dataclass(frozen=True, slots=True, kw_only=True)
class CounterState:
    """A PN-counter state (§2.8): per-node increment totals ``p`` and decrement totals ``n``.

    Decoding accepts ``{p, n}``, ``{positive, negative}`` or both (merged per node
    with max); encoding writes both spellings.
    """

    p: dict[str, int | float] = field(default_factory=dict)
    n: dict[str, int | float] = field(default_factory=dict)

    @property
    def value(self) -> int | float:
        return sum(self.p.values()) - sum(self.n.values())


# --------------------------------------------------------------------------- messages


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthRequired:
    TYPE: ClassVar[MessageType] = MessageType.AUTH_REQUIRED
    SHAPE: ClassVar[Shape] = Shape.FLAT


@dataclass(frozen=True, slots=True, kw_only=True)
class Auth:
    TYPE: ClassVar[MessageType] = MessageType.AUTH
    SHAPE: ClassVar[Shape] = Shape.FLAT
    token: str
    protocol_version: int | None = None
    device_token: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthAck:
    TYPE: ClassVar[MessageType] = MessageType.AUTH_ACK
    SHAPE: ClassVar[Shape] = Shape.FLAT
    protocol_version: int | None = None
    user_id: str | None = None
    device_id: str | None = None
    device_token: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthFail:
    TYPE: ClassVar[MessageType] = MessageType.AUTH_FAIL
    SHAPE: ClassVar[Shape] = Shape.FLAT
    error: str | None = None
    code: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceHello:
    TYPE: ClassVar[MessageType] = MessageType.DEVICE_HELLO
    SHAPE: ClassVar[Shape] = Shape.FLAT
    device_token: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceAck:
    TYPE: ClassVar[MessageType] = MessageType.DEVICE_ACK
    SHAPE: ClassVar[Shape] = Shape.FLAT
    device_id: str | None = None
    device_token: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Ping:
    TYPE: ClassVar[MessageType] = MessageType.PING
    SHAPE: ClassVar[Shape] = Shape.FLAT
    timestamp: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Pong:
    TYPE: ClassVar[MessageType] = MessageType.PONG
    SHAPE: ClassVar[Shape] = Shape.FLAT
    timestamp: int
    server_time: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Error:
    TYPE: ClassVar[MessageType] = MessageType.ERROR
    SHAPE: ClassVar[Shape] = Shape.WRAPPED
    code: int
    message: str
    details: Any = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientOpMessage:
    """``CLIENT_OP``: the payload is one op (a batch of one)."""

    TYPE: ClassVar[MessageType] = MessageType.CLIENT_OP
    SHAPE: ClassVar[Shape] = Shape.WRAPPED
    op: ClientOp | InvalidOp


@dataclass(frozen=True, slots=True, kw_only=True)
class OpBatch:
    """``OP_BATCH``; invalid ops appear in ``ops`` as :class:`InvalidOp` at their position."""

    TYPE: ClassVar[MessageType] = MessageType.OP_BATCH
    SHAPE: ClassVar[Shape] = Shape.WRAPPED
    ops: list[ClientOp | InvalidOp]
    write_concern: WriteConcern | None = None
    timeout: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class OpAck:
    TYPE: ClassVar[MessageType] = MessageType.OP_ACK
    SHAPE: ClassVar[Shape] = Shape.WRAPPED
    last_id: str
    achieved_level: WriteConcern | None = None
    results: list[OpResult] | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class OpRejected:
    TYPE: ClassVar[MessageType] = MessageType.OP_REJECTED
    SHAPE: ClassVar[Shape] = Shape.WRAPPED
    op_id: str
    reason: str
    code: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerEvent:
    """``SERVER_EVENT``; also the element type of ``SERVER_BATCH_EVENT.events``."""

    TYPE: ClassVar[MessageType] = MessageType.SERVER_EVENT
    SHAPE: ClassVar[Shape] = Shape.WRAPPED
    map_name: str
    event_type: ServerEventType
    key: str
    record: LWWRecord | None = None
    or_record: ORMapRecord | None = None
    or_tag: str | None = None
    epoch: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerBatchEvent:
    TYPE: ClassVar[MessageType] = MessageType.SERVER_BATCH_EVENT
    SHAPE: ClassVar[Shape] = Shape.WRAPPED
    events: list[ServerEvent]


@dataclass(frozen=True, slots=True, kw_only=True)
class SyncInit:
    TYPE: ClassVar[MessageType] = MessageType.SYNC_INIT
    SHAPE: ClassVar[Shape] = Shape.FLAT
    map_name: str
    last_sync_timestamp: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class SyncRespRoot:
    TYPE: ClassVar[MessageType] = MessageType.SYNC_RESP_ROOT
    SHAPE: ClassVar[Shape] = Shape.WRAPPED
    map_name: str
    root_hash: int
    timestamp: Timestamp


@dataclass(frozen=True, slots=True, kw_only=True)
class MerkleReqBucket:
    TYPE: ClassVar[MessageType] = MessageType.MERKLE_REQ_BUCKET
    SHAPE: ClassVar[Shape] = Shape.WRAPPED
    map_name: str
    path: str


@dataclass(frozen=True, slots=True, kw_only=True)
class SyncRespBuckets:
    TYPE: ClassVar[MessageType] = MessageType.SYNC_RESP_BUCKETS
    SHAPE: ClassVar[Shape] = Shape.WRAPPED
    map_name: str
    path: str
    buckets: dict[str, int]


@dataclass(frozen=True, slots=True, kw_only=True)
class SyncRespLeaf:
    TYPE: ClassVar[MessageType] = MessageType.SYNC_RESP_LEAF
    SHAPE: ClassVar[Shape] = Shape.WRAPPED
    map_name: str
    path: str
    records: list[LeafRecord]


@dataclass(frozen=True, slots=True, kw_only=True)
class SyncResetRequired:
    TYPE: ClassVar[MessageType] = MessageType.SYNC_RESET_REQUIRED
    SHAPE: ClassVar[Shape] = Shape.WRAPPED
    map_name: str
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class GcPrune:
    TYPE: ClassVar[MessageType] = MessageType.GC_PRUNE
    SHAPE: ClassVar[Shape] = Shape.WRAPPED
    older_than: Timestamp


@dataclass(frozen=True, slots=True, kw_only=True)
class ORMapSyncInit:
    TYPE: ClassVar[MessageType] = MessageType.ORMAP_SYNC_INIT
    SHAPE: ClassVar[Shape] = Shape.FLAT
    map_name: str
    root_hash: int
    bucket_hashes: dict[str, int]
    last_sync_timestamp: int | None = None
    claimed_epoch: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ORMapSyncRespRoot:
    TYPE: ClassVar[MessageType] = MessageType.ORMAP_SYNC_RESP_ROOT
    SHAPE: ClassVar[Shape] = Shape.WRAPPED
    map_name: str
    root_hash: int
    timestamp: Timestamp
    covering_epoch: int | None = None
    full_resync: bool | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ORMapMerkleReqBucket:
    TYPE: ClassVar[MessageType] = MessageType.ORMAP_MERKLE_REQ_BUCKET
    SHAPE: ClassVar[Shape] = Shape.WRAPPED
    map_name: str
    path: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ORMapSyncRespBuckets:
    TYPE: ClassVar[MessageType] = MessageType.ORMAP_SYNC_RESP_BUCKETS
    SHAPE: ClassVar[Shape] = Shape.WRAPPED
    map_name: str
    path: str
    buckets: dict[str, int]


@dataclass(frozen=True, slots=True, kw_only=True)
class ORMapSyncRespLeaf:
    TYPE: ClassVar[MessageType] = MessageType.ORMAP_SYNC_RESP_LEAF
    SHAPE: ClassVar[Shape] = Shape.WRAPPED
    map_name: str
    path: str
    entries: list[ORMapEntry]
    covering_epoch: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ORMapDiffRequest:
    TYPE: ClassVar[MessageType] = MessageType.ORMAP_DIFF_REQUEST
    SHAPE: ClassVar[Shape] = Shape.WRAPPED
    map_name: str
    keys: list[str]


@dataclass(frozen=True, slots=True, kw_only=True)
class ORMapDiffResponse:
    TYPE: ClassVar[MessageType] = MessageType.ORMAP_DIFF_RESPONSE
    SHAPE: ClassVar[Shape] = Shape.WRAPPED
    map_name: str
    entries: list[ORMapEntry]
    covering_epoch: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ORMapPushDiff:
    TYPE: ClassVar[MessageType] = MessageType.ORMAP_PUSH_DIFF
    SHAPE: ClassVar[Shape] = Shape.WRAPPED
    map_name: str
    entries: list[ORMapEntry]


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientApplyAck:
    TYPE: ClassVar[MessageType] = MessageType.CLIENT_APPLY_ACK
    SHAPE: ClassVar[Shape] = Shape.FLAT
    cursor: int


@dataclass(frozen=True, slots=True, kw_only=True)
class QuerySub:
    """``QUERY_SUB``; ``fields`` is the payload-level projection, see :attr:`effective_fields`."""

    TYPE: ClassVar[MessageType] = MessageType.QUERY_SUB
    SHAPE: ClassVar[Shape] = Shape.WRAPPED
    query_id: str
    map_name: str
    query: Query = field(default_factory=Query)
    fields: list[str] | None = None

    @property
    def effective_fields(self) -> list[str] | None:
        """The projection: payload-level ``fields``, else ``query.fields`` (§8 item 8)."""
        return self.fields if self.fields is not None else self.query.fields


@dataclass(frozen=True, slots=True, kw_only=True)
class QueryUnsub:
    TYPE: ClassVar[MessageType] = MessageType.QUERY_UNSUB
    SHAPE: ClassVar[Shape] = Shape.WRAPPED
    query_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class QueryResp:
    TYPE: ClassVar[MessageType] = MessageType.QUERY_RESP
    SHAPE: ClassVar[Shape] = Shape.WRAPPED
    query_id: str
    results: list[QueryResultItem]
    next_cursor: str | None = None
    has_more: bool | None = None
    cursor_status: CursorStatus | None = None
    merkle_root_hash: int | None = None
    error: str | None = None
    code: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class QueryUpdate:
    """``QUERY_UPDATE``; ``value`` is ``None`` on ``LEAVE`` (always written, as nil)."""

    TYPE: ClassVar[MessageType] = MessageType.QUERY_UPDATE
    SHAPE: ClassVar[Shape] = Shape.WRAPPED
    query_id: str
    key: str
    value: Any
    change_type: ChangeType


@dataclass(frozen=True, slots=True, kw_only=True)
class TopicSub:
    TYPE: ClassVar[MessageType] = MessageType.TOPIC_SUB
    SHAPE: ClassVar[Shape] = Shape.WRAPPED
    topic: str


@dataclass(frozen=True, slots=True, kw_only=True)
class TopicUnsub:
    TYPE: ClassVar[MessageType] = MessageType.TOPIC_UNSUB
    SHAPE: ClassVar[Shape] = Shape.WRAPPED
    topic: str


@dataclass(frozen=True, slots=True, kw_only=True)
class TopicPub:
    TYPE: ClassVar[MessageType] = MessageType.TOPIC_PUB
    SHAPE: ClassVar[Shape] = Shape.WRAPPED
    topic: str
    data: Any


@dataclass(frozen=True, slots=True, kw_only=True)
class TopicMessage:
    TYPE: ClassVar[MessageType] = MessageType.TOPIC_MESSAGE
    SHAPE: ClassVar[Shape] = Shape.WRAPPED
    topic: str
    data: Any
    timestamp: int
    publisher_id: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class LockRequest:
    TYPE: ClassVar[MessageType] = MessageType.LOCK_REQUEST
    SHAPE: ClassVar[Shape] = Shape.WRAPPED
    request_id: str
    name: str
    ttl: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class LockRelease:
    TYPE: ClassVar[MessageType] = MessageType.LOCK_RELEASE
    SHAPE: ClassVar[Shape] = Shape.WRAPPED
    name: str
    fencing_token: int
    request_id: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class LockGranted:
    TYPE: ClassVar[MessageType] = MessageType.LOCK_GRANTED
    SHAPE: ClassVar[Shape] = Shape.WRAPPED
    request_id: str
    name: str
    fencing_token: int


@dataclass(frozen=True, slots=True, kw_only=True)
class LockReleased:
    TYPE: ClassVar[MessageType] = MessageType.LOCK_RELEASED
    SHAPE: ClassVar[Shape] = Shape.WRAPPED
    request_id: str
    name: str
    success: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class CounterRequest:
    TYPE: ClassVar[MessageType] = MessageType.COUNTER_REQUEST
    SHAPE: ClassVar[Shape] = Shape.WRAPPED
    name: str


@dataclass(frozen=True, slots=True, kw_only=True)
class CounterSync:
    TYPE: ClassVar[MessageType] = MessageType.COUNTER_SYNC
    SHAPE: ClassVar[Shape] = Shape.WRAPPED
    name: str
    state: CounterState


@dataclass(frozen=True, slots=True, kw_only=True)
class CounterResponse:
    TYPE: ClassVar[MessageType] = MessageType.COUNTER_RESPONSE
    SHAPE: ClassVar[Shape] = Shape.WRAPPED
    name: str
    state: CounterState


@dataclass(frozen=True, slots=True, kw_only=True)
class CounterUpdate:
    TYPE: ClassVar[MessageType] = MessageType.COUNTER_UPDATE
    SHAPE: ClassVar[Shape] = Shape.WRAPPED
    name: str
    state: CounterState


@dataclass(frozen=True, slots=True, kw_only=True)
class Batch:
    """``BATCH`` (§1.7, §4.11); split ``data`` with ``codec.split_batch``."""

    TYPE: ClassVar[MessageType] = MessageType.BATCH
    SHAPE: ClassVar[Shape] = Shape.FLAT
    count: int
    data: bytes


Message = Union[  # noqa: UP007
    AuthRequired, Auth, AuthAck, AuthFail, DeviceHello, DeviceAck, Ping, Pong, Error,
    ClientOpMessage, OpBatch, OpAck, OpRejected, ServerEvent, ServerBatchEvent, SyncInit,
    SyncRespRoot, MerkleReqBucket, SyncRespBuckets, SyncRespLeaf, SyncResetRequired, GcPrune,
    ORMapSyncInit, ORMapSyncRespRoot, ORMapMerkleReqBucket, ORMapSyncRespBuckets, ORMapSyncRespLeaf,
    ORMapDiffRequest, ORMapDiffResponse, ORMapPushDiff, ClientApplyAck, QuerySub, QueryUnsub,
    QueryResp, QueryUpdate, TopicSub, TopicUnsub, TopicPub, TopicMessage, LockRequest, LockRelease,
    LockGranted, LockReleased, CounterRequest, CounterSync, CounterResponse, CounterUpdate, Batch,
]  # fmt: skip

#: core kind -> its message class
MESSAGE_CLASSES: dict[MessageType, type] = {
    cls.TYPE: cls  # type: ignore[attr-defined]
    for cls in Message.__args__  # type: ignore[attr-defined]
}
