"""A connection's outbox of corked frames: the compiled twin ``topgun._speedups._outbox`` when
available, else the pure-Python specification :mod:`topgun.server.transport._outbox_py`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from topgun._ext import load

if TYPE_CHECKING:
    from topgun.server.transport._outbox_py import Outbox, flush_all
else:
    _impl = load("topgun._speedups._outbox", "topgun.server.transport._outbox_py")
    Outbox = _impl.Outbox
    flush_all = _impl.flush_all

__all__ = ["Outbox", "flush_all"]
