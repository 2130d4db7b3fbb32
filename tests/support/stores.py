"""Storage helpers shared by the server tests."""

from __future__ import annotations

from topgun.server.storage import open_storage
from topgun.server.storage.base import Snapshot


async def reload(url: str) -> Snapshot:
    """Open the store at ``url`` anew (what a restarted server sees), load everything, close."""
    s = open_storage(url)
    await s.open()
    try:
        return await s.load()
    finally:
        await s.close()
