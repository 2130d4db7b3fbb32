"""The TopGun v2 wire protocol: typed messages and the MsgPack codec.

``decode(frame) -> Message`` and ``encode(msg) -> bytes`` are the single place
where bytes become messages and back; see ``docs/protocol.md``.

The codec names are resolved lazily (on first access) because the compiled
twin ``topgun._speedups._codec`` imports ``topgun.protocol._codec_py`` while it
initialises; an eager import here would make that circular.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from topgun.errors import (
    FrameTooLargeError,
    ProtocolError,
    UnknownMessageTypeError,
    UnsupportedMessageTypeError,
)
from topgun.protocol.messages import *  # noqa: F403
from topgun.protocol.messages import __all__ as _messages_all

if TYPE_CHECKING:
    from topgun.protocol.codec import (
        DEFAULT_LIMITS,
        Limits,
        decode,
        encode,
        encode_batch,
        from_wire,
        pack,
        split_batch,
        to_wire,
        unpack,
    )

_CODEC_NAMES = frozenset(
    {
        "DEFAULT_LIMITS",
        "Limits",
        "decode",
        "encode",
        "encode_batch",
        "from_wire",
        "pack",
        "split_batch",
        "to_wire",
        "unpack",
    }
)


def __getattr__(name: str) -> Any:
    if name in _CODEC_NAMES:
        from topgun.protocol import codec

        value = getattr(codec, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'topgun.protocol' has no attribute {name!r}")


__all__ = [
    "DEFAULT_LIMITS",
    "FrameTooLargeError",
    "Limits",
    "ProtocolError",
    "UnknownMessageTypeError",
    "UnsupportedMessageTypeError",
    "decode",
    "encode",
    "encode_batch",
    "from_wire",
    "pack",
    "split_batch",
    "to_wire",
    "unpack",
    *_messages_all,
]
