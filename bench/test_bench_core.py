"""Core (CRDT) micro-benchmarks: compiled ``[c]`` and pure ``[py]`` twins side by side.

Run (the machine is shared, so CPU time of this thread is the fairer clock)::

    .venv/bin/pytest bench/test_bench_core.py -p no:cacheprovider \\
        --benchmark-timer=time.thread_time --benchmark-columns=min,median,rounds \\
        --benchmark-json=/tmp/bench-core.json
    .venv/bin/python bench/core_report.py /tmp/bench-core.json

Sizes are configurable so CI never runs these by default (``bench/`` is not in
``testpaths``): ``TOPGUN_BENCH_N`` (records/keys/timestamps per round, default
1,000,000), ``TOPGUN_BENCH_ROUNDS`` (compiled rounds, default 5) and
``TOPGUN_BENCH_PY_ROUNDS`` (pure rounds, default 1; the pure twin is slow).

* ``lww-merge-nomerkle``: ``LWWMap(hlc, merkle=False).merge_many`` of N records
  with distinct keys into an empty map (clock attached, so every record also
  runs ``HLC.update``).
* ``lww-merge-fresh-keys``: as ``lww-merge-nomerkle`` with key strings created
  anew for every round (as a decoder hands them over), so no key carries a cached
  hash; the other cases reuse one pairs list, whose keys are hashed after round 1.
* ``lww-merge-noclock``: the same into a map without a clock (no ``HLC.update``).
* ``lww-merge-merkle``: the same with Merkle upkeep.
* ``baseline-dict``: ``dict(pairs)`` of the same pairs: CPython building a
  1M-entry dict from fresh keys, the floor under any dict-backed merge.
* ``merkle-build``: ``MerkleTree().update_many`` of N (key, item hash) pairs.
* ``merkle-incremental``: ``update_many`` of N changed item hashes for keys
  already in an N-key tree.
* ``ts-max``: ``max_timestamp`` of N timestamps in creation order (N - 1 compares).
* ``ts-max-shuffled``: the same list shuffled (memory-latency bound).
* ``ts-sort``: ``sort_timestamps`` of N shuffled timestamps (about N log2 N compares).
"""

from __future__ import annotations

import gc
import importlib
import math
import os
import random
from types import ModuleType
from typing import Any

import pytest

from topgun.core.records import LWWRecord, Timestamp

N = int(os.environ.get("TOPGUN_BENCH_N", "1000000"))
ROUNDS = {
    "c": int(os.environ.get("TOPGUN_BENCH_ROUNDS", "5")),
    "py": int(os.environ.get("TOPGUN_BENCH_PY_ROUNDS", "1")),
}
MODULES = {
    "c": (
        "topgun._speedups._hashing",
        "topgun._speedups._hlc",
        "topgun._speedups._lww",
        "topgun._speedups._merkle",
    ),
    "py": ("topgun.core._hashing_py", "topgun.core._hlc_py", "topgun.core._lww_py", "topgun.core._merkle_py"),
}
BASE_MS = 1_700_000_000_000


class Side:
    def __init__(self, kind: str) -> None:
        try:
            mods = [importlib.import_module(m) for m in MODULES[kind]]
        except ImportError:
            pytest.skip(f"{kind} twin not built")
        self.kind = kind
        self.hashing, self.hlc, self.lww, self.merkle = mods


@pytest.fixture(params=["c", "py"])
def side(request: pytest.FixtureRequest) -> Side:
    return Side(request.param)


_DATA: dict[str, Any] = {}


def _pairs() -> list[tuple[str, LWWRecord]]:
    if "pairs" not in _DATA:
        _DATA["pairs"] = [
            (f"key-{i}", LWWRecord({"n": i}, Timestamp(BASE_MS + i, i % 3, "node-1"))) for i in range(N)
        ]
        gc.collect()
    return _DATA["pairs"]  # type: ignore[no-any-return]


def _items(hashing: ModuleType) -> list[tuple[str, int]]:
    key = f"items-{hashing.__name__}"
    if key not in _DATA:
        _DATA[key] = [(k, hashing.lww_item_hash(k, r.timestamp)) for k, r in _pairs()]
    return _DATA[key]  # type: ignore[no-any-return]


