"""MsgPack encoding of user values for the client's local storage.

Values are stored with the same MsgPack rules as on the wire (str keys, ``bin``
for bytes, extension values kept opaque), so a value read back from storage is
the value the application wrote and the value the server receives.
"""

from __future__ import annotations

from typing import Any

import msgpack

__all__ = ["pack", "unpack"]

_packer = msgpack.Packer(use_bin_type=True, datetime=False)


def pack(obj: Any) -> bytes:
    """MsgPack-encode ``obj`` (str keys, bin type, extension values passed through)."""
    return _packer.pack(obj)


def unpack(data: bytes) -> Any:
    """MsgPack-decode ``data``; extension types and timestamps come back as opaque objects."""
    return msgpack.unpackb(data, raw=False, strict_map_key=False)
