"""WebSocket transports behind one small interface (:mod:`topgun.server.transport.base`)."""

from __future__ import annotations

from topgun.server.config import TransportKind
from topgun.server.transport.base import (
    CloseCode,
    Connection,
    ConnectionHandler,
    ConnectionListener,
    TransportServer,
)

__all__ = [
    "CloseCode",
    "Connection",
    "ConnectionHandler",
    "ConnectionListener",
    "TransportServer",
    "transport_class",
]


def transport_class(kind: TransportKind | str) -> type[TransportServer]:
    """The :class:`TransportServer` implementation for ``kind`` (imported lazily)."""
    kind = TransportKind(kind)
    if kind is TransportKind.PICOWS:
        from topgun.server.transport.picows_transport import PicowsTransport

        return PicowsTransport
    from topgun.server.transport.websockets_transport import WebsocketsTransport

    return WebsocketsTransport
