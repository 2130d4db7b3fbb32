"""Live queries on the server: the pure :class:`QueryEngine` (indexes, subscriptions, windows,
cursors, aggregates) and its wiring into the grid and the session layer
(:mod:`topgun.server.handlers.query`)."""

from topgun.server.query.cursor import CURSOR_TTL_MS, decode_cursor, encode_cursor, fingerprint
from topgun.server.query.engine import DEFAULT_MAX_ROWS, QueryEngine, QuerySpec, Snapshot, Subscription
from topgun.server.query.indexes import HashIndex, SortedIndex

__all__ = [
    "CURSOR_TTL_MS",
    "DEFAULT_MAX_ROWS",
    "HashIndex",
    "QueryEngine",
    "QuerySpec",
    "Snapshot",
    "SortedIndex",
    "Subscription",
    "decode_cursor",
    "encode_cursor",
    "fingerprint",
]
