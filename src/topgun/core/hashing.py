"""Hash primitives of the protocol (dispatcher: compiled twin if available, else pure Python).

See :mod:`topgun.core._hashing_py` for the specification.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from topgun._ext import load

_impl = load("topgun._speedups._hashing", "topgun.core._hashing_py")

# Type checkers see the specification's signatures; at run time the chosen twin's objects.
if TYPE_CHECKING:
    from topgun.core._hashing_py import (
        PARTITION_COUNT,
        combine,
        fnv1a,
        fnv1a_many,
        lww_item_hash,
        mix,
        number_to_string,
        or_entry_hash,
        or_entry_string,
        partition,
        render_value,
        route,
        utf16_sort_key,
    )
else:
    PARTITION_COUNT = _impl.PARTITION_COUNT
    fnv1a = _impl.fnv1a
    fnv1a_many = _impl.fnv1a_many
    mix = _impl.mix
    combine = _impl.combine
    route = _impl.route
    partition = _impl.partition
    lww_item_hash = _impl.lww_item_hash
    or_entry_hash = _impl.or_entry_hash
    or_entry_string = _impl.or_entry_string
    render_value = _impl.render_value
    number_to_string = _impl.number_to_string
    utf16_sort_key = _impl.utf16_sort_key

__all__ = [
    "PARTITION_COUNT",
    "combine",
    "fnv1a",
    "fnv1a_many",
    "lww_item_hash",
    "mix",
    "number_to_string",
    "or_entry_hash",
    "or_entry_string",
    "partition",
    "render_value",
    "route",
    "utf16_sort_key",
]
