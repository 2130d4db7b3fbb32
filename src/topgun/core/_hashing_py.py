"""Hash primitives of the protocol (PROTOCOL.md §3.4 to §3.6), pure-Python specification.

Everything here must produce exactly the numbers the TypeScript client
computes, so the arithmetic is spelled out on unsigned 32-bit integers and
strings are hashed as UTF-16 code units (JavaScript's string model).

The compiled twin is :mod:`topgun._speedups._hashing`.
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Iterable, Mapping
from typing import Any

import msgpack

from topgun.core.records import ORMapRecord, Timestamp

__all__ = [
    "PARTITION_COUNT",
    "combine",
    "fnv1a",
    "fnv1a_many",
    "lww_item_hash",
    "mix",
    "number_to_string",
    "or_entry_hash",
    "partition",
    "render_value",
    "route",
    "utf16_sort_key",
]

#: Fixed number of partitions of the cluster key space (§3.6).
PARTITION_COUNT = 271

_MASK = 0xFFFFFFFF
_FNV_OFFSET = 0x811C9DC5
_FNV_PRIME = 0x01000193


def fnv1a(s: str) -> int:
    """FNV-1a 32-bit over the UTF-16 code units of ``s``."""
    h = _FNV_OFFSET
    for ch in s:
        cp = ord(ch)
        if cp > 0xFFFF:
            # Outside the BMP JavaScript sees a surrogate pair: high unit first.
            cp -= 0x10000
            h = ((h ^ (0xD800 | (cp >> 10))) * _FNV_PRIME) & _MASK
            h = ((h ^ (0xDC00 | (cp & 0x3FF))) * _FNV_PRIME) & _MASK
        else:
            h = ((h ^ cp) * _FNV_PRIME) & _MASK
    return h


def fnv1a_many(keys: Iterable[str]) -> list[int]:
    """``[fnv1a(k) for k in keys]``."""
    return [fnv1a(k) for k in keys]


def mix(h: int) -> int:
    """The MurmurHash3 ``fmix32`` finalizer on an unsigned 32-bit value."""
    h &= _MASK
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & _MASK
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & _MASK
    h ^= h >> 16
    return h


def combine(hashes: Iterable[int]) -> int:
    """Order-independent combination: the sum of ``mix(h)`` mod 2^32 (0 for no hashes)."""
    total = 0
    for h in hashes:
        total += mix(h)
    return total & _MASK


def route(key: str) -> str:
    """The key's Merkle route: ``fnv1a(key)`` as 8 lowercase hex digits."""
    return f"{fnv1a(key):08x}"


def partition(key: str) -> int:
    """The cluster partition id of ``key`` (``fnv1a(key) mod 271``)."""
    return fnv1a(key) % PARTITION_COUNT


def lww_item_hash(key: str, ts: Timestamp) -> int:
    """Merkle item hash of an LWW record: ``fnv1a("key:millis:counter:nodeId")`` (§3.5.3)."""
    return fnv1a(f"{key}:{ts[0]}:{ts[1]}:{ts[2]}")


def utf16_sort_key(s: str) -> bytes:
    """Sort key ordering strings by UTF-16 code units, as JavaScript's default sort does.

    Big-endian UTF-16 compares bytewise exactly like the code-unit sequence;
    ``surrogatepass`` keeps lone surrogates (legal in JS strings) encodable.
    """
    return s.encode("utf-16-be", "surrogatepass")


# --- OR-Map entry hash (§3.5.4) -------------------------------------------------------------------


def or_entry_hash(
    key: str, records: Mapping[str, ORMapRecord] | Iterable[ORMapRecord]
) -> int:
    """Merkle item hash of one OR-Map key from its records (tag -> record, or records with tags)."""
    return fnv1a(or_entry_string(key, records))


