"""The compiled decoder reuses recently decoded short strings (value-map keys, op ids), matches
enum values on their bytes and reads timestamp parts without temporary ints.

None of that may show: every frame must decode exactly as the pure specification decodes it
(values, types, errors), value-map keys must stay interned as msgpack interns them, and a
cached string must never stand in for different bytes, whatever slot its hash picks.
"""

from __future__ import annotations

import dataclasses
import struct
import sys
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from protocol_strategies import PROPS, same_deeply

from topgun.errors import ProtocolError
from topgun.protocol import _codec_py
from topgun.protocol import messages as M

pk = _codec_py.pack



def _dict_keys(obj: Any) -> list[str]:
    """Every key of every dict inside ``obj`` (records and values included)."""
    out: list[str] = []
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for f in dataclasses.fields(obj):
            out += _dict_keys(getattr(obj, f.name))
    elif isinstance(obj, tuple | list):
        for x in obj:
            out += _dict_keys(x)
    elif isinstance(obj, dict):
        for k, v in obj.items():
            out.append(k)
            out += _dict_keys(v)
    return out


def _agree(pure: Any, compiled: Any, frame: bytes) -> Any:
    """Decode with both twins: the same message (deeply, with types, dict keys interned) or the
    same error. Returns the compiled twin's message (or the error)."""
    try:
        expected = pure.codec.decode(frame)
    except ProtocolError as exc:
        with pytest.raises(ProtocolError) as ei:
            compiled.codec.decode(frame)
        got = ei.value
        assert (type(got), got.code, got.field, str(got)) == (type(exc), exc.code, exc.field, str(exc))
        return exc
    got = compiled.codec.decode(frame)
    assert got == expected
    assert repr(got) == repr(expected)
    same_deeply(expected, got)
    for k in _dict_keys(got):
        assert type(k) is str and sys.intern(k) is k, repr(k)
    return got


def _op(i: int, value: Any, op_id: Any = None, **extra: Any) -> dict[str, Any]:
    op = {
        "id": str(i + 1) if op_id is None else op_id,
        "mapName": "m",
        "key": f"k{i}",
        "opType": "PUT",
        "record": {"value": value, "timestamp": {"millis": 1_700_000_000_000, "counter": i, "nodeId": "n"}},
    }
    op.update(extra)
    return op


def _batch(ops: list[dict[str, Any]], **payload: Any) -> bytes:
    return pk({"type": "OP_BATCH", "payload": {"ops": ops, **payload}})


def _ascii_keys() -> list[str]:
    keys = [""]
    # every length around the cached limit (32 bytes), and prefixes of one another
    keys += ["k" * n for n in range(1, 41)]
    keys += ["abcdefghijklmnopqrstuvwxyz0123456789"[:n] for n in range(1, 37)]
    # same length, same first and last 8 bytes (so the same slot under a hash of those),
    # differing in one byte in the middle
    for n in (17, 20, 32):
        for c in "AaBb0":
            keys.append("aaaaaaaa" + c * (n - 16) + "zzzzzzzz")
        keys.append("aaaaaaaa" + "Q" + "M" * (n - 17) + "zzzzzzzz")
        keys.append("aaaaaaaa" + "M" * (n - 17) + "Q" + "zzzzzzzz")
    # differing in the first or the last byte only
    for n in (1, 2, 7, 8, 9, 16, 31, 32, 33):
        base = "x" * n
        keys += [base[:-1] + "y", "y" + base[1:]]
    keys += ["a\x00", "a", "\x00", "\x7f", "n", "v"]
    return list(dict.fromkeys(keys))


NON_ASCII = [
    "é",
    "Ã©",
    "e\u0301",
    "ключ",
    "k\u00e9y",
    "😀",
    "a" * 30 + "é",
    "é" * 16,
    "\u07ff",
    "\uffff",
    "\U0010ffff",
]


