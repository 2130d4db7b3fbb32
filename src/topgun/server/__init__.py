"""The asyncio server: a sans-I/O session per connection behind a thin WebSocket transport.

``TopGunServer`` and ``ServerConfig`` are imported lazily so that importing a
submodule (``topgun.server.storage`` …) does not pull in the transports.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from topgun.server.app import TopGunServer
    from topgun.server.config import ServerConfig

__all__ = ["ServerConfig", "TopGunServer"]


def __getattr__(name: str) -> Any:
    if name == "TopGunServer":
        from topgun.server.app import TopGunServer

        return TopGunServer
    if name == "ServerConfig":
        from topgun.server.config import ServerConfig

        return ServerConfig
    raise AttributeError(name)
