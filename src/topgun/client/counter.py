"""PN-counters on the client (PROTOCOL.md §2.8, §4.10, §5.4, §5.14).

>>> likes = client.counter("likes")               # doctest: +SKIP
>>> likes.increment()                             # works offline too
>>> off = likes.subscribe(lambda value: print(value))

A counter is a PN-counter replica: this client counts in its own slot (its node
id) and merges every other replica's totals by per-node maximum, so replicas
that changed offline converge once they sync. The state is kept in the client's
storage (it survives a client restart with ``SQLiteStorage``). While connected,
local changes are sent as ``COUNTER_SYNC`` (debounced, 50 ms); after every
authentication each live handle sends ``COUNTER_REQUEST`` and, when the server's
answer lacks some of the local totals, a ``COUNTER_SYNC`` follows.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from topgun.client._per_client import PerClient
from topgun.core.counter import Number, PNCounter
from topgun.errors import ConfigError, ProtocolError
from topgun.protocol.messages import (
    CounterRequest,
    CounterResponse,
    CounterState,
    CounterSync,
    CounterUpdate,
    Message,
    MessageType,
)

if TYPE_CHECKING:
    from topgun.client.client import TopGunClient

__all__ = ["CounterCallback", "CounterHandle", "CounterManager", "counters_of"]

log = logging.getLogger("topgun.client.counters")

#: Called with the new value after every change (local or from the server).
CounterCallback = Callable[[Number], Any]

#: Prefix of the client-storage meta keys holding counter states.
META_PREFIX = "counter:"
#: Debounce of ``COUNTER_SYNC`` after local changes (the TS client's, Appendix B).
SYNC_DELAY_S = 0.05


class CounterHandle:
    """One PN-counter of one client (from :meth:`TopGunClient.counter`)."""

    def __init__(self, manager: CounterManager, name: str, replica: PNCounter) -> None:
        self._manager = manager
        self.name = name
        self._replica = replica
        self._callbacks: list[CounterCallback] = []
        #: True once this replica has seen the server's state; see CounterManager._on_server_state
        self._anchored = False

    @property
    def value(self) -> Number:
        """Sum of increments minus sum of decrements over every replica known here."""
        return self._replica.value

    def state(self) -> dict[str, dict[str, Number]]:
        """A copy of the PN state, ``{"p": {node: total}, "n": {node: total}}``."""
        return self._replica.state()

    def increment(self, n: Number = 1) -> Number:
        """Add ``n`` (≥ 0); returns the new value. Works offline."""
        _check_amount(n)
        self._replica.increment(n)
        self._manager._local_change(self)
        return self._replica.value

    def decrement(self, n: Number = 1) -> Number:
        """Subtract ``n`` (≥ 0); returns the new value. Works offline."""
        _check_amount(n)
        self._replica.decrement(n)
        self._manager._local_change(self)
        return self._replica.value

    def subscribe(self, callback: CounterCallback) -> Callable[[], None]:
        """Call ``callback(value)`` after every change; returns the unsubscribe callable."""
        if not callable(callback):
            raise ConfigError("a counter callback must be callable")
        self._callbacks.append(callback)

        def off() -> None:
            if callback in self._callbacks:
                self._callbacks.remove(callback)

        return off

    def _notify(self) -> None:
        value = self._replica.value
        for cb in list(self._callbacks):
            try:
                res = cb(value)
            except Exception:
                log.exception("counter %r: subscriber callback failed", self.name)
                continue
            if asyncio.iscoroutine(res):
                self._manager._spawn(res)

    def __repr__(self) -> str:
        return f"CounterHandle({self.name!r}, value={self.value})"


def _check_amount(n: Any) -> None:
    if isinstance(n, bool) or not isinstance(n, (int, float)) or n != n or n in (float("inf"), float("-inf")):
        raise ConfigError(f"counter amounts must be finite numbers, not {n!r}")
    if n < 0:
        raise ConfigError("counter amounts must be >= 0 (use decrement() to subtract)")


class CounterManager:
    """The counters of one client: handles, persistence in client storage, sync with the server."""

    def __init__(self, client: TopGunClient) -> None:
        self.client = client
        self._handles: dict[str, CounterHandle] = {}
        self._dirty: set[str] = set()
        self._flush_handle: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        client.register_handler(MessageType.COUNTER_RESPONSE, self._on_server_state)
        client.register_handler(MessageType.COUNTER_UPDATE, self._on_server_state)
        client.add_after_auth_hook(self._after_auth)

    def counter(self, name: str) -> CounterHandle:
        """The handle of ``name`` (one per name), loaded from client storage on first use."""
        if not isinstance(name, str) or not name:
            raise ConfigError("a counter name must be a non-empty string")
        h = self._handles.get(name)
        if h is not None:
            return h
        self.client._require_open()
        replica = PNCounter(self.client.node_id)
        stored = self._storage().get_meta(META_PREFIX + name)
        anchored = False
        if stored:
            try:
                data = json.loads(stored)
                replica.merge(data)
                anchored = data.get("anchored") is True
            except (ValueError, AttributeError, ProtocolError) as exc:
                log.error("stored state of counter %r is unusable, starting empty: %s", name, exc)
        h = self._handles[name] = CounterHandle(self, name, replica)
        h._anchored = anchored
        # §5.4: a handle created while connected asks for the server's state at once.
        self.client.send(CounterRequest(name=name))
        return h

    def handles(self) -> list[CounterHandle]:
        """Every counter handle created on this client."""
        return list(self._handles.values())

    # -- internals ----------------------------------------------------------------------------------
    def _storage(self) -> Any:
        return self.client.store.storage

    def _persist(self, h: CounterHandle) -> None:
        store = self.client.store
        if not store.opened:
            return
        data: dict[str, Any] = {**h._replica.state(), "anchored": h._anchored}
        self._storage().set_meta(META_PREFIX + h.name, json.dumps(data, separators=(",", ":")))

    def _local_change(self, h: CounterHandle) -> None:
        self._persist(h)
        h._notify()
        self._dirty.add(h.name)
        self._schedule_flush()

    def _schedule_flush(self) -> None:
        if self._flush_handle is not None or not self.client.connected:
            return
        loop = asyncio.get_running_loop()
        self._flush_handle = loop.call_later(SYNC_DELAY_S, self._flush)

    def _flush(self) -> None:
        self._flush_handle = None
        if not self.client.connected:
            return  # the next authentication re-syncs everything
        dirty, self._dirty = self._dirty, set()
        handles = self._handles
        # An unanchored replica waits for the server's state first (see _on_server_state).
        msgs: list[Message] = [
            self._sync_message(handles[n]) for n in sorted(dirty) if n in handles and handles[n]._anchored
        ]
        if msgs:
            self.client.send(*msgs)

    @staticmethod
    def _sync_message(h: CounterHandle) -> CounterSync:
        s = h._replica.state()
        return CounterSync(name=h.name, state=CounterState(p=s["p"], n=s["n"]))

    def _after_auth(self) -> list[Message]:
        self._dirty.clear()
        return [CounterRequest(name=name) for name in self._handles]

    def _on_server_state(self, msg: CounterResponse | CounterUpdate) -> None:
        h = self._handles.get(msg.name)
        if h is None:
            return
        theirs = {"p": dict(msg.state.p), "n": dict(msg.state.n)}
        replica = h._replica
        changed = False
        if not h._anchored:
            # Until its first server state a replica sends nothing, so whatever the server holds
            # in this replica's own slot was counted by an earlier life of the same node id whose
            # local state is gone (fresh storage). A max-merge would swallow one of the two
            # histories; they are disjoint, so add them.
            me = replica.node_id
            mine = replica.state()
            extra_p = min(theirs["p"].get(me, 0), mine["p"].get(me, 0))
            extra_n = min(theirs["n"].get(me, 0), mine["n"].get(me, 0))
            changed = replica.merge(theirs)
            if extra_p > 0:
                replica.increment(extra_p)
                changed = True
            if extra_n > 0:
                replica.decrement(extra_n)
                changed = True
            h._anchored = True
            self._persist(h)  # the anchored flag, with or without a change
        elif replica.merge(theirs):
            changed = True
            self._persist(h)
        if changed:
            h._notify()
        if h._replica.state() != theirs:
            # The server lacks some of our totals (offline changes, or a change it has not seen yet).
            self._dirty.add(h.name)
            self._schedule_flush()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


#: The counter manager of a client (created on first use).
counters_of: PerClient[CounterManager] = PerClient(CounterManager)
