"""Real services for tests: a database per test (SQLite file or PostgreSQL schema).

On a laptop without PostgreSQL the PostgreSQL cases skip, saying why; in CI (CI=true)
a missing service fails the run instead.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

PG_URL = os.environ.get("JOURNEYS_TEST_PG_URL", "postgresql+asyncpg://postgres@127.0.0.1/test")
IN_CI = os.environ.get("CI", "").lower() == "true"

_pg_ok: bool | None = None


def _dsn() -> str:
    return PG_URL.replace("postgresql+asyncpg://", "postgresql://")


async def _probe() -> bool:
    import asyncpg

    try:
        conn = await asyncpg.connect(_dsn(), timeout=3)
    except (OSError, asyncpg.PostgresError, TimeoutError):
        return False
    await conn.close()
    return True


def require_postgres() -> None:
    global _pg_ok
    if _pg_ok is None:
        _pg_ok = asyncio.run(_probe()) if not _running_loop() else None
    if _pg_ok is False:
        message = f"PostgreSQL is not reachable at {PG_URL}"
        if IN_CI:
            pytest.fail(f"{message} (CI=true: a missing service fails the run)")
        pytest.skip(message)


def _running_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


async def require_postgres_async() -> None:
    global _pg_ok
    if _pg_ok is None:
        _pg_ok = await _probe()
    require_postgres()


@asynccontextmanager
async def pg_schema() -> AsyncIterator[str]:
    """A fresh schema in the test database, dropped afterwards."""
    import asyncpg

    name = f"t_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(_dsn())
    try:
        await conn.execute(f'CREATE SCHEMA "{name}"')
        yield name
    finally:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
        await conn.close()


def sqlite_url(folder: Path) -> str:
    return f"sqlite+aiosqlite:///{folder / 'journeys.db'}"
