"""Migrations: bring a database to the schema this code expects, or say that it is behind.

``serve`` creates and migrates a new (empty) database by itself, but refuses one whose
migrations are behind: an upgrade of a database in use is a decision for a person
(``journeys db upgrade DIR``), not a side effect of a restart.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect

from engine.db.database import Database
from journeys.errors import ConfigError

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def _config(connection: Any = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = connection
    return cfg


def head() -> str:
    revision = ScriptDirectory.from_config(_config()).get_current_head()
    assert revision is not None
    return revision


async def current(db: Database) -> str | None:
    """The revision the database is at; None for a database journeys never touched."""
    async with db.write.connect() as conn:
        return await conn.run_sync(lambda c: MigrationContext.configure(c).get_current_revision())


async def is_empty(db: Database) -> bool:
    async with db.write.connect() as conn:
        names: list[str] = await conn.run_sync(lambda c: inspect(c).get_table_names())
    return not names


async def upgrade(db: Database, revision: str = "head") -> None:
    async with db.write.begin() as conn:
        await conn.run_sync(lambda c: command.upgrade(_config(c), revision))


class MigrationsBehindError(ConfigError):
    exit_code = 1


async def ensure_current(db: Database, fix: str) -> None:
    """Create a new database, accept a current one, refuse one that is behind (naming *fix*)."""
    at = await current(db)
    want = head()
    if at == want:
        return
    if at is None and await is_empty(db):
        await upgrade(db)
        return
    where = "an unknown schema (tables without migration history)" if at is None else f"revision {at}"
    raise MigrationsBehindError(f"the database is at {where}, this version of journeys needs {want}: "
                           f"run `{fix}` to migrate it")
