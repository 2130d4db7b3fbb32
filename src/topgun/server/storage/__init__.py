"""Durable server state: the :class:`Storage` protocol and its backends.

``open_storage(url)`` builds a backend from a URL (``memory://``,
``sqlite:///topgun.db``, ``postgresql://user@host/db``); the backends
themselves are in ``memory``, ``sqlite`` and ``postgres`` (asyncpg is imported
only when PostgreSQL is used).
"""

from __future__ import annotations

from .base import (
    SCHEMA_VERSION,
    CounterState,
    MapKind,
    MapSnapshot,
    Snapshot,
    Storage,
    StorageKind,
    WriteBatch,
    decode_value,
    encode_value,
)
from .memory import MemoryStorage
from .url import DEFAULT_STORAGE_URL, connect_storage, open_storage, redact_url

__all__ = [
    "DEFAULT_STORAGE_URL",
    "SCHEMA_VERSION",
    "CounterState",
    "MapKind",
    "MapSnapshot",
    "MemoryStorage",
    "Snapshot",
    "Storage",
    "StorageKind",
    "WriteBatch",
    "connect_storage",
    "decode_value",
    "encode_value",
    "open_storage",
    "redact_url",
]
