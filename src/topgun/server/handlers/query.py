"""``QUERY_SUB`` / ``QUERY_UNSUB`` and live ``QUERY_UPDATE`` push (PROTOCOL §4.7, §5.11).

:class:`QueryService` is both the processor of the two query messages and a grid
:class:`~topgun.server.grid.ChangeListener`. The snapshot is taken and the
subscription registered inside one synchronous ``handle`` call, and grid
listeners run synchronously inside ``Grid.apply``, so no committed change can fall
between the ``QUERY_RESP`` and the first ``QUERY_UPDATE`` (§5.11 item 3).

Settings (config file keys; unknown to :class:`ServerConfig`, so they live in
``config.extra``):

* ``query_max_rows`` — largest ``QUERY_RESP`` page and live window (default 10,000);
* ``query_indexes`` — ``{map: [field, ...]}`` secondary indexes built at start-up;
* ``query_auto_index`` — build an index the first time a query can use one (default true).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from topgun.core.predicates import InvalidPredicateError, project
from topgun.errors import ConfigError
from topgun.protocol import codec as default_codec
from topgun.protocol.messages import (
    ChangeType,
    MessageType,
    QueryErrorCode,
    QueryResp,
    QueryResultItem,
    QuerySub,
    QueryUnsub,
    QueryUpdate,
)
from topgun.server.grid import Change, ChangeKind, Origin
from topgun.server.interfaces import RequestContext
from topgun.server.query.engine import DEFAULT_MAX_ROWS, QueryEngine, Window

if TYPE_CHECKING:
    from topgun.server.app import TopGunServer
    from topgun.server.handlers import CoreServices

__all__ = ["QueryService", "UpdateFrames", "install_query_handlers"]

log = logging.getLogger("topgun.server.query")

_CLEANUP_KEY = "topgun.queries"


def _setting(server: TopGunServer, name: str, default: Any) -> Any:
    cfg = server.config
    value = getattr(cfg, name, None)
    if value is None:
        value = (getattr(cfg, "extra", None) or {}).get(name)
    return default if value is None else value


#: What the sender needs of one window member: connection id, frame head, send, projected fields.
_Member = tuple[int, bytes, Callable[[bytes], None], Sequence[str] | None]


def _wall_millis() -> int:
    return time.time_ns() // 1_000_000


class UpdateFrames:
    """``QUERY_UPDATE`` frames built from shared parts: ``head(queryId) + tail(key, value, type)``.

    A MsgPack map is the concatenation of its entries, and ``queryId`` is the payload's first
    entry, so a frame splits into a head that depends only on the subscription and a tail that
    depends only on the event. Identical live queries share a window, so the tail of an event is
    encoded once for all of its subscribers and each frame costs one concatenation instead of a
    message object and a full encode. Both parts are cut from the codec's own output, so the
    frames are byte for byte what ``encode(QueryUpdate(...))`` returns (tests compare them on both
    codec twins); if the codec ever lays the message out differently, :attr:`exact` is False and
    callers encode whole messages instead.
    """

    __slots__ = ("_encode", "_prefix", "_suffix", "exact")

    def __init__(self, encode: Callable[[Any], bytes]) -> None:
        self._encode = encode
        blank = encode(QueryUpdate(query_id="", key="", value=None, change_type=ChangeType.UPDATE))
        # everything before the packed queryId, and what an empty key/value/type adds after it
        cut = blank.find(b"\xa7queryId\xa0")
        self.exact = cut > 0
        self._prefix = blank[: cut + 8] if self.exact else b""
        self._suffix = blank[cut + 9 :] if self.exact else b""
        if self.exact:
            qid = "q\u00e9" * 40  # a str8 header and non-ASCII text
            full = encode(QueryUpdate(query_id=qid, key="k", value={"v": [1]}, change_type=ChangeType.ENTER))
            head = self.head(qid)
            tail = self.tail("k", {"v": [1]}, ChangeType.ENTER)
            self.exact = head.startswith(self._prefix) and full == head + tail

    def head(self, query_id: str) -> bytes:
        """Envelope and ``queryId`` entry of every frame of subscription ``query_id``."""
        full = self._encode(QueryUpdate(query_id=query_id, key="", value=None, change_type=ChangeType.UPDATE))
        return full[: len(full) - len(self._suffix)]

    def tail(self, key: str, value: Any, change_type: ChangeType) -> bytes:
        """The ``key``, ``value`` and ``changeType`` entries of one event (any subscription)."""
        full = self._encode(QueryUpdate(query_id="", key=key, value=value, change_type=change_type))
        return full[len(self._prefix) + 1 :]


class QueryService:
    """Live queries of one server: the engine, the two processors and the grid listener."""

    def __init__(
        self,
        core: CoreServices,
        *,
        max_rows: int = DEFAULT_MAX_ROWS,
        declared_indexes: Mapping[str, Sequence[str]] | None = None,
        auto_index: bool = True,
        encode: Callable[[Any], bytes] | None = None,
    ) -> None:
        self.core = core
        self.engine = QueryEngine(
            self._view, max_rows=max_rows, declared_indexes=declared_indexes, auto_index=auto_index
        )
        #: QUERY_UPDATE messages queued (for metrics and tests)
        self.updates_sent = 0
        frames = UpdateFrames(encode if encode is not None else default_codec.encode)
        self._frames = frames if frames.exact else None

    def _view(self, map_name: str) -> Any:
        grid = self.core._grid
        return grid.lww(map_name) if grid is not None else None

    # -- lifecycle ---------------------------------------------------------------------------------
    async def start(self, server: TopGunServer) -> None:
        """Build the declared indexes once the grid is loaded."""
        self.engine.build_declared()

    # -- processors ---------------------------------------------------------------------------------
    def handle(self, ctx: RequestContext, msg: Any) -> None:
        """Dispatch ``QUERY_SUB`` and ``QUERY_UNSUB``."""
        if isinstance(msg, QuerySub):
            self.handle_sub(ctx, msg)
        elif isinstance(msg, QueryUnsub):
            self.engine.unsubscribe(ctx.connection_id, msg.query_id)

    def handle_sub(self, ctx: RequestContext, msg: QuerySub) -> None:
        """Check read permission, snapshot, register, answer ``QUERY_RESP`` — without suspending."""
        qid, name = msg.query_id, msg.map_name
        if not self.core.acl.can_read(ctx, name):
            self.engine.unsubscribe(ctx.connection_id, qid)
            ctx.send(QueryResp(query_id=qid, results=[], error=f"no read permission for map {name!r}",
                               code=QueryErrorCode.FORBIDDEN.value))
            return
        self.core.push.add_interest(ctx, name)
        principal = ctx.principal
        claims = dict(principal.claims) if principal is not None else None
        try:
            snap = self.engine.subscribe(
                ctx, qid, name, msg.query, msg.effective_fields, conn_id=ctx.connection_id, auth=claims
            )
        except InvalidPredicateError as exc:
            self.engine.unsubscribe(ctx.connection_id, qid)
            ctx.send(QueryResp(query_id=qid, results=[], error=str(exc),
                               code=QueryErrorCode.INVALID_QUERY.value))
            return
        if _CLEANUP_KEY not in ctx.data:
            ctx.data[_CLEANUP_KEY] = True
            ctx.add_cleanup(self._on_close)
        ctx.send(QueryResp(
            query_id=qid,
            results=[QueryResultItem(key=k, value=v) for k, v in snap.results],
            next_cursor=snap.next_cursor,
            has_more=snap.has_more,
            cursor_status=snap.cursor_status,
        ))

    def _on_close(self, ctx: RequestContext) -> None:
        self.engine.drop_connection(ctx.connection_id)

    # -- ChangeListener ---------------------------------------------------------------------------
    @property
    def watched_maps(self) -> set[str]:
        """Maps a change to which may matter to a live query (the engine's live set)."""
        return self.engine.watched_maps

    def on_changes(self, changes: Sequence[Change], origin: Origin) -> None:
        """Feed committed LWW changes to the engine and queue the resulting ``QUERY_UPDATE``s."""
        engine = self.engine
        # Most writes go to maps nobody queries, and a batch writes one map or few: decide per
        # distinct map first, so such a batch costs one set, not a step per change.
        if len(changes) == 1:
            if not engine.watches(changes[0].map_name):
                return
        elif not any(engine.watches(name) for name in {ch.map_name for ch in changes}):
            return
        writer = origin.connection_id
        now = 0
        watched: dict[str, bool] = {}
        for ch in changes:
            kind = ch.kind
            if kind is not ChangeKind.PUT and kind is not ChangeKind.REMOVE:
                continue
            name = ch.map_name
            w = watched.get(name)
            if w is None:
                w = watched[name] = engine.watches(name)
            if not w:
                continue
            rec, prev = ch.record, ch.previous
            if (rec is not None and rec.ttl_ms is not None) or (prev is not None and prev.ttl_ms is not None):
                now = now or _wall_millis()
            new = None if rec is None or (rec.ttl_ms is not None and not rec.is_live(now)) else rec.value
            old = None if prev is None or (prev.ttl_ms is not None and not prev.is_live(now)) else prev.value
            if self._frames is None:
                for ctx, update in engine.on_change(name, ch.key, old, new, writer):
                    ctx.send(update)
                    self.updates_sent += 1
                continue
            for win, events in engine.window_changes(name, ch.key, old, new):
                self._send_window(win, events, writer)

    def _fanout(self, win: Window) -> list[_Member]:
        """``(connection id, frame head, send, fields)`` of every member of ``win``, in member order.

        Cached on the window until its members change: a write to a map with a thousand
        subscribers then reads one tuple per member instead of three attributes of the
        subscription, one of its connection and a bound method made for every frame.
        """
        frames = self._frames
        assert frames is not None
        plan: list[_Member] = []
        for sub in win.members.values():
            head = sub.wire
            if head is None:
                head = sub.wire = frames.head(sub.query_id)
            plan.append((sub.conn_id, head, sub.conn.send_frame, sub.fields or None))
        win.fanout = plan
        return plan

    def _send_window(
        self, win: Window, events: list[tuple[ChangeType, str, Any]], writer: int | None
    ) -> None:
        """Queue the frames of one window's events to its members, each tail encoded once."""
        frames = self._frames
        assert frames is not None
        plan = win.fanout
        if plan is None:
            plan = self._fanout(win)
        tails: list[bytes] | None = None
        one: bytes | None = None  # the tail when there is one event (a plain write): no inner loop
        projected: dict[tuple[str, ...], list[bytes]] = {}
        sent = 0
        for cid, head, send, fields in plan:
            if cid == writer:
                continue
            if fields is None:
                if tails is None:
                    tails = [frames.tail(k, v, ct) for ct, k, v in events]
                    if len(tails) == 1:
                        one = tails[0]
                if one is not None:
                    send(head + one)
                    sent += 1
                    continue
                parts = tails
            else:
                fkey = tuple(fields)
                parts = projected.get(fkey)  # type: ignore[assignment]
                if parts is None:
                    parts = projected[fkey] = [
                        frames.tail(k, project(v, fields) if v is not None else v, ct) for ct, k, v in events
                    ]
            for tail in parts:
                send(head + tail)
            sent += len(parts)
        self.updates_sent += sent


def install_query_handlers(server: TopGunServer) -> QueryService:
    """Create the :class:`QueryService` of ``server`` (which must have core handlers) and wire it in."""
    core = server.core
    if core is None:
        raise RuntimeError("live queries need the core handlers (grid, ACL, push)")
    max_rows = _setting(server, "query_max_rows", DEFAULT_MAX_ROWS)
    indexes = _setting(server, "query_indexes", {})
    auto = _setting(server, "query_auto_index", True)
    if not isinstance(max_rows, int) or isinstance(max_rows, bool) or max_rows <= 0:
        raise ConfigError(f"query_max_rows must be a positive integer, got {max_rows!r}")
    if not isinstance(indexes, Mapping) or not all(
        isinstance(m, str) and isinstance(fs, (list, tuple)) and all(isinstance(f, str) for f in fs)
        for m, fs in indexes.items()
    ):
        raise ConfigError("query_indexes must map map names to lists of field names")
    if isinstance(auto, str):
        auto = auto.strip().lower() in {"1", "true", "yes", "on"}
    service = QueryService(core, max_rows=max_rows, declared_indexes=indexes, auto_index=bool(auto))
    server.processors.register(MessageType.QUERY_SUB, service)
    server.processors.register(MessageType.QUERY_UNSUB, service)
    core.add_listener(service)
    server.on_startup(service.start)
    return service
