"""One feature manager (topics, locks, counters, queries) per :class:`TopGunClient`.

Managers live beside the client rather than in it so each feature module stays
self-contained; a weak mapping lets a manager go away with its client.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Generic, TypeVar

if TYPE_CHECKING:
    from topgun.client.client import TopGunClient

__all__ = ["PerClient"]

_M = TypeVar("_M")


class PerClient(Generic[_M]):
    """Calling it with a client returns that client's manager, created on first use."""

    __slots__ = ("_factory", "_made")

    def __init__(self, factory: Callable[[TopGunClient], _M]) -> None:
        self._factory = factory
        self._made: weakref.WeakKeyDictionary[TopGunClient, _M] = weakref.WeakKeyDictionary()

    def __call__(self, client: TopGunClient) -> _M:
        m = self._made.get(client)
        if m is None:
            m = self._made[client] = self._factory(client)
        return m
