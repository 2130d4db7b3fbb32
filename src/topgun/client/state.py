"""Connection states and change events of the client SDK."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

__all__ = ["ChangeOrigin", "ConnectionState", "MapEvent", "ORMapEvent"]


class ConnectionState(str, Enum):
    """Where the client's connection is (PROTOCOL.md §5.1, the TS client's states plus ``CLOSED``).

    ``INITIAL`` before :meth:`TopGunClient.start`; ``CONNECTING`` while the socket
    opens; ``AUTHENTICATING`` from socket open until ``AUTH_ACK``/``DEVICE_ACK``
    (or the no-auth grace); ``SYNCING`` while the op log is re-sent and the maps'
    sync is started, then ``CONNECTED`` at once; ``DISCONNECTED``/``BACKOFF``
    after a failure while a reconnect is pending; ``ERROR`` when the server
    refused our credentials and no token callable can supply a new one;
    ``CLOSED`` after :meth:`TopGunClient.close`.
    """

    INITIAL = "INITIAL"
    CONNECTING = "CONNECTING"
    AUTHENTICATING = "AUTHENTICATING"
    SYNCING = "SYNCING"
    CONNECTED = "CONNECTED"
    DISCONNECTED = "DISCONNECTED"
    BACKOFF = "BACKOFF"
    ERROR = "ERROR"
    CLOSED = "CLOSED"


class ChangeOrigin(str, Enum):
    """Where a change came from: a call on this client, or the server (events, sync)."""

    LOCAL = "local"
    REMOTE = "remote"


@dataclass(frozen=True, slots=True)
class MapEvent:
    """One change of an LWW map key; ``value`` is None when the key was removed."""

    map_name: str
    key: str
    value: Any
    previous: Any
    origin: ChangeOrigin


@dataclass(frozen=True, slots=True)
class ORMapEvent:
    """One change of an OR map key; ``values`` are the key's visible values after the change."""

    map_name: str
    key: str
    values: list[Any]
    origin: ChangeOrigin
