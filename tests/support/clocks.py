"""A settable wall clock for HLC tests."""

from __future__ import annotations


class Wall:
    """A wall clock in integer ms that only moves when a test sets ``t``."""

    def __init__(self, t: int) -> None:
        self.t = t

    def __call__(self) -> int:
        return self.t
