"""Differential tests: the compiled twins agree with the pure-Python specification.

Every test feeds the same Hypothesis-generated input to both twins and compares
everything observable: results, hashes, bucket listings, roots, changed-key
lists and clock states.
"""

from __future__ import annotations

import pytest
from core_strategies import PROPS, json_values, keys, lww_ops, timestamps
from hypothesis import given
from hypothesis import strategies as st

from support.clocks import Wall
from topgun.core._hashing_py import route
from topgun.core.records import LWWRecord, ORMapRecord, Timestamp
from topgun.errors import ClockDriftError

HEX = "0123456789abcdef"
ALL_PATHS = [""] + list(HEX) + [a + b for a in HEX for b in HEX]

# Text including lone surrogates and characters of every width (1, 2 and 4 bytes per code point).
any_text = st.text(
    alphabet=st.one_of(
        st.characters(),
        st.integers(0xD800, 0xDFFF).map(chr),
        st.sampled_from(["é", "🚀", "\uffff", "\x00", ":"]),
    ),
    max_size=12,
)


@PROPS
@given(s=any_text)
def test_string_hashes(pure, compiled, s):
    p, c = pure.hashing, compiled.hashing
    assert c.fnv1a(s) == p.fnv1a(s)
    assert c.route(s) == p.route(s)
    assert c.partition(s) == p.partition(s)
    assert c.fnv1a_many([s, s + "x", ""]) == p.fnv1a_many([s, s + "x", ""])


@PROPS
@given(hashes=st.lists(st.integers(-(2**70), 2**70), max_size=8))
def test_mix_combine(pure, compiled, hashes):
    p, c = pure.hashing, compiled.hashing
    assert c.combine(hashes) == p.combine(hashes)
    assert c.combine(iter(hashes)) == p.combine(hashes)
    assert [c.mix(h) for h in hashes] == [p.mix(h) for h in hashes]


@PROPS
@given(
    key=any_text,
    millis=st.one_of(st.integers(0, 2**64 + 5), st.integers(-5, -1)),
    counter=st.one_of(st.integers(0, 2**32), st.integers(2**64 - 2, 2**64 + 2)),
    node=any_text,
)
def test_lww_item_hash(pure, compiled, key, millis, counter, node):
    ts = Timestamp(millis, counter, node)
    assert compiled.hashing.lww_item_hash(key, ts) == pure.hashing.lww_item_hash(key, ts)


@PROPS
@given(
    key=any_text,
    recs=st.lists(
        st.tuples(json_values, timestamps, st.one_of(st.none(), st.integers(1, 10**6))),
        max_size=4,
    ),
)
def test_or_entry_hash(pure, compiled, key, recs):
    records = [ORMapRecord(v, ts, f"{ts}#{i}", ttl) for i, (v, ts, ttl) in enumerate(recs)]
    assert compiled.hashing.or_entry_hash(key, records) == pure.hashing.or_entry_hash(key, records)
    for v, _, _ in recs:
        assert compiled.hashing.render_value(v) == pure.hashing.render_value(v)


def tree_dump(tree):
    return (
        tree.root_hash,
        len(tree),
        {p: tree.buckets(p) for p in ALL_PATHS},
        {p: tree.node_hash(p) for p in ALL_PATHS},
        tree.keys_under(""),
    )


def leaves_dump(tree):
    paths = {route(k)[:3] for k in tree.keys_under("")}
    return {p: tree.leaf(p) for p in paths}


merkle_ops = st.lists(
    st.one_of(
        st.tuples(st.just("update"), keys, st.integers(-(2**33), 2**33)),
        st.tuples(st.just("remove"), keys, st.just(0)),
        st.tuples(st.just("many"), keys, st.integers(0, 2**32 - 1)),
    ),
    max_size=40,
)


