"""The per-op core of the write path (the write handler's plain batch, the grid's merge step, runs of
LWW changes, acks): the compiled twin ``topgun._speedups._writepath`` when available, else the
pure-Python specification :mod:`topgun.server._writepath_py`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from topgun._ext import load

if TYPE_CHECKING:
    from topgun.server._writepath_py import (
        apply_changes,
        apply_lww_run,
        apply_state,
        ok_ack_frame,
        plain_changes,
        watches,
        write_message,
    )
else:
    _impl = load("topgun._speedups._writepath", "topgun.server._writepath_py")
    apply_changes = _impl.apply_changes
    apply_lww_run = _impl.apply_lww_run
    apply_state = _impl.apply_state
    ok_ack_frame = _impl.ok_ack_frame
    plain_changes = _impl.plain_changes
    watches = _impl.watches
    write_message = _impl.write_message

__all__ = [
    "apply_changes",
    "apply_lww_run",
    "apply_state",
    "ok_ack_frame",
    "plain_changes",
    "watches",
    "write_message",
]
