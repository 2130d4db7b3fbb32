"""Hash primitives: every pinned and derived vector of PROTOCOL.md §3.7, on both twins."""

from __future__ import annotations

import itertools
import math

import msgpack
import pytest

from topgun.core.records import ORMapRecord, Timestamp

PINNED_FNV = [
    ("hello", 1335831723),
    ("", 2166136261),
    ("key1", 927623783),
    ("key1:100:0:test", 3988528110),
    ("user:alice", 927278352),
    ("a", 3826002220),
    ("b", 3876335077),
    ("test", 2949673445),
    ("single", 2133018345),
    ("привет", 2417351419),
    ("é", 1812687940),
    ("🚀", 1261604408),
]

PINNED_PARTITION = [("hello", 95), ("key1", 268), ("", 199), ("user:alice", 91), ("a", 101), ("b", 128)]


@pytest.mark.parametrize(("text", "expected"), PINNED_FNV)
def test_fnv1a_vectors(twin, text, expected):
    assert twin.hashing.fnv1a(text) == expected


def test_fnv1a_many_matches_single(twin):
    texts = [t for t, _ in PINNED_FNV]
    assert twin.hashing.fnv1a_many(texts) == [e for _, e in PINNED_FNV]
    assert twin.hashing.fnv1a_many(iter(texts)) == [e for _, e in PINNED_FNV]
    assert twin.hashing.fnv1a_many([]) == []


def test_fnv1a_hashes_utf16_units_not_bytes(twin):
    # A lone surrogate is one UTF-16 unit; a non-BMP char is two (a pair): both as JS sees them.
    h = twin.hashing
    assert h.fnv1a("\ud83d\ude80") == h.fnv1a("🚀")
    units = "é".encode("utf-16-le")
    manual = 0x811C9DC5
    for i in range(0, len(units), 2):
        manual = ((manual ^ int.from_bytes(units[i : i + 2], "little")) * 0x01000193) & 0xFFFFFFFF
    assert h.fnv1a("é") == manual
    assert h.fnv1a("é") != h.fnv1a("é".encode().decode("latin-1"))


@pytest.mark.parametrize(("key", "expected"), PINNED_PARTITION)
def test_partition_vectors(twin, key, expected):
    assert twin.hashing.partition(key) == expected
    assert twin.hashing.PARTITION_COUNT == 271


def test_mix_vectors(twin):
    mix = twin.hashing.mix
    assert mix(0) == 0
    assert mix(1) == 0x514E28B7
    assert mix(100) == 0xFDCE5CEA
    assert mix(200) == 0xBE4F4E32
    assert mix(0xFFFFFFFF) == 0x81F16F39


def test_combine_vectors(twin):
    h = twin.hashing
    assert h.combine([]) == 0
    assert h.combine([100, 200]) == 0xBC1DAB1C
    assert h.combine([h.fnv1a("single")]) == 0xF0047AF6
    t = h.fnv1a("test")
    assert h.combine([t, 0]) == h.combine([0, t]) == h.combine([t]) == 0xD3705A82
    assert h.combine([0xFFFFFFFF] * 3) == 0x85D44DAB
    assert h.combine([250, 50]) == 0xC43F0F9D
    assert h.combine([100, 200]) != h.combine([250, 50])
    assert h.combine([0xAAAA0000, 0x00005555]) != h.combine([0xAAAA5555, 0])
    items = [1, 2, 3, 0xDEADBEEF, 7]
    assert len({h.combine(p) for p in itertools.permutations(items)}) == 1


def test_combine_is_additive_over_multisets(twin):
    h = twin.hashing
    a, b = [5, 9, 9, 123456], [9, 42]
    assert (h.combine(a) + h.combine(b)) % 2**32 == h.combine(a + b)


def test_route(twin):
    assert twin.hashing.route("key1") == "374a6a67"
    assert twin.hashing.route("key2") == "384a6bfa"
    assert twin.hashing.route("user-1") == "f5537974"
    assert twin.hashing.route("user-2") == "f8537e2d"
    assert twin.hashing.route("") == f"{2166136261:08x}"


def test_lww_item_hash(twin):
    h = twin.hashing
    assert h.lww_item_hash("key1", Timestamp(100, 0, "test")) == 3988528110
    ts = Timestamp(1700000000000, 4294967295, "node-1")
    assert h.lww_item_hash("k🚀", ts) == h.fnv1a(f"k🚀:{ts}")


def _rec(value, ts, tag=None, ttl=None):
    return ORMapRecord(value, ts, tag if tag is not None else str(ts), ttl)


T = Timestamp

