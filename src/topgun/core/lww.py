"""Last-writer-wins map (dispatcher: compiled twin if available, else pure Python).

See :mod:`topgun.core._lww_py` for the specification.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from topgun._ext import load

_impl = load("topgun._speedups._lww", "topgun.core._lww_py")

# Type checkers see the specification's signatures; at run time the chosen twin's objects.
if TYPE_CHECKING:
    from topgun.core._lww_py import (
        LWWMap,
    )
else:
    LWWMap = _impl.LWWMap

__all__ = ["LWWMap"]
