"""Hybrid Logical Clock (dispatcher: compiled twin if available, else pure Python).

See :mod:`topgun.core._hlc_py` for the specification.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from topgun._ext import load

_impl = load("topgun._speedups._hlc", "topgun.core._hlc_py")

# Type checkers see the specification's signatures; at run time the chosen twin's objects.
if TYPE_CHECKING:
    from topgun.core._hlc_py import (
        DEFAULT_MAX_DRIFT_MS,
        HLC,
        MAX_COUNTER,
        compare,
        max_timestamp,
        sort_timestamps,
        wall_millis,
    )
else:
    HLC = _impl.HLC
    MAX_COUNTER = _impl.MAX_COUNTER
    DEFAULT_MAX_DRIFT_MS = _impl.DEFAULT_MAX_DRIFT_MS
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
