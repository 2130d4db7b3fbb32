"""Server push of changes (PROTOCOL §5.7): interest tracking and ``SERVER_EVENT`` fan-out.

A connection becomes interested in a map when it syncs it, writes it, pushes a
diff for it or (through the query handler) subscribes to it, provided it may
read it. Every effective change of the grid is sent to every interested
connection except the one that caused it. Each event is encoded once and the
same bytes go to every receiver; several changes of one ``Grid.apply`` call are
coalesced into ``SERVER_BATCH_EVENT`` frames per receiver.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from topgun.protocol import codec as default_codec
from topgun.protocol.messages import ServerBatchEvent, ServerEvent, ServerEventType
from topgun.server.grid import Change, ChangeKind, Origin
from topgun.server.handlers.acl import SchemaProvider
from topgun.server.interfaces import RequestContext

__all__ = ["INTEREST_KEY", "PushNotifier", "server_event"]

#: ``ctx.data`` key holding the set of maps a connection is interested in.
INTEREST_KEY = "push.interest"

#: Events per SERVER_BATCH_EVENT frame (keeps frames well under the clients' message limits).
MAX_EVENTS_PER_FRAME = 512

_EVENT_TYPES = {
    ChangeKind.PUT: ServerEventType.PUT,
    ChangeKind.REMOVE: ServerEventType.REMOVE,
    ChangeKind.OR_ADD: ServerEventType.OR_ADD,
    ChangeKind.OR_REMOVE: ServerEventType.OR_REMOVE,
}


def server_event(change: Change) -> ServerEvent:
    """The ``SERVER_EVENT`` payload announcing one effective change."""
    kind = change.kind
    if kind is ChangeKind.OR_ADD:
        return ServerEvent(
            map_name=change.map_name, event_type=ServerEventType.OR_ADD, key=change.key,
            or_record=change.or_record,
        )
    if kind is ChangeKind.OR_REMOVE:
        return ServerEvent(
            map_name=change.map_name, event_type=ServerEventType.OR_REMOVE, key=change.key,
            or_tag=change.or_tag,
        )
    return ServerEvent(
        map_name=change.map_name, event_type=_EVENT_TYPES[kind], key=change.key, record=change.record
    )


class PushNotifier:
    """A :class:`~topgun.server.grid.ChangeListener` that pushes changes to interested connections."""

    def __init__(self, acl: SchemaProvider, *, encode: Callable[[Any], bytes] | None = None) -> None:
        self.acl = acl
        self._encode = encode if encode is not None else default_codec.encode
        #: map name -> connection id -> context
        self._interest: dict[str, dict[int, RequestContext]] = {}
        #: frames sent (for metrics/tests)
        self.frames_sent = 0

    # -- interest ----------------------------------------------------------------------------------
    def add_interest(self, ctx: RequestContext, map_name: str) -> bool:
        """Make ``ctx`` interested in ``map_name`` if it may read it; True when it is (now) interested."""
        maps: set[str] | None = ctx.data.get(INTEREST_KEY)
        if maps is not None and map_name in maps:
            return True
        if ctx.closed or not self.acl.can_read(ctx, map_name):
            return False
        if maps is None:
            maps = ctx.data[INTEREST_KEY] = set()
            ctx.add_cleanup(self._drop)
        maps.add(map_name)
        self._interest.setdefault(map_name, {})[ctx.connection_id] = ctx
        return True

    def interested(self, map_name: str) -> list[RequestContext]:
        """Connections interested in ``map_name``."""
        return list(self._interest.get(map_name, {}).values())

    def _drop(self, ctx: RequestContext) -> None:
        for name in ctx.data.pop(INTEREST_KEY, ()):
            conns = self._interest.get(name)
            if conns is not None:
                conns.pop(ctx.connection_id, None)
                if not conns:
                    del self._interest[name]

    # -- ChangeListener ----------------------------------------------------------------------------
    @property
    def watched_maps(self) -> dict[str, dict[int, RequestContext]]:
        """Maps some connection is interested in (the live interest table, keyed by map)."""
        return self._interest

    def on_changes(self, changes: Sequence[Change], origin: Origin) -> None:
        interest = self._interest
        if not interest:
            return
        exclude = origin.connection_id
        encode = self._encode
        if len(changes) == 1:
            change = changes[0]
            conns = interest.get(change.map_name)
            if not conns:
                return
            frame: bytes | None = None
            for cid, ctx in conns.items():
                if cid == exclude:
                    continue
                if frame is None:
                    frame = encode(server_event(change))
                ctx.send_frame(frame)
                self.frames_sent += 1
            return
        # Several changes, normally a run to one map whose only interested connection is the
        # writer: settle that per distinct map before looking at changes one by one.
        for name in {change.map_name for change in changes}:
            conns = interest.get(name)
            if conns and (len(conns) > 1 or exclude not in conns):
                break
        else:
            return
        # Collect per receiver the indices of its events, then encode each distinct index list
        # once (normally every receiver gets the same list).
        per_conn: dict[int, list[int]] = {}
        ctxs: dict[int, RequestContext] = {}
        # Changes come in runs of one map: look its receivers up once per run.
        last: str | None = None
        receivers: list[tuple[int, RequestContext]] = []
        for i, change in enumerate(changes):
            name = change.map_name
            if name != last:
                last = name
                conns = interest.get(name)
                receivers = [(cid, ctx) for cid, ctx in conns.items() if cid != exclude] if conns else []
            for cid, ctx in receivers:
                lst = per_conn.get(cid)
                if lst is None:
                    lst = per_conn[cid] = []
                    ctxs[cid] = ctx
                lst.append(i)
        if not per_conn:
            return
        events: dict[int, ServerEvent] = {}
        frames_by_indices: dict[tuple[int, ...], list[bytes]] = {}
        for cid, indices in per_conn.items():
            key = tuple(indices)
            frames = frames_by_indices.get(key)
            if frames is None:
                frames = []
                for start in range(0, len(indices), MAX_EVENTS_PER_FRAME):
                    chunk = indices[start : start + MAX_EVENTS_PER_FRAME]
                    evs = []
                    for i in chunk:
                        ev = events.get(i)
                        if ev is None:
                            ev = events[i] = server_event(changes[i])
                        evs.append(ev)
                    frames.append(encode(evs[0]) if len(evs) == 1 else encode(ServerBatchEvent(events=evs)))
                frames_by_indices[key] = frames
            ctx = ctxs[cid]
            for frame in frames:
                ctx.send_frame(frame)
                self.frames_sent += 1
