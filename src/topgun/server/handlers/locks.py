"""Distributed locks with fencing tokens (PROTOCOL.md §4.9, §5.13, §5.15).

* ``LOCK_REQUEST {requestId, name, ttl?}`` is answered exactly once:
  ``LOCK_GRANTED {requestId, name, fencingToken}`` when the lock is free (or its
  lease ran out) or already held by the same connection (same token, lease
  unchanged); ``LOCK_RELEASED {requestId, name, success: false}`` when it is held
  by another connection, when the name is invalid or when ``ttl`` is not
  positive. There is no server-side queue: a client that was refused retries.
* ``LOCK_RELEASE {requestId?, name, fencingToken}`` frees the lock when it is held
  with exactly that token (``success: true``), otherwise ``success: false``.
* A lease that runs out frees the lock silently; a closing connection frees every
  lock it holds.

Fencing tokens are per lock name: the name's counter + 1, never decreasing. The
counter is persisted (``WriteBatch.set_fencing``) and the grant is sent only
after the transaction that holds the new counter committed, so a token handed
out is never handed out again, also across crashes and restarts. If that commit
fails the grant is withdrawn and the request is answered as refused; the
counter stays advanced (the row is retried by the group committer).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Union

from topgun.protocol.messages import LockGranted, LockRelease, LockReleased, LockRequest, MessageType
from topgun.server.handlers.topics import is_valid_name
from topgun.server.interfaces import RequestContext
from topgun.server.persistence import GroupCommitter

__all__ = ["CommitterSource", "LockManager", "PersistsThroughCommitter"]

log = logging.getLogger("topgun.server.locks")

#: A group committer, a callable returning the current one (or None), or None (no persistence).
CommitterSource = Union[GroupCommitter, Callable[[], Union[GroupCommitter, None]], None]  # noqa: UP007


class PersistsThroughCommitter:
    """Base of the coordination handlers that persist through the server's group committer.

    The source is resolved at each use, because the server creates its committer only when it
    starts, after the handlers were installed.
    """

    _committer_source: CommitterSource

    def set_committer(self, committer: CommitterSource) -> None:
        """Use ``committer`` (or a callable returning it) to persist this handler's state."""
        self._committer_source = committer

    def _committer(self) -> GroupCommitter | None:
        src = self._committer_source
        if src is None or isinstance(src, GroupCommitter):
            return src
        return src()

# Key of the per-connection set of held lock names in ``ctx.data``.
_CTX_KEY = "topgun.locks"


class _Lease:
    __slots__ = ("ctx", "expires_at", "name", "owner", "timer", "token")

    def __init__(self, name: str, token: int, ctx: RequestContext, expires_at: float | None) -> None:
        self.name = name
        self.token = token
        self.ctx = ctx
        self.owner = ctx.connection_id
        #: loop time at which the lease runs out, None = until released or disconnected
        self.expires_at = expires_at
        self.timer: asyncio.TimerHandle | None = None