def test_keys_that_share_slots_or_bytes_decode_exactly(pure: Any, compiled: Any) -> None:
    keys = _ascii_keys() + NON_ASCII
    frames = [
        _batch([_op(i, {k: i, "n": 1}) for i, k in enumerate(keys[j : j + 7])]) for j in range(len(keys))
    ]
    # twice over, in two orders: every key is met with its slot holding another string, or itself
    for frame in frames + frames[::-1]:
        got = _agree(pure, compiled, frame)
        assert isinstance(got, M.OpBatch)
    got = _agree(pure, compiled, _batch([_op(i, {k: k}) for i, k in enumerate(keys)]))
    assert [list(op.record.value) for op in got.ops] == [[k] for k in keys]
    assert all(op.record.value[k] == k for op, k in zip(got.ops, keys, strict=True))


def test_many_more_keys_than_slots(pure: Any, compiled: Any) -> None:
    # far more distinct short keys than the cache holds: whatever the hash, slots are shared
    keys = [f"f{i:05d}" for i in range(3000)] + [f"field-{i}-of-a-longer-name" for i in range(1500)]
    for rnd in range(2):
        for j in range(0, len(keys), 150):
            chunk = keys[j : j + 150] if rnd == 0 else keys[j : j + 150][::-1]
            value = {k: n for n, k in enumerate(chunk)}
            got = _agree(pure, compiled, _batch([_op(0, value), _op(1, {"nested": value})]))
            assert got.ops[0].record.value == value
            assert list(got.ops[1].record.value["nested"]) == chunk


def test_non_ascii_keys_beside_ascii_ones(pure: Any, compiled: Any) -> None:
    pairs = [("é", "e"), ("ключ", "klju"), ("😀", "abcd"), ("a" * 30 + "é", "a" * 32), ("é" * 16, "e" * 32)]
    for na, asc in pairs:
        assert len(na.encode()) != len(na) and asc.isascii()
        for value in ({na: 1, asc: 2}, {asc: 1, na: 2}, {na: {asc: {na: 3}}}):
            for _ in range(2):
                got = _agree(pure, compiled, _batch([_op(0, value), _op(1, value)]))
                assert got.ops[0].record.value == value == got.ops[1].record.value


@pytest.mark.parametrize(
    ("good", "bad"),
    [
        (b"abcd", b"abc\xff"),
        (b"abcd", b"\xff\xfe\xfd\xfc"),
        (b"ab\xc3\xa9", b"ab\xc3\x28"),  # é, then a broken 2-byte sequence
        (b"abcd", b"ab\xe2\x82"),  # truncated
        (b"abcd", b"\xed\xa0\x80a"),  # surrogate
        (b"abcd", b"\xc0\xafab"),  # overlong
    ],
    ids=["last-byte", "all", "non-ascii", "truncated", "surrogate", "overlong"],
)
@pytest.mark.parametrize(
    "where",
    [
        "value-key",
        "nested-key",
        "op-id",
        "long-value-key",
        "long-op-id",
        "map-name",
        "node-id",
        "long-map-name",
        "long-node-id",
    ],
)
def test_valid_then_invalid_utf8(pure: Any, compiled: Any, good: bytes, bad: bytes, where: str) -> None:
    marker = b"QQQQ"
    pad = "p" * 30  # makes the string longer than the cached limit
    name_pad = "p" * 62  # likewise for map names and node ids
    if where in ("map-name", "long-map-name"):
        op = _op(0, 1) | {"mapName": ("" if where == "map-name" else name_pad) + "QQQQ"}
    elif where in ("node-id", "long-node-id"):
        op = _op(0, 1)
        op["record"]["timestamp"]["nodeId"] = ("" if where == "node-id" else name_pad) + "QQQQ"
    elif where == "value-key":
        op = _op(0, {"QQQQ": 1})
    elif where == "nested-key":
        op = _op(0, {"n": [{"QQQQ": 1}]})
    elif where == "op-id":
        op = _op(0, 1, op_id="QQQQ")
    elif where == "long-value-key":
        op = _op(0, {pad + "QQQQ": 1})
    else:
        op = _op(0, 1, op_id=pad + "QQQQ")
    template = _batch([op, _op(1, {"n": 2})])
    assert template.count(marker) == 1
    valid, invalid = template.replace(marker, good), template.replace(marker, bad)
    for _ in range(2):
        # decoded (and so possibly cached) first, then the same slot's neighbours in bytes
        got = _agree(pure, compiled, valid)
        assert isinstance(got, M.OpBatch)
        err = _agree(pure, compiled, invalid)
        assert isinstance(err, ProtocolError)
    # and the invalid bytes alone, before any valid decode of the same length
    assert isinstance(_agree(pure, compiled, _batch([op]).replace(marker, bad)), ProtocolError)