def or_entry_string(
    key: str, records: Mapping[str, ORMapRecord] | Iterable[ORMapRecord]
) -> str:
    """The exact string that :func:`or_entry_hash` hashes (useful for diagnosing root mismatches)."""
    if isinstance(records, Mapping):
        by_tag: dict[str, ORMapRecord] = dict(records)
    else:
        by_tag = {r.tag: r for r in records}
    parts = ["key:" + key]
    for tag in sorted(by_tag, key=utf16_sort_key):
        r = by_tag[tag]
        ts = r.timestamp
        seg = f"{tag}:{render_value(r.value)}:{ts[0]}:{ts[1]}:{ts[2]}"
        if r.ttl_ms is not None:
            seg += ":ttl=" + number_to_string(r.ttl_ms)
        parts.append(seg)
    return "|".join(parts)


def number_to_string(x: float | int) -> str:
    """ECMAScript Number::toString of ``x`` (integers are first rounded to the nearest double)."""
    f = _to_double(x)
    if f != f:
        return "NaN"
    if f == math.inf:
        return "Infinity"
    if f == -math.inf:
        return "-Infinity"
    if f == 0.0:
        return "0"
    if f < 0:
        return "-" + number_to_string(-f)
    # repr() gives the shortest round-tripping digits, the same ones ECMAScript picks.
    r = repr(f)
    mant, _, exp_s = r.partition("e")
    exp = int(exp_s) if exp_s else 0
    int_part, _, frac = mant.partition(".")
    digits = int_part + frac
    n = len(int_part) + exp
    stripped = digits.lstrip("0")
    n -= len(digits) - len(stripped)
    digits = stripped.rstrip("0")
    k = len(digits)
    if k <= n <= 21:
        return digits + "0" * (n - k)
    if 0 < n <= 21:
        return digits[:n] + "." + digits[n:]
    if -6 < n <= 0:
        return "0." + "0" * (-n) + digits
    e = n - 1
    sign = "+" if e >= 0 else "-"
    head = digits if k == 1 else digits[0] + "." + digits[1:]
    return f"{head}e{sign}{abs(e)}"


def _to_double(x: float | int) -> float:
    if isinstance(x, float):
        return x
    try:
        return float(x)
    except OverflowError:
        return math.inf if x > 0 else -math.inf


def render_value(v: Any) -> str:
    """JavaScript rendering ``V(x)`` of an OR-Map value (§3.5.4)."""
    if v is None:
        return "null"
    if v is True:
        return "true"
    if v is False:
        return "false"
    if isinstance(v, (int, float)):
        return number_to_string(v)
    if isinstance(v, str):
        return v
    if isinstance(v, Mapping):
        allow = sorted((_prop_name(k) for k in v), key=utf16_sort_key)
    elif isinstance(v, (list, tuple)):
        allow = sorted((str(i) for i in range(len(v))), key=utf16_sort_key)
    elif isinstance(v, (bytes, bytearray, memoryview)):
        allow = sorted((str(i) for i in range(len(bytes(v)))), key=utf16_sort_key)
    else:
        # Dates and other objects: JSON.stringify with an empty allow-list.
        allow = []
    out: list[str] = []
    _json(v, allow, out)
    return "".join(out)


def _prop_name(k: Any) -> str:
    # JavaScript property names are strings; a non-string key becomes String(key).
    return k if isinstance(k, str) else render_value(k)


_ESCAPES = {
    '"': '\\"',
    "\\": "\\\\",
    "\b": "\\b",
    "\t": "\\t",
    "\n": "\\n",
    "\f": "\\f",
    "\r": "\\r",
}


