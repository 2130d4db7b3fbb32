"""The TopGun v2 wire protocol: typed messages and the MsgPack codec.

``decode(frame) -> Message`` and ``encode(msg) -> bytes`` are the single place
where bytes become messages and back; see ``docs/protocol.md``.
"""

from __future__ import annotations

from topgun.errors import (
    FrameTooLargeError,
    ProtocolError,
    UnknownMessageTypeError,
    UnsupportedMessageTypeError,
)
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
from topgun.protocol.messages import *  # noqa: F403
from topgun.protocol.messages import __all__ as _messages_all

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