@PROPS
@given(ops=merkle_ops)
def test_merkle_trees(pure, compiled, ops):
    tp, tc = pure.merkle.MerkleTree(), compiled.merkle.MerkleTree()
    for kind, key, item in ops:
        if kind == "update":
            tp.update(key, item)
            tc.update(key, item)
        elif kind == "many":
            pairs = [(key, item), (key + "!", item ^ 1)]
            tp.update_many(pairs)
            tc.update_many(iter(pairs))
        else:
            assert tc.remove(key) == tp.remove(key)
        assert tc.root_hash == tp.root_hash
        assert tc.get(key) == tp.get(key)
    assert tree_dump(tc) == tree_dump(tp)
    assert leaves_dump(tc) == leaves_dump(tp)
    for p in [*HEX, "", "0f", "abc"]:
        assert tc.keys_under(p) == tp.keys_under(p)


lww_script = st.lists(
    st.one_of(
        st.tuples(st.just("set"), st.sampled_from(["k1", "k2", "x🚀"]), st.integers(0, 3)),
        st.tuples(st.just("remove"), st.sampled_from(["k1", "k2", "x🚀"]), st.just(0)),
        st.tuples(st.just("wall"), st.just(""), st.integers(0, 1_700_000_000_010)),
        st.tuples(st.just("prune"), st.just(""), st.integers(0, 1_700_000_000_010)),
        st.tuples(st.just("merge"), st.just(""), st.just(0)),
    ),
    max_size=20,
)


def lww_state(m):
    return (
        sorted(m.records()),
        m.root_hash,
        m.hlc.state(),
        sorted(m.keys()),
        len(m),
        m.record_count,
        {k: m.get(k) for k in ("k1", "k2", "x🚀", "k3", "k4")},
    )


@PROPS
@given(script=lww_script, remote=lww_ops(max_size=30), merkle=st.booleans(), strict=st.booleans())
def test_lww_maps(pure, compiled, script, remote, merkle, strict):
    walls = [Wall(1_700_000_000_000), Wall(1_700_000_000_000)]
    maps = [
        twin.lww.LWWMap(
            twin.hlc.HLC("me", wall_clock=w, strict=strict, max_drift_ms=1_000_000), merkle=merkle
        )
        for twin, w in zip((pure, compiled), walls, strict=True)
    ]
    chunks = iter([remote[i : i + 5] for i in range(0, len(remote), 5)])
    for kind, key, arg in script:
        results = []
        batch = next(chunks, []) if kind == "merge" else []
        for m, w in zip(maps, walls, strict=True):
            if kind == "set":
                results.append(m.set(key, arg, ttl_ms=arg or None))
            elif kind == "remove":
                results.append(m.remove(key))
            elif kind == "wall":
                w.t = arg
            elif kind == "prune":
                results.append(m.prune(Timestamp(arg, 0, "me")))
            else:
                try:
                    results.append(m.merge_many(batch))
                except ClockDriftError as exc:
                    results.append(("drift", exc.remote_millis, exc.wall_millis))
        assert results[:1] == results[1:]
        for r in results:
            if isinstance(r, LWWRecord):
                assert type(r) is LWWRecord and type(r.timestamp) is Timestamp
        assert lww_state(maps[1]) == lww_state(maps[0])
    for key, rec in remote:
        outcomes = []
        for m in maps:
            try:
                outcomes.append(m.merge(key, rec))
            except ClockDriftError:
                outcomes.append("drift")
        assert outcomes[0] == outcomes[1]
    assert lww_state(maps[1]) == lww_state(maps[0])


@pytest.mark.parametrize("mix", ["pure-map+compiled-clock", "compiled-map+pure-clock"])
def test_lww_with_other_twins_clock(pure, compiled, mix):
    map_twin, clock_twin = (pure, compiled) if mix.startswith("pure") else (compiled, pure)
    wall = Wall(1000)
    m = map_twin.lww.LWWMap(clock_twin.hlc.HLC("me", wall_clock=wall))
    ref = pure.lww.LWWMap(pure.hlc.HLC("me", wall_clock=wall))
    ops = [("a", LWWRecord(1, Timestamp(2000, 3, "o"))), ("a", LWWRecord(2, Timestamp(1500, 0, "o")))]
    assert m.merge_many(ops) == ref.merge_many(ops)
    assert m.set("b", 5) == ref.set("b", 5)
    assert m.hlc.state() == ref.hlc.state() == (2000, 6)
    assert m.root_hash == ref.root_hash


