"""The local replica set of a client: CRDT maps, their persistence, the op log and change events.

Everything here is synchronous and never touches the network. Local writes
change the in-memory replica, then commit the record and its op-log entry in
one storage transaction, then notify subscribers and the sync engine. Remote
changes (server events, sync leaves) go through the ``merge_*`` methods, which
persist only what actually changed.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from topgun.client._wire import pack
from topgun.client.state import ChangeOrigin, MapEvent, ORMapEvent
from topgun.client.storage.base import ClientStorage, MapKind, MetaKey, OpKind, StoredOp
from topgun.core.hlc import HLC, wall_millis
from topgun.core.lww import LWWMap
from topgun.core.ormap import ORMap
from topgun.core.records import LWWRecord, ORMapRecord, Timestamp
from topgun.errors import BackpressureError, ConfigError
from topgun.protocol.messages import ClientOp, OpType

__all__ = ["LocalStore", "same_value", "to_client_op"]

# ``tuple.__new__(StoredOp, fields)`` skips the NamedTuple's Python-level ``__new__``.
_new_stored = tuple.__new__
_LWW = OpKind.LWW


def _check_write(key: Any, value: Any, ttl_ms: Any) -> None:
    if type(key) is not str:
        raise TypeError("keys are strings")
    if value is None:
        raise ValueError("None is not a storable value; use remove()")
    if ttl_ms is not None and (type(ttl_ms) is not int or ttl_ms <= 0):
        raise ValueError("ttl_ms must be a positive int")


_SCALARS = (float, bool, bytes)


def _check_value(value: Any) -> None:
    """Refuse a value MsgPack cannot encode *before* anything changes (replica, storage, op log)."""
    if type(value) not in _SCALARS:
        try:
            pack(value)
        except (TypeError, ValueError, OverflowError) as exc:
            raise TypeError(f"value cannot be encoded: {exc}") from None

log = logging.getLogger("topgun.client")

Listener = Callable[[Any], None]

def to_client_op(op: StoredOp) -> ClientOp:
    """The wire op of an op-log entry (§2.6; ``timestamp`` as the TS op log sends it)."""
    kind = op.kind
    ts = op.timestamp
    if kind == OpKind.LWW:
        rec = LWWRecord(op.value, ts, op.ttl_ms)
        return ClientOp(id=str(op.op_id), map_name=op.map_name, key=op.key,
                        op_type=OpType.PUT if op.value is not None else OpType.REMOVE,
                        record=rec, timestamp=ts)
    if kind == OpKind.OR_ADD:
        assert op.tag is not None
        return ClientOp(id=str(op.op_id), map_name=op.map_name, key=op.key, op_type=OpType.OR_ADD,
                        or_record=ORMapRecord(op.value, ts, op.tag, op.ttl_ms), timestamp=ts)
    return ClientOp(id=str(op.op_id), map_name=op.map_name, key=op.key, op_type=OpType.OR_REMOVE,
                    or_tag=op.tag, timestamp=ts)


def same_value(a: Any, b: Any) -> bool:
    """Value equality as JavaScript's deep equality sees it: ``True`` never equals ``1``."""
    if type(a) is bool or type(b) is bool:
        return type(a) is type(b) and a == b
    if isinstance(a, dict):
        return (isinstance(b, dict) and len(a) == len(b)
                and all(k in b and same_value(v, b[k]) for k, v in a.items()))
    if isinstance(a, (list, tuple)):
        return (isinstance(b, (list, tuple)) and len(a) == len(b)
                and all(same_value(x, y) for x, y in zip(a, b, strict=True)))
    if isinstance(b, (dict, list, tuple)):
        return False
    return bool(a == b)


def _adoptable(local: LWWRecord, remote: LWWRecord) -> bool:
    """A remote record that lost the merge (so it is not newer) but carries the local value."""
    if local is remote or (local.timestamp == remote.timestamp and local.ttl_ms == remote.ttl_ms):
        return False
    return same_value(local.value, remote.value)


