"""Distributed locks with fencing tokens on the client (PROTOCOL.md §4.9, §5.13, §8 item 31).

>>> lock = client.lock("invoice-42", ttl=10.0)      # doctest: +SKIP
>>> async with lock as token:                      # token: strictly increasing per lock name
...     await storage.write(invoice, fencing_token=token)
>>> token = await lock.acquire(timeout=5.0)        # LockTimeout when not granted in time
>>> await lock.release()

The server keeps no queue: a busy lock is refused (``LOCK_RELEASED`` with
``success: false``), so :meth:`LockHandle.acquire` retries with jittered
exponential backoff until its timeout. Tasks of one client waiting for the same
lock name are served in arrival order (a local FIFO in front of the server).
A lock needs a live connection: acquiring while offline raises
:class:`~topgun.errors.NotConnectedError` at once, and a lock held when the
connection drops is lost (the server frees it; :attr:`LockHandle.held` turns
False). The server also frees it when the lease (``ttl``) runs out.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
import weakref
from types import EllipsisType, TracebackType
from typing import TYPE_CHECKING, Union

from topgun.client._per_client import PerClient
from topgun.client.state import ConnectionState
from topgun.client.topic import check_name
from topgun.errors import ConfigError, LockTimeout, NotConnectedError
from topgun.protocol.messages import LockGranted, LockRelease, LockReleased, LockRequest, MessageType

if TYPE_CHECKING:
    from topgun.client.client import TopGunClient

__all__ = ["LockHandle", "LockManager", "locks_of"]

log = logging.getLogger("topgun.client.locks")

#: How long a release waits for the server's answer (the TS client's, Appendix B).
RELEASE_WAIT_S = 5.0
#: Retry backoff after a refusal: first delay and cap, in seconds (each times U[0.5, 1.5)).
RETRY_MIN_S = 0.02
RETRY_MAX_S = 1.0

_Reply = Union[LockGranted, LockReleased]  # noqa: UP007


class LockHandle:
    """One distributed lock of one client (from :meth:`TopGunClient.lock`).

    ``ttl`` (seconds) is the lease the server grants; None holds the lock until
    it is released or the connection closes. ``timeout`` is the default of
    :meth:`acquire` (None waits as long as it takes). A handle is not
    re-entrant: acquiring it again while holding it waits for its own release.
    """

    def __init__(self, manager: LockManager, name: str, ttl: float | None, timeout: float | None) -> None:
        self._manager = manager
        self.name = name
        self.ttl = ttl
        self.timeout = timeout
        self._ttl_ms: int | None = None if ttl is None else max(1, round(ttl * 1000))
        self._token: int | None = None
        self._expires_at: float | None = None
        self._owns_mutex = False
        self._lost = False

    # -- state --------------------------------------------------------------------------------------
    @property
    def fencing_token(self) -> int | None:
        """The token of the current (or last lost) grant; None when never granted or released."""
        return self._token

    @property
    def held(self) -> bool:
        """True while granted, not released, not lost with the connection and the lease not run out."""
        if self._token is None or self._lost:
            return False
        exp = self._expires_at
        return exp is None or time.monotonic() < exp

    @property
    def lost(self) -> bool:
        """True when the connection dropped while the lock was held (the server freed it)."""
        return self._lost

    # -- acquire / release --------------------------------------------------------------------------
    async def acquire(self, timeout: float | EllipsisType | None = ...) -> int:
        """Wait until the server grants the lock; return the fencing token.

        ``timeout`` (seconds; default: the handle's) bounds the whole wait, local
        queue included: :class:`LockTimeout` when it passes. ``timeout=0`` tries
        once (one request, its reply awaited). Raises :class:`NotConnectedError`
        when there is no connection (also when it drops while waiting).
        """
        if isinstance(timeout, EllipsisType):
            timeout = self.timeout
        mgr = self._manager
        client = mgr.client
        client._require_open()
        if not client.connected:
            raise NotConnectedError(
                f"cannot acquire lock {self.name!r}: not connected (state {client.state.value})"
            )
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + max(0.0, timeout)
        try_once = timeout is not None and timeout <= 0

        def remaining() -> float | None:
            return None if deadline is None else deadline - loop.time()

        mutex = mgr.mutex(self.name)
        if try_once:
            if mutex.locked():
                raise LockTimeout(f"lock {self.name!r}: held by another task of this client")
            await mutex.acquire()  # free and nobody queued: returns without suspending
        else:
            try:
                await asyncio.wait_for(mutex.acquire(), remaining())
            except asyncio.TimeoutError:
                raise LockTimeout(f"lock {self.name!r}: not granted within {timeout} s (queued)") from None
        rid: str | None = None
        try:
            delay = RETRY_MIN_S
            while True:
                if not client.connected:
                    raise NotConnectedError(f"lock {self.name!r}: connection lost while acquiring")
                rid = uuid.uuid4().hex
                # The server starts the lease when it grants, after we sent: counting from here makes
                # ``held`` turn False no later than the server's expiry.
                sent_at = time.monotonic()
                fut = mgr.request(rid, self.name, self._ttl_ms)
                # The server answers every request; the TS client waits max(ttl + 5 s, 5 s).
                wait = max((self._ttl_ms or 0) / 1000.0 + 5.0, 5.0)
                rem = remaining()
                if rem is not None and not try_once:
                    wait = min(wait, max(rem, 0.0))
                try:
                    reply = await asyncio.wait_for(asyncio.shield(fut), wait)
                except asyncio.TimeoutError:
                    mgr.abandon(rid)
                    rid = None
                    rem = remaining()
                    if try_once or (rem is not None and rem <= 0):
                        raise LockTimeout(f"lock {self.name!r}: not granted within {timeout} s") from None
                    continue
                rid = None
                if isinstance(reply, LockGranted):
                    self._token = int(reply.fencing_token)
                    self._lost = False
                    self._expires_at = None if self._ttl_ms is None else sent_at + self._ttl_ms / 1000.0
                    self._owns_mutex = True
                    mgr._held.add(self)
                    return self._token
                # §8 item 31: LOCK_RELEASED with success false is a refusal (busy, or invalid request).
                rem = remaining()
                if try_once or (rem is not None and rem <= 0):
                    raise LockTimeout(f"lock {self.name!r}: still busy after {timeout} s")
                pause = delay * (0.5 + random.random())
                if rem is not None:
                    pause = min(pause, rem)
                await asyncio.sleep(pause)
                delay = min(delay * 2, RETRY_MAX_S)
        except BaseException:
            if rid is not None:
                mgr.abandon(rid)
            mutex.release()
            raise

    async def release(self) -> bool:
        """Free the lock; True when the server confirmed it was still held with this handle's token.

        False when it was not held (never acquired, already released, lost with the
        connection, or the lease ran out and the server refused the token).
        """
        mgr = self._manager
        token, self._token = self._token, None
        lost = self._lost
        self._lost = False
        self._expires_at = None
        mgr._held.discard(self)
        fut: asyncio.Future[_Reply] | None = None
        if token is not None and not lost and mgr.client.connected:
            rid = uuid.uuid4().hex
            fut = mgr.request(rid, self.name, None, release_token=token)
        # The release is queued before any later request of this connection, so the next
        # local waiter may go ahead now.
        if self._owns_mutex:
            self._owns_mutex = False
            mgr.mutex(self.name).release()
        if fut is None:
            return False
        try:
            reply = await asyncio.wait_for(asyncio.shield(fut), RELEASE_WAIT_S)
        except asyncio.TimeoutError:
            log.warning("lock %r: no answer to the release within %.0f s", self.name, RELEASE_WAIT_S)
            return False
        except NotConnectedError:
            return False
        return isinstance(reply, LockReleased) and reply.success

    async def __aenter__(self) -> int:
        return await self.acquire()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.release()

    def _connection_lost(self) -> None:
        if self._token is not None:
            self._lost = True
        # The server freed the lock with the connection, so local waiters need not wait for
        # this handle's release() (which stays safe to call and returns False).
        if self._owns_mutex:
            self._owns_mutex = False
            self._manager.mutex(self.name).release()

    def __repr__(self) -> str:
        held = self._token is not None and not self._lost
        return f"LockHandle({self.name!r}, held={held}, token={self._token})"


class LockManager:
    """The locks of one client: request correlation, local FIFO per name, connection loss."""

    def __init__(self, client: TopGunClient) -> None:
        self.client = client
        self._pending: dict[str, asyncio.Future[_Reply]] = {}
        self._mutexes: dict[str, asyncio.Lock] = {}
        self._held: weakref.WeakSet[LockHandle] = weakref.WeakSet()
        client.register_handler(MessageType.LOCK_GRANTED, self._on_reply)
        client.register_handler(MessageType.LOCK_RELEASED, self._on_reply)
        client.on_state_change(self._on_state)

    def lock(self, name: str, *, ttl: float | None = 10.0, timeout: float | None = None) -> LockHandle:
        """A new handle on lock ``name`` (handles of one name share the local FIFO)."""
        check_name(name, "lock")
        if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not ttl > 0):
            raise ConfigError(f"lock ttl must be a positive number of seconds or None, not {ttl!r}")
        if ttl is not None and ttl == float("inf"):
            ttl = None
        if timeout is not None and (
            isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout < 0
        ):
            raise ConfigError(f"lock timeout must be a number of seconds >= 0 or None, not {timeout!r}")
        return LockHandle(self, name, ttl, timeout)

    def mutex(self, name: str) -> asyncio.Lock:
        m = self._mutexes.get(name)
        if m is None:
            m = self._mutexes[name] = asyncio.Lock()
        return m

    def request(
        self, rid: str, name: str, ttl_ms: int | None, *, release_token: int | None = None
    ) -> asyncio.Future[_Reply]:
        """Send ``LOCK_REQUEST`` (or ``LOCK_RELEASE`` with ``release_token``); the future gets the reply."""
        fut: asyncio.Future[_Reply] = asyncio.get_running_loop().create_future()
        fut.add_done_callback(_retrieve)
        self._pending[rid] = fut
        if release_token is None:
            self.client.send(LockRequest(request_id=rid, name=name, ttl=ttl_ms))
        else:
            self.client.send(LockRelease(request_id=rid, name=name, fencing_token=release_token))
        return fut

    def abandon(self, rid: str) -> None:
        """Nobody waits for ``rid`` any more: a grant that still arrives for it is released at once."""
        fut = self._pending.get(rid)
        if fut is None:
            return

        def give_back(f: asyncio.Future[_Reply]) -> None:
            if f.cancelled() or f.exception() is not None:
                return
            reply = f.result()
            if isinstance(reply, LockGranted) and self.client.connected:
                rid2, token = uuid.uuid4().hex, reply.fencing_token
                self.client.send(LockRelease(request_id=rid2, name=reply.name, fencing_token=token))

        fut.add_done_callback(give_back)

    def _on_reply(self, msg: _Reply) -> None:
        fut = self._pending.pop(msg.request_id, None)
        if fut is None:
            log.debug("ignoring %s for unknown request %r", msg.TYPE.value, msg.request_id)
            return
        if not fut.done():
            fut.set_result(msg)

    def _on_state(self, state: ConnectionState) -> None:
        if self.client.connected:
            return
        # The server frees every lock of a closed connection and answers nothing more on it.
        pending, self._pending = self._pending, {}
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(NotConnectedError("connection lost while waiting for the lock server"))
        for h in list(self._held):
            h._connection_lost()


def _retrieve(fut: asyncio.Future[_Reply]) -> None:
    # A reply future nobody awaits any more (timed out, abandoned) must not log
    # "exception was never retrieved" when the connection drops.
    if not fut.cancelled():
        fut.exception()


#: The lock manager of a client (created on first use).
locks_of: PerClient[LockManager] = PerClient(LockManager)

