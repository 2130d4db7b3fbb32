"""Last-writer-wins map (dispatcher: compiled twin if available, else pure Python).

See :mod:`topgun.core._lww_py` for the specification.
"""

from __future__ import annotations

from topgun._ext import load

_impl = load("topgun._speedups._lww", "topgun.core._lww_py")

LWWMap = _impl.LWWMap

__all__ = ["LWWMap"]
