"""Hypothesis strategies for every core message kind, and settings for the protocol tests."""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from topgun.core.records import LWWRecord, ORMapRecord, Timestamp
from topgun.protocol import _codec_py
from topgun.protocol import messages as M

_CHECKS = [HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large]
PROPS = settings(max_examples=40, deadline=None, suppress_health_check=_CHECKS)
FEW = settings(max_examples=20, deadline=None, suppress_health_check=_CHECKS)

text = st.text(max_size=12)
ne_text = st.text(min_size=1, max_size=12)
node_ids = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=10)
ints = st.integers(0, 2**53)
u32 = st.integers(0, 2**32 - 1)

timestamps = st.builds(Timestamp, st.integers(0, 2**53), u32, node_ids)

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=False),
    text,
    st.binary(max_size=8),
    st.builds(M.Ext, st.integers(-127, 127), st.binary(max_size=12)),
)
#: opaque user values (anything msgpack can carry, string map keys)
values = st.recursive(
    _scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(text, inner, max_size=4)),
    max_leaves=12,
)
non_nil_values = values.filter(lambda v: v is not None)

ttls = st.none() | st.integers(1, 2**40)
lww_records = st.builds(LWWRecord, values, timestamps, ttls)
or_records = st.builds(ORMapRecord, values, timestamps, ne_text, ttls)


