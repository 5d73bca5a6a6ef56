"""Migrations: they build exactly the tables of engine/db/schema.py, and a database that is
behind is refused with the command that fixes it."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import select, text

from cli.main import main
from engine.db import migrate
from engine.db.database import Database, connect
from engine.db.schema import events, metadata
from engine.store import contact_partition
from tests.services import sqlite_url

pytestmark = pytest.mark.anyio


async def test_migrations_equal_the_schema(db: Database) -> None:
    async with db.write.connect() as conn:
        diffs = await conn.run_sync(lambda c: compare_metadata(MigrationContext.configure(c), metadata))
    assert diffs == []
    assert await migrate.current(db) == migrate.head()


async def test_a_new_database_is_created(tmp_path: Path) -> None:
    db = connect(sqlite_url(tmp_path))
    try:
        assert await migrate.current(db) is None
        await migrate.ensure_current(db, "journeys db upgrade .")
        assert await migrate.current(db) == migrate.head()
    finally:
        await db.dispose()


async def test_a_database_behind_is_refused(db: Database) -> None:
    async with db.write.begin() as conn:
        await conn.execute(text("UPDATE alembic_version SET version_num = '0000'"))
    with pytest.raises(migrate.MigrationsBehindError) as info:
        await migrate.ensure_current(db, "journeys db upgrade ops")
    assert "at revision 0000" in str(info.value)
    assert "run `journeys db upgrade ops`" in str(info.value)


async def test_tables_without_history_are_refused(db: Database) -> None:
    async with db.write.begin() as conn:
        await conn.execute(text("DROP TABLE alembic_version"))
    with pytest.raises(migrate.MigrationsBehindError, match="unknown schema"):
        await migrate.ensure_current(db, "journeys db upgrade .")


def test_db_upgrade_command(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JOURNEYS_DATABASE_URL", raising=False)
    assert main(["db", "upgrade", str(tmp_path)]) == 0
    assert f"migrated to {migrate.head()}" in capsys.readouterr().out
    assert (tmp_path / "journeys.db").is_file()
    assert main(["db", "upgrade", str(tmp_path / "missing")]) == 2



async def test_a_contacts_events_are_found_through_the_partition_index(tmp_path: Path) -> None:
    """0002 drops ix_events_contact: the admin API and replays find a contact's events by
    partition_key, which ix_events_partition serves; a downgrade brings the index back."""
    db = connect(sqlite_url(tmp_path))
    query = select(events.c.id).where(events.c.partition_key == contact_partition("c-1"))
    sql = "EXPLAIN QUERY PLAN " + str(query.compile(compile_kwargs={"literal_binds": True}))

    async def indexes() -> set[str]:
        async with db.read.connect() as conn:
            return {r[1] for r in await conn.exec_driver_sql("PRAGMA index_list(events)")}

    try:
        await migrate.upgrade(db)
        async with db.read.connect() as conn:
            plan = " ".join(str(r[-1]) for r in await conn.exec_driver_sql(sql))
        assert "ix_events_partition" in plan
        assert "ix_events_contact" not in await indexes()
        async with db.write.begin() as conn:
            await conn.run_sync(lambda c: command.downgrade(migrate._config(c), "0001"))
        assert "ix_events_contact" in await indexes()
    finally:
        await db.dispose()