def test_op_ids_decode_exactly(pure: Any, compiled: Any) -> None:
    ids = [str(i) for i in range(1, 301)] + _ascii_keys() + NON_ASCII + ["x" * 100]
    ops = [_op(i, i, op_id=op_id) for i, op_id in enumerate(ids)]
    for _ in range(2):
        for j in range(0, len(ops), 40):
            got = _agree(pure, compiled, _batch(ops[j : j + 40]))
            assert [op.id for op in got.ops] == ids[j : j + 40]
        got = _agree(pure, compiled, _batch(ops[::-1]))
        assert [op.id for op in got.ops] == ids[::-1]
    for op_id in ["", "1", "é", "x" * 33]:
        single = pk({"type": "CLIENT_OP", "payload": _op(0, 1, op_id=op_id)})
        assert _agree(pure, compiled, single).op.id == op_id
    assert _agree(pure, compiled, _batch([_op(0, 1, op_id=None) | {"id": None}])).ops[0].id is None


def _named_op(i: int, map_name: str, node_id: str) -> dict[str, Any]:
    op = _op(i, i) | {"mapName": map_name}
    op["record"]["timestamp"]["nodeId"] = node_id
    return op


def test_map_names_and_node_ids_decode_exactly(pure: Any, compiled: Any) -> None:
    # node ids may hold no ':' and neither may be empty; past 64 bytes neither is kept
    names = [n for n in _ascii_keys() + NON_ASCII if n] + ["x" * 64, "x" * 65, "y" * 100]
    ops = [_named_op(i, name, names[-1 - i]) for i, name in enumerate(names)]
    for _ in range(2):
        for j in range(0, len(ops), 40):
            got = _agree(pure, compiled, _batch(ops[j : j + 40]))
            assert [op.map_name for op in got.ops] == names[j : j + 40]
        got = _agree(pure, compiled, _batch(ops[::-1]))
        assert [op.record.timestamp.node_id for op in got.ops] == names
        for op in ops[:60]:
            single = _agree(pure, compiled, pk({"type": "CLIENT_OP", "payload": op}))
            assert (single.op.map_name, single.op.record.timestamp.node_id) == (
                op["mapName"],
                op["record"]["timestamp"]["nodeId"],
            )


def test_interleaved_clients_share_map_names_and_node_ids(pure: Any, compiled: Any) -> None:
    # fifty clients, one op each in turn (fire-and-wait): each client's map name and node id
    # are decoded once, then shared by its later ops
    frames = [
        pk({"type": "CLIENT_OP", "payload": _named_op(c, f"bench-fw-1-4242-{c}", f"bench-fw-4242-{c}")})
        for c in range(50)
    ]
    first = [_agree(pure, compiled, f).op for f in frames]
    again = [_agree(pure, compiled, f).op for f in frames]
    assert [op.map_name for op in again] == [f"bench-fw-1-4242-{c}" for c in range(50)]
    if compiled.codec.decode is not pure.codec.decode:
        assert sum(a.map_name is b.map_name for a, b in zip(first, again, strict=True)) >= 45
        nodes = zip(first, again, strict=True)
        assert sum(a.record.timestamp.node_id is b.record.timestamp.node_id for a, b in nodes) >= 45


