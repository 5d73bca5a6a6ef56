"""Shared fixtures: paths of the example deployment and a factory for scratch deployments."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.services import pg_schema, require_postgres_async, sqlite_url

if TYPE_CHECKING:
    from engine.db.database import Database

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


@pytest.fixture
def write(tmp_path: Path) -> Callable[[str, str], Path]:
    """Write a file (dedented text) under a fresh folder and return its path."""
    import textwrap

    def _write(name: str, text: str) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
        return path

    return _write


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(params=["sqlite", "postgresql"])
async def db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    """A migrated, empty database of each kind: a SQLite file, or a PostgreSQL schema."""
    from engine.db import migrate
    from engine.db.database import connect

    if request.param == "sqlite":
        database = connect(sqlite_url(tmp_path))
        await migrate.upgrade(database)
        yield database
        await database.dispose()
        return
    await require_postgres_async()
    from tests.services import PG_URL

    async with pg_schema() as schema:
        database = connect(PG_URL, schema=schema)
        await migrate.upgrade(database)
        yield database
        await database.dispose()