def opt(s: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.none() | s


def enum(e: Any) -> st.SearchStrategy[Any]:
    return st.sampled_from(list(e))


@st.composite
def client_ops(draw: st.DrawFn) -> M.ClientOp:
    kind = draw(enum(M.OpType))
    common = {
        "id": draw(opt(st.integers(1, 2**53).map(str))),
        "map_name": draw(ne_text),
        "key": draw(text),
        "write_concern": draw(opt(enum(M.WriteConcern))),
        "timeout": draw(opt(ints)),
        "timestamp": draw(opt(timestamps)),
    }
    if kind is M.OpType.PUT:
        rec = draw(st.builds(LWWRecord, non_nil_values, timestamps, ttls))
        return M.ClientOp(op_type=kind, record=rec, **common)
    if kind is M.OpType.REMOVE:
        rec = draw(opt(st.builds(LWWRecord, st.none(), timestamps, st.none())))
        return M.ClientOp(op_type=kind, record=rec, **common)
    if kind is M.OpType.OR_ADD:
        return M.ClientOp(op_type=kind, or_record=draw(or_records), **common)
    return M.ClientOp(op_type=kind, or_tag=draw(ne_text), **common)


_BAD = [None, 1.5, -3, "x", "", [], {}, True, 2**40, float("inf")]
_FIELDS = [
    "id",
    "mapName",
    "key",
    "opType",
    "record",
    "orRecord",
    "orTag",
    "writeConcern",
    "timeout",
    "timestamp",
]
_NESTED = ["value", "timestamp", "ttlMs", "tag", "millis", "counter", "nodeId"]


@st.composite
def wire_ops(draw: st.DrawFn) -> Any:
    """A wire op: valid, float-millis (as the TS client sends), or damaged in one place."""
    op = _codec_py._e_op(draw(client_ops()))
    choice = draw(st.integers(0, 4))
    if choice == 1:  # integral floats where JS numbers exceed 32 bits
        for rec_key in ("record", "orRecord"):
            if isinstance(op.get(rec_key), dict):
                op[rec_key]["timestamp"]["millis"] = float(op[rec_key]["timestamp"]["millis"])
        if "timestamp" in op:
            op["timestamp"]["millis"] = float(op["timestamp"]["millis"])
    elif choice == 2:  # the TS op log: op-level timestamp copied from the record, synced flag
        rec = op.get("record") or op.get("orRecord")
        if isinstance(rec, dict):
            op["timestamp"] = copy.deepcopy(rec["timestamp"])
        op["synced"] = False
    elif choice == 3:  # one top-level field damaged or removed
        f = draw(st.sampled_from(_FIELDS))
        if draw(st.booleans()):
            op.pop(f, None)
        else:
            op[f] = draw(st.sampled_from(_BAD))
    elif choice == 4:  # one nested field damaged
        rec_key = draw(st.sampled_from(["record", "orRecord", "timestamp"]))
        target = op.get(rec_key)
        if isinstance(target, dict):
            f = draw(st.sampled_from(_NESTED))
            if f in ("millis", "counter", "nodeId") and isinstance(target.get("timestamp"), dict):
                target = target["timestamp"]
            target[f] = draw(st.sampled_from(_BAD))
    if draw(st.integers(0, 20)) == 0:
        return draw(st.sampled_from(_BAD))  # not even a map
    return op


entries = st.builds(
    M.ORMapEntry, key=text, records=st.lists(or_records, max_size=3), tombstones=st.lists(text, max_size=3)
)
hash_maps = st.dictionaries(st.sampled_from("0123456789abcdef"), u32, max_size=16)
counter_nums = st.integers(0, 2**53) | st.floats(min_value=0, max_value=1e15).filter(
    lambda x: not x.is_integer()
)
counter_states = st.builds(
    M.CounterState,
    p=st.dictionaries(node_ids, counter_nums, max_size=3),
    n=st.dictionaries(node_ids, counter_nums, max_size=3),
)
predicates = st.recursive(
    st.builds(
        lambda op, attr, v: {"op": op, "attribute": attr, "value": v},
        st.sampled_from(["eq", "neq", "gt", "like", "in", "isNull"]),
        text,
        values,
    ),
    lambda inner: st.builds(
        lambda op, ch: {"op": op, "children": ch},
        st.sampled_from(["and", "or", "not"]),
        st.lists(inner, max_size=3),
    ),
    max_leaves=6,
)
queries = st.builds(
    M.Query,
    where=opt(st.dictionaries(text, values, max_size=3)),
    predicate=opt(predicates),
    sort=opt(st.lists(st.builds(M.SortKey, field=text, direction=enum(M.SortDirection)), max_size=3)),
    limit=opt(st.integers(1, 10_000)),
    cursor=opt(text),
    group_by=opt(st.lists(text, max_size=3)),
    aggregations=opt(st.lists(st.builds(M.Aggregation, func=enum(M.AggFunc), field=opt(text)), max_size=3)),
    fields=opt(st.lists(text, max_size=3)),
)
server_events = st.builds(
    M.ServerEvent,
    map_name=text,
    event_type=enum(M.ServerEventType),
    key=text,
    record=opt(lww_records),
    or_record=opt(or_records),
    or_tag=opt(text),
    epoch=opt(ints),
)
op_results = st.builds(
    M.OpResult, op_id=text, success=st.booleans(), achieved_level=enum(M.WriteConcern), error=opt(text)
)

# Per-field overrides; every other field is drawn from its annotation below.
_SPECIAL: dict[type, dict[str, st.SearchStrategy[Any]]] = {
    M.ClientOpMessage: {"op": client_ops()},
    M.OpBatch: {"ops": st.lists(client_ops(), max_size=5)},
    M.OpAck: {"results": opt(st.lists(op_results, max_size=3))},
    M.ServerBatchEvent: {"events": st.lists(server_events, max_size=3)},
    M.SyncRespRoot: {"root_hash": u32},
    M.ORMapSyncInit: {"root_hash": u32},
    M.ORMapSyncRespRoot: {"root_hash": u32},
    M.QueryResp: {"merkle_root_hash": opt(u32)},
    M.Error: {"details": values},
}

_BY_ANNOTATION: dict[str, st.SearchStrategy[Any]] = {
    "str": text,
    "int": ints,
    "bool": st.booleans(),
    "bytes": st.binary(max_size=32),
    "Any": values,
    "Timestamp": timestamps,
    "LWWRecord": lww_records,
    "ORMapRecord": or_records,
    "WriteConcern": enum(M.WriteConcern),
    "ServerEventType": enum(M.ServerEventType),
    "ChangeType": enum(M.ChangeType),
    "CursorStatus": enum(M.CursorStatus),
    "dict[str, int]": hash_maps,
    "list[str]": st.lists(text, max_size=4),
    "list[ORMapEntry]": st.lists(entries, max_size=3),
    "list[LeafRecord]": st.lists(st.builds(M.LeafRecord, key=text, record=lww_records), max_size=3),
    "list[QueryResultItem]": st.lists(st.builds(M.QueryResultItem, key=text, value=values), max_size=3),
    "Query": queries,
    "CounterState": counter_states,
}


def _for_annotation(ann: str) -> st.SearchStrategy[Any]:
    ann = ann.replace(" ", "").replace(",", ", ")
    if ann.endswith("|None"):
        return opt(_BY_ANNOTATION[ann[: -len("|None")]])
    return _BY_ANNOTATION[ann]


def message_strategy(cls: type) -> st.SearchStrategy[Any]:
    kwargs = {}
    special = _SPECIAL.get(cls, {})
    for f in dataclasses.fields(cls):
        kwargs[f.name] = special[f.name] if f.name in special else _for_annotation(str(f.type))
    return st.builds(cls, **kwargs)


ALL_CLASSES = list(M.MESSAGE_CLASSES.values())
messages = st.one_of([message_strategy(c) for c in ALL_CLASSES])


def same_deeply(a: Any, b: Any, path: str = "") -> None:
    """``a == b`` with the same type at every level (``1 == 1.0 == True`` does not count)."""
    assert type(a) is type(b), f"{path}: {type(a).__name__} vs {type(b).__name__}"
    if dataclasses.is_dataclass(a):
        for f in dataclasses.fields(a):
            same_deeply(getattr(a, f.name), getattr(b, f.name), f"{path}.{f.name}")
    elif isinstance(a, tuple | list):  # NamedTuples (records, timestamps, Ext) included
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            same_deeply(x, y, f"{path}[{i}]")
    elif isinstance(a, dict):
        assert list(a) == list(b), path
        for k in a:
            same_deeply(a[k], b[k], f"{path}.{k}")
    else:
        assert a == b, path


def shuffled(obj: Any, rnd: Any) -> Any:
    """The same value with every map's key order permuted (decoders must not care)."""
    if isinstance(obj, dict):
        items = list(obj.items())
        rnd.shuffle(items)
        return {k: shuffled(v, rnd) for k, v in items}
    if isinstance(obj, list):
        return [shuffled(v, rnd) for v in obj]
    return obj