hlc_script = st.lists(
    st.one_of(
        st.tuples(st.just("now"), timestamps),
        st.tuples(st.just("update"), timestamps),
        st.tuples(st.just("wall"), st.integers(0, 1_700_000_000_010).map(lambda t: Timestamp(t, 0, "w"))),
        st.tuples(st.just("drift"), timestamps),
    ),
    max_size=30,
)


@PROPS
@given(script=hlc_script, strict=st.booleans(), drift=st.integers(0, 10))
def test_hlc_clocks(pure, compiled, script, strict, drift):
    walls = [Wall(3), Wall(3)]
    clocks = [
        twin.hlc.HLC("me", wall_clock=w, strict=strict, max_drift_ms=drift)
        for twin, w in zip((pure, compiled), walls, strict=True)
    ]
    for kind, ts in script:
        out = []
        for h, w in zip(clocks, walls, strict=True):
            if kind == "now":
                out.append(h.now())
            elif kind == "update":
                try:
                    h.update(ts)
                    out.append(None)
                except ClockDriftError as exc:
                    out.append((exc.remote_millis, exc.wall_millis, exc.max_drift_ms))
            elif kind == "wall":
                w.t = ts.millis
            else:
                out.append(h.drift_exceeded(ts))
        assert out[:1] == out[1:]
        assert clocks[0].state() == clocks[1].state()
        p_clock, c_clock = clocks
        assert (p_clock.last_millis, p_clock.last_counter) == (c_clock.last_millis, c_clock.last_counter)


big_timestamps = st.builds(
    Timestamp,
    st.one_of(st.integers(0, 3), st.integers(2**63 - 2, 2**64 + 2)),
    st.integers(0, 3),
    st.sampled_from(["a", "b", "B", "é", "🚀", "\uff5e"]),
)


@PROPS
@given(stamps=st.lists(st.one_of(timestamps, big_timestamps), max_size=30))
def test_timestamp_batches(pure, compiled, stamps):
    p, c = pure.hlc, compiled.hlc
    got_sorted, want_sorted = c.sort_timestamps(stamps), p.sort_timestamps(stamps)
    assert got_sorted == want_sorted
    assert [id(t) for t in got_sorted] == [id(t) for t in want_sorted]  # same stable order
    assert c.max_timestamp(stamps) is p.max_timestamp(stamps)
    for a in stamps[:6]:
        for b in stamps[:6]:
            assert c.compare(a, b) == p.compare(a, b)


def _big_batch(seed: int, n: int) -> list[tuple[str, LWWRecord]]:
    import random

    rng = random.Random(seed)
    pairs = []
    for i in range(n):
        key = f"k{rng.randrange(n // 3)}"  # many repeated keys inside one batch
        ts = Timestamp(rng.randrange(50), rng.randrange(3), rng.choice("abc"))
        pairs.append((key, LWWRecord(i if i % 7 else None, ts)))
    return pairs


def test_large_batches_grouped_by_leaf(pure, compiled):
    # Batches above the grouping threshold take the leaf-grouped path of the compiled tree.
    pairs = _big_batch(1, 20_000)
    mp, mc = pure.lww.LWWMap(), compiled.lww.LWWMap()
    assert mc.merge_many(pairs) == mp.merge_many(pairs)
    assert mc.merge_many(iter(pairs[::-1])) == mp.merge_many(pairs[::-1])
    assert tree_dump(mc.merkle) == tree_dump(mp.merkle)
    assert mc.records() == mp.records()  # same insertion order too
    tp, tc = pure.merkle.MerkleTree(), compiled.merkle.MerkleTree()
    items = [(k, i * 2654435761) for i, (k, _) in enumerate(pairs)]
    tp.update_many(items)
    tc.update_many([list(p) for p in items])  # non-tuple pairs too
    assert tree_dump(tc) == tree_dump(tp)
    assert leaves_dump(tc) == leaves_dump(tp)


