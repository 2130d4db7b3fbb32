"""Conversions between the shared record types and their wire (MsgPack map) shapes.

The client speaks the protocol as plain decoded MsgPack maps: the engine reads
and builds the field layout of PROTOCOL.md §2/§4 directly. Every ``int`` field
that comes off the wire goes through :func:`as_int` so that integral floats
(the TS encoder writes epoch millis as float64, §1.4) become exact integers
before they are stored, compared or hashed.
"""

from __future__ import annotations

import math
from typing import Any

import msgpack

from topgun.core.records import LWWRecord, ORMapRecord, Timestamp
from topgun.errors import ProtocolError

__all__ = [
    "as_int",
    "lww_from_wire",
    "lww_to_wire",
    "or_from_wire",
    "or_to_wire",
    "pack",
    "ts_from_wire",
    "ts_to_wire",
    "unpack",
]

_packer = msgpack.Packer(use_bin_type=True, datetime=False)


def pack(obj: Any) -> bytes:
    """MsgPack-encode ``obj`` (str keys, bin type, extension values passed through)."""
    return _packer.pack(obj)


def unpack(data: bytes) -> Any:
    """MsgPack-decode ``data``; extension types and timestamps come back as opaque objects."""
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


def as_int(x: Any, field: str = "int") -> int:
    """An exact int from a wire integer or integral float; ``ProtocolError`` otherwise."""
    if type(x) is int:
        return x
    if isinstance(x, float) and math.isfinite(x) and x.is_integer():
        return int(x)
    if isinstance(x, int) and not isinstance(x, bool):
        return int(x)
    raise ProtocolError(f"{field} is not an integer: {x!r}", field=field)


def ts_to_wire(ts: Timestamp) -> dict[str, Any]:
    """Wire map of a timestamp."""
    return {"millis": ts[0], "counter": ts[1], "nodeId": ts[2]}


def ts_from_wire(d: Any, field: str = "timestamp") -> Timestamp:
    """Timestamp from its wire map (ints normalized)."""
    if not isinstance(d, dict):
        raise ProtocolError(f"{field} is not a map", field=field)
    node = d.get("nodeId")
    if not isinstance(node, str) or not node:
        raise ProtocolError(f"{field}.nodeId is invalid", field=f"{field}.nodeId")
    return Timestamp(
        as_int(d.get("millis"), f"{field}.millis"), as_int(d.get("counter"), f"{field}.counter"), node
    )


def lww_to_wire(r: LWWRecord) -> dict[str, Any]:
    """Wire map of an LWW record (``ttlMs`` omitted when absent)."""
    out: dict[str, Any] = {"value": r.value, "timestamp": ts_to_wire(r.timestamp)}
    if r.ttl_ms is not None:
        out["ttlMs"] = r.ttl_ms
    return out


def lww_from_wire(d: Any, field: str = "record") -> LWWRecord:
    """LWW record from its wire map."""
    if not isinstance(d, dict):
        raise ProtocolError(f"{field} is not a map", field=field)
    ttl = d.get("ttlMs")
    return LWWRecord(
        d.get("value"),
        ts_from_wire(d.get("timestamp"), f"{field}.timestamp"),
        None if ttl is None else as_int(ttl, f"{field}.ttlMs"),
    )


def or_to_wire(r: ORMapRecord) -> dict[str, Any]:
    """Wire map of an OR record (``ttlMs`` omitted when absent)."""
    out: dict[str, Any] = {"value": r.value, "timestamp": ts_to_wire(r.timestamp), "tag": r.tag}
    if r.ttl_ms is not None:
        out["ttlMs"] = r.ttl_ms
    return out


def or_from_wire(d: Any, field: str = "orRecord") -> ORMapRecord:
    """OR record from its wire map."""
    if not isinstance(d, dict):
        raise ProtocolError(f"{field} is not a map", field=field)
    tag = d.get("tag")
    if not isinstance(tag, str) or not tag:
        raise ProtocolError(f"{field}.tag is invalid", field=f"{field}.tag")
    ttl = d.get("ttlMs")
    return ORMapRecord(
        d.get("value"),
        ts_from_wire(d.get("timestamp"), f"{field}.timestamp"),
        tag,
        None if ttl is None else as_int(ttl, f"{field}.ttlMs"),
    )