def _stamps(shuffled: bool) -> list[Timestamp]:
    key = f"stamps-{shuffled}"
    if key not in _DATA:
        rng = random.Random(5)
        stamps = [
            Timestamp(
                BASE_MS + rng.randrange(max(1, N // 4)),
                rng.randrange(4),
                rng.choice(["node-a", "node-b", "node-c"]),
            )
            for _ in range(N)
        ]
        if shuffled:
            rng.shuffle(stamps)
        _DATA[key] = stamps
    return _DATA[key]  # type: ignore[no-any-return]


def _run(benchmark: Any, side: Side, name: str, fn: Any, setup: Any, units: float, unit: str) -> Any:
    benchmark.group = name
    benchmark.extra_info.update({"n": N, "units": units, "unit": unit, "side": side.kind, "case": name})
    gc.collect()
    return benchmark.pedantic(fn, setup=setup, rounds=ROUNDS[side.kind], iterations=1, warmup_rounds=0)


def test_lww_merge_nomerkle(benchmark: Any, side: Side) -> None:
    pairs = _pairs()
    changed = _run(
        benchmark,
        side,
        "lww-merge-nomerkle",
        lambda m: m.merge_many(pairs),
        lambda: ((side.lww.LWWMap(side.hlc.HLC("srv"), merkle=False),), {}),
        N,
        "records",
    )
    assert len(changed) == N


def test_lww_merge_fresh_keys(benchmark: Any, side: Side) -> None:
    pairs = _pairs()

    def setup() -> tuple[tuple[Any, ...], dict[str, Any]]:
        fresh = [(k.encode().decode(), r) for k, r in pairs]  # new str objects, hash not computed
        return (side.lww.LWWMap(side.hlc.HLC("srv"), merkle=False), fresh), {}

    changed = _run(
        benchmark,
        side,
        "lww-merge-fresh-keys",
        lambda m, fresh: m.merge_many(fresh),
        setup,
        N,
        "records",
    )
    assert len(changed) == N


def test_lww_merge_noclock(benchmark: Any, side: Side) -> None:
    pairs = _pairs()
    changed = _run(
        benchmark,
        side,
        "lww-merge-noclock",
        lambda m: m.merge_many(pairs),
        lambda: ((side.lww.LWWMap(None, merkle=False),), {}),
        N,
        "records",
    )
    assert len(changed) == N


def test_baseline_dict(benchmark: Any) -> None:
    pairs = _pairs()
    benchmark.group = "baseline-dict"
    benchmark.extra_info.update({"n": N, "units": N, "unit": "records", "side": "c", "case": "baseline-dict"})
    gc.collect()
    d = benchmark.pedantic(dict, args=(pairs,), rounds=ROUNDS["c"], iterations=1)
    assert len(d) == N


def test_lww_merge_merkle(benchmark: Any, side: Side) -> None:
    pairs = _pairs()
    changed = _run(
        benchmark,
        side,
        "lww-merge-merkle",
        lambda m: m.merge_many(pairs),
        lambda: ((side.lww.LWWMap(side.hlc.HLC("srv"), merkle=True),), {}),
        N,
        "records",
    )
    assert len(changed) == N


def test_merkle_build(benchmark: Any, side: Side) -> None:
    items = _items(side.hashing)
    trees: list[Any] = []

    def build(tree: Any) -> None:
        tree.update_many(items)
        trees.append(tree)

    _run(benchmark, side, "merkle-build", build, lambda: ((side.merkle.MerkleTree(),), {}), N, "keys")
    assert len(trees[-1]) == N


def test_merkle_incremental(benchmark: Any, side: Side) -> None:
    items = _items(side.hashing)
    tree = side.merkle.MerkleTree()
    tree.update_many(items)
    # Alternate between two hash sets so every round changes every key.
    variants = [[(k, h ^ 0x5BD1E995) for k, h in items], items]
    turn = [0]

    def setup() -> tuple[tuple[Any, ...], dict[str, Any]]:
        turn[0] ^= 1
        return (variants[1 - turn[0]],), {}

    _run(benchmark, side, "merkle-incremental", tree.update_many, setup, N, "keys")
    assert len(tree) == N


@pytest.mark.parametrize("shuffled", [False, True], ids=["creation-order", "shuffled"])
def test_ts_max(benchmark: Any, side: Side, shuffled: bool) -> None:
    stamps = _stamps(shuffled)
    name = "ts-max-shuffled" if shuffled else "ts-max"
    best = _run(benchmark, side, name, side.hlc.max_timestamp, lambda: ((stamps,), {}), N - 1, "compares")
    assert best == max(stamps)


def test_ts_sort(benchmark: Any, side: Side) -> None:
    stamps = _stamps(True)
    out = _run(
        benchmark,
        side,
        "ts-sort",
        side.hlc.sort_timestamps,
        lambda: ((stamps,), {}),
        N * math.log2(N),
        "compares",
    )
    assert len(out) == N and out[0] == min(stamps) and out[-1] == max(stamps)
