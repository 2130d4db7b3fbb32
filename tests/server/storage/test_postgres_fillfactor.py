"""PostgreSQL record tables leave room on each page for HOT updates (fillfactor)."""

from __future__ import annotations

import urllib.parse

import pytest

from support.pg import PG_URL, need_postgres
from topgun.server.storage import open_storage
from topgun.server.storage.postgres import PostgresStorage

pytestmark = pytest.mark.asyncio

RECORD_TABLES = ("lww_records", "or_records")


async def _fillfactors(conn: object, schema: str) -> dict[str, list[str] | None]:
    rows = await conn.fetch(  # type: ignore[attr-defined]
        "SELECT c.relname, c.reloptions FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = $1 AND c.relname = ANY($2::text[])",
        schema,
        list(RECORD_TABLES),
    )
    return {r[0]: r[1] for r in rows}


async def test_record_tables_get_fillfactor_also_on_existing_databases(pg_url: str, pg_schema: str) -> None:
    import asyncpg

    s = open_storage(pg_url)
    assert isinstance(s, PostgresStorage)
    await s.open()
    await s.close()
    conn = await asyncpg.connect(PG_URL)
    try:
        assert await _fillfactors(conn, pg_schema) == {t: ["fillfactor=50"] for t in RECORD_TABLES}
        # A database created before the setting existed: the next open applies it.
        for t in RECORD_TABLES:
            await conn.execute(f'ALTER TABLE "{pg_schema}".{t} RESET (fillfactor)')
        assert await _fillfactors(conn, pg_schema) == {t: None for t in RECORD_TABLES}
        s = open_storage(pg_url)
        await s.open()
        await s.close()
        assert await _fillfactors(conn, pg_schema) == {t: ["fillfactor=50"] for t in RECORD_TABLES}
    finally:
        await conn.close()


async def test_role_that_does_not_own_the_tables_still_opens(pg_schema: str) -> None:
    """Only an owner may set the fillfactor; a role that may use the schema but owns no table still runs."""
    need_postgres()
    import asyncpg

    role = "tg_ff_" + pg_schema[-12:]
    admin = await asyncpg.connect(PG_URL)
    try:
        # The admin creates the tables (without the setting), then a non-owner role opens them.
        s = open_storage(f"{PG_URL}?schema={pg_schema}")
        await s.open()
        await s.close()
        for t in RECORD_TABLES:
            await admin.execute(f'ALTER TABLE "{pg_schema}".{t} RESET (fillfactor)')
        await admin.execute(f'DROP ROLE IF EXISTS "{role}"')
        await admin.execute(f'CREATE ROLE "{role}" LOGIN')
        await admin.execute(f'GRANT USAGE, CREATE ON SCHEMA "{pg_schema}" TO "{role}"')
        await admin.execute(
            f'GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA "{pg_schema}" TO "{role}"'
        )
        parts = urllib.parse.urlsplit(PG_URL)
        url = urllib.parse.urlunsplit(
            parts._replace(
                netloc=f"{role}@{parts.hostname}:{parts.port or 5432}", query=f"schema={pg_schema}"
            )
        )
        s = open_storage(url)
        await s.open()
        try:
            assert await s.ping()
        finally:
            await s.close()
        assert await _fillfactors(admin, pg_schema) == {t: None for t in RECORD_TABLES}
    finally:
        await admin.execute(f'DROP SCHEMA IF EXISTS "{pg_schema}" CASCADE')
        await admin.execute(f'DROP ROLE IF EXISTS "{role}"')
        await admin.close()
