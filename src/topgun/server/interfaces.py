"""The seams between the session layer and the message handlers.

Handlers (write, sync, query, topic, lock, counter) depend on these
:class:`typing.Protocol` s only. The session (:class:`topgun.server.session.Session`)
is the one :class:`RequestContext` implementation; handlers are registered
per message kind on the server's :class:`topgun.server.session.ProcessorRegistry`::

    server.processors.register(MessageType.OP_BATCH, my_write_processor)

Ordering contract (PROTOCOL §1.8): the messages of one connection are handed
to processors strictly one after the other. When ``handle`` returns an
awaitable, the session awaits it before it passes the next message of that
connection on, so work inside the awaitable also counts as part of the message.
A handler that wants to answer later *without* holding the connection back
(e.g. an ``OP_ACK`` after a group commit) should apply its state changes
synchronously in ``handle``, then schedule the late reply itself and return
``None``.

The data-side seams live next to their implementations:
:class:`topgun.server.grid.MapProvider` (read the grid's maps),
:class:`topgun.server.grid.ChangeListener` (be told about every effective change,
with its :class:`~topgun.server.grid.Origin`) and
:class:`topgun.server.handlers.acl.SchemaProvider` (per-map permissions); the
running server exposes them as ``server.core.grid``, ``server.core.add_listener``
and ``server.core.acl`` (see ``docs/grid.md``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol, runtime_checkable

from topgun.server.auth import Principal

__all__ = ["CleanupHook", "OpenHook", "Processor", "RequestContext"]


@runtime_checkable
class RequestContext(Protocol):
    """Who is asking, and how to answer them (one per connection)."""

    #: Server-unique id of the connection.
    connection_id: int

    @property
    def principal(self) -> Principal | None:
        """The authenticated principal (JWT mode), ``None`` in no-auth mode."""
        ...

    @property
    def user_id(self) -> str | None:
        """``principal.user_id`` or ``None``."""
        ...

    @property
    def roles(self) -> tuple[str, ...]:
        """The ``roles`` claim of the token (empty in no-auth mode)."""
        ...

    @property
    def device_id(self) -> str | None:
        """Device identity bound to the connection, if any."""
        ...

    @property
    def closed(self) -> bool:
        """True once the connection is closing or gone; sends are then dropped silently."""
        ...

    #: Per-connection scratch space for processors (subscriptions, interests, …).
    data: dict[str, Any]

    def send(self, message: Any) -> None:
        """Encode one typed message (``topgun.protocol``) and queue it; never blocks."""
        ...

    def send_frame(self, data: bytes) -> None:
        """Queue one already-encoded frame (e.g. a broadcast encoded once for many sessions)."""
        ...

    def send_error(self, code: int, message: str, details: Any = None) -> None:
        """Send ``ERROR {code, message, details?}``."""
        ...

    def add_cleanup(self, hook: CleanupHook) -> None:
        """Run ``hook(ctx)`` when this connection closes (PROTOCOL §5.15), once."""
        ...

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Close the connection after the queued frames were written."""
        ...


@runtime_checkable
class Processor(Protocol):
    """Handles one decoded message of one kind for one connection."""

    def handle(self, ctx: RequestContext, msg: Any) -> Awaitable[None] | None:
        """Apply ``msg``; raise :class:`topgun.errors.ProtocolError` to answer ``ERROR`` with its code."""
        ...


#: Called with the context of a closed connection; may return an awaitable (awaited in the background,
#: and by ``TopGunServer.stop()``).
CleanupHook = Callable[[RequestContext], "Awaitable[None] | None"]

#: Called when a connection enters ``OPEN`` (after ``AUTH_ACK``, or at accept in no-auth mode).
OpenHook = Callable[[RequestContext], None]
