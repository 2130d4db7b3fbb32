"""Hypothesis strategies and settings shared by the core tests."""

from __future__ import annotations

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from topgun.core.records import LWWRecord, ORMapRecord, Timestamp

#: Modest example counts: the machine is shared and small. The `twin` fixture only
#: selects modules and holds no state, so sharing it across examples is safe.
_CHECKS = [HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
PROPS = settings(max_examples=60, deadline=None, suppress_health_check=_CHECKS)
FEW = settings(max_examples=25, deadline=None, suppress_health_check=_CHECKS)

node_ids = st.sampled_from(["a", "b", "c", "node-1", "n2", "z"])
keys = st.one_of(
    st.sampled_from(["k1", "k2", "k3", "user:alice", "é", "🚀", ""]),
    st.text(min_size=0, max_size=6),
)

timestamps = st.builds(
    Timestamp,
    st.one_of(st.integers(0, 5), st.integers(1_700_000_000_000, 1_700_000_000_005)),
    st.one_of(st.integers(0, 3), st.just(2**32 - 1)),
    node_ids,
)

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**60), 2**60),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=5),
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.text(max_size=3), children, max_size=4),
    ),
    max_leaves=10,
)

lww_values = st.one_of(st.none(), st.integers(-5, 5), st.text(max_size=3))
ttls = st.one_of(st.none(), st.integers(1, 10))


@st.composite
def lww_ops(draw: st.DrawFn, max_size: int = 25) -> list[tuple[str, LWWRecord]]:
    """Remote LWW writes with pairwise distinct timestamps (a timestamp names one write)."""
    stamps = draw(st.lists(timestamps, max_size=max_size, unique=True))
    out = []
    for ts in stamps:
        key = draw(st.sampled_from(["k1", "k2", "k3", "k4", "x🚀"]))
        out.append((key, LWWRecord(draw(lww_values), ts, draw(ttls))))
    return out


@st.composite
def or_ops(draw: st.DrawFn, max_size: int = 20) -> list[tuple[str, str, ORMapRecord]]:
    """OR-Map ops: ("add", key, record) or ("remove", key, record-to-remove); tags are unique."""
    stamps = draw(st.lists(timestamps, max_size=max_size, unique=True))
    adds = []
    for ts in stamps:
        key = draw(st.sampled_from(["a", "b", "c"]))
        value = draw(st.one_of(st.integers(0, 3), st.text(max_size=2), st.none()))
        ttl = draw(st.one_of(st.none(), st.just(5000)))
        adds.append((key, ORMapRecord(value, ts, str(ts), ttl)))
    ops: list[tuple[str, str, ORMapRecord]] = [("add", k, r) for k, r in adds]
    if adds:
        removed = draw(st.lists(st.sampled_from(adds), max_size=len(adds), unique_by=lambda a: a[1].tag))
        ops.extend(("remove", k, r) for k, r in removed)
    return ops
