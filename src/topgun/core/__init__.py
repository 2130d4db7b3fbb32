"""The CRDT core: hybrid logical clocks, LWW-Map, OR-Map, PN-counter, Merkle trees and hashing.

The modules here are the readable specification. Hot paths (``hlc``, ``lww``,
``merkle``, ``hashing``) are dispatchers that pick a compiled twin from
``topgun._speedups`` when one is available (see :mod:`topgun._ext`).

Only the record types are imported eagerly; the rest is loaded on first
attribute access so ``import topgun.core`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

from topgun.core.records import LWWRecord, ORMapRecord, Timestamp

_LAZY = {
    "HLC": "topgun.core.hlc",
    "LWWMap": "topgun.core.lww",
    "MerkleTree": "topgun.core.merkle",
    "ORMap": "topgun.core.ormap",
    "PNCounter": "topgun.core.counter",
}

__all__ = ["HLC", "LWWMap", "LWWRecord", "MerkleTree", "ORMap", "ORMapRecord", "PNCounter", "Timestamp"]


def __getattr__(name: str) -> Any:
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'topgun.core' has no attribute {name!r}")
    value = getattr(importlib.import_module(mod), name)
    globals()[name] = value
    return value
