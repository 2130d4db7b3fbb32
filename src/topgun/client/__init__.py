"""The Python client SDK: offline-first replicas synced with a topgun server.

>>> from topgun.client import TopGunClient, SQLiteStorage   # doctest: +SKIP
>>> client = TopGunClient("ws://127.0.0.1:8080/ws", storage=SQLiteStorage("app.db"))
"""

from topgun.client.client import TopGunClient
from topgun.client.counter import CounterHandle
from topgun.client.engine import SyncEngine
from topgun.client.lock import LockHandle
from topgun.client.maps import LWWMapHandle, ORMapHandle
from topgun.client.query import QueryChange, QueryHandle
from topgun.client.state import ChangeOrigin, ConnectionState, MapEvent, ORMapEvent
from topgun.client.storage import ClientStorage, MemoryStorage, SQLiteStorage
from topgun.client.topic import TopicEvent, TopicHandle
from topgun.client.transport import ConnectionSettings

__all__ = [
    "ChangeOrigin",
    "ClientStorage",
    "ConnectionSettings",
    "ConnectionState",
    "CounterHandle",
    "LWWMapHandle",
    "LockHandle",
    "MapEvent",
    "MemoryStorage",
    "ORMapEvent",
    "ORMapHandle",
    "QueryChange",
    "QueryHandle",
    "SQLiteStorage",
    "SyncEngine",
    "TopGunClient",
    "TopicEvent",
    "TopicHandle",
]
