"""Live queries on the client (PROTOCOL §4.7, §5.11).

>>> from topgun import P                                          # doctest: +SKIP
>>> q = client.query("todos", predicate=P.and_(P.eq("done", False), P.gt("prio", 2)),
...                  sort=[("prio", "desc")], limit=20)
>>> q.results                                  # [(key, value), ...] in query order, at once
>>> off = q.subscribe(lambda change: print(change.change_type, change.key))
>>> async for change in q: ...                 # QueryChange(ENTER|UPDATE|LEAVE, key, value)
>>> q.close()

The query is evaluated locally over the map's replica with the same predicate and
ordering code the server uses (:mod:`topgun.core.predicates`), so results are there
immediately and offline. While connected, the handle also holds a server
subscription (``QUERY_SUB``, re-sent after every authentication): its snapshot
and ``QUERY_UPDATE``s supply rows the replica does not hold yet. For a key the
replica knows, the replica wins (it also sees this client's own writes, which the
server never echoes, §8 item 30); other keys come from the server's rows. Queries
with a ``cursor`` or ``group_by`` cannot be evaluated offline (§8 item 29): their
results are the server's only.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from topgun.client._per_client import PerClient
from topgun.core.predicates import (
    compile_filter,
    make_sort_key,
    normalize_sort,
    project,
    values_equal,
)
from topgun.protocol.messages import (
    AggFunc,
    Aggregation,
    ChangeType,
    Message,
    MessageType,
    Query,
    QueryResp,
    QuerySub,
    QueryUnsub,
    QueryUpdate,
    SortDirection,
    SortKey,
)

if TYPE_CHECKING:
    from topgun.client.client import TopGunClient
    from topgun.client.state import MapEvent

__all__ = ["QueryChange", "QueryError", "QueryHandle", "QueryManager", "queries_of"]

log = logging.getLogger("topgun.client.query")

_DONE: Any = object()


@dataclass(frozen=True, slots=True)
class QueryChange:
    """One change of a query's visible results; ``value`` is None on ``LEAVE``."""

    change_type: ChangeType
    key: str
    value: Any


@dataclass(frozen=True, slots=True)
class QueryError:
    """The server refused the query (``QUERY_RESP.code``: ``FORBIDDEN``, ``INVALID_QUERY``, …)."""

    code: str
    message: str