class LockManager(PersistsThroughCommitter):
    """Lock table and fencing counters; the processor of ``LOCK_REQUEST`` and ``LOCK_RELEASE``.

    ``committer`` persists fencing counters (a :class:`GroupCommitter`, or a
    callable returning the server's committer, resolved per grant). Without one
    tokens only grow while the process runs.
    """

    def __init__(self, committer: CommitterSource = None) -> None:
        self._committer_source = committer
        self._held: dict[str, _Lease] = {}
        self._fencing: dict[str, int] = {}
        #: grants issued, refusals sent (busy, invalid, withdrawn), leases expired
        self.grants = 0
        self.denials = 0
        self.expirations = 0

    # -- wiring -------------------------------------------------------------------------------------
    def install(self, server: Any) -> None:
        """Register the processors on ``server.processors``."""
        reg = server.processors
        reg.register(MessageType.LOCK_REQUEST, self.handle_request)
        reg.register(MessageType.LOCK_RELEASE, self.handle_release)

    def load(self, fencing: Mapping[str, int]) -> None:
        """Adopt persisted fencing counters (``Snapshot.fencing``); counters never go down."""
        for name, token in fencing.items():
            t = int(token)
            if t > self._fencing.get(name, 0):
                self._fencing[name] = t

    # -- introspection ------------------------------------------------------------------------------
    def fencing_counter(self, name: str) -> int:
        """The last fencing token issued for ``name`` (0 when none)."""
        return self._fencing.get(name, 0)

    def holder(self, name: str) -> tuple[int, int] | None:
        """``(connection id, fencing token)`` of the live lease of ``name``, or None."""
        lease = self._live(name)
        return None if lease is None else (lease.owner, lease.token)

    def held_names(self) -> list[str]:
        """Names of the locks currently held (live leases)."""
        return sorted(n for n in list(self._held) if self._live(n) is not None)

    # -- processors ---------------------------------------------------------------------------------
    def handle_request(self, ctx: RequestContext, msg: LockRequest) -> Awaitable[None] | None:
        """``LOCK_REQUEST``: grant, re-grant to the holder, or refuse (exactly one reply)."""
        name = msg.name
        rid = msg.request_id
        ttl = msg.ttl
        if not is_valid_name(name) or (ttl is not None and ttl <= 0):
            self._deny(ctx, rid, name)
            return None
        lease = self._live(name)
        if lease is not None:
            if lease.owner == ctx.connection_id:
                ctx.send(LockGranted(request_id=rid, name=name, fencing_token=lease.token))
            else:
                self._deny(ctx, rid, name)
            return None
        token = self._fencing.get(name, 0) + 1
        self._fencing[name] = token
        loop = asyncio.get_running_loop()
        expires_at = None if ttl is None else loop.time() + ttl / 1000.0
        lease = _Lease(name, token, ctx, expires_at)
        if ttl is not None:
            lease.timer = loop.call_later(ttl / 1000.0, self._expire, lease)
        self._held[name] = lease
        held: set[str] | None = ctx.data.get(_CTX_KEY)
        if held is None:
            held = ctx.data[_CTX_KEY] = set()
            ctx.add_cleanup(self._on_close)
        held.add(name)
        committer = self._committer()
        if committer is None:
            self._grant(ctx, rid, lease)
            return None
        try:
            fut = committer.submit(lambda b: b.set_fencing(name, token))
        except Exception as exc:  # the committer is closed (shutdown): refuse rather than grant unpersisted
            log.warning("lock %r: cannot persist fencing counter %d (%s); refused", name, token, exc)
            self._free(lease)
            self._deny(ctx, rid, name)
            return None
        # Awaited by the session before the next message of this connection, which keeps
        # the replies of one connection in the order of its requests (§1.8).
        return self._grant_when_durable(ctx, rid, lease, fut)

    def handle_release(self, ctx: RequestContext, msg: LockRelease) -> None:
        """``LOCK_RELEASE``: free the lock when it is held with exactly ``fencingToken``."""
        name = msg.name
        lease = self._live(name)
        ok = lease is not None and lease.token == msg.fencing_token
        if ok and lease is not None:
            self._free(lease)
        ctx.send(LockReleased(request_id=msg.request_id or "", name=name, success=ok))

    # -- internals ----------------------------------------------------------------------------------
    def _deny(self, ctx: RequestContext, rid: str, name: str) -> None:
        self.denials += 1
        ctx.send(LockReleased(request_id=rid, name=name, success=False))

    def _grant(self, ctx: RequestContext, rid: str, lease: _Lease) -> None:
        self.grants += 1
        ctx.send(LockGranted(request_id=rid, name=lease.name, fencing_token=lease.token))

    async def _grant_when_durable(
        self, ctx: RequestContext, rid: str, lease: _Lease, fut: asyncio.Future[None]
    ) -> None:
        try:
            await asyncio.shield(fut)
        except Exception as exc:
            log.warning("lock %r: fencing counter %d not persisted (%s); grant withdrawn", lease.name,
                        lease.token, exc)
            if self._held.get(lease.name) is lease:
                self._free(lease)
            self._deny(ctx, rid, lease.name)
            return
        if self._held.get(lease.name) is not lease:
            # Expired (or freed by a disconnect) while the commit ran; still exactly one reply.
            self._deny(ctx, rid, lease.name)
            return
        self._grant(ctx, rid, lease)

    def _live(self, name: str) -> _Lease | None:
        lease = self._held.get(name)
        if lease is None:
            return None
        if lease.expires_at is not None and asyncio.get_running_loop().time() >= lease.expires_at:
            self.expirations += 1
            self._free(lease)
            return None
        return lease

    def _expire(self, lease: _Lease) -> None:
        if self._held.get(lease.name) is lease:
            self.expirations += 1
            lease.timer = None
            self._free(lease)

    def _free(self, lease: _Lease) -> None:
        if self._held.get(lease.name) is lease:
            del self._held[lease.name]
        if lease.timer is not None:
            lease.timer.cancel()
            lease.timer = None
        held: set[str] | None = lease.ctx.data.get(_CTX_KEY)
        if held is not None:
            held.discard(lease.name)

    def _on_close(self, ctx: RequestContext) -> None:
        held: set[str] | None = ctx.data.pop(_CTX_KEY, None)
        for name in held or ():
            lease = self._held.get(name)
            if lease is not None and lease.owner == ctx.connection_id:
                self._free(lease)