OR_VECTORS = [
    (
        "k",
        [_rec("v", T(1700000000000, 0, "n1"))],
        "key:k|1700000000000:0:n1:v:1700000000000:0:n1",
        250738279,
    ),
    (
        "k",
        [
            _rec({"b": 1, "a": {"c": 2, "a": 3}}, T(1700000000000, 0, "n1"), ttl=5000),
            _rec(42, T(1700000000000, 1, "n1")),
        ],
        'key:k|1700000000000:0:n1:{"a":{"a":3},"b":1}:1700000000000:0:n1:ttl=5000'
        "|1700000000000:1:n1:42:1700000000000:1:n1",
        2416844057,
    ),
    (
        "list",
        [_rec([{"a": 1}, 2, "s", None, True], T(1, 0, "x"))],
        'key:list|1:0:x:[{},2,"s",null,true]:1:0:x',
        1770220930,
    ),
    (
        "p",
        [_rec(1.5, T(1, 0, "x")), _rec(True, T(1, 1, "x")), _rec(None, T(1, 2, "x"))],
        "key:p|1:0:x:1.5:1:0:x|1:1:x:true:1:1:x|1:2:x:null:1:2:x",
        225388599,
    ),
    (
        "u",
        [
            _rec(
                {
                    "é": 'ü\n"q"',
                    "z": [1, {"z": 2, "y": 3}],
                    "1": 1e21,
                    "2": 0.1,
                    "3": 1e-7,
                    "4": -0.0,
                    "5": 123456789012345680000,
                },
                T(1, 0, "x"),
            )
        ],
        'key:u|1:0:x:{"1":1e+21,"2":0.1,"3":1e-7,"4":0,"5":123456789012345680000,'
        '"z":[1,{"z":2}],"é":"ü\\n\\"q\\""}:1:0:x',
        550156984,
    ),
]


@pytest.mark.parametrize(("key", "records", "string", "expected"), OR_VECTORS)
def test_or_entry_hash_vectors(twin, key, records, string, expected):
    h = twin.hashing
    assert h.or_entry_string(key, records) == string
    assert h.or_entry_hash(key, records) == expected
    # Record order and container kind do not matter: tags are sorted.
    assert h.or_entry_hash(key, list(reversed(records))) == expected
    assert h.or_entry_hash(key, {r.tag: r for r in records}) == expected


def test_or_entry_tags_sorted_by_utf16_units(twin):
    # U+FF5E sorts after U+1F680 by code point but before it by UTF-16 units (0xFF5E < 0xD83D? no:
    # 0xD83D < 0xFF5E), so "🚀" (0xD83D…) comes first in JavaScript order.
    h = twin.hashing
    ts = T(1, 0, "x")
    recs = [_rec(1, ts, tag="\uff5e"), _rec(2, ts, tag="🚀")]
    assert h.or_entry_string("k", recs) == "key:k|🚀:2:1:0:x|\uff5e:1:1:0:x"


NUMBERS = [
    (1, "1"),
    (1.5, "1.5"),
    (1e21, "1e+21"),
    (1e20, "100000000000000000000"),
    (0.1, "0.1"),
    (1e-6, "0.000001"),
    (1e-7, "1e-7"),
    (-0.0, "0"),
    (0, "0"),
    (2**53 + 2, "9007199254740994"),
    (2**53 + 1, "9007199254740992"),
    (-1.5, "-1.5"),
    (123.456, "123.456"),
    (5e-324, "5e-324"),
    (1.7976931348623157e308, "1.7976931348623157e+308"),
    (1.2e-5, "0.000012"),
    (float("nan"), "NaN"),
    (math.inf, "Infinity"),
    (-math.inf, "-Infinity"),
    (10**400, "Infinity"),
    (123e-20, "1.23e-18"),
    (100, "100"),
]


@pytest.mark.parametrize(("x", "expected"), NUMBERS)
def test_number_to_string(twin, x, expected):
    assert twin.hashing.number_to_string(x) == expected


def test_render_value_primitives_and_containers(twin):
    rv = twin.hashing.render_value
    assert rv(None) == "null"
    assert rv(True) == "true"
    assert rv(False) == "false"
    assert rv("a\"b\n") == 'a"b\n'
    assert rv([]) == "[]"
    assert rv({}) == "{}"
    assert rv({"b": [1, {"b": 2, "c": 3}], "a": None}) == '{"a":null,"b":[1,{"b":2}]}'
    assert rv([math.nan, math.inf, 1e400]) == "[null,null,null]"
    # Array indices sort as strings: "10" before "2".
    assert rv(list(range(11))) == "[0,1,2,3,4,5,6,7,8,9,10]"
    assert rv([{"0": "x", "10": "y", "a": 1}]) == '[{"0":"x"}]'
    assert rv("\x01\u2028/\ud800") == "\x01\u2028/\ud800"
    assert rv(["\x01\x1f/\ud800x\ud83d\ude80"]) == '["\\u0001\\u001f/\\ud800x\ud83d\ude80"]'


def test_render_value_bin_and_dates(twin):
    rv = twin.hashing.render_value
    assert rv(b"\x05\x06") == '{"0":5,"1":6}'
    # bin is a map of index names; sorted as strings at the top level.
    assert rv(bytes(range(11)))[:14] == '{"0":0,"1":1,"'
    assert rv(bytes(range(11))).index('"10":10') < rv(bytes(range(11))).index('"2":2')
    date = msgpack.Timestamp(1700000000, 123_456_789)
    assert rv(date) == '"2023-11-14T22:13:20.123Z"'
    assert rv({"d": date}) == '{"d":"2023-11-14T22:13:20.123Z"}'
    assert rv({"d": msgpack.Timestamp(-1, 500_000)}) == '{"d":"1969-12-31T23:59:59.001Z"}'
    assert rv([msgpack.Timestamp(253402300800, 0)]) == '["+010000-01-01T00:00:00.000Z"]'
    assert rv([msgpack.Timestamp(10**13, 0)]) == "[null]"
