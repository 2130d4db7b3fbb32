"""Storage URL parsing: SQLAlchemy-style URLs to backends, clear errors for bad ones."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from topgun.core.records import LWWRecord, Timestamp
from topgun.errors import ConfigError, StorageError
from topgun.server.storage import DEFAULT_STORAGE_URL, WriteBatch, connect_storage, open_storage, redact_url
from topgun.server.storage.memory import MemoryStorage
from topgun.server.storage.postgres import PostgresStorage
from topgun.server.storage.sqlite import SqliteStorage, Synchronous


def test_default_url_is_a_sqlite_file_in_the_working_directory() -> None:
    assert DEFAULT_STORAGE_URL == "sqlite:///topgun.db"
    s = open_storage()
    assert isinstance(s, SqliteStorage)
    assert s.path == "topgun.db"
    assert s.synchronous is Synchronous.NORMAL


def test_memory_urls() -> None:
    private = open_storage("memory://")
    assert isinstance(private, MemoryStorage) and private.name == ""
    named = open_storage("memory://shared-1")
    assert isinstance(named, MemoryStorage) and named.name == "shared-1"


async def test_named_memory_store_is_shared_and_private_one_is_not() -> None:
    b = WriteBatch()
    b.lww_put("m", "k", LWWRecord(1, Timestamp(1, 0, "n")))
    a = await connect_storage("memory://url-test-shared")
    await a.write(b)
    await a.close()
    again = await connect_storage("memory://url-test-shared")
    assert "m" in (await again.load()).maps
    p1 = await connect_storage("memory://")
    await p1.write(b)
    p2 = await connect_storage("memory://")
    assert (await p2.load()).maps == {}
    # Nobody can ever load a private store, so it keeps no second copy of the grid's rows.
    assert (await p1.load()).maps == {}
    assert (await again.load()).maps["m"].lww["k"].value == 1


def test_sqlite_relative_and_absolute_paths() -> None:
    rel = open_storage("sqlite:///data/my.db")
    assert isinstance(rel, SqliteStorage) and rel.path == "data/my.db"
    absolute = open_storage("sqlite:////var/lib/topgun/my.db")
    assert isinstance(absolute, SqliteStorage) and absolute.path == "/var/lib/topgun/my.db"
    spaced = open_storage("sqlite:///with%20space.db")
    assert isinstance(spaced, SqliteStorage) and spaced.path == "with space.db"


async def test_relative_sqlite_path_resolves_against_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    s = await connect_storage("sqlite:///sub/dir/rel.db")
    await s.close()
    assert (tmp_path / "sub" / "dir" / "rel.db").is_file()


def test_sqlite_options_from_query_and_keywords() -> None:
    s = open_storage("sqlite:///x.db?synchronous=full&busy_timeout_ms=250")
    assert isinstance(s, SqliteStorage)
    assert s.synchronous is Synchronous.FULL and s.busy_timeout_ms == 250
    s2 = open_storage("sqlite:///x.db?synchronous=full", synchronous="normal")
    assert isinstance(s2, SqliteStorage) and s2.synchronous is Synchronous.NORMAL


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://postgres@127.0.0.1:5432/test",
        "postgres://postgres@127.0.0.1:5432/test",
        "postgresql+asyncpg://postgres@127.0.0.1:5432/test",
    ],
)
def test_postgres_schemes(url: str) -> None:
    s = open_storage(url)
    assert isinstance(s, PostgresStorage)
    assert s.dsn == "postgresql://postgres@127.0.0.1:5432/test"
    assert s.schema == "public"


def test_postgres_options_and_passthrough() -> None:
    s = open_storage(
        "postgresql://u:secret@db.example:6543/app?schema=tenant_1&max_pool_size=8&sslmode=require",
        min_pool_size=2,
    )
    assert isinstance(s, PostgresStorage)
    assert s.schema == "tenant_1"
    assert (s.min_pool_size, s.max_pool_size) == (2, 8)
    # Our own options are removed; the others reach asyncpg.
    assert s.dsn == "postgresql://u:secret@db.example:6543/app?sslmode=require"


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("", "empty"),
        ("topgun.db", "scheme"),
        ("mysql://u@h/db", "unknown storage URL scheme"),
        ("sqlite://", "names no file"),
        ("sqlite:///", "names no file"),
        ("sqlite://host/x.db", "host part"),
        ("sqlite:///:memory:", "memory://"),
        ("sqlite:///x.db?synchronous=sometimes", "synchronous"),
        ("sqlite:///x.db?busy_timeout_ms=soon", "not a valid int"),
        ("sqlite:///x.db?colour=blue", "unknown storage option"),
        ("sqlite:///x.db?synchronous=full&synchronous=normal", "repeats"),
        ("memory://name/path", "only a name"),
        ("postgresql:///db", "no host"),
        ("postgresql://h/db?schema=bad-name", "schema name"),
        ("postgresql://h/db?schema=x;drop", "schema name"),
        ("postgresql://h/db?max_pool_size=0", "pool_size"),
        ("postgresql://h/db?max_pool_size=1", "max_pool_size >= 2"),
    ],
)
def test_bad_urls_raise_config_error(url: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        open_storage(url)


def test_unknown_keyword_option() -> None:
    with pytest.raises(ConfigError, match="unknown storage option"):
        open_storage("sqlite:///x.db", schema="nope")
    with pytest.raises(ConfigError, match="no options"):
        open_storage("memory://", synchronous="full")


def test_missing_asyncpg_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    # A None entry in sys.modules makes ``import asyncpg`` raise ImportError, as if not installed.
    monkeypatch.setitem(sys.modules, "asyncpg", None)
    with pytest.raises(StorageError, match=r"pip install 'topgun\[postgres\]'"):
        open_storage("postgresql://postgres@127.0.0.1/test")


async def test_unreachable_postgres_is_a_storage_error() -> None:
    # Port 1 on localhost: nothing listens there, so the connection is refused at once.
    s = open_storage("postgresql://postgres@127.0.0.1:1/test", connect_timeout_s=3)
    with pytest.raises(StorageError, match="cannot connect"):
        await s.open()
    assert await s.ping() is False


def test_redact_url_hides_passwords() -> None:
    assert redact_url("postgresql://u:secret@h:5/db?x=1") == "postgresql://u:***@h:5/db?x=1"
    assert redact_url("postgresql://u@h/db") == "postgresql://u@h/db"
    with pytest.raises(ConfigError) as info:
        open_storage("postgresql://u:secret@h/db?schema=bad-name")
    assert "secret" not in str(info.value)
