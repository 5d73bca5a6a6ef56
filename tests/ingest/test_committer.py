"""The group committer on SQLite: its write-ahead log stays bounded under a long stream of groups."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from engine.db import migrate
from engine.db.database import connect
from ingest import committer as committing
from ingest.committer import Committer
from ingest.incoming import ContactRef, Incoming
from journeys.config import Policies
from tests.services import sqlite_url

pytestmark = pytest.mark.anyio


async def _stream(folder: Path, groups: int, size: int) -> tuple[int, int]:
    """Commit *groups* groups of *size* events; (the log's size, the database file's size)."""
    db = connect(sqlite_url(folder))
    await migrate.upgrade(db)
    store = Committer(db, Policies())
    stop = asyncio.Event()
    running = asyncio.create_task(store.run(stop))
    try:
        for group in range(groups):
            items = [Incoming(type="order.created", provider_event_id=f"{group}-{i}",
                              contact=ContactRef(id=f"c-{i % 50}"), data={"pad": "x" * 400})
                     for i in range(size)]
            assert (await store.submit("app", "events", items)).stored == size
        await asyncio.sleep(0.1)  # a checkpoint runs after its commit, in the writer's thread
        return Path(f"{db.url.database}-wal").stat().st_size, Path(db.url.database or "").stat().st_size
    finally:
        stop.set()
        await running
        await db.dispose()


async def test_the_log_is_copied_back_and_starts_over(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    size = committing.CHECKPOINT_EVERY // 4
    log, database = await _stream(tmp_path / "checkpointed", 24, size)
    monkeypatch.setattr(committing, "CHECKPOINT_EVERY", 10**9)
    unbounded, _ = await _stream(tmp_path / "never", 24, size)
    # the rows are in the database file, and the log holds a few groups, not all 24
    assert database > 24 * size * 400
    assert log < unbounded / 3, (log, unbounded)
