"""Pre-encoded protocol frames for the load generator.

The load client must not be the bottleneck, so it never builds a message per
op: each frame is MsgPack-encoded once with placeholder timestamps and cut
into the constant pieces around them, and every send joins those pieces with
one packed ``millis`` (uint64) + ``counter`` (uint32) run: one ``struct``
pack and one ``bytes.join``, whatever the batch size. Every op sent is
therefore a real write (a strictly newer timestamp for its key).

The server's ``OP_ACK`` of a frame whose every op succeeded is just as
predictable (:meth:`BatchTemplate.ok_ack`), so the load client checks an ack
by comparing bytes and unpacks only what differs.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Sequence
from typing import Any

import msgpack

__all__ = ["BatchTemplate", "auth_frame", "encode", "mint_token", "ok_ack", "wall_millis"]

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


def ok_ack(op_ids: Sequence[str], level: str) -> bytes:
    """The server's ``OP_ACK`` for ops ``op_ids`` when every one succeeded at ``level`` (PROTOCOL §4.3).

    Byte for byte what the server encodes for an all-accepted batch (its
    ``ok_ack_frame``; tested against both twins): ``lastId`` the last id, one
    ``{opId, success: true, achievedLevel}`` result per op, in order.
    """
    if not op_ids:
        raise ValueError("an OP_ACK acknowledges at least one op")
    return encode(
        {
            "type": "OP_ACK",
            "payload": {
                "lastId": op_ids[-1],
                "achievedLevel": level,
                "results": [{"opId": i, "success": True, "achievedLevel": level} for i in op_ids],
            },
        }
    )


class BatchTemplate:
    """One ``OP_BATCH`` (or ``CLIENT_OP`` when ``single``) frame with patchable timestamps.

    ``keys`` are the keys written by the frame, one op each (ids ``first_id``,
    ``first_id + 1``, …), with ``value`` as every op's value. :meth:`stamp`
    returns the frame with a fresh ``(millis, counter)`` in every op's record
    timestamp; :meth:`ok_ack` the server's reply when every op succeeds.
    ``frame`` is the encoded frame with its placeholder timestamps (a stamped
    frame has the same length and layout).
    """

    __slots__ = ("_chunks", "_gap", "_pack", "frame", "op_ids", "ops")

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
        if not keys:
            raise ValueError("a frame carries at least one op")
        if len(keys) >= 0x1_0000:
            raise ValueError("at most 65,535 ops per frame")
        op_ids = tuple(str(first_id + i) for i in range(len(keys)))
        ops = []
        for i, key in enumerate(keys):
            ops.append(
                {
                    "id": op_ids[i],
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
        # Each timestamp encodes as millis (uint64), the key "counter", then counter (uint32): one run
        # of constant length per op, cut out so that stamping is a join of the pieces around the runs.
        chunks: list[bytes] = []
        gap = b""
        pos = 0
        for i in range(len(keys)):
            m = raw.index(b"\xcf" + _Q.pack(_MILLIS_BASE + i), pos) + 1
            c = raw.index(b"\xce" + _I.pack(_COUNTER_BASE + i), m) + 1
            if i == 0:
                gap = raw[m + 8 : c]
            elif raw[m + 8 : c] != gap:  # pragma: no cover - msgpack encodes every op alike
                raise AssertionError("timestamps of the ops are laid out differently")
            chunks.append(raw[pos:m])
            pos = c + 4
        chunks.append(raw[pos:])
        self.frame = raw
        self.op_ids = op_ids
        self.ops = len(keys)
        self._chunks = chunks
        self._gap = gap
        self._pack = struct.Struct(f">Q{len(gap)}sI").pack

    def stamp(self, millis: int, counter: int) -> bytes:
        """The frame with every op's timestamp set to ``(millis, counter)`` (a new ``bytes``)."""
        return self._pack(millis, self._gap, counter & 0xFFFF_FFFF).join(self._chunks)

    def ok_ack(self, level: str) -> bytes:
        """The server's ``OP_ACK`` of this frame when every op succeeded at ``level`` (see :func:`ok_ack`)."""
        return ok_ack(self.op_ids, level)