def _json_string(s: str) -> str:
    """JSON.stringify of a string (well-formed JSON.stringify: lone surrogates escaped)."""
    out = ['"']
    n = len(s)
    i = 0
    while i < n:
        ch = s[i]
        cp = ord(ch)
        esc = _ESCAPES.get(ch)
        if esc is not None:
            out.append(esc)
        elif cp < 0x20:
            out.append(f"\\u{cp:04x}")
        elif 0xD800 <= cp <= 0xDBFF:
            if i + 1 < n and 0xDC00 <= ord(s[i + 1]) <= 0xDFFF:
                out.append(ch + s[i + 1])
                i += 1
            else:
                out.append(f"\\u{cp:04x}")
        elif 0xDC00 <= cp <= 0xDFFF:
            out.append(f"\\u{cp:04x}")
        else:
            out.append(ch)
        i += 1
    out.append('"')
    return "".join(out)


def _json(v: Any, allow: list[str], out: list[str]) -> None:
    """Append ``JSON.stringify(v, allow)`` to ``out``."""
    if v is None or v is True or v is False:
        out.append("null" if v is None else ("true" if v else "false"))
    elif isinstance(v, (int, float)):
        f = _to_double(v)
        out.append(number_to_string(f) if math.isfinite(f) else "null")
    elif isinstance(v, str):
        out.append(_json_string(v))
    elif isinstance(v, (list, tuple)):
        out.append("[")
        for i, item in enumerate(v):
            if i:
                out.append(",")
            _json(item, allow, out)
        out.append("]")
    elif isinstance(v, Mapping):
        names = {_prop_name(k): val for k, val in v.items()}
        _json_object(names, allow, out)
    elif isinstance(v, (bytes, bytearray, memoryview)):
        data = bytes(v)
        _json_object({str(i): b for i, b in enumerate(data)}, allow, out)
    elif isinstance(v, (msgpack.Timestamp, datetime.datetime)):
        iso = _iso_date(v)
        out.append("null" if iso is None else _json_string(iso))
    else:
        # Other extension types have no JavaScript counterpart; render an empty object.
        out.append("{}")


def _json_object(names: dict[str, Any], allow: list[str], out: list[str]) -> None:
    out.append("{")
    first = True
    for name in allow:
        if name in names:
            if not first:
                out.append(",")
            first = False
            out.append(_json_string(name))
            out.append(":")
            _json(names[name], allow, out)
    out.append("}")


_MAX_DATE_MS = 8_640_000_000_000_000


def _iso_date(v: msgpack.Timestamp | datetime.datetime) -> str | None:
    """``Date.prototype.toISOString`` of a msgpack timestamp, or None for an invalid JS date."""
    if isinstance(v, datetime.datetime):
        if v.tzinfo is None:
            v = v.replace(tzinfo=datetime.timezone.utc)
        delta = v - datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
        total_ns = (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000
    else:
        total_ns = v.seconds * 1_000_000_000 + v.nanoseconds
    # msgpackr builds new Date(seconds * 1e3 + ns / 1e6); Date truncates toward zero.
    ms = abs(total_ns) // 1_000_000
    ms = ms if total_ns >= 0 else -ms
    if abs(ms) > _MAX_DATE_MS:
        return None
    days, rem = divmod(ms, 86_400_000)
    year, month, day = _civil_from_days(days)
    hh, rem = divmod(rem, 3_600_000)
    mm, rem = divmod(rem, 60_000)
    ss, mss = divmod(rem, 1000)
    if 0 <= year <= 9999:
        ys = f"{year:04d}"
    else:
        ys = f"{'+' if year > 0 else '-'}{abs(year):06d}"
    return f"{ys}-{month:02d}-{day:02d}T{hh:02d}:{mm:02d}:{ss:02d}.{mss:03d}Z"


def _civil_from_days(z: int) -> tuple[int, int, int]:
    """Proleptic Gregorian (year, month, day) of a day count since 1970-01-01."""
    z += 719_468
    era = z // 146_097
    doe = z - era * 146_097
    yoe = (doe - doe // 1460 + doe // 36_524 - doe // 146_096) // 365
    y = yoe + era * 400
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    m = mp + 3 if mp < 10 else mp - 9
    return (y + 1 if m <= 2 else y), m, d