class LocalStore:
    """Replicas + storage + op log of one client (no I/O besides the local store)."""

    def __init__(
        self,
        storage: ClientStorage,
        *,
        node_id: str | None = None,
        max_pending_ops: int = 100_000,
        wall_clock: Callable[[], int] | None = None,
    ) -> None:
        if max_pending_ops <= 0:
            raise ConfigError("max_pending_ops must be positive")
        self.storage = storage
        self.max_pending_ops = int(max_pending_ops)
        self._requested_node_id = node_id
        self._wall_clock = wall_clock
        self._now: Callable[[], int] = wall_clock or wall_millis
        self.hlc: HLC = HLC(node_id or "unopened")
        self.node_id = node_id or ""
        self.lww_maps: dict[str, LWWMap] = {}
        self.or_maps: dict[str, ORMap] = {}
        self.pending: dict[int, StoredOp] = {}
        self._pending_order: deque[int] = deque()
        self._pending_append = self._pending_order.append
        self._write_lww = storage.write_lww
        self._next_op_id = 1
        self.last_sync_timestamp = 0
        self.device_token: str | None = None
        self._listeners: dict[str, list[Listener]] = {}
        #: called with no arguments after every new op (the engine schedules a send)
        self.on_new_ops: Callable[[], None] | None = None
        #: called with no arguments whenever pending ops were acknowledged
        self.on_acked: Callable[[], None] | None = None
        #: called with a map name when a map is created after opening
        self.on_map_opened: Callable[[str], None] | None = None
        self._batch_depth = 0
        self._gc_was_enabled = False
        self._batch_new_ops = False
        self._room_waiters: list[asyncio.Future[None]] = []
        #: Hold back the storage writes of remote LWW merges and write them in one transaction
        #: per :meth:`flush_deferred` (they can always be fetched again by a Merkle sync).
        self.defer_remote_writes = True
        self.max_deferred = 50_000
        #: seconds between the first held-back write and the flush
        self.defer_delay = 0.05
        #: called with no arguments when the first deferred write is queued; the default
        #: schedules :meth:`flush_deferred` on the running loop (or flushes at once without one)
        self.on_deferred: Callable[[], None] | None = self._schedule_flush
        self._dirty_lww: dict[str, set[str]] = {}
        self._dirty_count = 0
        self.opened = False

    # -- lifecycle ---------------------------------------------------------------------------------

    def open(self) -> None:
        """Open storage, fix the node id, load every persisted map and the op log."""
        # Loading builds millions of small objects that all stay alive: without the cyclic GC
        # re-scanning them over and over, a large store opens about twice as fast.
        was_enabled = gc.isenabled()
        gc.disable()
        try:
            self._open()
        finally:
            if was_enabled:
                gc.enable()

    def _open(self) -> None:
        st = self.storage
        st.open()
        stored_node = st.get_meta(MetaKey.NODE_ID.value)
        if self._requested_node_id and stored_node and stored_node != self._requested_node_id:
            log.warning("node id %s given, store holds %s; using the given one",
                        self._requested_node_id, stored_node)
        node_id = self._requested_node_id or stored_node or str(uuid.uuid4())
        if node_id != stored_node:
            st.set_meta(MetaKey.NODE_ID.value, node_id)
        self.node_id = node_id
        self.hlc = HLC(node_id, wall_clock=self._wall_clock)
        lst = st.get_meta(MetaKey.LAST_SYNC_TIMESTAMP.value)
        self.last_sync_timestamp = int(lst) if lst and lst.isdecimal() else 0
        self.device_token = st.get_meta(MetaKey.DEVICE_TOKEN.value)
        for name, kind in st.list_maps():
            if kind is MapKind.LWW:
                self.lww_maps[name] = self._load_lww(name)
            else:
                self.or_maps[name] = self._load_or(name)
        for stored in st.load_ops():
            self.pending[stored.op_id] = stored
            self._pending_order.append(stored.op_id)
        self._next_op_id = st.max_op_id() + 1
        self.opened = True

    def close(self) -> None:
        """Write what is held back, remember the next op id, close storage."""
        if not self.opened:
            return
        self.flush_deferred()
        self.storage.set_meta(MetaKey.NEXT_OP_ID.value, str(self._next_op_id))
        self.storage.close()
        self.opened = False

    def _load_lww(self, name: str) -> LWWMap:
        m = LWWMap(self.hlc)
        m.merge_many(self.storage.load_lww(name))
        return m

    def _load_or(self, name: str) -> ORMap:
        m = ORMap(self.hlc, wall_clock=self._wall_clock)
        records, tombstones = self.storage.load_or(name)
        for tag, key in tombstones:
            m.apply_tombstone(tag, key)
        for key, rec in records:
            m.apply(key, rec)
        return m

    # -- maps --------------------------------------------------------------------------------------

    def lww(self, name: str) -> LWWMap:
        """The LWW replica of ``name``, created (and registered in storage) on first use."""
        m = self.lww_maps.get(name)
        if m is None:
            if name in self.or_maps:
                raise ConfigError(f"map {name!r} is an OR map, not an LWW map")
            if not isinstance(name, str) or not name:
                raise ConfigError("map names are non-empty strings")
            m = self.lww_maps[name] = LWWMap(self.hlc)
            self.storage.add_map(name, MapKind.LWW)
            if self.on_map_opened is not None:
                self.on_map_opened(name)
        return m

    def ormap(self, name: str) -> ORMap:
        """The OR replica of ``name``, created (and registered in storage) on first use."""
        m = self.or_maps.get(name)
        if m is None:
            if name in self.lww_maps:
                raise ConfigError(f"map {name!r} is an LWW map, not an OR map")
            if not isinstance(name, str) or not name:
                raise ConfigError("map names are non-empty strings")
            m = self.or_maps[name] = ORMap(self.hlc, wall_clock=self._wall_clock)
            self.storage.add_map(name, MapKind.OR)
            if self.on_map_opened is not None:
                self.on_map_opened(name)
        return m

    # -- listeners ---------------------------------------------------------------------------------

    def subscribe(self, name: str, cb: Listener) -> Callable[[], None]:
        """Register a change listener of map ``name``; returns the unsubscribe callable."""
        lst = self._listeners.setdefault(name, [])
        lst.append(cb)

        def unsubscribe() -> None:
            try:
                lst.remove(cb)
            except ValueError:
                pass

        return unsubscribe

    def _emit(self, name: str, event: Any) -> None:
        lst = self._listeners.get(name)
        if not lst:
            return
        for cb in list(lst):
            try:
                cb(event)
            except Exception:
                log.exception("change listener of map %r failed", name)

    # -- op log ------------------------------------------------------------------------------------

    @property
    def pending_count(self) -> int:
        """Number of unacknowledged ops."""
        return len(self.pending)

    def _check_room(self, n: int = 1) -> None:
        if len(self.pending) + n > self.max_pending_ops and len(self.pending) > 0:
            raise BackpressureError(
                f"{len(self.pending)} ops are waiting for the server (cap {self.max_pending_ops}); "
                "the write was not applied"
            )

    def _new_op_id(self) -> int:
        op_id = self._next_op_id
        self._next_op_id = op_id + 1
        return op_id

    def _queued(self, op: StoredOp) -> None:
        self.pending[op.op_id] = op
        self._pending_order.append(op.op_id)

    def _notify_new_ops(self) -> None:
        if self._batch_depth:
            self._batch_new_ops = True
        elif self.on_new_ops is not None:
            self.on_new_ops()

    def pending_ops(self) -> list[tuple[int, StoredOp]]:
        """``(id, op)`` of every unacknowledged op, ascending id."""
        return [(i, self.pending[i]) for i in self._pending_order if i in self.pending]

    def ack_upto(self, last_id: int) -> int:
        """Drop every pending op with id ``<= last_id`` (memory and storage); return how many."""
        order = self._pending_order
        pending = self.pending
        n = 0
        while order and order[0] <= last_id:
            if pending.pop(order.popleft(), None) is not None:
                n += 1
        if n:
            self.storage.delete_ops_upto(last_id)
            self._wake_room_waiters()
            if self.on_acked is not None:
                self.on_acked()
        return n

    async def wait_for_room(self) -> None:
        """Wait until the op log is below its cap (acknowledgements make room)."""
        while len(self.pending) >= self.max_pending_ops:
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._room_waiters.append(fut)
            try:
                await fut
            finally:
                if fut in self._room_waiters:
                    self._room_waiters.remove(fut)

    def _wake_room_waiters(self) -> None:
        if self._room_waiters and len(self.pending) < self.max_pending_ops:
            for fut in self._room_waiters:
                if not fut.done():
                    fut.set_result(None)
            self._room_waiters.clear()

    def drop_ops(self, op_ids: Iterable[int]) -> None:
        """Remove the given ops from the op log (memory and storage)."""
        ids = [i for i in op_ids if self.pending.pop(i, None) is not None]
        if ids:
            self.storage.delete_ops(ids)
            self._wake_room_waiters()
            if self.on_acked is not None:
                self.on_acked()

    # -- batching ----------------------------------------------------------------------------------

    def begin_batch(self) -> None:
        """Start a ``client.batch()`` block (one storage transaction; GC paused)."""
        self.storage.begin()
        if self._batch_depth == 0:
            # A bulk load allocates millions of small objects; the cyclic GC would re-scan the
            # whole (growing) heap over and over and more than double the cost per write.
            self._gc_was_enabled = gc.isenabled()
            gc.disable()
        self._batch_depth += 1

    def end_batch(self, ok: bool = True) -> None:
        """End a ``client.batch()`` block: commit, then send its ops."""
        self._batch_depth -= 1
        if self._batch_depth == 0 and self._gc_was_enabled:
            gc.enable()
        if ok:
            self.storage.commit()
        else:
            # Keep what was applied in memory durable too: a failed statement already
            # raised, and dropping the rest would lose accepted writes.
            self.storage.commit()
        if self._batch_depth == 0 and self._batch_new_ops:
            self._batch_new_ops = False
            if self.on_new_ops is not None:
                self.on_new_ops()

    # -- local LWW writes --------------------------------------------------------------------------

    def lww_set(self, name: str, key: str, value: Any, ttl_ms: int | None = None) -> LWWRecord:
        """Local LWW write: apply, commit record + op, notify; ``BackpressureError`` at the cap."""
        if type(key) is not str or value is None or ttl_ms is not None:
            _check_write(key, value, ttl_ms)
        if type(value) not in _SCALARS:
            _check_value(value)
        m = self.lww_maps.get(name)
        if m is None:
            m = self.lww(name)
        pending = self.pending
        if len(pending) >= self.max_pending_ops:
            self._check_room()
        listeners = self._listeners.get(name)
        prev = m.get(key) if listeners else None
        record = m.set(key, value, ttl_ms)
        # Inlined on purpose (the bulk-load hot path): op id, durable write, op log, notify.
        op_id = self._next_op_id
        self._next_op_id = op_id + 1
        self._write_lww(name, key, record, op_id)
        pending[op_id] = _new_stored(StoredOp, (op_id, name, _LWW, key, value, record[1], ttl_ms, None))
        self._pending_append(op_id)
        if listeners:
            self._emit(name, MapEvent(name, key, value, prev, ChangeOrigin.LOCAL))
        if self._batch_depth:
            self._batch_new_ops = True
        elif self.on_new_ops is not None:
            self.on_new_ops()
        return record

    def lww_remove(self, name: str, key: str) -> LWWRecord:
        """Local LWW remove (a tombstone), committed with its op."""
        if type(key) is not str:
            raise TypeError("keys are strings")
        m = self.lww_maps.get(name)
        if m is None:
            m = self.lww(name)
        if len(self.pending) >= self.max_pending_ops:
            self._check_room()
        listeners = self._listeners.get(name)
        prev = m.get(key) if listeners else None
        record = m.remove(key)
        op_id = self._new_op_id()
        self.storage.write_lww(name, key, record, op_id)
        self._queued(StoredOp(op_id, name, OpKind.LWW, key, None, record.timestamp, None, None))
        if listeners:
            self._emit(name, MapEvent(name, key, None, prev, ChangeOrigin.LOCAL))
        self._notify_new_ops()
        return record

    # -- local OR writes ---------------------------------------------------------------------------

    def or_add(self, name: str, key: str, value: Any, ttl_ms: int | None = None) -> ORMapRecord:
        """Local OR add, committed with its op."""
        if not isinstance(key, str):
            raise TypeError("keys are strings")
        if ttl_ms is not None and (type(ttl_ms) is not int or ttl_ms <= 0):
            raise ValueError("ttl_ms must be a positive int")
        _check_value(value)
        m = self.ormap(name)
        self._check_room()
        record = m.add(key, value, ttl_ms)
        op = StoredOp(self._new_op_id(), name, OpKind.OR_ADD, key, value, record.timestamp,
                      ttl_ms, record.tag)
        st = self.storage
        st.begin()
        try:
            st.replace_or_key(name, key, m.get_records(key))
            st.append_ops([op])
        except BaseException:
            st.rollback()
            raise
        st.commit()
        self._queued(op)
        self._emit(name, ORMapEvent(name, key, m.get(key), ChangeOrigin.LOCAL))
        self._notify_new_ops()
        return record

    def or_remove(self, name: str, key: str, value: Any) -> list[str]:
        """Local OR remove of every record of ``key`` equal to ``value``; one op per removed tag."""
        m = self.ormap(name)
        self._check_room()
        tags = m.remove(key, value)
        if not tags:
            return tags
        ts = self.hlc.now()
        ops = [StoredOp(self._new_op_id(), name, OpKind.OR_REMOVE, key, None, ts, None, tag)
               for tag in tags]
        st = self.storage
        st.begin()
        try:
            st.add_or_tombstones(name, [(t, key) for t in tags])
            st.append_ops(ops)
        except BaseException:
            st.rollback()
            raise
        st.commit()
        for op in ops:
            self._queued(op)
        self._emit(name, ORMapEvent(name, key, m.get(key), ChangeOrigin.LOCAL))
        self._notify_new_ops()
        return tags

    # -- remote changes ----------------------------------------------------------------------------

    def merge_lww(self, name: str, pairs: Iterable[tuple[str, LWWRecord]]) -> list[str]:
        """Merge remote records into ``name``; persist and announce what changed; return those keys.

        A record that loses the LWW merge but carries the value the replica already
        holds is *adopted* (stored with its older timestamp) unless a write of ours to
        that key is still pending: a server that re-stamps writes with its own clock
        (PROTOCOL.md §8 items 28 and 34) then agrees with us on the timestamp too.
        """
        m = self.lww_maps.get(name)
        if m is None:
            return []
        if type(pairs) is not list:
            pairs = list(pairs)
        listeners = self._listeners.get(name)
        events: list[MapEvent] = []
        if not listeners:
            changed: list[str] = m.merge_many(pairs)
            if len(changed) < len(pairs):
                changed.extend(self._adopt_equal(name, m, pairs, set(changed)))
        else:
            changed = []
            now = self._now()
            pending_keys: set[str] | None = None
            for key, rec in pairs:
                prev = m.get_record(key)
                if m.merge(key, rec):
                    pass
                elif prev is not None and _adoptable(prev, rec):
                    if pending_keys is None:
                        pending_keys = self._pending_lww_keys(name)
                    if key in pending_keys or not m.adopt(key, rec):
                        continue
                else:
                    continue
                changed.append(key)
                pv = prev.value if prev is not None and prev.is_live(now) else None
                nv = rec.value if rec.is_live(now) else None
                if pv != nv or (pv is None) != (nv is None):
                    events.append(MapEvent(name, key, nv, pv, ChangeOrigin.REMOTE))
        if changed:
            if self.defer_remote_writes:
                dirty = self._dirty_lww.get(name)
                if dirty is None:
                    dirty = self._dirty_lww[name] = set()
                first = not self._dirty_count
                dirty.update(changed)
                self._dirty_count += len(changed)
                if self._dirty_count >= self.max_deferred:
                    self.flush_deferred()
                elif first and self.on_deferred is not None:
                    self.on_deferred()
            else:
                get = m.get_record
                self.storage.put_lww_many(name, [(k, get(k)) for k in changed])  # type: ignore[misc]
        for ev in events:
            self._emit(name, ev)
        return changed

    def _pending_lww_keys(self, name: str) -> set[str]:
        return {op.key for op in self.pending.values() if op.map_name == name and op.kind == _LWW}

    def _adopt_equal(
        self, name: str, m: LWWMap, pairs: list[tuple[str, LWWRecord]], merged: set[str]
    ) -> list[str]:
        """Adopt the records of ``pairs`` that lost only on their timestamp (see :meth:`merge_lww`)."""
        adopted: list[str] = []
        get = m.get_record
        pending_keys: set[str] | None = None
        for key, rec in pairs:
            local = get(key)
            # Tuple indexing: this loop runs over every record of a leaf that is already in sync.
            if local is None or local is rec or (local[1] == rec[1] and local[2] == rec[2]):
                continue
            if key in merged or not same_value(local[0], rec[0]):
                continue
            if pending_keys is None:
                pending_keys = self._pending_lww_keys(name)
            if key not in pending_keys and m.adopt(key, rec):
                adopted.append(key)
        return adopted

    def _schedule_flush(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush_deferred()
            return
        loop.call_later(self.defer_delay, self._flush_if_open)

    def _flush_if_open(self) -> None:
        if self.opened:
            self.flush_deferred()

    def flush_deferred(self) -> None:
        """Persist the remote LWW merges held back by ``defer_remote_writes`` (one transaction).

        The *current* record of each dirty key is written, so a local write made in
        between (already committed on its own) is never overwritten by an older one.
        """
        if not self._dirty_count:
            return
        dirty, self._dirty_lww = self._dirty_lww, {}
        self._dirty_count = 0
        st = self.storage
        st.begin()
        try:
            for name, keys in dirty.items():
                m = self.lww_maps.get(name)
                if m is None:
                    continue
                get = m.get_record
                st.put_lww_many(name, [(k, r) for k in keys if (r := get(k)) is not None])
        except BaseException:
            st.rollback()
            raise
        st.commit()

    def or_apply(self, name: str, key: str, record: ORMapRecord) -> bool:
        """Apply a remote OR add (persist + notify when it changed anything)."""
        m = self.or_maps.get(name)
        if m is None or not m.apply(key, record):
            return False
        self.storage.replace_or_key(name, key, m.get_records(key))
        self._emit(name, ORMapEvent(name, key, m.get(key), ChangeOrigin.REMOTE))
        return True

    def or_apply_tombstone(self, name: str, tag: str, key: str | None) -> bool:
        """Apply a remote OR remove of ``tag``."""
        m = self.or_maps.get(name)
        if m is None or m.is_tombstoned(tag):
            return False
        found = m.apply_tombstone(tag, key)
        k = found if found is not None else key
        self.storage.add_or_tombstones(name, [(tag, k or "")])
        if found is not None:
            self._emit(name, ORMapEvent(name, found, m.get(found), ChangeOrigin.REMOTE))
        return found is not None

    def or_merge_entries(
        self, name: str, entries: Iterable[tuple[str, list[ORMapRecord], list[str]]]
    ) -> list[str]:
        """``mergeKey`` for every entry (the server's whole view of the key); persist and announce.

        Before merging, a record of our own whose add was acknowledged, which the
        server does not list, is dropped (without tombstone) when the server lists
        a record with the same value under a tag new to us: a server that
        regenerates tags (PROTOCOL.md §8 item 34) stored our add under that tag.
        Returns the keys whose visible values changed.
        """
        m = self.or_maps.get(name)
        if m is None:
            return []
        changed: list[str] = []
        pending: set[str] | None = None
        st = self.storage
        st.begin()
        try:
            for key, records, tombstones in entries:
                before = m.get(key)
                retagged = False
                if records:
                    if pending is None:
                        pending = self.pending_or_tags(name)
                    retagged = self._drop_retagged(m, key, records, tombstones, pending)
                if m.merge_key(key, records, tombstones) or retagged:
                    new_tombs = [(t, key) for t in tombstones if m.is_tombstoned(t)]
                    if new_tombs:
                        st.add_or_tombstones(name, new_tombs)
                    st.replace_or_key(name, key, m.get_records(key))
                    if m.get(key) != before:
                        changed.append(key)
        except BaseException:
            st.rollback()
            raise
        st.commit()
        for key in changed:
            self._emit(name, ORMapEvent(name, key, m.get(key), ChangeOrigin.REMOTE))
        return changed

    def pending_or_tags(self, name: str) -> set[str]:
        """Tags of the OR adds to ``name`` still waiting for an acknowledgement."""
        return {op.tag for op in self.pending.values()
                if op.map_name == name and op.kind == OpKind.OR_ADD and op.tag is not None}

    def _drop_retagged(self, m: ORMap, key: str, records: list[ORMapRecord],
                       tombstones: list[str], pending: set[str]) -> bool:
        local = m.get_records(key)
        if not local:
            return False
        theirs = {r.tag for r in records}
        gone = set(tombstones)
        suffix = ":" + self.node_id
        own = [r for r in local
               if r.tag not in theirs and r.tag not in gone and r.tag not in pending
               and r.tag.endswith(suffix)]
        if not own:
            return False
        mine = {r.tag for r in local}
        fresh = [r for r in records if r.tag not in mine and not m.is_tombstoned(r.tag)]
        dropped = False
        for r in own:
            for i, s in enumerate(fresh):
                if same_value(s.value, r.value):
                    del fresh[i]
                    m.discard(r.tag)
                    dropped = True
                    break
        return dropped

    def reset_map(
        self, name: str, *, keep_ops_since: Timestamp | None = None, sent_upto: int | None = None
    ) -> None:
        """Wipe a map locally (memory and storage), then re-apply its still-pending ops.

        For an OR map, ``keep_ops_since`` drops pending OR ops stamped before it
        (a full resync's snapshot boundary, §5.9).
        """
        lw = self.lww_maps.get(name)
        om = self.or_maps.get(name)
        if lw is None and om is None:
            return
        self.flush_deferred()
        st = self.storage
        doomed: list[int] = []
        st.begin()
        try:
            st.clear_map(name)
            if lw is not None:
                lw.clear()
                redo = [(op.key, LWWRecord(op.value, op.timestamp, op.ttl_ms))
                        for _, op in self.pending_ops()
                        if op.map_name == name and op.kind == OpKind.LWW]
                for key, rec in redo:
                    lw.merge(key, rec)
                if redo:
                    st.put_lww_many(name, [(k, r) for k, r in lw.records()])
            if om is not None:
                om.clear()
                for i, op in self.pending_ops():
                    if op.map_name != name:
                        continue
                    ts = op.timestamp
                    if (keep_ops_since is not None and ts is not None and ts < keep_ops_since
                            and (sent_upto is None or i <= sent_upto)):
                        doomed.append(i)
                        continue
                    if op.kind == OpKind.OR_ADD and op.tag is not None:
                        om.apply(op.key, ORMapRecord(op.value, ts, op.tag, op.ttl_ms))
                    elif op.kind == OpKind.OR_REMOVE and op.tag is not None:
                        om.apply_tombstone(op.tag, op.key)
                for key in om.record_keys():
                    st.replace_or_key(name, key, om.get_records(key))
                st.add_or_tombstones(name, [(t, om.tombstone_info(t).key or "")  # type: ignore[union-attr]
                                            for t in om.tombstone_tags()])
        except BaseException:
            st.rollback()
            raise
        st.commit()
        if doomed:
            self.drop_ops(doomed)

    def prune(self, older_than: Timestamp) -> None:
        """Tombstone GC in every map (``GC_PRUNE``)."""
        self.flush_deferred()
        st = self.storage
        st.begin()
        try:
            for name, lw in self.lww_maps.items():
                keys = lw.prune(older_than)
                if keys:
                    st.delete_lww_many(name, keys)
            for name, om in self.or_maps.items():
                tags = om.prune(older_than)
                if tags:
                    st.delete_or_tombstones(name, tags)
        except BaseException:
            st.rollback()
            raise
        st.commit()

    # -- meta --------------------------------------------------------------------------------------

    def set_last_sync_timestamp(self, millis: int) -> None:
        """Remember the millis of the last server sync timestamp (persisted)."""
        if millis != self.last_sync_timestamp:
            self.last_sync_timestamp = millis
            self.storage.set_meta(MetaKey.LAST_SYNC_TIMESTAMP.value, str(millis))

    def set_device_token(self, token: str) -> None:
        """Remember the device credential (persisted)."""
        if token != self.device_token:
            self.device_token = token
            self.storage.set_meta(MetaKey.DEVICE_TOKEN.value, token)