class QueryHandle:
    """A live query over one LWW map; create it with :meth:`TopGunClient.query`."""

    def __init__(
        self,
        manager: QueryManager,
        map_name: str,
        *,
        where: Mapping[str, Any] | None = None,
        predicate: Mapping[str, Any] | None = None,
        sort: Any = None,
        limit: int | None = None,
        fields: Sequence[str] | None = None,
        cursor: str | None = None,
        group_by: Sequence[str] | None = None,
        aggregations: Sequence[tuple[str, str | None] | Mapping[str, Any]] | None = None,
    ) -> None:
        if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit <= 0):
            raise ValueError("limit must be a positive integer")
        self._manager = manager
        self.map_name = map_name
        self.query_id = str(uuid.uuid4())
        self.where = dict(where) if where else None
        self.predicate = dict(predicate) if predicate is not None else None
        self.sort = normalize_sort(sort)
        self.limit = limit
        self.fields = list(fields) if fields else None
        self.cursor = cursor
        self.group_by = list(group_by) if group_by is not None else None
        self.aggregations = [_agg(a) for a in aggregations or []]
        #: evaluated locally? (``cursor``/``group_by`` queries, and predicates with ``auth.``
        #: operands, whose claims only the server knows, are server-only)
        self.local = cursor is None and group_by is None and not _uses_auth(self.predicate)
        self._filter = compile_filter(self.where, self.predicate)
        self._key = make_sort_key(self.sort)
        self._server_rows: dict[str, Any] = {}
        self._results: list[tuple[str, Any]] = []
        self._callbacks: list[Callable[[QueryChange], None]] = []
        self._queues: list[asyncio.Queue[Any]] = []
        self._closed = False
        #: True once the server answered the first ``QUERY_RESP``
        self.settled = False
        self.has_more: bool | None = None
        self.next_cursor: str | None = None
        self.cursor_status: str | None = None
        #: the server's refusal, if any
        self.error: QueryError | None = None
        self._settled_event = asyncio.Event()
        self._map = manager.client.get_map(map_name)
        #: local matches: key -> (sort key, projected value), kept up to date from map events
        self._local: dict[str, tuple[tuple[Any, ...], Any]] = {}
        if self.local:
            filt, key, fields = self._filter, self._key, self.fields
            for k, v in self._map.items():
                if v is not None and filt(v):
                    self._local[k] = (key(k, v), project(v, fields))
        self._off_map = self._map.subscribe(self._on_map_event) if self.local else None
        self._recompute(emit=False)

    # -- public ------------------------------------------------------------------------------------
    @property
    def results(self) -> list[tuple[str, Any]]:
        """The current results, ``[(key, value), ...]`` in query order (at most ``limit``)."""
        return list(self._results)

    @property
    def closed(self) -> bool:
        return self._closed

    def subscribe(self, callback: Callable[[QueryChange], None]) -> Callable[[], None]:
        """Call ``callback(QueryChange)`` for every change of :attr:`results`; returns the unsubscribe."""
        self._callbacks.append(callback)

        def off() -> None:
            with contextlib.suppress(ValueError):
                self._callbacks.remove(callback)

        return off

    def __aiter__(self) -> AsyncIterator[QueryChange]:
        queue: asyncio.Queue[Any] = asyncio.Queue()
        if self._closed:
            queue.put_nowait(_DONE)
        self._queues.append(queue)
        return self._iterate(queue)

    async def _iterate(self, queue: asyncio.Queue[Any]) -> AsyncIterator[QueryChange]:
        try:
            while True:
                item = await queue.get()
                if item is _DONE:
                    return
                yield item
        finally:
            with contextlib.suppress(ValueError):
                self._queues.remove(queue)

    async def wait_settled(self, timeout: float | None = 10.0) -> None:
        """Wait for the server's first answer (``QUERY_RESP``)."""
        await asyncio.wait_for(self._settled_event.wait(), timeout)

    def close(self) -> None:
        """Stop the query: unsubscribe on the server, stop local tracking, end async iterations."""
        if self._closed:
            return
        self._closed = True
        if self._off_map is not None:
            self._off_map()
        self._manager._forget(self)
        for q in self._queues:
            q.put_nowait(_DONE)

    def __enter__(self) -> QueryHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"QueryHandle({self.map_name!r}, rows={len(self._results)}, settled={self.settled})"

    # -- wire --------------------------------------------------------------------------------------
    def sub_message(self) -> QuerySub:
        """The ``QUERY_SUB`` of this query."""
        query = Query(
            where=self.where,
            predicate=self.predicate,
            sort=[SortKey(field=f, direction=SortDirection(d)) for f, d in self.sort] or None,
            limit=self.limit,
            cursor=self.cursor,
            group_by=self.group_by,
            aggregations=[Aggregation(func=AggFunc(f), field=fld) for f, fld in self.aggregations] or None,
        )
        return QuerySub(query_id=self.query_id, map_name=self.map_name, query=query, fields=self.fields)

    def _on_resp(self, msg: QueryResp) -> None:
        self.settled = True
        self._settled_event.set()
        if msg.code is not None or msg.error is not None:
            self.error = QueryError(msg.code or "ERROR", msg.error or "")
            self._server_rows = {}
        else:
            self.error = None
            self._server_rows = {r.key: r.value for r in msg.results}
        self.has_more = msg.has_more
        self.next_cursor = msg.next_cursor
        self.cursor_status = msg.cursor_status.value if msg.cursor_status is not None else None
        self._recompute()

    def _on_update(self, msg: QueryUpdate) -> None:
        if msg.change_type is ChangeType.LEAVE:
            self._server_rows.pop(msg.key, None)
        else:
            self._server_rows[msg.key] = msg.value
        self._recompute()

    def _on_map_event(self, event: MapEvent) -> None:
        if self._closed:
            return
        k, v = event.key, event.value
        if v is not None and self._filter(v):
            self._local[k] = (self._key(k, v), project(v, self.fields))
        elif self._local.pop(k, None) is None and k not in self._server_rows:
            return  # neither matched before nor now: nothing visible can change
        self._recompute()

    # -- evaluation --------------------------------------------------------------------------------
    def _compute(self) -> list[tuple[str, Any]]:
        if not self.local:
            rows = list(self._server_rows.items())
            if self.group_by is None:
                key = self._key
                rows.sort(key=lambda kv: key(kv[0], kv[1]))
            return rows[: self.limit] if self.limit else rows
        key = self._key
        replica = self._map
        ranked: list[tuple[Any, str, Any]] = [(sk, k, v) for k, (sk, v) in self._local.items()]
        for k, v in self._server_rows.items():
            if replica.get_record(k) is None:  # the replica has never seen this key: trust the server
                ranked.append((key(k, v), k, v))
        if self.limit and self.limit < len(ranked):
            ranked = heapq.nsmallest(self.limit, ranked, key=lambda r: r[0])
        else:
            ranked.sort(key=lambda r: r[0])
        return [(k, v) for _, k, v in ranked]

    def _recompute(self, *, emit: bool = True) -> None:
        new = self._compute()
        old = self._results
        self._results = new
        if not emit or (not self._callbacks and not self._queues):
            return
        before = dict(old)
        after = dict(new)
        changes: list[QueryChange] = []
        for k in before:
            if k not in after:
                changes.append(QueryChange(ChangeType.LEAVE, k, None))
        for k, v in new:
            if k not in before:
                changes.append(QueryChange(ChangeType.ENTER, k, v))
            elif not values_equal(before[k], v):
                changes.append(QueryChange(ChangeType.UPDATE, k, v))
        for ch in changes:
            for cb in list(self._callbacks):
                try:
                    cb(ch)
                except Exception:
                    log.exception("query callback failed")
            for q in self._queues:
                q.put_nowait(ch)


