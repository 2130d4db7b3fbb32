"""Property: any sequence of changes, coalesced into batches of any size, stores what a dict model says."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from support.stores import reload
from topgun.core.records import LWWRecord, ORMapRecord, Timestamp
from topgun.server.storage import Snapshot, WriteBatch, open_storage

pytestmark = pytest.mark.timeout(300)

KEYS = st.sampled_from(["a", "b", "c", "ключ", ""])
TAGS = st.sampled_from(["t1", "t2", "1700000000000:0:n"])
VALUES = (
    st.none()
    | st.integers(-(2**63), 2**64 - 1)
    | st.text(max_size=5)
    | st.lists(st.integers(-(2**63), 2**64 - 1), max_size=3)
)
TS = st.builds(Timestamp, st.integers(0, 2**40), st.integers(0, 2**32 - 1), st.sampled_from(["n1", "n2"]))
TTL = st.none() | st.integers(1, 2**40)

OPS = st.one_of(
    st.tuples(st.just("lww_put"), KEYS, VALUES, TS, TTL),
    st.tuples(st.just("lww_delete"), KEYS),
    st.tuples(st.just("or_put"), KEYS, TAGS, VALUES.filter(lambda v: v is not None), TS),
    st.tuples(st.just("or_delete"), KEYS, TAGS),
    st.tuples(st.just("tomb_put"), TAGS, KEYS, st.integers(0, 2**40)),
    st.tuples(st.just("tomb_delete"), TAGS),
    st.tuples(st.just("fencing"), st.sampled_from(["l1", "l2"]), st.integers(0, 2**62)),
)


def record(b: WriteBatch, op: tuple[Any, ...]) -> None:
    kind = op[0]
    if kind == "lww_put":
        b.lww_put("m", op[1], LWWRecord(op[2], op[3], op[4]))
    elif kind == "lww_delete":
        b.lww_delete("m", op[1])
    elif kind == "or_put":
        b.or_put("o", op[1], ORMapRecord(op[3], op[4], op[2]))
    elif kind == "or_delete":
        b.or_delete("o", op[1], op[2])
    elif kind == "tomb_put":
        b.or_tombstone_put("o", op[1], op[2], op[3])
    elif kind == "tomb_delete":
        b.or_tombstone_delete("o", op[1])
    else:
        b.set_fencing(op[1], op[2])


def model(ops: list[tuple[Any, ...]]) -> dict[str, dict[Any, Any]]:
    lww: dict[str, LWWRecord] = {}
    ors: dict[tuple[str, str], ORMapRecord] = {}
    tombs: dict[str, tuple[str, int]] = {}
    fencing: dict[str, int] = {}
    for op in ops:
        kind = op[0]
        if kind == "lww_put":
            lww[op[1]] = LWWRecord(op[2], op[3], op[4])
        elif kind == "lww_delete":
            lww.pop(op[1], None)
        elif kind == "or_put":
            ors[(op[1], op[2])] = ORMapRecord(op[3], op[4], op[2])
        elif kind == "or_delete":
            ors.pop((op[1], op[2]), None)
        elif kind == "tomb_put":
            tombs[op[1]] = (op[2], op[3])
        elif kind == "tomb_delete":
            tombs.pop(op[1], None)
        else:
            fencing[op[1]] = op[2]
    return {"lww": lww, "or": ors, "tombs": tombs, "fencing": fencing}


def observed(snap: Snapshot) -> dict[str, dict[Any, Any]]:
    m = snap.maps.get("m")
    o = snap.maps.get("o")
    ors = {(k, r.tag): r for k, recs in (o.or_records if o else {}).items() for r in recs}
    return {
        "lww": dict(m.lww) if m else {},
        "or": ors,
        "tombs": dict(o.or_tombstones) if o else {},
        "fencing": dict(snap.fencing),
    }


async def apply_in_chunks(url: str, ops: list[tuple[Any, ...]], cuts: list[int]) -> Snapshot:
    s = open_storage(url)
    await s.open()
    try:
        bounds = sorted({0, len(ops), *(c % (len(ops) + 1) for c in cuts)})
        for lo, hi in itertools.pairwise(bounds):
            b = WriteBatch()
            for op in ops[lo:hi]:
                record(b, op)
            await s.write(b)
    finally:
        await s.close()
    return await reload(url)


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(OPS, max_size=40), cuts=st.lists(st.integers(0, 1000), max_size=5))
def test_batches_of_any_size_store_the_model(
    kind: str, tmp_path: Path, ops: list[tuple[Any, ...]], cuts: list[int]
) -> None:
    url = (
        f"memory://model-{uuid.uuid4().hex}"
        if kind == "memory"
        else f"sqlite:///{tmp_path}/{uuid.uuid4().hex}.db"
    )
    snap = asyncio.run(apply_in_chunks(url, ops, cuts))
    assert observed(snap) == model(ops)


@given(ops=st.lists(OPS, max_size=40))
def test_a_batch_is_true_exactly_when_it_holds_rows(ops: list[tuple[Any, ...]]) -> None:
    # Truth is answered from the recording count; rows (after coalescing) are what it stands for.
    b = WriteBatch()
    assert not b
    for op in ops:
        record(b, op)
        assert bool(b) is (len(b) > 0)
        assert len(b) <= b.recorded
