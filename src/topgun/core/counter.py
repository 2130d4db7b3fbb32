"""Positive-negative counter (PROTOCOL.md §2.8).

The state is two maps node id -> running total, ``p`` for increments and
``n`` for decrements; merging takes the per-node maximum of each. The wire
carries the state under both spellings, ``{p, n}`` (schema) and
``{positive, negative}`` (TS client).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, TypeAlias

from topgun.errors import ProtocolError

__all__ = ["Number", "PNCounter", "normalize_state"]

Number: TypeAlias = "int | float"


def _check_side(side: Any, field: str) -> dict[str, Number]:
    if not isinstance(side, Mapping):
        raise ProtocolError(f"counter state field {field!r} must be a map", field=field)
    out: dict[str, Number] = {}
    for node, v in side.items():
        if not isinstance(node, str):
            raise ProtocolError("counter node ids must be strings", field=field)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise ProtocolError(f"counter total for {node!r} must be a non-negative number", field=field)
        out[node] = v
    return out


def _merge_into(target: dict[str, Number], other: Mapping[str, Number]) -> bool:
    changed = False
    for node, v in other.items():
        cur = target.get(node)
        if cur is None or v > cur:
            target[node] = v
            changed = True
    return changed


def normalize_state(data: Mapping[str, Any]) -> dict[str, dict[str, Number]]:
    """Validate a wire state in either spelling (or both, merged by max) into ``{"p": …, "n": …}``.

    Raises :class:`~topgun.errors.ProtocolError` when a side is malformed.
    """
    if not isinstance(data, Mapping):
        raise ProtocolError("counter state must be a map")
    p: dict[str, Number] = {}
    n: dict[str, Number] = {}
    for name, target in (("p", p), ("positive", p), ("n", n), ("negative", n)):
        side = data.get(name)
        if side is not None:
            _merge_into(target, _check_side(side, name))
    return {"p": p, "n": n}


class PNCounter:
    """One replica of a PN-counter; ``node_id`` names the slot this replica increments."""

    __slots__ = ("_n", "_p", "node_id")

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self._p: dict[str, Number] = {}
        self._n: dict[str, Number] = {}

    def increment(self, n: Number = 1) -> Number:
        """Add ``n`` (≥ 0) to this node's increments; return the new value."""
        if n < 0:
            raise ValueError("increment by a non-negative amount; use decrement()")
        self._p[self.node_id] = self._p.get(self.node_id, 0) + n
        return self.value

    def decrement(self, n: Number = 1) -> Number:
        """Add ``n`` (≥ 0) to this node's decrements; return the new value."""
        if n < 0:
            raise ValueError("decrement by a non-negative amount; use increment()")
        self._n[self.node_id] = self._n.get(self.node_id, 0) + n
        return self.value

    @property
    def value(self) -> Number:
        """Sum of p minus sum of n."""
        return sum(self._p.values()) - sum(self._n.values())

    def merge(self, state: Mapping[str, Any] | PNCounter) -> bool:
        """Merge another state (either wire spelling, or a counter); True when anything grew."""
        if isinstance(state, PNCounter):
            other = {"p": state._p, "n": state._n}
        else:
            other = normalize_state(state)
        changed = _merge_into(self._p, other["p"])
        return _merge_into(self._n, other["n"]) or changed

    def state(self) -> dict[str, dict[str, Number]]:
        """A copy of the state as ``{"p": {...}, "n": {...}}``."""
        return {"p": dict(self._p), "n": dict(self._n)}

    def to_wire(self) -> dict[str, dict[str, Number]]:
        """The state under both spellings with identical contents (§2.8)."""
        return {"p": dict(self._p), "n": dict(self._n), "positive": dict(self._p), "negative": dict(self._n)}

    @classmethod
    def from_wire(cls, data: Mapping[str, Any], node_id: str) -> PNCounter:
        """A counter for ``node_id`` holding the state ``data`` (either spelling)."""
        c = cls(node_id)
        c.merge(data)
        return c

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PNCounter):
            return NotImplemented
        return self._p == other._p and self._n == other._n

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"PNCounter({self.node_id!r}, value={self.value})"
