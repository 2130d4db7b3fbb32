"""Pre-encoded protocol frames for the load generator.

The load client must not be the bottleneck, so it never builds a message per
op: each frame is MsgPack-encoded once with placeholder timestamps, the byte
offsets of those placeholders are found once, and every send only patches the
HLC ``millis`` (uint64) and ``counter`` (uint32) in place. Every op sent is
therefore a real write (a strictly newer timestamp for its key), yet costs the
client two small slice assignments.
"""

from __future__ import annotations

import struct
import time
from typing import Any

import msgpack

__all__ = ["BatchTemplate", "auth_frame", "encode", "mint_token", "wall_millis"]

_MILLIS_BASE = 0x5A5A_0000_0000_0000
_COUNTER_BASE = 0xA5A5_0000
_Q = struct.Struct(">Q")
_I = struct.Struct(">I")


def wall_millis() -> int:
    """Wall-clock milliseconds (the HLC's physical part)."""
    return time.time_ns() // 1_000_000


def encode(message: dict[str, Any]) -> bytes:
    """MsgPack-encode one message."""
    return msgpack.packb(message, use_bin_type=True)


def auth_frame(token: str) -> bytes:
    """An ``AUTH`` frame carrying ``token``."""
    return encode({"type": "AUTH", "token": token, "protocolVersion": 1})


def mint_token(secret: str, subject: str = "bench") -> str:
    """An HS256 JWT for ``subject`` valid for a day."""
    import jwt

    now = int(time.time())
    return str(jwt.encode({"sub": subject, "iat": now, "exp": now + 86_400}, secret, algorithm="HS256"))


class BatchTemplate:
    """One ``OP_BATCH`` (or ``CLIENT_OP`` when ``single``) frame with patchable timestamps.

    ``keys`` are the keys written by the frame, one op each, with ``value``
    as every op's value. :meth:`stamp` writes a fresh ``(millis, counter)`` into
    every op's record timestamp and returns the frame (a ``bytearray`` reused
    by the next call: send it before stamping again; the WebSocket client
    copies it while masking).
    """

    __slots__ = ("_counter_offsets", "_millis_offsets", "frame", "ops")

    def __init__(
        self,
        map_name: str,
        keys: list[str],
        value: Any,
        *,
        node_id: str,
        write_concern: str | None = None,
        single: bool = False,
        first_id: int = 1,
    ) -> None:
        if single and len(keys) != 1:
            raise ValueError("a CLIENT_OP frame carries exactly one op")
        if len(keys) >= 0x1_0000:
            raise ValueError("at most 65,535 ops per frame")
        ops = []
        for i, key in enumerate(keys):
            ops.append(
                {
                    "id": str(first_id + i),
                    "mapName": map_name,
                    "key": key,
                    "opType": "PUT",
                    "record": {
                        "value": value,
                        "timestamp": {
                            "millis": _MILLIS_BASE + i,
                            "counter": _COUNTER_BASE + i,
                            "nodeId": node_id,
                        },
                    },
                }
            )
        if single:
            payload: dict[str, Any] = dict(ops[0])
            if write_concern:
                payload["writeConcern"] = write_concern
            msg: dict[str, Any] = {"type": "CLIENT_OP", "payload": payload}
        else:
            payload = {"ops": ops}
            if write_concern:
                payload["writeConcern"] = write_concern
            msg = {"type": "OP_BATCH", "payload": payload}
        raw = encode(msg)
        millis_offsets: list[int] = []
        counter_offsets: list[int] = []
        for i in range(len(keys)):
            m = raw.index(b"\xcf" + _Q.pack(_MILLIS_BASE + i)) + 1
            c = raw.index(b"\xce" + _I.pack(_COUNTER_BASE + i)) + 1
            millis_offsets.append(m)
            counter_offsets.append(c)
        self.frame = bytearray(raw)
        self._millis_offsets = millis_offsets
        self._counter_offsets = counter_offsets
        self.ops = len(keys)

    def stamp(self, millis: int, counter: int) -> bytearray:
        """Give every op the timestamp ``(millis, counter)`` and return the frame."""
        f = self.frame
        mb = _Q.pack(millis)
        cb = _I.pack(counter & 0xFFFF_FFFF)
        for o in self._millis_offsets:
            f[o : o + 8] = mb
        for o in self._counter_offsets:
            f[o : o + 4] = cb
        return f
