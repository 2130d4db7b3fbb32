"""The compiled decoder shares equal node ids and millis between consecutive timestamps.

A server holds one Timestamp per stored record; a client's ops all carry its
node id, so sharing that string (and an equal millis) saves about 90 bytes per
record. Values must be exactly what the pure twin decodes.
"""

from __future__ import annotations

import msgpack
import pytest

from topgun._ext import NO_EXTENSIONS
from topgun.protocol import _codec_py


def _frame(nodes: list[str], millis: list[int]) -> bytes:
    ops = [
        {
            "id": str(i + 1),
            "mapName": "m",
            "key": f"k{i}",
            "opType": "PUT",
            "record": {"value": {"n": i}, "timestamp": {"millis": ms, "counter": i, "nodeId": node}},
        }
        for i, (node, ms) in enumerate(zip(nodes, millis, strict=True))
    ]
    return msgpack.packb({"type": "OP_BATCH", "payload": {"ops": ops}})


@pytest.mark.skipif(NO_EXTENSIONS, reason="compiled twin disabled")
def test_consecutive_timestamps_share_equal_parts() -> None:
    from topgun._speedups import _codec

    nodes = ["n1", "n1", "n2", "n2", "n1"]
    millis = [1_700_000_000_000, 1_700_000_000_000, 1_700_000_000_000, 1_700_000_000_001, 1_700_000_000_001]
    frame = _frame(nodes, millis)
    got = [op.record.timestamp for op in _codec.decode(frame).ops]
    want = [op.record.timestamp for op in _codec_py.decode(frame).ops]
    assert got == want
    assert [tuple(t) for t in got] == [
        (ms, i, n) for i, (n, ms) in enumerate(zip(nodes, millis, strict=True))
    ]
    assert got[0].node_id is got[1].node_id
    assert got[2].node_id is got[3].node_id and got[2].node_id == "n2"
    assert got[0].millis is got[1].millis is got[2].millis
    assert got[3].millis is got[4].millis and got[3].millis == 1_700_000_000_001


@pytest.mark.skipif(NO_EXTENSIONS, reason="compiled twin disabled")
def test_shared_parts_do_not_leak_between_different_values() -> None:
    from topgun._speedups import _codec

    a = _codec.decode(_frame(["é-node"], [5])).ops[0].record.timestamp
    b = _codec.decode(_frame(["é-nodf"], [6])).ops[0].record.timestamp
    assert (a.node_id, a.millis) == ("é-node", 5)
    assert (b.node_id, b.millis) == ("é-nodf", 6)
