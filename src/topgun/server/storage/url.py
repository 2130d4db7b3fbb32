"""Storage URLs (SQLAlchemy style) to :class:`~topgun.server.storage.base.Storage` instances.

=========================================  ==============================================
URL                                        Storage
=========================================  ==============================================
``memory://``                              private in-process storage (nothing persists)
``memory://name``                          in-process storage shared by every opener of ``name``
``sqlite:///relative/path.db``             SQLite file relative to the current directory
``sqlite:////absolute/path.db``            SQLite file at an absolute path
``postgresql://user:pw@host:port/db``      PostgreSQL (also ``postgres://``, ``postgresql+asyncpg://``)
=========================================  ==============================================

Query parameters: SQLite takes ``synchronous`` (``normal``/``full``) and
``busy_timeout_ms``; PostgreSQL takes ``schema``, ``min_pool_size``,
``max_pool_size``, ``command_timeout_s``, ``connect_timeout_s`` and
``copy_threshold``, and passes
every other parameter (``sslmode``, …) to asyncpg. Keyword options given to
:func:`open_storage` override the URL's.
"""

from __future__ import annotations

import urllib.parse
from typing import Any

from topgun.errors import ConfigError

from .base import Storage

__all__ = ["DEFAULT_STORAGE_URL", "connect_storage", "open_storage", "redact_url"]

#: Where the server keeps its data unless told otherwise.
DEFAULT_STORAGE_URL = "sqlite:///topgun.db"

_SQLITE_OPTS: dict[str, type] = {"synchronous": str, "busy_timeout_ms": int}
_PG_OPTS: dict[str, type] = {
    "schema": str,
    "min_pool_size": int,
    "max_pool_size": int,
    "command_timeout_s": float,
    "connect_timeout_s": float,
    "copy_threshold": int,
}
_PG_SCHEMES = {"postgresql", "postgres", "postgresql+asyncpg", "postgres+asyncpg"}


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (for logs and error messages)."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    user = parts.username or ""
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[-1]}"))


def _convert(name: str, raw: Any, kinds: dict[str, type], url: str) -> Any:
    kind = kinds[name]
    if isinstance(raw, kind) and not (kind is int and isinstance(raw, bool)):
        return raw
    try:
        return kind(raw)
    except (TypeError, ValueError):
        raise ConfigError(
            f"storage option {name}={raw!r} in {redact_url(url)} is not a valid {kind.__name__}"
        ) from None


def _options(
    query: dict[str, str], given: dict[str, Any], kinds: dict[str, type], url: str, *, passthrough: bool
) -> tuple[dict[str, Any], dict[str, str]]:
    opts: dict[str, Any] = {}
    rest: dict[str, str] = {}
    for name, raw in query.items():
        if name in kinds:
            opts[name] = _convert(name, raw, kinds, url)
        elif passthrough:
            rest[name] = raw
        else:
            raise ConfigError(
                f"unknown storage option {name!r} in {redact_url(url)}; allowed: {', '.join(sorted(kinds))}"
            )
    for name, raw in given.items():
        if name not in kinds:
            raise ConfigError(f"unknown storage option {name!r}; allowed: {', '.join(sorted(kinds))}")
        opts[name] = _convert(name, raw, kinds, url)
    return opts, rest


def open_storage(url: str = DEFAULT_STORAGE_URL, **options: Any) -> Storage:
    """Build the (not yet opened) storage named by ``url``; ``await storage.open()`` before use.

    Raises :class:`~topgun.errors.ConfigError` for a malformed URL or option and
    :class:`~topgun.errors.StorageError` when PostgreSQL is asked for and
    asyncpg is not installed.
    """
    if not isinstance(url, str) or not url.strip():
        raise ConfigError(
            "storage URL is empty; expected e.g. sqlite:///topgun.db, memory:// or postgresql://…"
        )
    url = url.strip()
    try:
        parts = urllib.parse.urlsplit(url)
        query_pairs = urllib.parse.parse_qsl(
            parts.query, keep_blank_values=True, strict_parsing=bool(parts.query)
        )
    except ValueError as exc:
        raise ConfigError(f"malformed storage URL {redact_url(url)}: {exc}") from None
    if "://" not in url:
        raise ConfigError(
            f"malformed storage URL {redact_url(url)}: expected scheme://…"
            " (memory://, sqlite:///path.db, postgresql://user@host/db)"
        )
    query = dict(query_pairs)
    if len(query) != len(query_pairs):
        raise ConfigError(f"storage URL {redact_url(url)} repeats a query parameter")
    scheme = parts.scheme.lower()

    if scheme == "memory":
        if parts.path not in ("", "/") or parts.query:
            raise ConfigError(
                f"memory storage URL takes only a name: memory:// or memory://name, got {url!r}"
            )
        if options:
            raise ConfigError(f"memory storage takes no options, got {sorted(options)}")
        from .memory import MemoryStorage

        return MemoryStorage(parts.netloc)

    if scheme == "sqlite":
        if parts.netloc:
            raise ConfigError(
                f"sqlite URL {url!r} has a host part; use sqlite:///relative.db or sqlite:////absolute.db"
            )
        # SQLAlchemy convention: the path starts after the third slash, so a fourth one makes it absolute.
        path = urllib.parse.unquote(parts.path[1:] if parts.path.startswith("/") else parts.path)
        if not path or path.endswith("/"):
            raise ConfigError(
                f"sqlite URL {url!r} names no file; use sqlite:///path.db (memory:// for no file)"
            )
        if path == ":memory:":
            raise ConfigError("sqlite in-memory databases are not supported; use memory://")
        opts, _ = _options(query, options, _SQLITE_OPTS, url, passthrough=False)
        from .sqlite import SqliteStorage

        return SqliteStorage(path, **opts)

    if scheme in _PG_SCHEMES:
        if not parts.hostname and not query.get("host"):
            raise ConfigError(f"postgresql URL {redact_url(url)} names no host")
        opts, rest = _options(query, options, _PG_OPTS, url, passthrough=True)
        from .postgres import PostgresStorage, import_asyncpg

        import_asyncpg()
        dsn = urllib.parse.urlunsplit(
            ("postgresql", parts.netloc, parts.path, urllib.parse.urlencode(rest), parts.fragment)
        )
        return PostgresStorage(dsn, **opts)

    raise ConfigError(
        f"unknown storage URL scheme {parts.scheme!r} in {redact_url(url)};"
        " expected memory://, sqlite:///path.db or postgresql://user@host:port/db"
    )


async def connect_storage(url: str = DEFAULT_STORAGE_URL, **options: Any) -> Storage:
    """:func:`open_storage` followed by ``await storage.open()``."""
    storage = open_storage(url, **options)
    await storage.open()
    return storage
