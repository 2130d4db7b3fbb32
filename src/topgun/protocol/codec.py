"""The wire codec: bytes <-> typed messages (dispatches to the compiled twin when built).

See :mod:`topgun.protocol._codec_py` for the specification of every function.
"""

from __future__ import annotations

from topgun._ext import load

_impl = load("topgun._speedups._codec", "topgun.protocol._codec_py")

DEFAULT_LIMITS = _impl.DEFAULT_LIMITS
Limits = _impl.Limits
decode = _impl.decode
encode = _impl.encode
encode_batch = _impl.encode_batch
from_wire = _impl.from_wire
pack = _impl.pack
scan = _impl.scan
split_batch = _impl.split_batch
to_wire = _impl.to_wire
unpack = _impl.unpack

__all__ = [
    "DEFAULT_LIMITS",
    "Limits",
    "decode",
    "encode",
    "encode_batch",
    "from_wire",
    "pack",
    "scan",
    "split_batch",
    "to_wire",
    "unpack",
]
