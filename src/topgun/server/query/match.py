"""Matching writes against live queries: the compiled twin ``topgun._speedups._match`` when
available, else the pure-Python specification :mod:`topgun.server.query._match_py`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from topgun._ext import load

if TYPE_CHECKING:
    from topgun.server.query._match_py import COVER_BUDGET, SubscriptionIndex
else:
    _impl = load("topgun._speedups._match", "topgun.server.query._match_py")
    COVER_BUDGET = _impl.COVER_BUDGET
    SubscriptionIndex = _impl.SubscriptionIndex

__all__ = ["COVER_BUDGET", "SubscriptionIndex"]
