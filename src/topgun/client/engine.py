"""The client's protocol logic, without I/O (PROTOCOL.md §5.2-5.10, client side).

:class:`SyncEngine` takes decoded messages and returns the messages to send;
the transport adapter (:mod:`topgun.client.transport`) owns the socket,
the timers and the token lookup. One engine lives as long as the client; each
connection is one *session* (:meth:`SyncEngine.start_session` …
:meth:`SyncEngine.end_session`), and per-session state (sent batches, sync
walks in progress) is reset between sessions.

Other features (live queries, topics, locks, counters) plug in through
:meth:`SyncEngine.register_handler` and the ``after_auth`` hooks.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from topgun.client._wire import pack
from topgun.client.storage.base import MetaKey
from topgun.client.store import LocalStore, to_client_op
from topgun.core.records import ORMapRecord
from topgun.errors import OpRejectedError
from topgun.protocol.messages import (
    Auth,
    AuthAck,
    AuthFail,
    AuthRequired,
    ClientApplyAck,
    ClientOp,
    DeviceAck,
    DeviceHello,
    Error,
    GcPrune,
    MerkleReqBucket,
    Message,
    MessageType,
    OpAck,
    OpBatch,
    OpRejected,
    OpType,
    ORMapDiffResponse,
    ORMapEntry,
    ORMapMerkleReqBucket,
    ORMapPushDiff,
    ORMapSyncInit,
    ORMapSyncRespBuckets,
    ORMapSyncRespLeaf,
    ORMapSyncRespRoot,
    Ping,
    Pong,
    ServerBatchEvent,
    ServerEvent,
    ServerEventType,
    SyncInit,
    SyncResetRequired,
    SyncRespBuckets,
    SyncRespLeaf,
    SyncRespRoot,
)

__all__ = ["Handler", "SessionPhase", "SyncEngine"]

log = logging.getLogger("topgun.client.sync")

#: A message handler: gets one decoded message, returns messages to send (or None).
Handler = Callable[[Any], "Iterable[Message] | None"]

PROTOCOL_VERSION = 1
#: Keep encoded OP_BATCH frames well below the server's 2 MiB inbound limit (§1.6).
MAX_BATCH_BYTES = 1_500_000


class SessionPhase(str, Enum):
    """Where the current session is."""

    IDLE = "idle"
    AUTHENTICATING = "authenticating"
    READY = "ready"


@dataclass
class _Session:
    phase: SessionPhase = SessionPhase.IDLE
    hello_mode: bool = False  # no token: DEVICE_HELLO + grace fallback (§5.3)
    auth_sent: bool = False
    needs_token: bool = False  # AUTH_REQUIRED arrived and we had no token to send
    auth_failed: AuthFail | None = None
    sent_last_ids: set[str] = field(default_factory=set)
    # (last id, ops, first id) of unacknowledged batches
    inflight: deque[tuple[int, int, int]] = field(default_factory=deque)
    # Sent op ids that an ERROR may have refused (§8 item 35): only their own batch's ack clears them.
    in_doubt: set[int] = field(default_factory=set)
    inflight_ops: int = 0
    unsent: deque[int] = field(default_factory=deque)
    max_sent: int = 0
    max_queued: int = 0  # highest op id put into ``unsent`` on this session
    sync_outstanding: dict[str, int] = field(default_factory=dict)
    sync_sent_upto: dict[str, int] = field(default_factory=dict)
    reset_done: set[str] = field(default_factory=set)
    resend_requested: bool = False
    last_pong: float = 0.0


class SyncEngine:
    """Sans-I/O sync state machine over a :class:`LocalStore`."""

    def __init__(
        self,
        store: LocalStore,
        *,
        batch_size: int = 500,
        max_inflight_ops: int = 10_000,
        monotonic: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], int] | None = None,
    ) -> None:
        self.store = store
        self.batch_size = max(1, int(batch_size))
        #: Unacknowledged ops sent on one connection at most; more follow as acks arrive, so a
        #: long op log does not hit a server's rate limit (the reference allows a 40,000 burst).
        self.max_inflight_ops = max(self.batch_size, int(max_inflight_ops))
        self._mono = monotonic
        self._wall = wall_clock or (lambda: time.time_ns() // 1_000_000)
        self.session = _Session()
        self.sessions = 0
        self.rejected: list[OpRejectedError] = []
        self.on_rejected: list[Callable[[OpRejectedError], None]] = []
        self.on_error: list[Callable[[Error], None]] = []
        #: hooks run after authentication (after ops and map sync): each returns messages to send
        self.after_auth_hooks: list[Callable[[], Iterable[Message]]] = []
        #: called when a session's state changes in a way waiters care about (auth, sync, acks)
        self.on_progress: Callable[[], None] | None = None
        # OR-map epoch coverage (§5.9): per map, the highest covering epoch durably applied.
        self._coverage: dict[str, int] = {}
        self._claimed: int | None = None
        self.user_id: str | None = None
        self.device_id: str | None = None
        self._handlers: dict[MessageType, Handler] = {
            MessageType.AUTH_REQUIRED: self._on_auth_required,
            MessageType.AUTH_ACK: self._on_auth_ack,
            MessageType.AUTH_FAIL: self._on_auth_fail,
            MessageType.DEVICE_ACK: self._on_device_ack,
            MessageType.PONG: self._on_pong,
            MessageType.ERROR: self._on_error,
            MessageType.OP_ACK: self._on_op_ack,
            MessageType.OP_REJECTED: self._on_op_rejected,
            MessageType.SERVER_EVENT: self._on_server_event,
            MessageType.SERVER_BATCH_EVENT: self._on_server_batch_event,
            MessageType.SYNC_RESP_ROOT: self._on_sync_root,
            MessageType.SYNC_RESP_BUCKETS: self._on_sync_buckets,
            MessageType.SYNC_RESP_LEAF: self._on_sync_leaf,
            MessageType.SYNC_RESET_REQUIRED: self._on_sync_reset,
            MessageType.GC_PRUNE: self._on_gc_prune,
            MessageType.ORMAP_SYNC_RESP_ROOT: self._on_or_root,
            MessageType.ORMAP_SYNC_RESP_BUCKETS: self._on_or_buckets,
            MessageType.ORMAP_SYNC_RESP_LEAF: self._on_or_leaf,
            MessageType.ORMAP_DIFF_RESPONSE: self._on_or_diff,
        }

    # -- extension point ---------------------------------------------------------------------------

    def register_handler(self, type_: MessageType, handler: Handler) -> None:
        """Route messages of ``type_`` to ``handler`` (replaces a previous one)."""
        self._handlers[type_] = handler

    # -- session lifecycle -------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """True once the current session is authenticated."""
        return self.session.phase == SessionPhase.READY

    @property
    def needs_token(self) -> bool:
        """True when a JWT server asked for a token and none was sent yet."""
        return self.session.needs_token

    @property
    def auth_failed(self) -> AuthFail | None:
        """The ``AUTH_FAIL`` of this session, if any."""
        return self.session.auth_failed

    def start_session(self, token: str | None) -> list[Message]:
        """A socket just opened: the first frames (``AUTH`` with a token, else ``DEVICE_HELLO``)."""
        self.session = _Session(phase=SessionPhase.AUTHENTICATING, last_pong=self._mono())
        self.sessions += 1
        if token:
            self.session.auth_sent = True
            return [self._auth(token)]
        self.session.hello_mode = True
        return [DeviceHello(device_token=self.store.device_token)]

    def _auth(self, token: str) -> Auth:
        return Auth(token=token, protocol_version=PROTOCOL_VERSION, device_token=self.store.device_token)

    def supply_token(self, token: str) -> list[Message]:
        """The application (or the token callable) supplied a token after ``AUTH_REQUIRED``."""
        s = self.session
        if s.phase != SessionPhase.AUTHENTICATING:
            return []
        s.needs_token = False
        s.hello_mode = False
        s.auth_sent = True
        return [self._auth(token)]

    def grace_expired(self) -> list[Message]:
        """The no-auth grace (500 ms after ``DEVICE_HELLO``) passed without an answer (§5.3)."""
        s = self.session
        if s.phase == SessionPhase.AUTHENTICATING and s.hello_mode and not s.needs_token:
            return self._authenticated()
        return []

    def end_session(self) -> None:
        """The socket closed; per-connection state is dropped (ops stay in the op log)."""
        self.session = _Session()
        self._progress()

    def _progress(self) -> None:
        if self.on_progress is not None:
            self.on_progress()

    # -- receiving ---------------------------------------------------------------------------------

    def receive(self, msg: Any) -> list[Message]:
        """Handle one decoded message; return what to send in reply."""
        s = self.session
        if s.phase == SessionPhase.IDLE:
            return []
        type_ = getattr(msg, "TYPE", None)
        out: list[Message] = []
        if (
            s.phase == SessionPhase.AUTHENTICATING
            and s.hello_mode
            and type_ not in (MessageType.AUTH_REQUIRED, MessageType.DEVICE_ACK,
                              MessageType.AUTH_ACK, MessageType.AUTH_FAIL)
        ):
            # Any other server message ends the no-auth wait (§5.3 step 2).
            out.extend(self._authenticated())
        handler = self._handlers.get(type_) if type_ is not None else None
        if handler is None:
            log.debug("ignoring %s", type_)
            return out
        res = handler(msg)
        if res:
            out.extend(res)
        return out

    # -- handshake ---------------------------------------------------------------------------------

    def _on_auth_required(self, msg: AuthRequired) -> list[Message]:
        s = self.session
        if s.phase == SessionPhase.AUTHENTICATING and not s.auth_sent:
            s.needs_token = True
            self._progress()
        return []

    def _on_auth_ack(self, msg: AuthAck) -> list[Message]:
        if self.session.phase != SessionPhase.AUTHENTICATING:
            return []
        self.user_id = msg.user_id
        if msg.device_id:
            self.device_id = msg.device_id
        if msg.device_token:
            self.store.set_device_token(msg.device_token)
        return self._authenticated()

    def _on_device_ack(self, msg: DeviceAck) -> list[Message]:
        if msg.device_id:
            self.device_id = msg.device_id
        if msg.device_token:
            self.store.set_device_token(msg.device_token)
        s = self.session
        if s.phase == SessionPhase.AUTHENTICATING and s.hello_mode:
            return self._authenticated()
        return []

    def _on_auth_fail(self, msg: AuthFail) -> list[Message]:
        self.session.auth_failed = msg
        self._progress()
        return []

    def _authenticated(self) -> list[Message]:
        """§5.4: resend every unacknowledged op, then start the sync of every map held."""
        s = self.session
        s.phase = SessionPhase.READY
        s.hello_mode = False
        s.last_pong = self._mono()
        s.unsent = deque(i for i, _ in self.store.pending_ops())
        s.max_queued = s.unsent[-1] if s.unsent else 0
        out: list[Message] = self._drain_unsent()
        for name in list(self.store.lww_maps):
            out.extend(self.sync_map(name))
        for name in list(self.store.or_maps):
            out.extend(self.sync_map(name))
        for hook in self.after_auth_hooks:
            try:
                out.extend(hook())
            except Exception:
                log.exception("after-auth hook failed")
        self._progress()
        return out

    # -- writes ------------------------------------------------------------------------------------

    def pump(self) -> list[Message]:
        """Batches for ops created since the last call (sent once each, §5.6 step 5)."""
        s = self.session
        if s.phase != SessionPhase.READY:
            return []
        pending = self.store.pending
        order = self.store._pending_order
        if order and order[-1] > s.max_queued:
            # New ops are exactly the pending ids above the highest one queued on this session.
            start = len(order)
            while start > 0 and order[start - 1] > s.max_queued:
                start -= 1
            for i in range(start, len(order)):
                op_id = order[i]
                if op_id in pending:
                    s.unsent.append(op_id)
            s.max_queued = order[-1]
        return self._drain_unsent()

    def resend_unacked(self) -> list[Message]:
        """Send every pending op again (after the server dropped frames, e.g. ``ERROR`` 429)."""
        s = self.session
        if s.phase != SessionPhase.READY:
            return []
        s.resend_requested = False
        s.unsent = deque(i for i, _ in self.store.pending_ops())
        s.max_queued = max(s.max_queued, s.unsent[-1] if s.unsent else 0)
        s.inflight.clear()
        s.inflight_ops = 0
        s.in_doubt.clear()
        return self._drain_unsent()

    def _drain_unsent(self) -> list[Message]:
        s = self.session
        pending = self.store.pending
        out: list[Message] = []
        unsent = s.unsent
        while unsent and s.inflight_ops < self.max_inflight_ops:
            ops: list[ClientOp] = []
            size = 0
            last = 0
            first = 0
            limit = min(self.batch_size, self.max_inflight_ops - s.inflight_ops)
            while unsent and len(ops) < limit:
                op_id = unsent[0]
                stored = pending.get(op_id)
                if stored is None:
                    unsent.popleft()
                    continue
                op = to_client_op(stored)
                est = _op_size(op)
                if ops and size + est > MAX_BATCH_BYTES:
                    break
                unsent.popleft()
                ops.append(op)
                size += est
                last = op_id
                if not first:
                    first = op_id
            if not ops:
                break
            last_id = str(last)
            s.sent_last_ids.add(last_id)
            s.inflight.append((last, len(ops), first))
            s.inflight_ops += len(ops)
            if last > s.max_sent:
                s.max_sent = last
            out.append(OpBatch(ops=list(ops)))
        return out

    def _on_op_ack(self, msg: OpAck) -> list[Message]:
        s = self.session
        last_id = msg.last_id
        if last_id not in s.sent_last_ids:
            # Not the last id of a batch we sent on this connection (§5.6 step 5, §8 item 36).
            log.debug("ignoring OP_ACK with lastId %r", last_id)
            return []
        n = int(last_id)
        s.sent_last_ids.discard(last_id)
        own_first = n
        for last, _, first in s.inflight:
            if last == n:
                own_first = first
                break
        while s.inflight and s.inflight[0][0] <= n:
            s.inflight_ops -= s.inflight.popleft()[1]
        if s.in_doubt:
            # Ops of an earlier batch that may have been refused are not covered by a later ack.
            s.in_doubt = {i for i in s.in_doubt if not own_first <= i <= n}
        if s.in_doubt:
            below = min(s.in_doubt) - 1
            if below > 0:
                self.store.ack_upto(min(below, n))  # the prefix, as a plain ack (storage-friendly)
            self.store.drop_ops([i for i, _ in self.store.pending_ops()
                                 if i <= n and i not in s.in_doubt])
        else:
            self.store.ack_upto(n)
        self._progress()
        return self._drain_unsent() if s.unsent else []

    def _on_op_rejected(self, msg: OpRejected) -> list[Message]:
        op_id = msg.op_id
        if op_id.isdecimal() and int(op_id) not in self.store.pending:
            return []
        err = OpRejectedError(op_id, int(msg.code) if msg.code is not None else 0, msg.reason)
        log.warning("server rejected op %s (%s): %s", op_id, msg.code, msg.reason)
        self.rejected.append(err)
        for cb in list(self.on_rejected):
            try:
                cb(err)
            except Exception:
                log.exception("on_rejected callback failed")
        return []

    def _on_error(self, msg: Error) -> list[Message]:
        log.warning("server error %s: %s", msg.code, msg.message)
        s = self.session
        if msg.code == 429 and s.inflight:
            # The server dropped a frame, maybe one of our batches: resend later.
            s.resend_requested = True
        elif s.inflight:
            # A TopGun v2 server refuses a whole OP_BATCH with a bare ERROR (§8 item 35). It cannot be
            # told apart from an ERROR about another message, so every op sent and not yet acked stays
            # pending until its own batch is acked (or until it is re-sent after the next authentication).
            pending = self.store.pending
            s.in_doubt.update(i for i in pending if i <= s.max_sent)
        for cb in list(self.on_error):
            try:
                cb(msg)
            except Exception:
                log.exception("on_error callback failed")
        self._progress()
        return []

    @property
    def resend_requested(self) -> bool:
        """True when the server dropped frames and unacknowledged ops should be re-sent."""
        return self.session.resend_requested

    # -- heartbeat ---------------------------------------------------------------------------------

    def ping(self) -> Ping:
        """A ``PING`` stamped with the wall clock."""
        return Ping(timestamp=self._wall())

    def _on_pong(self, msg: Pong) -> list[Message]:
        self.session.last_pong = self._mono()
        return []

    def seconds_since_pong(self) -> float:
        """Seconds since the last ``PONG`` (or since authentication)."""
        return self._mono() - self.session.last_pong

    # -- server push -------------------------------------------------------------------------------

    def _on_server_event(self, msg: ServerEvent) -> list[Message]:
        self._apply_events([msg])
        return []

    def _on_server_batch_event(self, msg: ServerBatchEvent) -> list[Message]:
        self._apply_events(msg.events)
        return []

    def _apply_events(self, events: Iterable[ServerEvent]) -> None:
        store = self.store
        run_map: str | None = None
        run: list[Any] = []
        for ev in events:
            et = ev.event_type
            if et in (ServerEventType.PUT, ServerEventType.REMOVE):
                if ev.record is None or ev.map_name not in store.lww_maps:
                    continue  # §8 item 21: no record, or a map we do not hold
                if run_map != ev.map_name and run:
                    store.merge_lww(run_map, run)  # type: ignore[arg-type]
                    run = []
                run_map = ev.map_name
                run.append((ev.key, ev.record))
                continue
            if run:
                store.merge_lww(run_map, run)  # type: ignore[arg-type]
                run = []
            if et == ServerEventType.OR_ADD and ev.or_record is not None:
                store.or_apply(ev.map_name, ev.key, ev.or_record)
            elif et == ServerEventType.OR_REMOVE and ev.or_tag:
                store.or_apply_tombstone(ev.map_name, ev.or_tag, ev.key)
        if run:
            store.merge_lww(run_map, run)  # type: ignore[arg-type]

    def _on_gc_prune(self, msg: GcPrune) -> list[Message]:
        self.store.prune(msg.older_than)
        return []

    # -- LWW Merkle walk (§5.8) --------------------------------------------------------------------

    @property
    def syncing(self) -> bool:
        """True while a sync walk of this session still waits for answers."""
        return any(n > 0 for n in self.session.sync_outstanding.values())

    def _request(self, name: str) -> None:
        so = self.session.sync_outstanding
        so[name] = so.get(name, 0) + 1

    def _answered(self, name: str) -> None:
        so = self.session.sync_outstanding
        n = so.get(name, 0)
        so[name] = n - 1 if n > 0 else 0

    def sync_map(self, name: str) -> list[Message]:
        """``SYNC_INIT``/``ORMAP_SYNC_INIT`` for one map (on auth, or when opened while connected)."""
        s = self.session
        if s.phase != SessionPhase.READY:
            return []
        store = self.store
        lst = store.last_sync_timestamp or None
        if name in store.lww_maps:
            self._request(name)
            return [SyncInit(map_name=name, last_sync_timestamp=lst)]
        om = store.or_maps.get(name)
        if om is not None:
            self._request(name)
            s.sync_sent_upto[name] = s.max_sent
            buckets = om.merkle.buckets("") if om.merkle is not None else {}
            return [ORMapSyncInit(map_name=name, root_hash=int(om.root_hash),
                                  bucket_hashes=dict(buckets), last_sync_timestamp=lst,
                                  claimed_epoch=self.claimed_epoch or None)]
        return []

    def _root_time(self, ts: Any) -> None:
        self.store.hlc.update(ts)
        self.store.set_last_sync_timestamp(int(ts[0]))

    def _on_sync_root(self, msg: SyncRespRoot) -> list[Message]:
        name = msg.map_name
        self._root_time(msg.timestamp)
        self._answered(name)
        lw = self.store.lww_maps.get(name)
        out: list[Message] = []
        if lw is not None and int(msg.root_hash) != int(lw.root_hash):
            self._request(name)
            out.append(MerkleReqBucket(map_name=name, path=""))
        self._progress()
        return out

    def _on_sync_buckets(self, msg: SyncRespBuckets) -> list[Message]:
        name = msg.map_name
        self._answered(name)
        lw = self.store.lww_maps.get(name)
        out: list[Message] = []
        if lw is not None and lw.merkle is not None and len(msg.path) < 3:
            mine = lw.merkle.buckets(msg.path)
            for c, h in msg.buckets.items():
                if int(mine.get(c, 0)) != int(h):
                    self._request(name)
                    out.append(MerkleReqBucket(map_name=name, path=msg.path + c))
        self._progress()
        return out

    def _on_sync_leaf(self, msg: SyncRespLeaf) -> list[Message]:
        name = msg.map_name
        self._answered(name)
        if name in self.store.lww_maps and msg.records:
            self.store.merge_lww(name, [(lr.key, lr.record) for lr in msg.records])
        self._progress()
        return []

    def _on_sync_reset(self, msg: SyncResetRequired) -> list[Message]:
        name = msg.map_name
        s = self.session
        self._answered(name)
        if name in s.reset_done:
            return []
        s.reset_done.add(name)
        log.info("server asked to reset map %r: %s", name, msg.reason)
        store = self.store
        if name not in store.lww_maps and name not in store.or_maps:
            return []
        store.reset_map(name)
        if name in store.or_maps:
            saved = store.last_sync_timestamp
            store.last_sync_timestamp = 0
            try:
                return self.sync_map(name)
            finally:
                store.last_sync_timestamp = saved
        self._request(name)
        return [SyncInit(map_name=name, last_sync_timestamp=0)]

    # -- OR-Map walk (§5.9) ------------------------------------------------------------------------

    def _on_or_root(self, msg: ORMapSyncRespRoot) -> list[Message]:
        name = msg.map_name
        self._root_time(msg.timestamp)
        self._answered(name)
        store = self.store
        om = store.or_maps.get(name)
        out: list[Message] = []
        if om is None:
            return out
        if msg.full_resync:
            store.reset_map(name, keep_ops_since=msg.timestamp,
                            sent_upto=self.session.sync_sent_upto.get(name, 0))
            self._request(name)
            out.append(ORMapMerkleReqBucket(map_name=name, path=""))
        elif int(msg.root_hash) != int(om.root_hash):
            self._request(name)
            out.append(ORMapMerkleReqBucket(map_name=name, path=""))
        else:
            out.extend(self._covered(name, msg.covering_epoch))
        self._progress()
        return out

    @property
    def claimed_epoch(self) -> int:
        """The last ``CLIENT_APPLY_ACK`` cursor sent (persisted; 0 = never)."""
        if self._claimed is None:
            v = self.store.storage.get_meta(MetaKey.CLAIMED_EPOCH.value)
            self._claimed = int(v) if v is not None and v.isdecimal() else 0
        return self._claimed

    def _covered(self, name: str, epoch: int | None) -> list[Message]:
        """Record that ``name`` is durably applied up to ``epoch``; maybe confirm the minimum."""
        if epoch is None:
            return []
        if epoch > self._coverage.get(name, 0):
            self._coverage[name] = epoch
        ors = self.store.or_maps
        cursor = min((self._coverage.get(n, 0) for n in ors), default=0)
        if cursor > 0 and cursor > self.claimed_epoch:
            self._claimed = cursor
            self.store.storage.set_meta(MetaKey.CLAIMED_EPOCH.value, str(cursor))
            return [ClientApplyAck(cursor=cursor)]
        return []

    def _or_entry(self, name: str, key: str, pending: set[str]) -> ORMapEntry:
        om = self.store.or_maps[name]
        return ORMapEntry(key=key, records=_pushable(om.get_records(key), pending),
                          tombstones=om.tombstones_for(key))

    def _on_or_buckets(self, msg: ORMapSyncRespBuckets) -> list[Message]:
        name = msg.map_name
        self._answered(name)
        om = self.store.or_maps.get(name)
        out: list[Message] = []
        if om is None or om.merkle is None or len(msg.path) >= 3:
            return out
        mine = om.merkle.buckets(msg.path)
        for c, h in msg.buckets.items():
            if int(mine.get(c, 0)) != int(h):
                self._request(name)
                out.append(ORMapMerkleReqBucket(map_name=name, path=msg.path + c))
        push: list[ORMapEntry] = []
        pending: set[str] | None = None
        for c, h in mine.items():
            if h and c not in msg.buckets:
                if pending is None:
                    pending = self.store.pending_or_tags(name)
                push.extend(self._or_entry(name, k, pending) for k in om.merkle.keys_under(msg.path + c))
        if push:
            out.append(ORMapPushDiff(map_name=name, entries=push))
        self._progress()
        return out

    def _on_or_leaf(self, msg: ORMapSyncRespLeaf) -> list[Message]:
        name = msg.map_name
        self._answered(name)
        out = self._merge_or_entries(name, msg.entries, push=True)
        out.extend(self._covered(name, msg.covering_epoch))
        self._progress()
        return out

    def _on_or_diff(self, msg: ORMapDiffResponse) -> list[Message]:
        self._merge_or_entries(msg.map_name, msg.entries, push=False)
        out = self._covered(msg.map_name, msg.covering_epoch)
        self._progress()
        return out

    def _merge_or_entries(self, name: str, entries: list[ORMapEntry], *, push: bool) -> list[Message]:
        store = self.store
        om = store.or_maps.get(name)
        if om is None or not entries:
            return []
        store.or_merge_entries(name, [(e.key, list(e.records), list(e.tombstones)) for e in entries])
        if not push:
            return []
        diff: list[ORMapEntry] = []
        # Adds still in the op log are delivered by it: pushing them too would hand a server that
        # regenerates tags (§8 item 34) the same add twice, under two tags, for good.
        pending = store.pending_or_tags(name)
        for e in entries:
            theirs = {(r.tag, r.timestamp) for r in e.records}
            mine = _pushable(om.get_records(e.key), pending)
            my_tombs = om.tombstones_for(e.key)
            if {(r.tag, r.timestamp) for r in mine} != theirs or not set(my_tombs) <= set(e.tombstones):
                diff.append(ORMapEntry(key=e.key, records=mine, tombstones=my_tombs))
        return [ORMapPushDiff(map_name=name, entries=diff)] if diff else []


def _pushable(records: list[ORMapRecord], pending: set[str]) -> list[ORMapRecord]:
    """The records of a push-diff entry: those whose add is not waiting in the op log."""
    if not pending:
        return records
    return [r for r in records if r.tag not in pending]


def _op_size(op: ClientOp) -> int:
    """A cheap upper-bound-ish estimate of an op's encoded size, for frame budgeting."""
    if op.op_type is OpType.OR_REMOVE:
        return 120 + len(op.key) + len(op.or_tag or "")
    rec: Any = op.record if op.record is not None else op.or_record
    v = rec.value if rec is not None else None
    if v is None or isinstance(v, (bool, int, float)):
        vs = 9
    elif isinstance(v, str):
        vs = len(v) * 3 + 5 if len(v) > 64 else len(v) + 5
    else:
        vs = len(pack(v))
    extra = len(rec.tag) if isinstance(rec, ORMapRecord) else 0
    return 160 + len(op.map_name) + len(op.key) + vs + extra
