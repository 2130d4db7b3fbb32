"""Merkle tree over key routes (dispatcher: compiled twin if available, else pure Python).

See :mod:`topgun.core._merkle_py` for the specification.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from topgun._ext import load

_impl = load("topgun._speedups._merkle", "topgun.core._merkle_py")

# Type checkers see the specification's signatures; at run time the chosen twin's objects.
if TYPE_CHECKING:
    from topgun.core._merkle_py import (
        DEPTH,
        MerkleTree,
    )
else:
    MerkleTree = _impl.MerkleTree
    DEPTH = _impl.DEPTH

__all__ = ["DEPTH", "MerkleTree"]
