"""A session's per-message steps (message in, frame out): the compiled twin
``topgun._speedups._sessionpath`` when available, else the pure-Python specification
:mod:`topgun.server._sessionpath_py`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from topgun._ext import load

if TYPE_CHECKING:
    from topgun.server._sessionpath_py import on_message, send_frame
else:
    _impl = load("topgun._speedups._sessionpath", "topgun.server._sessionpath_py")
    on_message = _impl.on_message
    send_frame = _impl.send_frame

__all__ = ["on_message", "send_frame"]
