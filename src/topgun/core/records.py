"""Value types shared by every replica, both twins and the wire codec.

They are ``NamedTuple`` subclasses on purpose: tuple comparison is done in C,
and the natural tuple order of ``(millis, counter, node_id)`` is exactly the
protocol's timestamp order (numeric millis, numeric counter, node id by code
point). The compiled twins read and build these same classes, so a record
made by either twin is indistinguishable from one made by the other.
"""

from __future__ import annotations

from typing import Any, NamedTuple

__all__ = ["LWWRecord", "ORMapRecord", "Timestamp"]

_MAX_COUNTER = 2**32


class Timestamp(NamedTuple):
    """A hybrid-logical-clock reading: ``(millis, counter, node_id)``.

    Ordered by millis, then counter, then node id by Unicode code point.
    ``str(ts)`` is the wire string form ``millis:counter:nodeId``.
    """

    millis: int
    counter: int
    node_id: str

    def __str__(self) -> str:
        return f"{self.millis}:{self.counter}:{self.node_id}"

    @classmethod
    def parse(cls, text: str) -> Timestamp:
        """Parse the string form; raise ``ValueError`` unless it is exactly ``int:int:nonempty``."""
        parts = text.split(":")
        if len(parts) != 3:
            raise ValueError(f"not a timestamp string: {text!r}")
        m, c, node = parts
        if not (m.isdecimal() and c.isdecimal() and m.isascii() and c.isascii()) or not node:
            raise ValueError(f"not a timestamp string: {text!r}")
        return cls(int(m), int(c), node)

    def is_valid(self) -> bool:
        """True when the fields satisfy the protocol.

        Non-negative integer millis, 0 <= counter < 2^32, and a non-empty node id without ``:``.
        """
        return (
            type(self.millis) is int
            and type(self.counter) is int
            and self.millis >= 0
            and 0 <= self.counter < _MAX_COUNTER
            and isinstance(self.node_id, str)
            and bool(self.node_id)
            and ":" not in self.node_id
        )


class LWWRecord(NamedTuple):
    """One LWW-Map value with its write timestamp; ``value is None`` marks a tombstone."""

    value: Any
    timestamp: Timestamp
    ttl_ms: int | None = None

    @property
    def is_tombstone(self) -> bool:
        return self.value is None

    def is_expired(self, now_ms: int) -> bool:
        """Expired when ``millis + ttl_ms < now_ms`` (strictly); tombstones never expire."""
        return self.ttl_ms is not None and self.timestamp.millis + self.ttl_ms < now_ms

    def is_live(self, now_ms: int) -> bool:
        """Visible to reads: neither a tombstone nor expired."""
        return self.value is not None and not (
            self.ttl_ms is not None and self.timestamp.millis + self.ttl_ms < now_ms
        )


class ORMapRecord(NamedTuple):
    """One add of an OR-Map: a value under a unique ``tag`` (normally ``str(timestamp)``)."""

    value: Any
    timestamp: Timestamp
    tag: str
    ttl_ms: int | None = None

    def is_expired(self, now_ms: int) -> bool:
        return self.ttl_ms is not None and self.timestamp.millis + self.ttl_ms < now_ms
