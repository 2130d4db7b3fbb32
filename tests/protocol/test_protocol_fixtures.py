"""Conformance against the shared wire fixtures, exactly as their README prescribes.

For every ``NAME.msgpack``: decode to one map; compare with ``NAME.json``;
re-encode and decode to the identical value; dispatch by ``type`` (core kinds
parse with normalised ints and absent optionals left absent, extended kinds are
recognised, HTTP bodies are skipped); typed round trip keeps every field the
specification defines.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Any

import pytest

from topgun.core.records import LWWRecord, ORMapRecord, Timestamp
from topgun.errors import UnsupportedMessageTypeError
from topgun.protocol import messages as M

REPO_ROOT = Path(__file__).resolve().parents[2]
FIXTURES = Path(
    os.environ.get("TOPGUN_PROTOCOL_FIXTURES", REPO_ROOT / ".." / "shared" / "protocol" / "fixtures")
)

pytestmark = pytest.mark.skipif(
    not FIXTURES.is_dir(), reason=f"protocol fixtures not found at {FIXTURES} (set TOPGUN_PROTOCOL_FIXTURES)"
)

NAMES = sorted(p.stem for p in FIXTURES.glob("*.msgpack")) if FIXTURES.is_dir() else []
HTTP_BODIES = {"HTTP_SYNC_REQUEST", "HTTP_SYNC_RESPONSE"}
KIND_OF = {"QUERY_SUB_GROUPBY_AGG": "QUERY_SUB", "QUERY_RESP_AGG": "QUERY_RESP"}
# keys our encoder adds on purpose: the classified opType of ops, the second counter spelling
ADDED_KEYS = {"opType", "positive", "negative"}
# attributes whose contents are user data (opaque), not protocol fields
OPAQUE_ATTRS = {"value", "data", "where", "predicate", "details"}


def test_fixture_count() -> None:
    assert len(NAMES) == 63


def _json_to_value(x: Any) -> Any:
    if isinstance(x, dict):
        if x.get("type") == "Buffer" and isinstance(x.get("data"), list) and len(x) == 2:
            return bytes(x["data"])
        return {k: _json_to_value(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_json_to_value(v) for v in x]
    return x


def _struct_equal(a: Any, b: Any) -> bool:
    """Same keys, same list order, equal scalars; int and float equal when numerically equal."""
    num = (int, float)
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, num) and isinstance(b, num):
        return a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_struct_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_struct_equal(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


def _exact_equal(a: Any, b: Any) -> bool:
    """Equal including types (float stays float, int stays int)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_exact_equal(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_exact_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)
    return a == b


def _contained(orig: Any, new: Any, path: str = "") -> None:
    """Every field of ``orig`` survives in ``new`` with an equal value (new may add ADDED_KEYS)."""
    if isinstance(orig, dict):
        assert isinstance(new, dict), path
        for k, v in orig.items():
            assert k in new, f"{path}.{k} was dropped"
            _contained(v, new[k], f"{path}.{k}")
        extra = set(new) - set(orig) - ADDED_KEYS
        assert not extra, f"{path}: unexpected keys {extra}"
    elif isinstance(orig, list):
        assert isinstance(new, list) and len(new) == len(orig), path
        for i, (x, y) in enumerate(zip(orig, new, strict=True)):
            _contained(x, y, f"{path}[{i}]")
    else:
        assert _struct_equal(orig, new), f"{path}: {orig!r} != {new!r}"


def _no_floats(obj: Any, path: str = "msg") -> None:
    """No float anywhere in the protocol fields of a typed message (user data excluded)."""
    if dataclasses.is_dataclass(obj):
        for f in dataclasses.fields(obj):
            if f.name not in OPAQUE_ATTRS:
                _no_floats(getattr(obj, f.name), f"{path}.{f.name}")
    elif isinstance(obj, (Timestamp, LWWRecord, ORMapRecord)):
        for name, v in zip(obj._fields, obj, strict=True):
            if name != "value":
                _no_floats(v, f"{path}.{name}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _no_floats(v, f"{path}[{i}]")
    elif isinstance(obj, dict):
        for k, v in obj.items():
            _no_floats(v, f"{path}.{k}")
    else:
        assert not isinstance(obj, float), f"{path} is a float: {obj!r}"


def _spec_fields(msg: Any, body: dict[str, Any]) -> None:
    """Optional fields absent on the wire stay None; present ones are set."""
    target = msg.op if isinstance(msg, M.ClientOpMessage) else msg
    for f in dataclasses.fields(target):
        if f.name == "op_type":
            continue  # classified, present even when the wire omits it
        wire = M.wire_name(f.name)
        present = body.get(wire) is not None
        assert (getattr(target, f.name) is not None) == present, f"{f.name}: present on wire = {present}"


@pytest.mark.parametrize("name", NAMES)
def test_fixture(name: str, twin: Any) -> None:
    codec = twin.codec
    raw = (FIXTURES / f"{name}.msgpack").read_bytes()

    # 1. one value, a map
    value = codec.unpack(raw)
    assert isinstance(value, dict)

    # 2. the JSON twin
    expected = _json_to_value(json.loads((FIXTURES / f"{name}.json").read_text()))
    assert _struct_equal(value, expected)

    # 3. plain round trip, types included
    again = codec.unpack(codec.pack(value))
    assert _exact_equal(again, value)

    # 4. dispatch by type
    if name in HTTP_BODIES:
        assert "type" not in value
        pytest.skip("HTTP sync bodies: no HTTP sync models yet")
    kind = M.MessageType(KIND_OF.get(name, name))
    assert value["type"] == kind.value
    if kind.is_extended:
        with pytest.raises(UnsupportedMessageTypeError) as ei:
            codec.from_wire(value)
        assert ei.value.type_name == kind.value and ei.value.code == 501
        with pytest.raises(UnsupportedMessageTypeError):
            codec.decode(raw)
        return
    msg = codec.from_wire(value)
    assert type(msg) is M.MESSAGE_CLASSES[kind]
    assert msg == codec.decode(raw)
    _no_floats(msg)
    body = value["payload"] if msg.SHAPE is M.Shape.WRAPPED else value
    _spec_fields(msg, body)

    # 5. typed round trip: every specified field survives
    frame = codec.encode(msg)
    assert codec.decode(frame) == msg
    wire = codec.unpack(frame)
    spec_keys = {"type", "payload"} | {M.wire_name(f.name) for f in dataclasses.fields(msg)}
    if isinstance(msg, M.ClientOpMessage):
        spec_keys |= {M.wire_name(f.name) for f in dataclasses.fields(M.ClientOp)}
        wire_body, orig_body = wire["payload"], value["payload"]
    elif msg.SHAPE is M.Shape.WRAPPED:
        wire_body, orig_body = wire["payload"], {k: v for k, v in value["payload"].items() if k in spec_keys}
    else:
        wire_body = {k: v for k, v in wire.items()}
        orig_body = {k: v for k, v in value.items() if k in spec_keys}
    _contained(orig_body, wire_body, "body")
