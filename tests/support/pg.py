"""PostgreSQL and storage-URL helpers shared by the server, client and bench tests.

``storage_url`` is parametrized over ``memory``, ``sqlite`` and ``postgresql``;
each value is a URL that names one fresh, empty store private to the test and
that can be opened any number of times (to simulate restarts): a named
``memory://`` store, a SQLite file under ``tmp_path``, or a PostgreSQL schema
with a random name that is dropped after the test.

PostgreSQL comes from ``TOPGUN_TEST_DATABASE_URL`` (default
``postgresql://postgres@127.0.0.1:5432/test``). When it is unreachable the
PostgreSQL cases are skipped, unless ``TOPGUN_REQUIRE_POSTGRES=1``, in which
case they fail.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import urllib.parse
import uuid
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

PG_URL = os.environ.get("TOPGUN_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
STORAGE_KINDS = ("memory", "sqlite", "postgresql")


def require_postgres() -> bool:
    """True when PostgreSQL cases must run (``TOPGUN_REQUIRE_POSTGRES=1``)."""
    return os.environ.get("TOPGUN_REQUIRE_POSTGRES", "").strip().lower() in {"1", "yes", "true"}


def run_sync(factory: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    """Run a coroutine to completion on a private loop in another thread.

    Fixtures use this so they work whether or not a test loop is running in
    the calling thread.
    """
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as ex:
        return ex.submit(lambda: asyncio.run(factory())).result()


_pg_status: dict[str, str | None] = {}


def postgres_unavailable_reason() -> str | None:
    """``None`` when PostgreSQL at ``PG_URL`` answers, else why not (checked once per session)."""
    if "reason" not in _pg_status:

        async def probe() -> str | None:
            try:
                import asyncpg
            except ImportError:
                return "asyncpg is not installed"
            try:
                conn = await asyncpg.connect(PG_URL, timeout=5)
            except Exception as exc:
                return f"PostgreSQL at {PG_URL} is unreachable: {exc}"
            await conn.close()
            return None

        _pg_status["reason"] = run_sync(probe)
    return _pg_status["reason"]


def need_postgres() -> None:
    """Skip (or fail under ``TOPGUN_REQUIRE_POSTGRES=1``) when PostgreSQL is unavailable."""
    reason = postgres_unavailable_reason()
    if reason is not None:
        if require_postgres():
            pytest.fail(f"TOPGUN_REQUIRE_POSTGRES=1 but {reason}")
        pytest.skip(reason)


def with_query(url: str, **params: str) -> str:
    """``url`` with ``params`` added to its query string."""
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qsl(parts.query) + list(params.items())
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


def drop_pg_schema(schema: str) -> None:
    async def drop() -> None:
        import asyncpg

        conn = await asyncpg.connect(PG_URL, timeout=10)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await conn.close()

    run_sync(drop)


class StorageUrls:
    """Makes storage URLs of one kind, each naming a fresh store private to the test."""

    def __init__(self, kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
        self.kind = kind
        self._tmp_path = tmp_path
        self._request = request
        self._n = 0

    def __call__(self, **params: str) -> str:
        self._n += 1
        if self.kind == "memory":
            return f"memory://test-{uuid.uuid4().hex}"
        if self.kind == "sqlite":
            path = self._tmp_path / f"store-{self._n}.db"
            return with_query(f"sqlite:///{path}", **params) if params else f"sqlite:///{path}"
        if self.kind == "postgresql":
            need_postgres()
            schema = "tg_test_" + uuid.uuid4().hex[:16]
            self._request.addfinalizer(lambda: drop_pg_schema(schema))
            return with_query(PG_URL, schema=schema, **params)
        raise ValueError(self.kind)