def _uses_auth(node: Any) -> bool:
    if not isinstance(node, Mapping):
        return False
    ref = node.get("valueRef")
    if isinstance(ref, str) and ref.startswith("auth."):
        return True
    return any(_uses_auth(c) for c in node.get("children") or [])


def _agg(a: tuple[str, str | None] | Mapping[str, Any]) -> tuple[str, str | None]:
    if isinstance(a, Mapping):
        return str(a["func"]), a.get("field")
    func, fld = a
    return str(getattr(func, "value", func)), fld


class QueryManager:
    """The live queries of one client: routing of ``QUERY_RESP``/``QUERY_UPDATE`` and re-subscription."""

    def __init__(self, client: TopGunClient) -> None:
        self.client = client
        self._queries: dict[str, QueryHandle] = {}
        client.register_handler(MessageType.QUERY_RESP, self._on_resp)
        client.register_handler(MessageType.QUERY_UPDATE, self._on_update)
        client.add_after_auth_hook(self._resubscribe)

    def query(self, map_name: str, **kw: Any) -> QueryHandle:
        h = QueryHandle(self, map_name, **kw)
        self._queries[h.query_id] = h
        self.client.send(h.sub_message())
        return h

    def _forget(self, h: QueryHandle) -> None:
        if self._queries.pop(h.query_id, None) is not None:
            self.client.send(QueryUnsub(query_id=h.query_id))

    def _resubscribe(self) -> list[Message]:
        return [h.sub_message() for h in self._queries.values()]

    def _on_resp(self, msg: QueryResp) -> None:
        h = self._queries.get(msg.query_id)
        if h is not None:
            h._on_resp(msg)

    def _on_update(self, msg: QueryUpdate) -> None:
        h = self._queries.get(msg.query_id)
        if h is not None:
            h._on_update(msg)

    def __len__(self) -> int:
        return len(self._queries)


#: The query manager of a client (created on first use).
queries_of: PerClient[QueryManager] = PerClient(QueryManager)
