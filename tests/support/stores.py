"""Storage helpers shared by the server tests."""

from __future__ import annotations

from topgun.server.storage import open_storage
from topgun.server.storage.base import Snapshot, Storage, StorageKind


async def reload(url: str) -> Snapshot:
    """Open the store at ``url`` anew (what a restarted server sees), load everything, close."""
    s = open_storage(url)
    await s.open()
    try:
        return await s.load()
    finally:
        await s.close()


class Wrapped:
    """A storage around a real one: everything but ``write`` goes straight to ``inner``.

    Tests subclass it to hold, count or fail writes while the rows still reach real storage.
    """

    def __init__(self, inner: Storage) -> None:
        self.inner = inner

    @property
    def kind(self) -> StorageKind:
        return self.inner.kind

    async def open(self) -> None:
        await self.inner.open()

    async def close(self) -> None:
        await self.inner.close()

    async def ping(self) -> bool:
        return await self.inner.ping()

    async def load(self) -> Snapshot:
        return await self.inner.load()
