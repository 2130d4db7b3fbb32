"""Wire codec, pure-Python specification (PROTOCOL.md §1-§2, §4).

``decode(frame)`` turns one binary WebSocket frame into a typed message:

1. the frame size is checked first (:class:`~topgun.errors.FrameTooLargeError`);
2. :func:`scan` walks the MsgPack bytes *iteratively*, without building any
   object: exactly one value, a map at the top, nesting ≤ ``max_depth``, every
   map key a string, every declared length backed by enough remaining bytes
   (so nothing is allocated for a length the frame cannot hold);
3. msgpack builds the plain value (strings as ``str``, ``bin`` as ``bytes``,
   extension values as :class:`~topgun.protocol.messages.Ext`, kept verbatim);
4. :func:`from_wire` checks shape and types of the kind's fields and builds
   the message. Numbers in ``int`` fields may arrive as integral floats and
   become exact ints (§1.4).

Decoding checks shape and types only; semantics (bucket path form, a REMOVE
carrying a record, the inner layout of ``BATCH.data``) belong to the handlers.
The one exception is the ops of ``CLIENT_OP``/``OP_BATCH``: each op is
classified and validated per §5.6 step 1, and an invalid op becomes an
:class:`~topgun.protocol.messages.InvalidOp` in place instead of failing the
frame (§7 decision 4).

``encode(msg)`` builds the wire dict (:func:`to_wire`) in the field order of
the specification and packs it; optional fields that are ``None`` are omitted.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import msgpack

from topgun.core.records import LWWRecord, ORMapRecord, Timestamp
from topgun.errors import (
    FrameTooLargeError,
    ProtocolError,
    UnknownMessageTypeError,
    UnsupportedMessageTypeError,
)
from topgun.protocol.messages import (
    MESSAGE_CLASSES,
    AggFunc,
    Aggregation,
    ChangeType,
    ClientOp,
    ClientOpMessage,
    CounterState,
    CursorStatus,
    Ext,
    InvalidOp,
    LeafRecord,
    Message,
    MessageType,
    OpResult,
    OpType,
    ORMapEntry,
    Query,
    QueryResultItem,
    ServerEvent,
    ServerEventType,
    Shape,
    SortDirection,
    SortKey,
    WriteConcern,
    wire_name,
)

__all__ = [
    "DEFAULT_LIMITS",
    "Limits",
    "decode",
    "encode",
    "encode_batch",
    "from_wire",
    "pack",
    "scan",
    "split_batch",
    "to_wire",
    "unpack",
]

_MAX_U32 = 2**32
_INT_MIN = -(2**63)
_INT_END = 2**64


@dataclass(frozen=True, slots=True)
class Limits:
    """Decoder limits (PROTOCOL.md §1.6, Appendix B). All sizes in bytes or items."""

    #: largest accepted frame (the WebSocket layer should refuse larger ones first, close 1009)
    max_frame_bytes: int = 2 * 1024 * 1024
    #: deepest container nesting of one frame (top-level map = depth 1)
    max_depth: int = 256
    #: longest string (UTF-8 bytes)
    max_str_len: int = 2 * 1024 * 1024
    #: longest bin / ext payload
    max_bin_len: int = 2 * 1024 * 1024
    #: most inner messages of one ``BATCH`` (more: ``ProtocolError`` code 413)
    max_batch_items: int = 8192
    #: deepest ``QUERY_SUB`` predicate tree
    max_predicate_depth: int = 64


DEFAULT_LIMITS = Limits()

_MISSING: Any = object()

# --------------------------------------------------------------------------- byte-level scan

# bytes of payload following the header byte, for fixed-size scalars
_FIXED = {0xC0: 0, 0xC2: 0, 0xC3: 0, 0xCA: 4, 0xCB: 8, 0xCC: 1, 0xCD: 2, 0xCE: 4, 0xCF: 8,
          0xD0: 1, 0xD1: 2, 0xD2: 4, 0xD3: 8}  # fmt: skip
_FIXEXT = {0xD4: 1, 0xD5: 2, 0xD6: 4, 0xD7: 8, 0xD8: 16}
_STR_HDR = {0xD9: 1, 0xDA: 2, 0xDB: 4}
_BIN_HDR = {0xC4: 1, 0xC5: 2, 0xC6: 4}
_EXT_HDR = {0xC7: 1, 0xC8: 2, 0xC9: 4}
_ARR_HDR = {0xDC: 2, 0xDD: 4}
_MAP_HDR = {0xDE: 2, 0xDF: 4}


def _bad(msg: str) -> ProtocolError:
    return ProtocolError(f"malformed frame: {msg}")


def scan(frame: bytes, limits: Limits = DEFAULT_LIMITS) -> list[int]:
    """Validate the MsgPack structure of ``frame`` without building objects.

    Returns the offsets of the type bytes of extension values with code -1
    (msgpack-python would turn those into its ``Timestamp`` and re-encode them
    in a different width; :func:`unpack` keeps them opaque instead).
    Raises :class:`ProtocolError` for anything that is not exactly one MsgPack
    map within the limits.
    """
    buf = memoryview(frame).cast("B") if not isinstance(frame, bytes) else frame
    n = len(buf)
    if n == 0:
        raise _bad("empty frame")
    b0 = buf[0]
    if not (0x80 <= b0 <= 0x8F or b0 == 0xDE or b0 == 0xDF):
        raise ProtocolError("frame is not a MsgPack map")
    max_depth = limits.max_depth
    max_str = limits.max_str_len
    max_bin = limits.max_bin_len
    ext_m1: list[int] = []
    # remaining item counts of the open containers; a map of k pairs holds 2k items
    rem = [1]
    is_map = [False]
    pos = 0
    while rem:
        r = rem[-1]
        if r == 0:
            rem.pop()
            is_map.pop()
            continue
        rem[-1] = r - 1
        if pos >= n:
            raise _bad("truncated")
        b = buf[pos]
        pos += 1
        if is_map[-1] and r % 2 == 0 and not (0xA0 <= b <= 0xBF or 0xD9 <= b <= 0xDB):
            raise ProtocolError("map key is not a string")
        if b <= 0x7F or b >= 0xE0:
            continue
        if b <= 0x8F:  # fixmap
            cnt = (b & 0x0F) * 2
            mp = True
        elif b <= 0x9F:  # fixarray
            cnt = b & 0x0F
            mp = False
        elif b <= 0xBF:  # fixstr
            ln = b & 0x1F
            if pos + ln > n:
                raise _bad("truncated string")
            pos += ln
            continue
        elif b in _FIXED:
            pos += _FIXED[b]
            if pos > n:
                raise _bad("truncated number")
            continue
        elif b in _STR_HDR or b in _BIN_HDR:
            w = _STR_HDR.get(b) or _BIN_HDR[b]
            if pos + w > n:
                raise _bad("truncated length")
            ln = int.from_bytes(buf[pos : pos + w], "big")
            pos += w
            if ln > (max_str if b in _STR_HDR else max_bin):
                raise ProtocolError("string or bin longer than the limit", code=413)
            if pos + ln > n:
                raise _bad("declared length exceeds the frame")
            pos += ln
            continue
        elif b in _FIXEXT or b in _EXT_HDR:
            if b in _FIXEXT:
                ln = _FIXEXT[b]
            else:
                w = _EXT_HDR[b]
                if pos + w > n:
                    raise _bad("truncated length")
                ln = int.from_bytes(buf[pos : pos + w], "big")
                pos += w
                if ln > max_bin:
                    raise ProtocolError("ext longer than the limit", code=413)
            if pos + 1 + ln > n:
                raise _bad("declared length exceeds the frame")
            code = buf[pos]
            if code == 0xFF:
                ext_m1.append(pos)
            elif code == 0x80:
                # -128 is reserved by MsgPack and used internally to carry -1 opaque
                raise ProtocolError("reserved ext type -128")
            pos += 1 + ln
            continue
        elif b in _ARR_HDR or b in _MAP_HDR:
            mp = b in _MAP_HDR
            w = _MAP_HDR[b] if mp else _ARR_HDR[b]
            if pos + w > n:
                raise _bad("truncated length")
            cnt = int.from_bytes(buf[pos : pos + w], "big")
            pos += w
            if mp:
                cnt *= 2
        else:  # 0xC1, never used
            raise _bad(f"invalid byte 0x{b:02x}")
        # every item takes at least one byte
        if cnt > n - pos:
            raise _bad("declared container length exceeds the frame")
        rem.append(cnt)
        is_map.append(mp)
        if len(rem) - 1 > max_depth:
            raise ProtocolError(f"nesting deeper than {max_depth}")
    if pos != n:
        raise _bad("trailing bytes after the value")
    return ext_m1


def _ext_hook(code: int, data: bytes) -> Ext:
    return Ext(-1 if code == -128 else code, data)


def unpack(frame: bytes, limits: Limits | None = None) -> dict[str, Any]:
    """Check and unpack one frame into its plain MsgPack value (a ``dict``)."""
    lim = limits or DEFAULT_LIMITS
    if len(frame) > lim.max_frame_bytes:
        raise FrameTooLargeError(len(frame), lim.max_frame_bytes)
    ext_m1 = scan(frame, lim)
    if ext_m1:
        buf = bytearray(frame)
        for p in ext_m1:
            buf[p] = 0x80
        frame = bytes(buf)
    try:
        obj = msgpack.unpackb(frame, raw=False, strict_map_key=False, ext_hook=_ext_hook)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:  # e.g. invalid UTF-8
        raise ProtocolError(f"malformed frame: {exc}") from None
    return obj  # type: ignore[no-any-return]


def pack(value: Any) -> bytes:
    """Pack a plain value (strings as str, bytes as bin, :class:`Ext` verbatim)."""
    return msgpack.packb(value, use_bin_type=True)  # type: ignore[no-any-return]


# --------------------------------------------------------------------------- field decoders
# Each takes (wire value, field path, limits) and returns the Python value or raises.


def _type_error(path: str, what: str) -> ProtocolError:
    return ProtocolError(f"{path} must be {what}", field=path)


def _d_str(v: Any, path: str, lim: Limits) -> str:
    if type(v) is not str:
        raise _type_error(path, "a string")
    return v


def _as_int(v: Any, path: str) -> int:
    t = type(v)
    if t is int:
        return v  # type: ignore[no-any-return]
    if t is float:
        # integral floats are how JS numbers ≥ 2^32 travel (§1.4); never keep them as float
        if v.is_integer() and _INT_MIN <= v < _INT_END:
            return int(v)
        raise ProtocolError(f"{path} must be an integer, got {v!r}", field=path)
    raise _type_error(path, "an integer")


def _d_int(v: Any, path: str, lim: Limits) -> int:
    return _as_int(v, path)


def _d_uint32(v: Any, path: str, lim: Limits) -> int:
    i = _as_int(v, path)
    if not 0 <= i < _MAX_U32:
        raise ProtocolError(f"{path} must be an unsigned 32-bit integer", field=path)
    return i


def _d_bool(v: Any, path: str, lim: Limits) -> bool:
    if type(v) is not bool:
        raise _type_error(path, "a boolean")
    return v


def _d_any(v: Any, path: str, lim: Limits) -> Any:
    return v


def _d_bin(v: Any, path: str, lim: Limits) -> bytes:
    if type(v) is not bytes:
        raise _type_error(path, "a byte string (bin)")
    return v


def _d_map(v: Any, path: str, lim: Limits) -> dict[str, Any]:
    if type(v) is not dict:
        raise _type_error(path, "a map")
    return v


def _d_str_list(v: Any, path: str, lim: Limits) -> list[str]:
    if type(v) is not list:
        raise _type_error(path, "an array of strings")
    for i, s in enumerate(v):
        if type(s) is not str:
            raise _type_error(f"{path}[{i}]", "a string")
    return v


def _d_hash_map(v: Any, path: str, lim: Limits) -> dict[str, int]:
    if type(v) is not dict:
        raise _type_error(path, "a map of hashes")
    return {k: _d_uint32(h, f"{path}.{k}", lim) for k, h in v.items()}


def _enum_decoder(enum: type) -> Callable[[Any, str, Limits], Any]:
    members = {m.value: m for m in enum}  # type: ignore[attr-defined]
    allowed = ", ".join(members)

    def dec(v: Any, path: str, lim: Limits) -> Any:
        m = members.get(v) if type(v) is str else None
        if m is None:
            raise ProtocolError(f"{path} must be one of {allowed}", field=path)
        return m

    return dec


_d_write_concern = _enum_decoder(WriteConcern)
_d_event_type = _enum_decoder(ServerEventType)
_d_change_type = _enum_decoder(ChangeType)
_d_cursor_status = _enum_decoder(CursorStatus)
_d_sort_dir = _enum_decoder(SortDirection)
_d_agg_func = _enum_decoder(AggFunc)


def _get(d: dict[str, Any], key: str, path: str) -> Any:
    """A required field: present and not nil."""
    v = d.get(key)
    if v is None:
        raise ProtocolError(f"missing field {path}.{key}", field=f"{path}.{key}")
    return v


def _d_timestamp(v: Any, path: str, lim: Limits) -> Timestamp:
    if type(v) is not dict:
        raise _type_error(path, "a Timestamp map")
    millis = _as_int(_get(v, "millis", path), path + ".millis")
    counter = _as_int(_get(v, "counter", path), path + ".counter")
    node = _get(v, "nodeId", path)
    if type(node) is not str:
        raise _type_error(path + ".nodeId", "a string")
    if millis < 0:
        raise ProtocolError(f"{path}.millis must be >= 0", field=path + ".millis")
    if not 0 <= counter < _MAX_U32:
        raise ProtocolError(f"{path}.counter out of range", field=path + ".counter")
    if not node or ":" in node:
        raise ProtocolError(f"{path}.nodeId must be non-empty without ':'", field=path + ".nodeId")
    return Timestamp(millis, counter, node)


def _opt_int(d: dict[str, Any], key: str, path: str) -> int | None:
    v = d.get(key)
    return None if v is None else _as_int(v, f"{path}.{key}")


def _d_lww(v: Any, path: str, lim: Limits) -> LWWRecord:
    if type(v) is not dict:
        raise _type_error(path, "an LWWRecord map")
    ts = _d_timestamp(_get(v, "timestamp", path), path + ".timestamp", lim)
    # an absent value reads as nil (a tombstone): JS `undefined` is stripped on the wire
    return LWWRecord(v.get("value"), ts, _opt_int(v, "ttlMs", path))


def _d_or_record(v: Any, path: str, lim: Limits) -> ORMapRecord:
    if type(v) is not dict:
        raise _type_error(path, "an ORMapRecord map")
    ts = _d_timestamp(_get(v, "timestamp", path), path + ".timestamp", lim)
    tag = _get(v, "tag", path)
    if type(tag) is not str:
        raise _type_error(path + ".tag", "a string")
    return ORMapRecord(v.get("value"), ts, tag, _opt_int(v, "ttlMs", path))


def _maps_of(
    v: Any, path: str, array: str = "an array", item: str = "a map"
) -> Iterator[tuple[dict[str, Any], str]]:
    """Each element of the array ``v`` with its path, checked to be a map (in order, lazily, so
    the first bad element raises only after the ones before it were decoded)."""
    if type(v) is not list:
        raise _type_error(path, array)
    for i, e in enumerate(v):
        p = f"{path}[{i}]"
        if type(e) is not dict:
            raise _type_error(p, item)
        yield e, p


def _d_entries(v: Any, path: str, lim: Limits) -> list[ORMapEntry]:
    out = []
    for e, p in _maps_of(v, path, "an array of ORMapEntry", "an ORMapEntry map"):
        key = _d_str(_get(e, "key", p), p + ".key", lim)
        recs = e.get("records")
        if recs is None:
            recs = []
        elif type(recs) is not list:
            raise _type_error(p + ".records", "an array")
        tombs = e.get("tombstones")
        tombs = [] if tombs is None else _d_str_list(tombs, p + ".tombstones", lim)
        out.append(
            ORMapEntry(
                key=key,
                records=[_d_or_record(r, f"{p}.records[{j}]", lim) for j, r in enumerate(recs)],
                tombstones=tombs,
            )
        )
    return out


def _d_leaf_records(v: Any, path: str, lim: Limits) -> list[LeafRecord]:
    return [
        LeafRecord(
            key=_d_str(_get(e, "key", p), p + ".key", lim),
            record=_d_lww(_get(e, "record", p), p + ".record", lim),
        )
        for e, p in _maps_of(v, path)
    ]


def _d_results(v: Any, path: str, lim: Limits) -> list[QueryResultItem]:
    return [
        QueryResultItem(key=_d_str(_get(e, "key", p), p + ".key", lim), value=e.get("value"))
        for e, p in _maps_of(v, path)
    ]


def _d_op_results(v: Any, path: str, lim: Limits) -> list[OpResult]:
    return [
        OpResult(
            op_id=_d_str(_get(e, "opId", p), p + ".opId", lim),
            success=_d_bool(_get(e, "success", p), p + ".success", lim),
            achieved_level=_d_write_concern(_get(e, "achievedLevel", p), p + ".achievedLevel", lim),
            error=None if e.get("error") is None else _d_str(e["error"], p + ".error", lim),
        )
        for e, p in _maps_of(v, path)
    ]


def _num_map(v: Any, path: str) -> dict[str, int | float]:
    if type(v) is not dict:
        raise _type_error(path, "a map of numbers")
    out: dict[str, int | float] = {}
    for k, x in v.items():
        t = type(x)
        if t is float:
            if not math.isfinite(x) or x < 0:
                raise ProtocolError(f"{path}.{k} must be a non-negative number", field=f"{path}.{k}")
            if x.is_integer():
                x = int(x)
        elif t is not int or x < 0:
            raise ProtocolError(f"{path}.{k} must be a non-negative number", field=f"{path}.{k}")
        out[k] = x
    return out


def _merge_max(a: dict[str, int | float], b: dict[str, int | float]) -> dict[str, int | float]:
    out = dict(a)
    for k, x in b.items():
        if k not in out or x > out[k]:
            out[k] = x
    return out


def _d_counter_state(v: Any, path: str, lim: Limits) -> CounterState:
    if type(v) is not dict:
        raise _type_error(path, "a counter state map")
    parts = {}
    for short, long in (("p", "positive"), ("n", "negative")):
        a = v.get(short)
        b = v.get(long)
        ma = {} if a is None else _num_map(a, f"{path}.{short}")
        mb = {} if b is None else _num_map(b, f"{path}.{long}")
        parts[short] = _merge_max(ma, mb) if ma and mb else (ma or mb)
    return CounterState(p=parts["p"], n=parts["n"])


def _check_predicate(root: Any, path: str, lim: Limits) -> dict[str, Any]:
    """Shape of a predicate tree, walked with an explicit stack (bounded depth)."""
    stack = [(root, path, 1)]
    while stack:
        node, p, depth = stack.pop()
        if depth > lim.max_predicate_depth:
            raise ProtocolError(f"predicate deeper than {lim.max_predicate_depth}", field=p)
        if type(node) is not dict:
            raise _type_error(p, "a predicate map")
        if type(node.get("op")) is not str:
            raise _type_error(p + ".op", "a string")
        for k in ("attribute", "valueRef"):
            x = node.get(k)
            if x is not None and type(x) is not str:
                raise _type_error(f"{p}.{k}", "a string")
        ch = node.get("children")
        if ch is not None:
            if type(ch) is not list:
                raise _type_error(p + ".children", "an array")
            for i, c in enumerate(ch):
                stack.append((c, f"{p}.children[{i}]", depth + 1))
    return root  # type: ignore[no-any-return]


def _d_query(v: Any, path: str, lim: Limits) -> Query:
    if type(v) is not dict:
        raise _type_error(path, "a Query map")
    where = v.get("where")
    if where is not None:
        _d_map(where, path + ".where", lim)
    pred = v.get("predicate")
    if pred is not None:
        _check_predicate(pred, path + ".predicate", lim)
    sort_raw = v.get("sort")
    sort: list[SortKey] | None = None
    if sort_raw is not None:
        sp = path + ".sort"
        if type(sort_raw) is list:
            sort = []
            for i, s in enumerate(sort_raw):
                p = f"{sp}[{i}]"
                if type(s) is not dict:
                    raise _type_error(p, "a {field, direction} map")
                d = s.get("direction")
                sort.append(
                    SortKey(
                        field=_d_str(_get(s, "field", p), p + ".field", lim),
                        direction=SortDirection.ASC if d is None else _d_sort_dir(d, p + ".direction", lim),
                    )
                )
        elif type(sort_raw) is dict:  # the TS schema's form: field -> direction, in entry order
            sort = [SortKey(field=k, direction=_d_sort_dir(d, f"{sp}.{k}", lim)) for k, d in sort_raw.items()]
        else:
            raise _type_error(sp, "an array or a map")
    aggs_raw = v.get("aggregations")
    aggs: list[Aggregation] | None = None
    if aggs_raw is not None:
        ap = path + ".aggregations"
        if type(aggs_raw) is not list:
            raise _type_error(ap, "an array")
        aggs = []
        for i, a in enumerate(aggs_raw):
            p = f"{ap}[{i}]"
            if type(a) is not dict:
                raise _type_error(p, "a map")
            f = a.get("field")
            aggs.append(
                Aggregation(
                    func=_d_agg_func(_get(a, "func", p), p + ".func", lim),
                    field=None if f is None else _d_str(f, p + ".field", lim),
                )
            )
    limit = v.get("limit")
    cursor = v.get("cursor")
    group_by = v.get("groupBy")
    fields = v.get("fields")
    return Query(
        where=where,
        predicate=pred,
        sort=sort,
        limit=None if limit is None else _as_int(limit, path + ".limit"),
        cursor=None if cursor is None else _d_str(cursor, path + ".cursor", lim),
        group_by=None if group_by is None else _d_str_list(group_by, path + ".groupBy", lim),
        aggregations=aggs,
        fields=None if fields is None else _d_str_list(fields, path + ".fields", lim),
    )


_OP_TYPES = {m.value: m for m in OpType}


def _decode_op(v: Any, path: str, lim: Limits) -> ClientOp | InvalidOp:
    """Classify and validate one op (§5.6 classification and step 1); never raises."""
    if type(v) is not dict:
        return InvalidOp(id=None, reason=f"{path} must be a map", code=400, field=path)
    raw_id = v.get("id")
    op_id = raw_id if type(raw_id) is str else None
    try:
        if raw_id is not None and op_id is None:
            raise _type_error(path + ".id", "a string")
        map_name = _d_str(_get(v, "mapName", path), path + ".mapName", lim)
        if not map_name:
            raise ProtocolError(f"{path}.mapName must not be empty", field=path + ".mapName")
        key = _d_str(_get(v, "key", path), path + ".key", lim)
        raw_type = v.get("opType")
        if raw_type is not None and type(raw_type) is not str:
            raise _type_error(path + ".opType", "a string")
        rec_raw = v.get("record", _MISSING)
        or_raw = v.get("orRecord")
        tag_raw = v.get("orTag")
        op_type = _OP_TYPES.get(raw_type) if raw_type is not None else None
        if op_type is None:
            if rec_raw is None:  # present and nil: the remove marker
                op_type = OpType.REMOVE
            elif or_raw is not None:
                op_type = OpType.OR_ADD
            elif tag_raw is not None:
                op_type = OpType.OR_REMOVE
            else:
                op_type = OpType.PUT
        record = None
        if rec_raw is not None and rec_raw is not _MISSING:
            record = _d_lww(rec_raw, path + ".record", lim)
        or_record = None if or_raw is None else _d_or_record(or_raw, path + ".orRecord", lim)
        or_tag = None if tag_raw is None else _d_str(tag_raw, path + ".orTag", lim)
        if op_type is OpType.PUT:
            if record is None:
                raise ProtocolError(f"{path}: PUT needs a record", field=path + ".record")
            if record.value is None:
                op_type = OpType.REMOVE
        elif op_type is OpType.OR_ADD:
            if or_record is None:
                raise ProtocolError(f"{path}: OR_ADD needs an orRecord", field=path + ".orRecord")
            if not or_record.tag:
                raise ProtocolError(f"{path}.orRecord.tag must not be empty", field=path + ".orRecord.tag")
        elif op_type is OpType.OR_REMOVE and not or_tag:
            raise ProtocolError(f"{path}: OR_REMOVE needs a non-empty orTag", field=path + ".orTag")
        wc = v.get("writeConcern")
        ts = v.get("timestamp")
        return ClientOp(
            id=op_id,
            map_name=map_name,
            key=key,
            op_type=op_type,
            record=record,
            or_record=or_record,
            or_tag=or_tag,
            write_concern=None if wc is None else _d_write_concern(wc, path + ".writeConcern", lim),
            timeout=_opt_int(v, "timeout", path),
            timestamp=None if ts is None else _d_timestamp(ts, path + ".timestamp", lim),
        )
    except ProtocolError as exc:
        return InvalidOp(id=op_id, reason=str(exc), code=exc.code, field=exc.field)


def _d_ops(v: Any, path: str, lim: Limits) -> list[ClientOp | InvalidOp]:
    if type(v) is not list:
        raise _type_error(path, "an array of ops")
    return [_decode_op(op, f"{path}[{i}]", lim) for i, op in enumerate(v)]


def _d_server_event_payload(v: Any, path: str, lim: Limits) -> ServerEvent:
    if type(v) is not dict:
        raise _type_error(path, "a map")
    return _decode_fields(ServerEvent, _FIELDS[ServerEvent], v, path, lim)  # type: ignore[no-any-return]


def _d_events(v: Any, path: str, lim: Limits) -> list[ServerEvent]:
    if type(v) is not list:
        raise _type_error(path, "an array")
    return [_d_server_event_payload(e, f"{path}[{i}]", lim) for i, e in enumerate(v)]


# --------------------------------------------------------------------------- field encoders


def _e_id(v: Any) -> Any:
    return v


def _e_enum(v: Any) -> Any:
    return v.value


def _e_timestamp(ts: Timestamp) -> dict[str, Any]:
    return {"millis": ts[0], "counter": ts[1], "nodeId": ts[2]}


def _e_lww(r: LWWRecord) -> dict[str, Any]:
    d = {"value": r[0], "timestamp": {"millis": r[1][0], "counter": r[1][1], "nodeId": r[1][2]}}
    if r[2] is not None:
        d["ttlMs"] = r[2]
    return d


def _e_or_record(r: ORMapRecord) -> dict[str, Any]:
    d = {"value": r[0], "timestamp": _e_timestamp(r[1]), "tag": r[2]}
    if r[3] is not None:
        d["ttlMs"] = r[3]
    return d


def _e_entries(v: list[ORMapEntry]) -> list[dict[str, Any]]:
    return [
        {"key": e.key, "records": [_e_or_record(r) for r in e.records], "tombstones": list(e.tombstones)}
        for e in v
    ]


def _e_leaf_records(v: list[LeafRecord]) -> list[dict[str, Any]]:
    return [{"key": e.key, "record": _e_lww(e.record)} for e in v]


def _e_results(v: list[QueryResultItem]) -> list[dict[str, Any]]:
    return [{"key": e.key, "value": e.value} for e in v]


def _e_op_results(v: list[OpResult]) -> list[dict[str, Any]]:
    out = []
    for r in v:
        d = {"opId": r.op_id, "success": r.success, "achievedLevel": r.achieved_level.value}
        if r.error is not None:
            d["error"] = r.error
        out.append(d)
    return out


def _e_counter_state(s: CounterState) -> dict[str, Any]:
    # both spellings, identical contents (§2.8)
    return {"p": dict(s.p), "n": dict(s.n), "positive": dict(s.p), "negative": dict(s.n)}


def _e_query(q: Query) -> dict[str, Any]:
    d: dict[str, Any] = {}
    if q.where is not None:
        d["where"] = q.where
    if q.predicate is not None:
        d["predicate"] = q.predicate
    if q.sort is not None:
        d["sort"] = [{"field": s.field, "direction": s.direction.value} for s in q.sort]
    if q.limit is not None:
        d["limit"] = q.limit
    if q.cursor is not None:
        d["cursor"] = q.cursor
    if q.group_by is not None:
        d["groupBy"] = list(q.group_by)
    if q.aggregations is not None:
        aggs = []
        for a in q.aggregations:
            ad = {"func": a.func.value}
            if a.field is not None:
                ad["field"] = a.field
            aggs.append(ad)
        d["aggregations"] = aggs
    if q.fields is not None:
        d["fields"] = list(q.fields)
    return d


def _e_op(op: ClientOp | InvalidOp) -> dict[str, Any]:
    if isinstance(op, InvalidOp):
        raise ProtocolError("an InvalidOp cannot be encoded")
    d: dict[str, Any] = {}
    if op.id is not None:
        d["id"] = op.id
    d["mapName"] = op.map_name
    d["key"] = op.key
    d["opType"] = op.op_type.value
    if op.record is not None:
        d["record"] = _e_lww(op.record)
    elif op.op_type is OpType.REMOVE:
        d["record"] = None  # the remove marker (§1.3 item 5), for receivers that infer the kind
    if op.or_record is not None:
        d["orRecord"] = _e_or_record(op.or_record)
    if op.or_tag is not None:
        d["orTag"] = op.or_tag
    if op.write_concern is not None:
        d["writeConcern"] = op.write_concern.value
    if op.timeout is not None:
        d["timeout"] = op.timeout
    if op.timestamp is not None:
        d["timestamp"] = _e_timestamp(op.timestamp)
    return d


def _e_ops(v: list[ClientOp | InvalidOp]) -> list[dict[str, Any]]:
    return [_e_op(op) for op in v]


def _e_server_event_payload(ev: ServerEvent) -> dict[str, Any]:
    return _encode_fields(ev, _FIELDS[ServerEvent])


def _e_events(v: list[ServerEvent]) -> list[dict[str, Any]]:
    return [_e_server_event_payload(e) for e in v]


def _e_list(v: list[Any]) -> list[Any]:
    return list(v)


def _e_dict(v: dict[str, Any]) -> dict[str, Any]:
    return dict(v)


# --------------------------------------------------------------------------- schema table

REQ = 0  # present and not nil
OPT = 1  # may be absent; nil reads as absent; omitted when None
NIL = 2  # always written; nil (or absent) is a meaningful None

FieldSpec = tuple[str, str, Callable[[Any, str, Limits], Any], Callable[[Any], Any], int]

_STR = (_d_str, _e_id)
_INT = (_d_int, _e_id)
_U32 = (_d_uint32, _e_id)
_BOOL = (_d_bool, _e_id)
_ANY = (_d_any, _e_id)
_TS = (_d_timestamp, _e_timestamp)
_LWW = (_d_lww, _e_lww)
_ORREC = (_d_or_record, _e_or_record)
_ENTRIES = (_d_entries, _e_entries)
_HASHES = (_d_hash_map, _e_dict)
_STRS = (_d_str_list, _e_list)
_WC = (_d_write_concern, _e_enum)
_STATE = (_d_counter_state, _e_counter_state)

# (attribute, (decoder, encoder), presence) in wire order; wire names come from wire_name()
_SCHEMA: dict[str, tuple[tuple[str, tuple[Any, Any], int], ...]] = {
    "AuthRequired": (),
    "Auth": (("token", _STR, REQ), ("protocol_version", _INT, OPT), ("device_token", _STR, OPT)),
    "AuthAck": (
        ("protocol_version", _INT, OPT),
        ("user_id", _STR, OPT),
        ("device_id", _STR, OPT),
        ("device_token", _STR, OPT),
    ),
    "AuthFail": (("error", _STR, OPT), ("code", _INT, OPT)),
    "DeviceHello": (("device_token", _STR, OPT),),
    "DeviceAck": (("device_id", _STR, OPT), ("device_token", _STR, OPT)),
    "Ping": (("timestamp", _INT, REQ),),
    "Pong": (("timestamp", _INT, REQ), ("server_time", _INT, REQ)),
    "Error": (("code", _INT, REQ), ("message", _STR, REQ), ("details", _ANY, OPT)),
    "OpBatch": (("ops", (_d_ops, _e_ops), REQ), ("write_concern", _WC, OPT), ("timeout", _INT, OPT)),
    "OpAck": (
        ("last_id", _STR, REQ),
        ("achieved_level", _WC, OPT),
        ("results", (_d_op_results, _e_op_results), OPT),
    ),
    "OpRejected": (("op_id", _STR, REQ), ("reason", _STR, REQ), ("code", _INT, OPT)),
    "ServerEvent": (
        ("map_name", _STR, REQ),
        ("event_type", (_d_event_type, _e_enum), REQ),
        ("key", _STR, REQ),
        ("record", _LWW, OPT),
        ("or_record", _ORREC, OPT),
        ("or_tag", _STR, OPT),
        ("epoch", _INT, OPT),
    ),
    "ServerBatchEvent": (("events", (_d_events, _e_events), REQ),),
    "SyncInit": (("map_name", _STR, REQ), ("last_sync_timestamp", _INT, OPT)),
    "SyncRespRoot": (("map_name", _STR, REQ), ("root_hash", _U32, REQ), ("timestamp", _TS, REQ)),
    "MerkleReqBucket": (("map_name", _STR, REQ), ("path", _STR, REQ)),
    "SyncRespBuckets": (("map_name", _STR, REQ), ("path", _STR, REQ), ("buckets", _HASHES, REQ)),
    "SyncRespLeaf": (
        ("map_name", _STR, REQ),
        ("path", _STR, REQ),
        ("records", (_d_leaf_records, _e_leaf_records), REQ),
    ),
    "SyncResetRequired": (("map_name", _STR, REQ), ("reason", _STR, REQ)),
    "GcPrune": (("older_than", _TS, REQ),),
    "ORMapSyncInit": (
        ("map_name", _STR, REQ),
        ("root_hash", _U32, REQ),
        ("bucket_hashes", _HASHES, REQ),
        ("last_sync_timestamp", _INT, OPT),
        ("claimed_epoch", _INT, OPT),
    ),
    "ORMapSyncRespRoot": (
        ("map_name", _STR, REQ),
        ("root_hash", _U32, REQ),
        ("timestamp", _TS, REQ),
        ("covering_epoch", _INT, OPT),
        ("full_resync", _BOOL, OPT),
    ),
    "ORMapMerkleReqBucket": (("map_name", _STR, REQ), ("path", _STR, REQ)),
    "ORMapSyncRespBuckets": (("map_name", _STR, REQ), ("path", _STR, REQ), ("buckets", _HASHES, REQ)),
    "ORMapSyncRespLeaf": (
        ("map_name", _STR, REQ),
        ("path", _STR, REQ),
        ("entries", _ENTRIES, REQ),
        ("covering_epoch", _INT, OPT),
    ),
    "ORMapDiffRequest": (("map_name", _STR, REQ), ("keys", _STRS, REQ)),
    "ORMapDiffResponse": (("map_name", _STR, REQ), ("entries", _ENTRIES, REQ), ("covering_epoch", _INT, OPT)),
    "ORMapPushDiff": (("map_name", _STR, REQ), ("entries", _ENTRIES, REQ)),
    "ClientApplyAck": (("cursor", _INT, REQ),),
    "QuerySub": (
        ("query_id", _STR, REQ),
        ("map_name", _STR, REQ),
        ("query", (_d_query, _e_query), REQ),
        ("fields", _STRS, OPT),
    ),
    "QueryUnsub": (("query_id", _STR, REQ),),
    "QueryResp": (
        ("query_id", _STR, REQ),
        ("results", (_d_results, _e_results), REQ),
        ("next_cursor", _STR, OPT),
        ("has_more", _BOOL, OPT),
        ("cursor_status", (_d_cursor_status, _e_enum), OPT),
        ("merkle_root_hash", _U32, OPT),
        ("error", _STR, OPT),
        ("code", _STR, OPT),
    ),
    "QueryUpdate": (
        ("query_id", _STR, REQ),
        ("key", _STR, REQ),
        ("value", _ANY, NIL),
        ("change_type", (_d_change_type, _e_enum), REQ),
    ),
    "TopicSub": (("topic", _STR, REQ),),
    "TopicUnsub": (("topic", _STR, REQ),),
    "TopicPub": (("topic", _STR, REQ), ("data", _ANY, NIL)),
    "TopicMessage": (
        ("topic", _STR, REQ),
        ("data", _ANY, NIL),
        ("publisher_id", _STR, OPT),
        ("timestamp", _INT, REQ),
    ),
    "LockRequest": (("request_id", _STR, REQ), ("name", _STR, REQ), ("ttl", _INT, OPT)),
    "LockRelease": (("request_id", _STR, OPT), ("name", _STR, REQ), ("fencing_token", _INT, REQ)),
    "LockGranted": (("request_id", _STR, REQ), ("name", _STR, REQ), ("fencing_token", _INT, REQ)),
    "LockReleased": (("request_id", _STR, REQ), ("name", _STR, REQ), ("success", _BOOL, REQ)),
    "CounterRequest": (("name", _STR, REQ),),
    "CounterSync": (("name", _STR, REQ), ("state", _STATE, REQ)),
    "CounterResponse": (("name", _STR, REQ), ("state", _STATE, REQ)),
    "CounterUpdate": (("name", _STR, REQ), ("state", _STATE, REQ)),
    "Batch": (("count", _INT, REQ), ("data", (_d_bin, _e_id), REQ)),
}

_FIELDS: dict[type, tuple[FieldSpec, ...]] = {}
for _cls in MESSAGE_CLASSES.values():
    if _cls is ClientOpMessage:
        continue
    _FIELDS[_cls] = tuple(
        (attr, wire_name(attr), codec[0], codec[1], presence)
        for attr, codec, presence in _SCHEMA[_cls.__name__]
    )
del _cls


def _decode_fields(
    cls: type, fields: tuple[FieldSpec, ...], d: dict[str, Any], path: str, lim: Limits
) -> Any:
    kwargs: dict[str, Any] = {}
    for attr, wire, dec, _enc, presence in fields:
        v = d.get(wire)
        if v is None:
            if presence == REQ:
                p = f"{path}.{wire}" if path else wire
                raise ProtocolError(f"missing field {p}", field=p)
            if presence == OPT:
                continue
            kwargs[attr] = None
            continue
        kwargs[attr] = dec(v, f"{path}.{wire}" if path else wire, lim)
    return cls(**kwargs)


def _encode_fields(msg: Any, fields: tuple[FieldSpec, ...]) -> dict[str, Any]:
    d: dict[str, Any] = {}
    for attr, wire, _dec, enc, presence in fields:
        v = getattr(msg, attr)
        if v is None:
            if presence == NIL:
                d[wire] = None
            elif presence == REQ:
                raise ProtocolError(f"cannot encode {type(msg).__name__}: {attr} is None", field=wire)
            continue
        d[wire] = enc(v)
    return d


_TYPES = {m.value: m for m in MessageType}


def from_wire(obj: Any, limits: Limits | None = None) -> Message:
    """Build the typed message from an already unpacked frame value."""
    lim = limits or DEFAULT_LIMITS
    if type(obj) is not dict:
        raise ProtocolError("frame is not a map")
    t = obj.get("type")
    if type(t) is not str:
        raise ProtocolError("missing or non-string 'type'", field="type")
    mt = _TYPES.get(t)
    if mt is None:
        raise UnknownMessageTypeError(t)
    if mt.is_extended:
        raise UnsupportedMessageTypeError(t)
    cls = MESSAGE_CLASSES[mt]
    if cls.SHAPE is Shape.WRAPPED:  # type: ignore[attr-defined]
        payload = obj.get("payload")
        if type(payload) is not dict:
            raise ProtocolError(f"{t}: payload must be a map", field="payload")
        if cls is ClientOpMessage:
            return ClientOpMessage(op=_decode_op(payload, "payload", lim))
        return _decode_fields(cls, _FIELDS[cls], payload, "payload", lim)  # type: ignore[no-any-return]
    return _decode_fields(cls, _FIELDS[cls], obj, "", lim)  # type: ignore[no-any-return]


def to_wire(msg: Message) -> dict[str, Any]:
    """The plain wire value of a message (``type`` first, fields in specification order)."""
    cls = type(msg)
    if cls is ClientOpMessage:
        return {"type": "CLIENT_OP", "payload": _e_op(msg.op)}  # type: ignore[union-attr]
    try:
        fields = _FIELDS[cls]
    except KeyError:
        raise TypeError(f"not a message: {msg!r}") from None
    body = _encode_fields(msg, fields)
    if cls.SHAPE is Shape.WRAPPED:  # type: ignore[union-attr]
        return {"type": cls.TYPE.value, "payload": body}  # type: ignore[union-attr]
    d = {"type": cls.TYPE.value}  # type: ignore[union-attr]
    d.update(body)
    return d


def decode(frame: bytes, limits: Limits | None = None) -> Message:
    """Decode one frame into a typed message.

    Raises :class:`~topgun.errors.FrameTooLargeError` (size), :class:`UnknownMessageTypeError`,
    :class:`UnsupportedMessageTypeError` (known extended kind) or :class:`ProtocolError`
    (``.code``, ``.field``) for anything else wrong.
    """
    return from_wire(unpack(frame, limits), limits)


def encode(msg: Message) -> bytes:
    """Encode a typed message into one frame."""
    return msgpack.packb(to_wire(msg), use_bin_type=True)  # type: ignore[no-any-return]


# --------------------------------------------------------------------------- BATCH (§1.7)

_U32LE = struct.Struct("<I")
_U32BE = struct.Struct(">I")


def encode_batch(frames: list[bytes]) -> bytes:
    """Pack encoded frames into ``BATCH.data``, format A (LE count, then LE length + bytes each)."""
    parts = [_U32LE.pack(len(frames))]
    for f in frames:
        parts.append(_U32LE.pack(len(f)))
        parts.append(f)
    return b"".join(parts)


def _split_a(data: bytes) -> list[bytes] | None:
    n = len(data)
    if n < 4:
        return None
    (count,) = _U32LE.unpack_from(data, 0)
    pos = 4
    out: list[bytes] = []
    while len(out) < count:
        if pos + 4 > n:
            return None
        (ln,) = _U32LE.unpack_from(data, pos)
        pos += 4
        if pos + ln > n:
            return None
        out.append(data[pos : pos + ln])
        pos += ln
    return out if pos == n else None


def _split_b(data: bytes) -> list[bytes] | None:
    n = len(data)
    pos = 0
    out: list[bytes] = []
    while pos < n:
        if pos + 4 > n:
            return None
        (ln,) = _U32BE.unpack_from(data, pos)
        pos += 4
        if pos + ln > n:
            return None
        out.append(data[pos : pos + ln])
        pos += ln
    return out


def split_batch(data: bytes, limits: Limits | None = None) -> list[bytes]:
    """Split ``BATCH.data`` into inner frames: format A, else format B, else ``ProtocolError``.

    More than ``limits.max_batch_items`` inner messages raise ``ProtocolError`` with code 413.
    Inner frames are returned undecoded; decode (and limit-check) each on its own.
    """
    lim = limits or DEFAULT_LIMITS
    data = bytes(data)
    frames = _split_a(data)
    if frames is None:
        frames = _split_b(data)
    if frames is None:
        raise ProtocolError("BATCH data is neither format A nor format B", field="data")
    if len(frames) > lim.max_batch_items:
        raise ProtocolError(f"BATCH carries more than {lim.max_batch_items} messages", code=413, field="data")
    return frames
