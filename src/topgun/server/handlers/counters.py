"""PN-counters (PROTOCOL.md §2.8, §4.10, §5.14, §5.15).

* ``COUNTER_REQUEST {name}`` creates the counter if unknown, subscribes the
  connection and answers ``COUNTER_RESPONSE {name, state}``.
* ``COUNTER_SYNC {name, state}`` merges the state (per node, max), subscribes the
  connection, answers ``COUNTER_UPDATE`` with the merged state and, when the merge
  changed anything, sends the same frame to every other subscriber (subscribers
  have seen every earlier change, so an unchanged state is news to nobody).

States go out under both spellings (the codec writes ``{p, n, positive,
negative}``). Every change is recorded with ``WriteBatch.set_counter`` through the
group committer; replies do not wait for the commit, because a counter state is
a CRDT that every client re-sends after reconnecting, so a change lost in a crash
comes back with its author.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from topgun.core.counter import PNCounter
from topgun.errors import ProtocolError
from topgun.protocol import codec
from topgun.protocol.messages import (
    CounterRequest,
    CounterResponse,
    CounterState,
    CounterSync,
    CounterUpdate,
    MessageType,
)
from topgun.server.handlers.locks import CommitterSource, PersistsThroughCommitter
from topgun.server.interfaces import RequestContext
from topgun.server.persistence import GroupCommitter

__all__ = ["CoordinationHandlers", "CounterRegistry", "install_coordination_handlers"]

log = logging.getLogger("topgun.server.counters")

# Key of the per-connection set of subscribed counters in ``ctx.data``.
_CTX_KEY = "topgun.counters"
# The server never increments; its replica slot name only has to be a valid node id.
_SERVER_SLOT = "server"


def _check_name(name: str) -> str:
    if not name:
        raise ProtocolError("counter name must not be empty", code=400, field="name")
    return name


class CounterRegistry(PersistsThroughCommitter):
    """Counter name → state and subscribers; the processor of ``COUNTER_REQUEST``/``COUNTER_SYNC``."""

    def __init__(self, committer: CommitterSource = None, *, encode: Any = None) -> None:
        self._committer_source: CommitterSource = committer
        self._counters: dict[str, PNCounter] = {}
        self._subs: dict[str, dict[int, RequestContext]] = {}
        self._encode = encode if encode is not None else codec.encode
        #: merges that changed a counter
        self.changes = 0

    # -- wiring -------------------------------------------------------------------------------------
    def install(self, server: Any) -> None:
        """Register the processors on ``server.processors``."""
        reg = server.processors
        reg.register(MessageType.COUNTER_REQUEST, self.handle_request)
        reg.register(MessageType.COUNTER_SYNC, self.handle_sync)

    def load(self, counters: Mapping[str, Mapping[str, Any]]) -> None:
        """Merge persisted states (``Snapshot.counters``: name → ``{"p": …, "n": …}``)."""
        for name, state in counters.items():
            try:
                self._counter(name).merge(state)
            except ProtocolError as exc:
                log.error("stored state of counter %r is unusable, ignored: %s", name, exc)

    # -- introspection ------------------------------------------------------------------------------
    def value(self, name: str) -> int | float:
        """Current value of ``name`` (0 when unknown)."""
        c = self._counters.get(name)
        return 0 if c is None else c.value

    def state(self, name: str) -> dict[str, dict[str, int | float]]:
        """A copy of the state of ``name`` as ``{"p": …, "n": …}``."""
        c = self._counters.get(name)
        return {"p": {}, "n": {}} if c is None else c.state()

    def subscribers(self, name: str) -> list[int]:
        """Connection ids subscribed to ``name``."""
        return sorted(self._subs.get(name, ()))

    # -- processors ---------------------------------------------------------------------------------
    def handle_request(self, ctx: RequestContext, msg: CounterRequest) -> None:
        """``COUNTER_REQUEST``: subscribe and answer ``COUNTER_RESPONSE`` with the current state."""
        name = _check_name(msg.name)
        counter = self._counter(name)
        self._subscribe(ctx, name)
        ctx.send(CounterResponse(name=name, state=_wire_state(counter)))

    def handle_sync(self, ctx: RequestContext, msg: CounterSync) -> None:
        """``COUNTER_SYNC``: merge, subscribe, answer ``COUNTER_UPDATE`` and tell the other subscribers."""
        name = _check_name(msg.name)
        counter = self._counter(name)
        changed = counter.merge({"p": msg.state.p, "n": msg.state.n})
        self._subscribe(ctx, name)
        frame = self._encode(CounterUpdate(name=name, state=_wire_state(counter)))
        ctx.send_frame(frame)
        if not changed:
            return
        self.changes += 1
        self._persist(name, counter)
        me = ctx.connection_id
        for cid, sub in list(self._subs.get(name, {}).items()):
            if cid != me and not sub.closed:
                sub.send_frame(frame)

    # -- internals ----------------------------------------------------------------------------------
    def _counter(self, name: str) -> PNCounter:
        c = self._counters.get(name)
        if c is None:
            c = self._counters[name] = PNCounter(_SERVER_SLOT)
        return c

    def _persist(self, name: str, counter: PNCounter) -> None:
        committer = self._committer()
        if committer is None:
            return
        state = counter.state()
        try:
            committer.submit(lambda b: b.set_counter(name, state))
        except Exception as exc:  # closed committer at shutdown: clients re-send their state anyway
            log.warning("counter %r: state not persisted (%s)", name, exc)

    def _subscribe(self, ctx: RequestContext, name: str) -> None:
        mine: set[str] | None = ctx.data.get(_CTX_KEY)
        if mine is None:
            mine = ctx.data[_CTX_KEY] = set()
            ctx.add_cleanup(self._on_close)
        mine.add(name)
        self._subs.setdefault(name, {})[ctx.connection_id] = ctx

    def _on_close(self, ctx: RequestContext) -> None:
        mine: set[str] | None = ctx.data.pop(_CTX_KEY, None)
        for name in mine or ():
            subs = self._subs.get(name)
            if subs is not None:
                subs.pop(ctx.connection_id, None)
                if not subs:
                    del self._subs[name]


def _wire_state(counter: PNCounter) -> CounterState:
    s = counter.state()
    return CounterState(p=s["p"], n=s["n"])


class CoordinationHandlers:
    """The topic, lock and counter processors of one server, installed together.

    ``committer`` persists counter states and fencing counters: a
    :class:`GroupCommitter`, a callable returning one, or None to use the
    server's (``server.core.committer``, the grid's, when the core handlers are
    installed) and, failing that, a private committer on ``server.storage``
    started with the server.
    """

    def __init__(self, server: Any, *, committer: CommitterSource = None) -> None:
        from topgun.server.handlers.locks import LockManager
        from topgun.server.handlers.topics import TopicRegistry

        self.server = server
        self._explicit: CommitterSource = committer
        self._own: GroupCommitter | None = None
        self.topics = TopicRegistry()
        self.locks = LockManager(self.committer)
        self.counters = CounterRegistry(self.committer)
        self.topics.install(server)
        self.locks.install(server)
        self.counters.install(server)
        server.on_startup(self._startup)
        server.on_shutdown(self._shutdown)

    def committer(self) -> GroupCommitter | None:
        """The committer used for counter states and fencing counters right now."""
        src = self._explicit
        if src is not None:
            return src if isinstance(src, GroupCommitter) else src()
        # The core handlers' grid owns the server's committer once it has started.
        core = getattr(self.server, "core", None)
        shared = getattr(core, "committer", None) if core is not None else None
        if isinstance(shared, GroupCommitter):
            return shared
        return self._own

    async def _startup(self, server: Any) -> None:
        storage = server.storage
        core = getattr(server, "core", None)
        grid = core.loaded_grid if core is not None else None
        if grid is not None:
            # The grid already read the whole storage at start-up; don't read it twice.
            self.counters.load(grid.loaded_counters)
            self.locks.load(grid.loaded_fencing)
        else:
            snapshot = await storage.load()
            self.counters.load(snapshot.counters)
            self.locks.load(snapshot.fencing)
        if self.committer() is None:
            self._own = GroupCommitter(storage)
            self._own.start()

    async def _shutdown(self, server: Any) -> None:
        own, self._own = self._own, None
        if own is not None:
            await own.close()


def install_coordination_handlers(server: Any, *, committer: CommitterSource = None) -> CoordinationHandlers:
    """Register the topic, lock and counter processors on ``server`` (see :class:`CoordinationHandlers`)."""
    return CoordinationHandlers(server, committer=committer)
