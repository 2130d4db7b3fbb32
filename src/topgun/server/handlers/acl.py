"""Map permissions: the :class:`SchemaProvider` seam and its two implementations.

The default (:class:`AllowAll`) lets every connection read and write every
map. :class:`MapAcl` is the config-driven table (``map_acl`` in the server
config)::

    map_acl = [
      {map = "public.*", read = ["*"], write = ["*"]},
      {map = "orders*",  read = ["staff", "admin"], write = ["admin"]},
    ]

Rules are tried in order and the first whose ``map`` glob (``fnmatch``) matches
decides. ``read``/``write`` list the roles (JWT ``roles`` claim) allowed; ``"*"``
allows everyone, a missing list allows everyone, an empty list nobody. A map no
rule matches is allowed (``default`` = ``"allow"``) or refused (``"deny"``).
"""

from __future__ import annotations

import fnmatch
import json
import re
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple, Protocol, runtime_checkable

from topgun.errors import ConfigError
from topgun.server.interfaces import RequestContext

__all__ = ["AclRule", "AllowAll", "MapAcl", "SchemaProvider", "acl_from_config"]


@runtime_checkable
class SchemaProvider(Protocol):
    """Per-map permissions (and, later, declared indexes)."""

    def can_read(self, ctx: RequestContext, map_name: str) -> bool:
        """May ``ctx`` read ``map_name`` (sync, pushes, queries)?"""
        ...

    def can_write(self, ctx: RequestContext, map_name: str) -> bool:
        """May ``ctx`` write ``map_name`` (ops, push-diff)?"""
        ...


class AllowAll:
    """Everyone may read and write everything (the default)."""

    def can_read(self, ctx: RequestContext, map_name: str) -> bool:
        return True

    def can_write(self, ctx: RequestContext, map_name: str) -> bool:
        return True


class AclRule(NamedTuple):
    """One row of the permission table; ``None`` role sets allow everyone."""

    pattern: re.Pattern[str]
    read: frozenset[str] | None
    write: frozenset[str] | None


def _roles(raw: Any, where: str) -> frozenset[str] | None:
    if raw is None:
        return None
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list) or not all(isinstance(r, str) for r in raw):
        raise ConfigError(f"{where} must be a list of role names")
    if "*" in raw:
        return None
    return frozenset(raw)


class MapAcl:
    """A permission table: first matching map glob decides; results are cached per (roles, map)."""

    def __init__(self, rules: Iterable[AclRule], *, default_allow: bool = True) -> None:
        self.rules = list(rules)
        self.default_allow = default_allow
        self._cache: dict[tuple[tuple[str, ...], str], tuple[bool, bool]] = {}

    @classmethod
    def from_config(cls, table: Iterable[Mapping[str, Any]], *, default: str = "allow") -> MapAcl:
        """Build from ``[{map, read?, write?}, …]`` (see the module docstring)."""
        rules: list[AclRule] = []
        for i, row in enumerate(table):
            if not isinstance(row, Mapping) or not isinstance(row.get("map"), str):
                raise ConfigError(f"map_acl[{i}] needs a 'map' glob string")
            rules.append(
                AclRule(
                    re.compile(fnmatch.translate(row["map"])),
                    _roles(row.get("read"), f"map_acl[{i}].read"),
                    _roles(row.get("write"), f"map_acl[{i}].write"),
                )
            )
        if default not in {"allow", "deny"}:
            raise ConfigError(f"map ACL default must be 'allow' or 'deny', got {default!r}")
        return cls(rules, default_allow=default == "allow")

    def _decide(self, roles: tuple[str, ...], map_name: str) -> tuple[bool, bool]:
        key = (roles, map_name)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        result = (self.default_allow, self.default_allow)
        for rule in self.rules:
            if rule.pattern.match(map_name):
                result = (
                    rule.read is None or not rule.read.isdisjoint(roles),
                    rule.write is None or not rule.write.isdisjoint(roles),
                )
                break
        if len(self._cache) > 65_536:
            self._cache.clear()
        self._cache[key] = result
        return result

    def can_read(self, ctx: RequestContext, map_name: str) -> bool:
        return self._decide(ctx.roles, map_name)[0]

    def can_write(self, ctx: RequestContext, map_name: str) -> bool:
        return self._decide(ctx.roles, map_name)[1]


def acl_from_config(table: Any) -> SchemaProvider:
    """:class:`AllowAll` for an empty table, else a :class:`MapAcl` (a JSON string is accepted).

    A table may be ``{"default": "deny", "rules": [...]}`` instead of a plain list.
    """
    if isinstance(table, str):
        table = json.loads(table) if table.strip() else []
    if not table:
        return AllowAll()
    if isinstance(table, Mapping):
        return MapAcl.from_config(table.get("rules", []), default=str(table.get("default", "allow")))
    if not isinstance(table, list):
        raise ConfigError("map_acl must be a list of rules")
    return MapAcl.from_config(table)
