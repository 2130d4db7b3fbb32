"""In-memory client storage: the same contract as SQLite, nothing survives the process.

Useful for tests and for short-lived clients that only need the op log while
running. Transactions only track nesting (there is nothing to make durable),
and :meth:`MemoryStorage.rollback` does not undo writes already made.
"""

from __future__ import annotations

from collections.abc import Iterable

from topgun.client.storage.base import MapKind, OpKind, StoredOp
from topgun.core.records import LWWRecord, ORMapRecord

__all__ = ["MemoryStorage"]


class MemoryStorage:
    """Client storage held in dictionaries.

    Its methods implement :class:`~topgun.client.storage.base.ClientStorage`; see the
    docstrings there.
    """

    def __init__(self) -> None:
        self._meta: dict[str, str] = {}
        self._maps: dict[str, MapKind] = {}
        self._lww: dict[str, dict[str, LWWRecord]] = {}
        self._or: dict[str, dict[str, tuple[str, ORMapRecord]]] = {}  # map -> tag -> (key, record)
        self._or_tomb: dict[str, dict[str, str]] = {}  # map -> tag -> key
        self._ops: dict[int, StoredOp] = {}
        self._max_op = 0
        self._depth = 0
        self.is_open = False

    def open(self) -> None:
        self.is_open = True

    def close(self) -> None:
        self._depth = 0
        self.is_open = False

    def begin(self) -> None:
        self._depth += 1

    def commit(self) -> None:
        if self._depth:
            self._depth -= 1

    def rollback(self) -> None:
        self._depth = 0

    @property
    def in_transaction(self) -> bool:
        return self._depth > 0

    def get_meta(self, key: str) -> str | None:
        return self._meta.get(key)

    def set_meta(self, key: str, value: str) -> None:
        self._meta[key] = value

    def list_maps(self) -> list[tuple[str, MapKind]]:
        return sorted(self._maps.items())

    def add_map(self, name: str, kind: MapKind) -> None:
        self._maps.setdefault(name, MapKind(kind))

    def clear_map(self, name: str) -> None:
        self._lww.pop(name, None)
        self._or.pop(name, None)
        self._or_tomb.pop(name, None)

    def load_lww(self, name: str) -> list[tuple[str, LWWRecord]]:
        return list(self._lww.get(name, {}).items())

    def put_lww(self, name: str, key: str, record: LWWRecord) -> None:
        self._lww.setdefault(name, {})[key] = record

    def put_lww_many(self, name: str, items: Iterable[tuple[str, LWWRecord]]) -> None:
        self._lww.setdefault(name, {}).update(items)

    def delete_lww_many(self, name: str, keys: Iterable[str]) -> None:
        m = self._lww.get(name)
        if m is not None:
            for k in keys:
                m.pop(k, None)

    def write_lww(self, name: str, key: str, record: LWWRecord, op_id: int) -> None:
        m = self._lww.get(name)
        if m is None:
            m = self._lww[name] = {}
        m[key] = record
        self._ops[op_id] = tuple.__new__(
            StoredOp, (op_id, name, OpKind.LWW, key, record.value, record.timestamp, record.ttl_ms, None)
        )
        if op_id > self._max_op:
            self._max_op = op_id

    def load_or(self, name: str) -> tuple[list[tuple[str, ORMapRecord]], list[tuple[str, str]]]:
        records = [(k, r) for k, r in self._or.get(name, {}).values()]
        return records, list(self._or_tomb.get(name, {}).items())

    def replace_or_key(self, name: str, key: str, records: Iterable[ORMapRecord]) -> None:
        m = self._or.setdefault(name, {})
        for tag in [t for t, (k, _) in m.items() if k == key]:
            del m[tag]
        for r in records:
            m[r.tag] = (key, r)

    def add_or_tombstones(self, name: str, pairs: Iterable[tuple[str, str]]) -> None:
        tomb = self._or_tomb.setdefault(name, {})
        recs = self._or.get(name, {})
        for tag, key in pairs:
            tomb[tag] = key
            recs.pop(tag, None)

    def delete_or_tombstones(self, name: str, tags: Iterable[str]) -> None:
        tomb = self._or_tomb.get(name)
        if tomb is not None:
            for t in tags:
                tomb.pop(t, None)

    def append_ops(self, ops: Iterable[StoredOp]) -> None:
        for op in ops:
            self._ops[op[0]] = op
            if op[0] > self._max_op:
                self._max_op = op[0]

    def load_ops(self) -> list[StoredOp]:
        return [self._ops[i] for i in sorted(self._ops)]

    def delete_ops_upto(self, op_id: int) -> None:
        for i in [i for i in self._ops if i <= op_id]:
            del self._ops[i]

    def delete_ops(self, op_ids: Iterable[int]) -> None:
        for i in op_ids:
            self._ops.pop(i, None)

    def max_op_id(self) -> int:
        return self._max_op

    def __repr__(self) -> str:
        return f"MemoryStorage(maps={len(self._maps)}, ops={len(self._ops)})"