def test_repeated_short_ids_are_shared(pure: Any, compiled: Any) -> None:
    ops = [_op(i, i) for i in range(100)]
    a = _agree(pure, compiled, _batch(ops))
    b = _agree(pure, compiled, _batch(ops))
    assert [op.id for op in a.ops] == [str(i) for i in range(1, 101)]
    # the second batch reuses the strs of the first (equal values: only identity changes)
    assert sum(x.id is y.id for x, y in zip(a.ops, b.ops, strict=True)) >= 90


_STR_FORMS = {
    "fix": lambda raw: bytes([0xA0 | len(raw)]) + raw,
    "str8": lambda raw: b"\xd9" + bytes([len(raw)]) + raw,
    "str16": lambda raw: b"\xda" + struct.pack(">H", len(raw)) + raw,
}


@pytest.mark.parametrize("form", list(_STR_FORMS))
@pytest.mark.parametrize(
    "op_type",
    ["PUT", "REMOVE", "OR_ADD", "OR_REMOVE", "PUTX", "PU", "put", "", "PÜT", "OR_REMOVE_", "FIRE_AND_FORGET"],
)
def test_op_types_by_bytes(pure: Any, compiled: Any, form: str, op_type: str) -> None:
    op = _op(0, 1, opType="ZZZZ", orTag="t")
    op["orRecord"] = {"value": 2, "timestamp": {"millis": 5, "counter": 0, "nodeId": "n"}, "tag": "t"}
    frame = _batch([op, _op(1, 3)]).replace(b"\xa4ZZZZ", _STR_FORMS[form](op_type.encode()))
    got = _agree(pure, compiled, frame)
    if op_type in ("PUT", "REMOVE", "OR_ADD", "OR_REMOVE"):
        assert isinstance(got, M.OpBatch)
        first = got.ops[0]
        assert isinstance(first, M.ClientOp) and first.op_type is M.OpType(op_type)
    single = pk({"type": "CLIENT_OP", "payload": op}).replace(b"\xa4ZZZZ", _STR_FORMS[form](op_type.encode()))
    _agree(pure, compiled, single)


@pytest.mark.parametrize("form", list(_STR_FORMS))
@pytest.mark.parametrize(
    "wc", [*(m.value for m in M.WriteConcern), "APPLIE", "APPLIEDX", "applied", "", "PUT", "ÄPPLIED"]
)
@pytest.mark.parametrize("where", ["op", "batch"])
def test_write_concerns_by_bytes(pure: Any, compiled: Any, form: str, wc: str, where: str) -> None:
    marker = _STR_FORMS[form](wc.encode())
    if where == "op":
        frame = _batch([_op(0, 1, writeConcern="ZZZZ"), _op(1, 2)])
    else:
        frame = _batch([_op(0, 1), _op(1, 2)], writeConcern="ZZZZ")
    got = _agree(pure, compiled, frame.replace(b"\xa4ZZZZ", marker))
    if wc in {m.value for m in M.WriteConcern}:
        level = got.ops[0].write_concern if where == "op" else got.write_concern
        assert level is M.WriteConcern(wc)


def _int_forms(v: int) -> list[bytes]:
    """Every MsgPack encoding of the integer ``v`` (not only the shortest one msgpack writes)."""
    out = []
    if 0 <= v <= 0x7F:
        out.append(bytes([v]))
    if -32 <= v < 0:
        out.append(struct.pack(">b", v))
    for code, fmt, lo, hi in (
        (0xCC, ">B", 0, 2**8 - 1),
        (0xCD, ">H", 0, 2**16 - 1),
        (0xCE, ">I", 0, 2**32 - 1),
        (0xCF, ">Q", 0, 2**64 - 1),
        (0xD0, ">b", -(2**7), 2**7 - 1),
        (0xD1, ">h", -(2**15), 2**15 - 1),
        (0xD2, ">i", -(2**31), 2**31 - 1),
        (0xD3, ">q", -(2**63), 2**63 - 1),
    ):
        if lo <= v <= hi:
            out.append(bytes([code]) + struct.pack(fmt, v))
    return out


