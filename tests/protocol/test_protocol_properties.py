"""Property tests: round trips of every kind, and hostile input only ever raising ProtocolError."""

from __future__ import annotations

import random
from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st
from protocol_strategies import ALL_CLASSES, FEW, PROPS, message_strategy, messages

from topgun.errors import ProtocolError


@pytest.mark.parametrize("cls", ALL_CLASSES, ids=lambda c: c.__name__)
def test_round_trip_every_kind(cls: type, twin: Any) -> None:
    codec = twin.codec

    @FEW
    @given(message_strategy(cls))
    def check(msg: Any) -> None:
        frame = codec.encode(msg)
        assert codec.decode(frame) == msg
        # encoding is deterministic: the decoded copy encodes to the same bytes
        assert codec.encode(codec.decode(frame)) == frame

    check()


@PROPS
@given(data=st.binary(max_size=200))
def test_random_bytes_only_raise_protocol_error(twin: Any, data: bytes) -> None:
    for frame in (data, b"\x82" + data, b"\x82\xa4type" + data):
        try:
            twin.codec.decode(frame)
        except ProtocolError:
            pass


# --- structural mutations of valid frames

_WRONG = [None, True, -1, 1.5, float("nan"), "x", b"\x00", [], {}, [1, "a"], {"k": None}, 2**64 - 1]


def _paths(obj: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.extend(_paths(v, (*prefix, k)))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out.extend(_paths(v, (*prefix, i)))
    return out


def _set(obj: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    parent = obj
    for p in path[:-1]:
        parent = parent[p]
    parent[path[-1]] = value
    return obj


def _delete(obj: Any, path: tuple[Any, ...]) -> Any:
    parent = obj
    for p in path[:-1]:
        parent = parent[p]
    del parent[path[-1]]
    return obj


def _mutations(codec: Any, wire: dict[str, Any], frame: bytes, rnd: random.Random) -> list[bytes]:
    out = []
    paths = _paths(wire)[1:]
    for _ in range(4):
        w = codec.unpack(frame)
        if paths:
            out.append(codec.pack(_set(w, rnd.choice(paths), rnd.choice(_WRONG))))
        w = codec.unpack(frame)
        if paths:
            out.append(codec.pack(_delete(w, rnd.choice(paths))))
        w = codec.unpack(frame)
        if paths:
            # deep nesting spliced in at byte level (msgpack's own packer refuses it)
            marker = "\x00DEEP\x00"
            packed = codec.pack(_set(w, rnd.choice(paths), marker))
            deep = b"\x91" * rnd.choice([10, 300, 5000]) + b"\xa1x"
            out.append(packed.replace(msgpack.packb(marker), deep))
    for _ in range(4):
        out.append(frame[: rnd.randrange(len(frame))])  # truncation
        pos = rnd.randrange(len(frame))
        out.append(frame[:pos] + bytes([rnd.randrange(256)]) + frame[pos + 1 :])  # one byte flipped
        # a huge declared length in place of one header byte
        pos = rnd.randrange(len(frame))
        out.append(
            frame[:pos]
            + rnd.choice([b"\xdb", b"\xdd", b"\xdf", b"\xc6", b"\xc9"])
            + b"\xff\xff\xff\xf0"
            + frame[pos:]
        )
    return out


@PROPS
@given(msg=messages, seed=st.integers(0, 2**32))
def test_mutated_frames_only_raise_protocol_error(twin: Any, msg: Any, seed: int) -> None:
    codec = twin.codec
    frame = codec.encode(msg)
    wire = codec.unpack(frame)
    for bad in _mutations(codec, wire, frame, random.Random(seed)):
        try:
            codec.decode(bad)
        except ProtocolError as exc:
            assert isinstance(exc.code, int)
