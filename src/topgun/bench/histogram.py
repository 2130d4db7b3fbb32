"""An HDR-style latency histogram: log-linear buckets, bounded relative error, cheap to record and merge."""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable
from typing import Any

__all__ = ["Histogram"]

#: Sub-buckets per power of two: the relative error of a reported value is below 1/_SUB.
_SUB_BITS = 7
_SUB = 1 << _SUB_BITS


class Histogram:
    """Counts of integer values (nanoseconds) in log-linear buckets, like HdrHistogram with ~3 digits.

    Values below ``2**_SUB_BITS`` are exact; above, each power of two is split
    into ``_SUB`` equal buckets, so a percentile is reported within 1/128 of
    the true value. Recording is one dict update; histograms from several
    processes merge by adding counts (:meth:`to_json` / :meth:`from_json`).
    """

    __slots__ = ("counts", "max", "min", "total")

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}
        self.total = 0
        self.max = 0
        self.min = -1

    @staticmethod
    def _index(value: int) -> int:
        if value < _SUB:
            return value
        shift = value.bit_length() - _SUB_BITS - 1
        return ((shift + 1) << _SUB_BITS) + ((value >> shift) - _SUB)

    @staticmethod
    def _upper(index: int) -> int:
        """The largest value that falls into bucket ``index`` (reported values err high, never low)."""
        if index < _SUB:
            return index
        shift = (index >> _SUB_BITS) - 1
        sub = (index & (_SUB - 1)) + _SUB
        return ((sub + 1) << shift) - 1

    def record(self, value: int) -> None:
        """Count one value (negative values count as 0)."""
        if value < 0:
            value = 0
        i = self._index(value)
        c = self.counts
        c[i] = c.get(i, 0) + 1
        self.total += 1
        if value > self.max:
            self.max = value
        if self.min < 0 or value < self.min:
            self.min = value

    def record_many(self, values: Iterable[int]) -> None:
        """Count every value of ``values``: the same counts as :meth:`record` of each, far cheaper.

        The values are sorted once; then each bucket's count is one binary
        search for the bucket's upper bound, so the Python work is per bucket
        (a few hundred at most), not per value. The load client appends raw
        latencies to an ``array`` and folds them in here outside its hot path.
        """
        vals = sorted(values)
        n = len(vals)
        if n == 0:
            return
        c = self.counts
        i = 0
        if vals[0] < 0:  # negative values count as 0
            i = bisect_right(vals, -1)
            c[0] = c.get(0, 0) + i
            vals[:i] = [0] * i
        while i < n:
            idx = self._index(vals[i])
            j = bisect_right(vals, self._upper(idx), i)
            c[idx] = c.get(idx, 0) + (j - i)
            i = j
        self.total += n
        if vals[-1] > self.max:
            self.max = vals[-1]
        if self.min < 0 or vals[0] < self.min:
            self.min = vals[0]

    def merge(self, other: Histogram) -> None:
        """Add ``other``'s counts to this histogram."""
        for i, n in other.counts.items():
            self.counts[i] = self.counts.get(i, 0) + n
        self.total += other.total
        self.max = max(self.max, other.max)
        if other.min >= 0 and (self.min < 0 or other.min < self.min):
            self.min = other.min

    def percentile(self, p: float) -> int:
        """The value at percentile ``p`` (0 to 100); 0 for an empty histogram; the exact max for 100."""
        if self.total == 0:
            return 0
        if p >= 100:
            return self.max
        rank = max(1, int(self.total * p / 100.0 + 0.999999))
        seen = 0
        for i in sorted(self.counts):
            seen += self.counts[i]
            if seen >= rank:
                return min(self._upper(i), self.max)
        return self.max

    def summary_ms(self) -> dict[str, float]:
        """``{p50, p95, p99, max}`` in milliseconds (the recorded unit is nanoseconds)."""
        return {
            "p50": self.percentile(50) / 1e6,
            "p95": self.percentile(95) / 1e6,
            "p99": self.percentile(99) / 1e6,
            "max": self.max / 1e6,
        }

    def to_json(self) -> dict[str, Any]:
        """A JSON-able form for passing between processes."""
        return {"counts": [[i, n] for i, n in self.counts.items()], "max": self.max, "min": self.min}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Histogram:
        """Rebuild a histogram written by :meth:`to_json`."""
        h = cls()
        for i, n in data["counts"]:
            h.counts[int(i)] = int(n)
        h.total = sum(h.counts.values())
        h.max = int(data["max"])
        h.min = int(data["min"])
        return h
