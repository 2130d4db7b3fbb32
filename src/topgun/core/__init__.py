"""The CRDT core: hybrid logical clocks, LWW-Map, OR-Map, PN-counter, Merkle trees and hashing.

The modules here are the readable specification. Hot paths (``hlc``, ``lww``,
``merkle``, ``hashing``) are dispatchers that pick a compiled twin from
``topgun._speedups`` when one is available (see :mod:`topgun._ext`).
"""

from topgun.core.records import LWWRecord, ORMapRecord, Timestamp

__all__ = ["LWWRecord", "ORMapRecord", "Timestamp"]
