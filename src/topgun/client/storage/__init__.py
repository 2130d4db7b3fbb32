"""Local storage backends of the client SDK (see :mod:`topgun.client.storage.base`)."""

from topgun.client.storage.base import ClientStorage, MapKind, MetaKey, StoredOp, transaction
from topgun.client.storage.memory import MemoryStorage
from topgun.client.storage.sqlite import SQLiteStorage

__all__ = ["ClientStorage", "MapKind", "MemoryStorage", "MetaKey", "SQLiteStorage", "StoredOp", "transaction"]