def _float_forms(d: float) -> list[bytes]:
    out = [b"\xcb" + struct.pack(">d", d)]
    try:
        if struct.unpack(">f", struct.pack(">f", d))[0] == d or d != d:
            out.append(b"\xca" + struct.pack(">f", d))
    except OverflowError:
        pass
    return out


_TS_INTS = [
    0,
    1,
    127,
    128,
    255,
    256,
    2**15,
    2**31 - 1,
    2**31,
    2**32 - 1,
    2**32,
    2**53,
    2**63 - 1,
    2**63,
    2**64 - 1,
]
_TS_INTS += [-1, -32, -33, -128, -129, -(2**31), -(2**63)]
_TS_FLOATS = [0.0, -0.0, 1.0, 1.5, -1.0, 2.0**32, 2.0**32 - 1, 2.0**53, 2.0**63 - 1024, 2.0**63, 2.0**64]
_TS_FLOATS += [float("nan"), float("inf"), float("-inf"), 1e-300]
_TS_PARTS = [e for v in _TS_INTS for e in _int_forms(v)] + [e for d in _TS_FLOATS for e in _float_forms(d)]


@pytest.mark.parametrize("part", ["millis", "counter"])
def test_timestamp_parts_in_every_encoding(pure: Any, compiled: Any, part: str) -> None:
    sentinel = 0x5A5A5A5A5A5A5A5A
    ts = {"millis": 1_700_000_000_000, "counter": 7, "nodeId": "n"} | {part: sentinel}
    for where in ("record", "op"):
        op = _op(0, 1)
        if where == "record":
            op["record"]["timestamp"] = ts
        else:
            op["timestamp"] = ts
        template = _batch([op, _op(1, 2)])
        assert template.count(b"\xcf" + struct.pack(">Q", sentinel)) == 1
        accepted = rejected = 0
        for enc in _TS_PARTS:
            got = _agree(pure, compiled, template.replace(b"\xcf" + struct.pack(">Q", sentinel), enc))
            assert isinstance(got, M.OpBatch)
            first = got.ops[0]
            if isinstance(first, M.ClientOp):
                accepted += 1
                t = first.record.timestamp if where == "record" and first.record else first.timestamp
                assert t is not None
                assert type(getattr(t, part)) is int
            else:
                rejected += 1
        assert accepted > 0 and rejected > 0


def test_equal_counters_share_one_int(pure: Any, compiled: Any) -> None:
    counter = 0xA5A5_1234
    ops = [_op(i, i) for i in range(5)]
    for op in ops:
        op["record"]["timestamp"]["counter"] = counter
    ops[3]["record"]["timestamp"]["counter"] = counter + 1
    got = _agree(pure, compiled, _batch(ops))
    cs = [op.record.timestamp.counter for op in got.ops]
    assert cs == [counter, counter, counter, counter + 1, counter]
    assert cs[0] is cs[1] is cs[2]
    assert cs[3] is not cs[2]


_key_alphabet = st.sampled_from(["a", "b", "é", "\x00", "😀"])
_keys = st.lists(_key_alphabet, max_size=40).map("".join)


@PROPS
@given(
    batches=st.lists(
        st.lists(
            st.tuples(_keys, st.dictionaries(_keys, st.integers(-3, 3) | _keys, max_size=5)), max_size=6
        ),
        min_size=1,
        max_size=4,
    )
)
def test_near_equal_strings_decode_exactly(pure: Any, compiled: Any, batches: list[Any]) -> None:
    # ids and keys drawn from few characters: equal lengths, shared prefixes and suffixes and
    # repeats across frames are the rule, so cache slots meet near-equal bytes constantly
    for batch in batches:
        ops = [_op(i, value, op_id=op_id) for i, (op_id, value) in enumerate(batch)]
        _agree(pure, compiled, _batch(ops))
        for op in ops[:2]:
            _agree(pure, compiled, pk({"type": "CLIENT_OP", "payload": op}))
