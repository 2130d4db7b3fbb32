"""Hybrid Logical Clock (PROTOCOL.md §3.1, §2.2), pure-Python specification.

The compiled twin is :mod:`topgun._speedups._hlc`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable

from topgun.core.records import Timestamp
from topgun.errors import ClockDriftError

__all__ = [
    "DEFAULT_MAX_DRIFT_MS",
    "HLC",
    "MAX_COUNTER",
    "compare",
    "max_timestamp",
    "sort_timestamps",
    "wall_millis",
]

log = logging.getLogger("topgun.core.hlc")

#: Counters stay below this bound; reaching it advances millis instead (§3.1).
MAX_COUNTER = 2**32
#: How far (ms) a remote timestamp may run ahead of the wall clock.
DEFAULT_MAX_DRIFT_MS = 60_000


def wall_millis() -> int:
    """The wall clock in integer milliseconds since the Unix epoch."""
    return time.time_ns() // 1_000_000


_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1


class HLC:
    """A hybrid logical clock for one node.

    ``wall_clock`` returns integer milliseconds (default :func:`wall_millis`); it
    is injectable so tests and simulations can freeze time. In ``strict`` mode a
    remote timestamp more than ``max_drift_ms`` ahead of the wall clock makes
    :meth:`update` raise :class:`~topgun.errors.ClockDriftError` and leaves the
    clock untouched; otherwise it is logged and merged, as the TS client does.
    """

    __slots__ = ("_counter", "_millis", "_wall", "max_drift_ms", "node_id", "strict")

    def __init__(
        self,
        node_id: str,
        *,
        max_drift_ms: int = DEFAULT_MAX_DRIFT_MS,
        strict: bool = False,
        wall_clock: Callable[[], int] | None = None,
    ) -> None:
        if not isinstance(node_id, str) or not node_id or ":" in node_id:
            raise ValueError(f"invalid node id: {node_id!r}")
        self.node_id: str = node_id
        self.max_drift_ms: int = int(max_drift_ms)
        self.strict: bool = bool(strict)
        self._wall: Callable[[], int] = wall_clock if wall_clock is not None else wall_millis
        self._millis = 0
        self._counter = 0

    @property
    def last_millis(self) -> int:
        """Physical part of the latest reading (0 before the first event)."""
        return self._millis

    @property
    def last_counter(self) -> int:
        """Logical part of the latest reading."""
        return self._counter

    @property
    def wall_clock(self) -> Callable[[], int]:
        """The wall-clock function this clock reads."""
        return self._wall

    def state(self) -> tuple[int, int]:
        """``(last_millis, last_counter)``."""
        return self._millis, self._counter

    def now(self) -> Timestamp:
        """Stamp a local event; every reading is greater than all earlier ones."""
        t = self._wall()
        if t > self._millis:
            self._millis = t
            self._counter = 0
        else:
            c = self._counter + 1
            if c >= MAX_COUNTER:
                self._millis += 1
                c = 0
            self._counter = c
        return Timestamp(self._millis, self._counter, self.node_id)

    def update(self, remote: Timestamp, wall: int | None = None) -> None:
        """Merge a timestamp received from another node (§3.1 update).

        ``wall`` is the wall-clock reading ``t`` of the receive event when the caller
        has taken it already (timestamps that arrived together are one event, see
        ``LWWMap.merge_many``); by default the clock is read here. The clock's
        guarantees hold for any reading.
        """
        rm = remote[0]
        rc = remote[1]
        if type(rm) is not int or type(rc) is not int:
            if not (_integral(rm) and _integral(rc)):
                return
            rm = int(rm)
            rc = int(rc)
        if not (_INT64_MIN <= rm <= _INT64_MAX and _INT64_MIN <= rc <= _INT64_MAX):
            # The clock's state is two signed 64-bit integers (the compiled twin's too).
            raise OverflowError("timestamp field does not fit in 64 bits")
        t = self._wall() if wall is None else wall
        if rm - t > self.max_drift_ms:
            if self.strict:
                raise ClockDriftError(rm, t, self.max_drift_ms)
            log.warning("remote timestamp %d is %d ms ahead of the wall clock", rm, rm - t)
        lm = self._millis
        lc = self._counter
        m = max(lm, t, rm)
        if m == lm and m == rm:
            c = max(lc, rc) + 1
        elif m == lm:
            c = lc + 1
        elif m == rm:
            c = rc + 1
        else:
            c = 0
        if c >= MAX_COUNTER:
            m += 1
            c = 0
        self._millis = m
        self._counter = c

    def drift_exceeded(self, ts: Timestamp) -> bool:
        """True when ``ts`` is more than ``max_drift_ms`` ahead of the wall clock."""
        return bool(ts[0] - self._wall() > self.max_drift_ms)

    def __repr__(self) -> str:
        return f"HLC({self.node_id!r}, millis={self._millis}, counter={self._counter})"


def _integral(x: object) -> bool:
    if isinstance(x, bool):
        return False
    if isinstance(x, int):
        return True
    return isinstance(x, float) and x.is_integer()


def compare(a: Timestamp, b: Timestamp) -> int:
    """-1, 0 or 1 as ``a`` is before, equal to or after ``b`` (§2.2)."""
    ta = (a[0], a[1], a[2])
    tb = (b[0], b[1], b[2])
    return -1 if ta < tb else (1 if ta > tb else 0)


def max_timestamp(seq: Iterable[Timestamp]) -> Timestamp | None:
    """The greatest timestamp of ``seq`` (the first of equal maxima), or None when empty."""
    best: Timestamp | None = None
    for ts in seq:
        if best is None or ts > best:
            best = ts
    return best


def sort_timestamps(seq: Iterable[Timestamp]) -> list[Timestamp]:
    """The timestamps of ``seq`` in ascending order (stable for equal timestamps)."""
    return sorted(seq)
