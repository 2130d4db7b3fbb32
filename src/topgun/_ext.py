"""Choosing between a compiled twin and its pure-Python specification.

Each hot-path module ``topgun.<pkg>.<name>`` is a small dispatcher that calls
:func:`load` and re-exports what it returns. The compiled twin is used unless
``TOPGUN_NO_EXTENSIONS`` is set to a non-empty value other than ``0``, the
interpreter is not CPython, or the extension was not built.
"""

from __future__ import annotations

import importlib
import os
import sys
from types import ModuleType

__all__ = ["NO_EXTENSIONS", "load", "loaded_extensions"]


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in {"", "0", "no", "false"}


#: True when the compiled speedups must not be used in this process.
NO_EXTENSIONS: bool = _flag("TOPGUN_NO_EXTENSIONS") or sys.implementation.name != "cpython"

_loaded: dict[str, bool] = {}


def load(compiled: str, pure: str) -> ModuleType:
    """Import the compiled module ``compiled`` if allowed and available, else ``pure``."""
    if not NO_EXTENSIONS:
        try:
            mod = importlib.import_module(compiled)
        except ImportError:
            pass
        else:
            _loaded[compiled] = True
            return mod
    _loaded[compiled] = False
    return importlib.import_module(pure)


def loaded_extensions() -> dict[str, bool]:
    """Which compiled twins the dispatchers imported so far (name -> compiled?)."""
    return dict(_loaded)
