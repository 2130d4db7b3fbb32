"""Hybrid Logical Clock (dispatcher: compiled twin if available, else pure Python).

See :mod:`topgun.core._hlc_py` for the specification.
"""

from __future__ import annotations

from topgun._ext import load

_impl = load("topgun._speedups._hlc", "topgun.core._hlc_py")

HLC = _impl.HLC
MAX_COUNTER: int = _impl.MAX_COUNTER
DEFAULT_MAX_DRIFT_MS: int = _impl.DEFAULT_MAX_DRIFT_MS
compare = _impl.compare
max_timestamp = _impl.max_timestamp
sort_timestamps = _impl.sort_timestamps
wall_millis = _impl.wall_millis

__all__ = [
    "DEFAULT_MAX_DRIFT_MS",
    "HLC",
    "MAX_COUNTER",
    "compare",
    "max_timestamp",
    "sort_timestamps",
    "wall_millis",
]
