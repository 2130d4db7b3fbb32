"""Opaque query cursors (PROTOCOL §5.11 item 7).

A cursor is base64url (no padding) of a JSON object::

    {"v": 1, "f": <fingerprint of where/predicate/sort>, "t": <issue time, epoch ms>,
     "s": [<ascending sort key element of each sort field>], "k": <record key>}

The sort elements are the values of :func:`topgun.core.predicates.sort_value_key` (or
``sort_value_key_desc``): tuples of plain scalars, stored as JSON arrays.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Sequence
from typing import Any, NamedTuple

from topgun.protocol.messages import CursorStatus

__all__ = ["CURSOR_TTL_MS", "DecodedCursor", "decode_cursor", "encode_cursor", "fingerprint"]

#: Cursor lifetime (Appendix B).
CURSOR_TTL_MS = 10 * 60 * 1000


def fingerprint(where: Any, predicate: Any, sort: Sequence[tuple[str, str]]) -> str:
    """A short stable digest of the parts of a query that define its order and membership."""
    blob = json.dumps([where, predicate, [list(s) for s in sort]], sort_keys=True, default=repr,
                      separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _elem_to_json(e: Any) -> Any:
    if isinstance(e, tuple):
        return [_elem_to_json(x) for x in e]
    if isinstance(e, bytes):
        return {"y": e.hex()}
    if isinstance(e, float) and (e != e or e in (float("inf"), float("-inf"))):
        return {"f": repr(e)}
    return e


def _elem_from_json(e: Any) -> Any:
    if isinstance(e, list):
        return tuple(_elem_from_json(x) for x in e)
    if isinstance(e, dict):
        if "y" in e:
            return bytes.fromhex(e["y"])
        return float(e["f"])
    return e


def encode_cursor(fp: str, sort_key: tuple[Any, ...], now_ms: int) -> str:
    """Cursor positioned after the row whose full sort key is ``sort_key``."""
    *elems, key = sort_key
    body = {
        "v": 1,
        "f": fp,
        "t": int(now_ms),
        "s": [_elem_to_json(e) for e in elems],
        "k": key,
    }
    raw = json.dumps(body, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


class DecodedCursor(NamedTuple):
    status: CursorStatus
    #: the full sort key to resume after (``None`` unless ``status`` is ``valid``)
    position: tuple[Any, ...] | None


def decode_cursor(cursor: str | None, fp: str, sort: Sequence[tuple[str, str]], now_ms: int) -> DecodedCursor:
    """Check ``cursor`` against the query fingerprint and the clock."""
    if cursor is None:
        return DecodedCursor(CursorStatus.NONE, None)
    try:
        pad = "=" * (-len(cursor) % 4)
        body = json.loads(base64.urlsafe_b64decode(cursor + pad))
        if not isinstance(body, dict) or body.get("v") != 1 or body.get("f") != fp:
            return DecodedCursor(CursorStatus.INVALID, None)
        issued = body["t"]
        elems = body["s"]
        key = body["k"]
        if not isinstance(issued, int) or not isinstance(key, str) or not isinstance(elems, list):
            return DecodedCursor(CursorStatus.INVALID, None)
        if len(elems) != len(sort):
            return DecodedCursor(CursorStatus.INVALID, None)
        if now_ms - issued > CURSOR_TTL_MS:
            return DecodedCursor(CursorStatus.EXPIRED, None)
        parts = [_elem_from_json(e) for e in elems]
        if not all(isinstance(p, tuple) for p in parts):
            return DecodedCursor(CursorStatus.INVALID, None)
    except (ValueError, KeyError, TypeError, binascii.Error, UnicodeDecodeError):
        return DecodedCursor(CursorStatus.INVALID, None)
    position = (*parts, key)
    return DecodedCursor(CursorStatus.VALID, position)

