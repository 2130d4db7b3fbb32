"""The seam between the sans-I/O session and a WebSocket library.

A transport accepts sockets, answers plain HTTP through :class:`HttpRoutes`,
and for each upgraded connection calls ``ConnectionHandler.on_connect`` with a
:class:`Connection`; it then feeds that connection's listener with every
complete **binary** message (text messages are dropped here, never reach the
session) and calls ``on_close`` exactly once. Oversize messages are refused by
the transport with close code 1009.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Callable
from typing import Protocol

from topgun.server.http import HttpRoutes

__all__ = [
    "CloseCode",
    "Connection",
    "ConnectionHandler",
    "ConnectionListener",
    "TransportServer",
    "TransportSettings",
    "next_connection_id",
]


class CloseCode(enum.IntEnum):
    """WebSocket close codes the server uses."""

    NORMAL = 1000
    GOING_AWAY = 1001
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    TRY_AGAIN_LATER = 1013


class Connection(Protocol):
    """One accepted WebSocket, as the session sees it. All methods are non-blocking."""

    #: Server-unique id of this connection.
    id: int
    #: ``host:port`` of the peer (best effort).
    remote: str

    def send(self, data: bytes) -> None:
        """Queue one binary message. Never blocks; frames keep their order."""
        ...

    def close(self, code: int, reason: str = "", *, drop_pending: bool = False) -> None:
        """Close after the queued frames were written, or at once dropping them with ``drop_pending``."""
        ...

    def outbound_bytes(self) -> int:
        """Bytes accepted by :meth:`send` and not yet handed to the kernel."""
        ...

    def outbound_frames(self) -> int:
        """Frames accepted by :meth:`send` and not yet written (0 when the library cannot tell)."""
        ...

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called or the peer went away."""
        ...


class ConnectionListener(Protocol):
    """What a transport drives for one connection (the session)."""

    def on_message(self, data: bytes) -> None:
        """One complete binary message arrived."""
        ...

    def on_close(self) -> None:
        """The connection is gone; called exactly once."""
        ...


class ConnectionHandler(Protocol):
    """What a transport needs from the server application."""

    def on_connect(self, conn: Connection) -> ConnectionListener:
        """A WebSocket was upgraded; return the listener that will receive its messages."""
        ...


class TransportSettings(Protocol):
    """The subset of server configuration a transport reads."""

    max_message_size: int


class TransportServer(abc.ABC):
    """A listening socket serving WebSocket upgrades and plain HTTP on the same port."""

    name: str = "base"

    def __init__(
        self,
        handler: ConnectionHandler,
        routes: HttpRoutes,
        *,
        max_message_size: int,
        on_oversize: Callable[[], None] | None = None,
    ) -> None:
        self.handler = handler
        self.routes = routes
        self.max_message_size = max_message_size
        self.on_oversize = on_oversize
        self.port: int = 0

    @abc.abstractmethod
    async def start(self, host: str, port: int) -> int:
        """Bind and listen; return the bound port."""

    @abc.abstractmethod
    async def stop_accepting(self) -> None:
        """Close the listening socket; open connections keep working."""

    @abc.abstractmethod
    async def wait_closed(self) -> None:
        """Wait until every connection of this server has gone away."""


_ids = iter(range(1, 1 << 62))


def next_connection_id() -> int:
    """A process-unique connection id (shared by every transport)."""
    return next(_ids)