def test_large_batch_interrupted_by_drift_keeps_tree_consistent(pure, compiled):
    pairs = _big_batch(2, 9000)
    pairs.insert(8000, ("late", LWWRecord(1, Timestamp(10**6, 0, "far"))))
    maps = []
    for twin in (pure, compiled):
        m = twin.lww.LWWMap(twin.hlc.HLC("me", wall_clock=lambda: 100, strict=True, max_drift_ms=1000))
        with pytest.raises(ClockDriftError):
            m.merge_many(pairs)
        maps.append(m)
    mp, mc = maps
    assert sorted(mc.records()) == sorted(mp.records())
    assert mc.record_count > 0
    rebuilt = pure.merkle.MerkleTree()
    rebuilt.update_many((k, pure.hashing.lww_item_hash(k, r.timestamp)) for k, r in mp.records())
    assert mc.root_hash == mp.root_hash == rebuilt.root_hash
    assert mc.hlc.state() == mp.hlc.state()


def test_batches_survive_callbacks_that_shrink_the_input(pure, compiled):
    # A clock written in Python empties the caller's list mid-batch (its update runs
    # once per record): both twins stop where Python's own list iteration stops, and
    # nothing is read after it is freed.
    results = []
    for twin in (pure, compiled):
        pairs = [(f"k{i}", LWWRecord(i, Timestamp(10 + i, 0, "n"))) for i in range(5000)]

        class ShrinkingClock(pure.hlc.HLC):
            calls = 0

            def update(self, remote, wall=None, pairs=pairs):  # type: ignore[no-untyped-def]
                ShrinkingClock.calls += 1
                if ShrinkingClock.calls == 4500:
                    del pairs[100:]
                super().update(remote, wall)

        m = twin.lww.LWWMap(ShrinkingClock("me", wall_clock=lambda: 100), merkle=True)
        changed = m.merge_many(pairs)
        results.append((changed, m.root_hash, m.records()))
    assert results[0] == results[1]
    assert len(results[0][0]) == 4500

    class Shrinking:
        """A pair whose unpacking empties the batch it sits in."""

        def __init__(self, key: str, item: int) -> None:
            self.pair = (key, item)

        def __iter__(self):
            items.clear()
            return iter(self.pair)

    trees = []
    for twin in (pure, compiled):
        items = [("a", 1), Shrinking("b", 2), ("c", 3)] + [(f"x{i}", i) for i in range(5000)]
        tree = twin.merkle.MerkleTree()
        tree.update_many(items)
        trees.append(tree_dump(tree))
    assert trees[0] == trees[1]
    assert trees[0][1] == 2  # "a" and "b" only


@PROPS
@given(
    remote=lww_ops(max_size=20),
    adopted=lww_ops(max_size=20),
    merkle=st.booleans(),
    strict=st.booleans(),
)
def test_lww_adopt(pure, compiled, remote, adopted, merkle, strict):
    walls = [Wall(1_700_000_000_000), Wall(1_700_000_000_000)]
    maps = [
        twin.lww.LWWMap(
            twin.hlc.HLC("me", wall_clock=w, strict=strict, max_drift_ms=1_000_000), merkle=merkle
        )
        for twin, w in zip((pure, compiled), walls, strict=True)
    ]
    outcomes = []
    for m in maps:
        try:
            outcomes.append(m.merge_many(remote))
        except ClockDriftError:
            outcomes.append("drift")
    assert outcomes[0] == outcomes[1]
    # adopt() replaces regardless of timestamp order, including with the very records stored
    for key, rec in adopted + remote[:3]:
        results = []
        for m in maps:
            try:
                results.append(m.adopt(key, rec))
            except ClockDriftError:
                results.append("drift")
        assert results[0] == results[1]
        assert lww_state(maps[1]) == lww_state(maps[0])
