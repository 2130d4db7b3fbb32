"""Fixtures shared by the server tests: storage URLs for every backend.

``storage_url`` is parametrized over ``memory``, ``sqlite`` and ``postgresql``;
each value is a URL that names one fresh, empty store private to the test and
that can be opened any number of times (to simulate restarts). The helpers
behind them live in :mod:`support.pg`.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from rawclient import TRANSPORTS

from support.pg import (
    PG_URL,
    STORAGE_KINDS,
    StorageUrls,
    drop_pg_schema,
    need_postgres,
    postgres_unavailable_reason,
    require_postgres,
    run_sync,
    with_query,
)

__all__ = [
    "PG_URL",
    "STORAGE_KINDS",
    "StorageUrls",
    "drop_pg_schema",
    "need_postgres",
    "postgres_unavailable_reason",
    "require_postgres",
    "run_sync",
    "with_query",
]


@pytest.fixture
def pg_schema() -> Iterator[str]:
    """A random PostgreSQL schema name, dropped (with everything in it) after the test."""
    need_postgres()
    schema = "tg_test_" + uuid.uuid4().hex[:16]
    try:
        yield schema
    finally:
        drop_pg_schema(schema)


@pytest.fixture
def pg_url(pg_schema: str) -> str:
    """A PostgreSQL storage URL using the test's own schema."""
    return with_query(PG_URL, schema=pg_schema)


@pytest.fixture(params=STORAGE_KINDS)
def storage_kind(request: pytest.FixtureRequest) -> str:
    """Each storage backend in turn: ``memory``, ``sqlite``, ``postgresql``."""
    if request.param == "postgresql":
        need_postgres()
    return str(request.param)


@pytest.fixture
def storage_urls(storage_kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> StorageUrls:
    """A factory of fresh storage URLs of the current backend (``storage_urls()`` → URL)."""
    return StorageUrls(storage_kind, tmp_path, request)


@pytest.fixture
def storage_url(storage_urls: StorageUrls) -> str:
    """One fresh storage URL of the current backend, reusable for restarts."""
    return storage_urls()


@pytest.fixture(params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> str:
    """Each server transport in turn (``picows``, ``websockets``)."""
    return str(request.param)
