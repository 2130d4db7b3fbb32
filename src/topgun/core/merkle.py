"""Merkle tree over key routes (dispatcher: compiled twin if available, else pure Python).

See :mod:`topgun.core._merkle_py` for the specification.
"""

from __future__ import annotations

from topgun._ext import load

_impl = load("topgun._speedups._merkle", "topgun.core._merkle_py")

MerkleTree = _impl.MerkleTree
DEPTH: int = _impl.DEPTH

__all__ = ["DEPTH", "MerkleTree"]
