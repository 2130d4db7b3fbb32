"""Prometheus metrics without a dependency: counters, gauges, histograms and the text exposition.

The server owns one :class:`ServerMetrics`; handlers reach it through
``TopGunServer.metrics`` and update it with plain method calls (a dict lookup
and an integer add, cheap enough for hot paths). Gauges whose value lives
elsewhere (map sizes) are produced at scrape time by registered collectors.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

__all__ = [
    "CONTENT_TYPE",
    "Counter",
    "Gauge",
    "Histogram",
    "HistogramSource",
    "Registry",
    "ServerMetrics",
]

#: Content type of the Prometheus text exposition format.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

LabelValues = tuple[str, ...]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: Sequence[str], values: Sequence[str], extra: str = "") -> str:
    parts = [f'{n}="{_escape(str(v))}"' for n, v in zip(names, values, strict=False)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _num(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


class _Metric:
    kind = "untyped"

    def __init__(self, name: str, help_text: str, labelnames: Sequence[str] = ()) -> None:
        self.name = name
        self.help = help_text
        self.labelnames = tuple(labelnames)

    def _header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]

    def render(self) -> list[str]:
        raise NotImplementedError


class Counter(_Metric):
    """A monotonically increasing count, optionally split by label values."""

    kind = "counter"

    def __init__(self, name: str, help_text: str, labelnames: Sequence[str] = ()) -> None:
        super().__init__(name, help_text, labelnames)
        self._values: dict[LabelValues, int | float] = {}

    def inc(self, *labels: str, amount: int | float = 1) -> None:
        """Add ``amount`` (default 1) to the series named by ``labels``."""
        self._values[labels] = self._values.get(labels, 0) + amount

    def value(self, *labels: str) -> int | float:
        """Current value of one series (0 when never incremented)."""
        return self._values.get(labels, 0)

    @property
    def series(self) -> dict[LabelValues, int | float]:
        """The live ``label values -> value`` mapping: a per-message path adds to it inline
        (``series[key] = series.get(key, 0) + 1``) instead of paying for a call to :meth:`inc`."""
        return self._values

    def render(self) -> list[str]:
        lines = self._header()
        if not self._values and not self.labelnames:
            lines.append(f"{self.name} 0")
        for labels, v in sorted(self._values.items()):
            lines.append(f"{self.name}{_labels(self.labelnames, labels)} {_num(v)}")
        return lines


class Gauge(_Metric):
    """A value that goes up and down; or, with ``collect``, values computed at scrape time."""

    kind = "gauge"

    def __init__(
        self,
        name: str,
        help_text: str,
        labelnames: Sequence[str] = (),
        collect: Callable[[], Iterable[tuple[LabelValues, float]]] | None = None,
    ) -> None:
        super().__init__(name, help_text, labelnames)
        self._values: dict[LabelValues, int | float] = {}
        self._collectors: list[Callable[[], Iterable[tuple[LabelValues, float]]]] = []
        if collect is not None:
            self._collectors.append(collect)

    def set(self, value: int | float, *labels: str) -> None:
        """Set the series named by ``labels`` to ``value``."""
        self._values[labels] = value

    def inc(self, *labels: str, amount: int | float = 1) -> None:
        """Add ``amount`` to the series named by ``labels``."""
        self._values[labels] = self._values.get(labels, 0) + amount

    def dec(self, *labels: str, amount: int | float = 1) -> None:
        """Subtract ``amount`` from the series named by ``labels``."""
        self._values[labels] = self._values.get(labels, 0) - amount

    def value(self, *labels: str) -> int | float:
        """Current value of one stored series (collectors are not consulted)."""
        return self._values.get(labels, 0)

    def add_collector(self, collect: Callable[[], Iterable[tuple[LabelValues, float]]]) -> None:
        """Register a callable yielding ``(label_values, value)`` pairs at every scrape."""
        self._collectors.append(collect)

    def render(self) -> list[str]:
        lines = self._header()
        values = dict(self._values)
        for collect in self._collectors:
            for labels, v in collect():
                values[tuple(labels)] = v
        if not values and not self.labelnames:
            lines.append(f"{self.name} 0")
        for labels, v in sorted(values.items()):
            lines.append(f"{self.name}{_labels(self.labelnames, labels)} {_num(v)}")
        return lines


#: Default latency buckets (seconds) for storage commits.
DEFAULT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class HistogramSource(Protocol):
    """A histogram kept elsewhere (e.g. the group committer's ``stats.latency``)."""

    @property
    def buckets(self) -> list[tuple[float, int]]:
        """``[(upper_bound, cumulative_count), ...]`` ending with ``(inf, count)``."""
        ...

    sum: float
    count: int


class Histogram(_Metric):
    """Observations counted into cumulative buckets, with ``_sum`` and ``_count``.

    Besides its own :meth:`observe` calls it renders attached
    :class:`HistogramSource` s (added with :meth:`add_source`), so a component
    that already measures (the group committer) needs no second bookkeeping.
    """

    kind = "histogram"

    def __init__(self, name: str, help_text: str, buckets: Sequence[float] = DEFAULT_BUCKETS) -> None:
        super().__init__(name, help_text, ())
        self.buckets = tuple(sorted(buckets))
        self._counts = [0] * (len(self.buckets) + 1)
        self.sum = 0.0
        self.count = 0
        self._sources: list[HistogramSource] = []

    def add_source(self, source: HistogramSource) -> None:
        """Include ``source`` in every scrape (cumulative counts read at this histogram's bounds)."""
        self._sources.append(source)

    def observe(self, value: float) -> None:
        """Record one observation."""
        self._counts[bisect_left(self.buckets, value)] += 1
        self.sum += value
        self.count += 1

    def render(self) -> list[str]:
        lines = self._header()
        bounds = (*self.buckets, math.inf)
        totals = []
        cumulative = 0
        for n in self._counts:
            cumulative += n
            totals.append(cumulative)
        total_sum, total_count = self.sum, self.count
        for source in self._sources:
            src = source.buckets
            for i, bound in enumerate(bounds):
                # cumulative count of the source at the largest of its bounds <= ours
                totals[i] += max((c for b, c in src if b <= bound), default=0)
            total_sum += source.sum
            total_count += source.count
        for bound, total in zip(bounds, totals, strict=True):
            lines.append(f'{self.name}_bucket{{le="{_num(bound)}"}} {total}')
        lines.append(f"{self.name}_sum {_num(total_sum)}")
        lines.append(f"{self.name}_count {total_count}")
        return lines


class Registry:
    """An ordered set of metrics rendered together."""

    def __init__(self) -> None:
        self._metrics: dict[str, _Metric] = {}

    def register(self, metric: _Metric) -> _Metric:
        """Add ``metric``; names must be unique."""
        if metric.name in self._metrics:
            raise ValueError(f"metric {metric.name} already registered")
        self._metrics[metric.name] = metric
        return metric

    def get(self, name: str) -> _Metric | None:
        """The metric called ``name``, if registered."""
        return self._metrics.get(name)

    def render(self) -> str:
        """The whole registry in the Prometheus text exposition format."""
        lines: list[str] = []
        for metric in self._metrics.values():
            lines.extend(metric.render())
        return "\n".join(lines) + "\n"


class ServerMetrics:
    """The server's metrics. Handlers use the attributes directly:

    * ``connections`` (gauge) / ``connections_total`` (counter, accepted sockets)
    * ``messages_received{type}`` (counter) — decoded inbound messages by kind
    * ``ops{type}`` (counter) — applied write ops by op type (``PUT``, ``REMOVE``, ``OR_ADD`` …)
    * ``rejected_ops{code}`` (counter) — ops refused with ``OP_REJECTED``
    * ``malformed_frames`` / ``slow_consumer_disconnects`` / ``auth_failures`` (counters)
    * ``storage_commit_seconds`` (histogram) — one observation per storage transaction; attach the
      group committer's own histogram with ``storage_commit_seconds.add_source(committer.stats.latency)``
    * ``map_size{map}`` (gauge) — fed at scrape time by ``add_map_size_collector``
    """

    def __init__(self) -> None:
        self.registry = Registry()
        reg = self.registry.register
        self.connections = Gauge("topgun_connections", "Open WebSocket connections.")
        self.connections_total = Counter("topgun_connections_total", "WebSocket connections accepted.")
        self.messages_received = Counter(
            "topgun_messages_received_total", "Decoded inbound messages by type.", ("type",)
        )
        self.ops = Counter("topgun_ops_total", "Applied write operations by op type.", ("type",))
        self.rejected_ops = Counter(
            "topgun_ops_rejected_total", "Write operations refused with OP_REJECTED, by code.", ("code",)
        )
        self.malformed_frames = Counter(
            "topgun_malformed_frames_total", "Inbound frames dropped because they could not be decoded."
        )
        self.auth_failures = Counter("topgun_auth_failures_total", "Failed AUTH attempts.")
        self.slow_consumer_disconnects = Counter(
            "topgun_slow_consumer_disconnects_total",
            "Connections closed because their outbound queue exceeded its bound.",
        )
        self.oversize_disconnects = Counter(
            "topgun_oversize_disconnects_total", "Connections closed for an inbound message over the limit."
        )
        self.storage_commit_seconds = Histogram(
            "topgun_storage_commit_seconds", "Latency of storage commits (one per transaction)."
        )
        self.map_size = Gauge("topgun_map_size", "Live records per map.", ("map",))
        for metric in (
            self.connections,
            self.connections_total,
            self.messages_received,
            self.ops,
            self.rejected_ops,
            self.malformed_frames,
            self.auth_failures,
            self.slow_consumer_disconnects,
            self.oversize_disconnects,
            self.storage_commit_seconds,
            self.map_size,
        ):
            reg(metric)

    def add_map_size_collector(self, collect: Callable[[], Iterable[tuple[str, int]]]) -> None:
        """Register ``collect() -> [(map_name, size), ...]``, called at every scrape."""
        self.map_size.add_collector(lambda: (((name,), size) for name, size in collect()))

    def render(self) -> str:
        """The exposition text served on ``/metrics``."""
        return self.registry.render()
