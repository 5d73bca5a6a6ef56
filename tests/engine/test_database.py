"""SQLite specifics of engine/db: the ingest writer's wait for the write lock."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import text

from engine.db import migrate
from engine.db.database import Database, connect
from tests.services import sqlite_url


@pytest.fixture
def sqlite_db(tmp_path: Path) -> Database:
    database = connect(sqlite_url(tmp_path))

    async def prepare() -> None:
        await migrate.upgrade(database)
        await database.dispose()

    asyncio.run(prepare())
    return database


def test_the_writer_takes_the_lock_as_soon_as_it_is_free(sqlite_db: Database) -> None:
    path = sqlite_db.url.database or ""
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    released: list[float] = []

    def release() -> None:
        time.sleep(1.0)  # long enough for SQLite's own busy handler to sleep 100 ms at a time
        released.append(time.monotonic())
        holder.execute("COMMIT")

    threading.Thread(target=release).start()
    writer = sqlite_db.sqlite_writer()
    with writer.begin() as conn:
        got = time.monotonic()
        conn.execute(text("INSERT INTO suppressions (contact_id, channel, reason, created_at) "
                          "VALUES ('c-1', 'sms', 'test', '2026-01-01 00:00:00.000000')"))
    writer.dispose()
    holder.close()
    assert got >= released[0]
    assert got - released[0] < 0.03  # polled: not a busy-handler sleep after the release
