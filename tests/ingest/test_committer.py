"""The group committer on SQLite, with its writer in a thread and in a process of its own:
the write-ahead log stays bounded under a long stream of groups; the writer process's
failures become 503s, and a writer process that dies is replaced."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import fields
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType
from typing import Literal

import pytest
from litestar.testing import AsyncTestClient

from engine.db import migrate
from engine.db.database import Database, connect
from ingest.app import build_app
from ingest.committer import CHECKPOINT_EVERY, Committer
from ingest.errors import StorageUnavailableError
from ingest.incoming import ContactRef, Incoming
from ingest.writer import _decode, _encode
from journeys.config import Policies
from tests.services import sqlite_url

pytestmark = pytest.mark.anyio

Writer = Literal["thread", "process"]


def _items(group: int, size: int) -> list[Incoming]:
    # read-only mappings, as the providers make them: the writer process is sent them
    return [Incoming(type="order.created", provider_event_id=f"{group}-{i}",
                     contact=ContactRef(id=f"c-{i % 50}", attributes=MappingProxyType({"tier": "gold"})),
                     data=MappingProxyType({"pad": "x" * 400})) for i in range(size)]


async def _stream(folder: Path, groups: int, size: int, writer: Writer, checkpoint_every: int) -> tuple[int, int]:
    """Commit *groups* groups of *size* events; (the log's size, the database file's size)."""
    db = connect(sqlite_url(folder))
    await migrate.upgrade(db)
    store = Committer(db, Policies(), writer=writer, checkpoint_every=checkpoint_every)
    stop = asyncio.Event()
    running = asyncio.create_task(store.run(stop))
    try:
        for group in range(groups):
            assert (await store.submit("app", "events", _items(group, size))).stored == size
        await asyncio.sleep(0.2)  # a checkpoint runs after its commit, in the writer
        return Path(f"{db.url.database}-wal").stat().st_size, Path(db.url.database or "").stat().st_size
    finally:
        stop.set()
        await running
        await db.dispose()


@pytest.mark.parametrize("writer", ["thread", "process"])
async def test_the_log_is_copied_back_and_starts_over(tmp_path: Path, writer: Writer) -> None:
    size = CHECKPOINT_EVERY // 4
    log, database = await _stream(tmp_path / "checkpointed", 24, size, writer, CHECKPOINT_EVERY)
    unbounded, _ = await _stream(tmp_path / "never", 24, size, writer, 10**9)
    # the rows are in the database file, and the log holds a few groups, not all 24
    assert database > 24 * size * 400
    assert log < unbounded / 3, (log, unbounded)


@asynccontextmanager
async def _writer_process(folder: Path, policies: Policies | None = None, *,
                          migrated: bool = True) -> AsyncIterator[tuple[Database, Committer]]:
    """A committer with its writer process, running on a new SQLite database in *folder*."""
    db = connect(sqlite_url(folder))
    if migrated:
        await migrate.upgrade(db)
    store = Committer(db, policies or Policies(), writer="process")
    stop = asyncio.Event()
    running = asyncio.create_task(store.run(stop))
    try:
        yield db, store
    finally:
        stop.set()
        await running
        await db.dispose()


async def test_the_writer_process_stores_once_and_says_what_repeated(tmp_path: Path) -> None:
    async with _writer_process(tmp_path) as (db, store):
        first, again = await asyncio.gather(store.submit("app", "events", _items(0, 3)),
                                            store.submit("app", "events", _items(0, 5)))
        assert (first.stored, first.duplicates, again.stored, again.duplicates) == (3, 0, 2, 3)
        async with db.read.connect() as conn:
            assert (await conn.exec_driver_sql("SELECT count(*) FROM events")).scalar_one() == 5
            attributes = (await conn.exec_driver_sql("SELECT attributes FROM contacts WHERE id = 'c-0'")).scalar_one()
        assert json.loads(attributes) == {"tier": "gold"}


async def test_a_writer_process_that_dies_costs_its_group_a_503_and_is_replaced(tmp_path: Path) -> None:
    async with _writer_process(tmp_path) as (_, store):
        assert (await store.submit("app", "events", _items(0, 2))).stored == 2
        assert store._process is not None and store._process.pid is not None
        os.kill(store._process.pid, signal.SIGKILL)
        with pytest.raises(StorageUnavailableError):
            await store.submit("app", "events", _items(1, 2))
        # the provider retries: a new writer process stores it
        assert (await store.submit("app", "events", _items(1, 2))).stored == 2


async def test_a_group_the_writer_process_cannot_write_is_503(tmp_path: Path) -> None:
    async with _writer_process(tmp_path, migrated=False) as (_, store):  # no tables: every insert fails
        with pytest.raises(StorageUnavailableError):
            await store.submit("app", "events", _items(0, 1))


def test_a_group_crosses_the_pipe_unchanged() -> None:
    """Every field of Incoming and ContactRef, set to something other than its default, comes
    out of the writer's encoding as it went in (a field added later and not sent fails here)."""
    at = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
    contact = ContactRef(id="c-1", phone="+4915112345678", email="a@example.com", timezone="Europe/Berlin",
                         locale="de-DE", attributes=MappingProxyType({"tier": "gold"}))
    item = Incoming(type="message.received", provider_event_id="SM1:received", channel="sms", contact=contact,
                    occurred_at=at, provider_message_id="SM1", message_id="msg-1", status="received", text="STOP",
                    data=MappingProxyType({"k": [1, {"x": None}]}), inbound=True)
    for value, default in ((item, Incoming(item.type, item.provider_event_id)), (contact, ContactRef())):
        left_as_default = [f.name for f in fields(value) if f.name not in ("type", "provider_event_id")
                           and getattr(value, f.name) == getattr(default, f.name)]
        assert left_as_default == [], f"set every field of {type(value).__name__} in this test"

    class Sent:
        source, provider, items, received_at = "twilio", "twilio", [item, Incoming("a.b", "x")], at

    request = _decode(_encode(Sent()))
    assert (request.source, request.provider, request.items, request.received_at) == ("twilio", "twilio",
                                                                                      Sent.items, at)
    assert isinstance(request.items[0].data, MappingProxyType)


async def test_an_opt_out_through_the_writer_process_suppresses_its_contact(tmp_path: Path) -> None:
    """A group with an opt-out takes the way through the send gates; its suppression is
    committed with it, and a group without one beside it is stored as usual."""
    async with _writer_process(tmp_path, Policies(opt_out_scope=("sms",))) as (db, store):
        stop_word = Incoming(type="contact.opted_out", provider_event_id="SM9:received:opt", channel="sms",
                             contact=ContactRef(phone="+4915112345678"))
        outcomes = await asyncio.gather(store.submit("twilio", "twilio", [stop_word]),
                                        store.submit("app", "events", _items(0, 2)))
        assert [(o.stored, o.duplicates) for o in outcomes] == [(1, 0), (2, 0)]
        async with db.read.connect() as conn:
            suppressed = (await conn.exec_driver_sql(
                "SELECT s.channel FROM suppressions s JOIN contacts c ON c.id = s.contact_id "
                "WHERE c.phone = '+4915112345678'")).scalars().all()
        assert suppressed == ["sms"]


async def test_a_writer_process_that_cannot_start_is_not_started_for_every_group(tmp_path: Path) -> None:
    db = connect(sqlite_url(tmp_path))
    await migrate.upgrade(db)
    store = Committer(db, Policies(), writer="process")
    assert store._process is not None
    store._process.command = [sys.executable, "-c", "import sys; sys.exit(3)"]  # dies before its first group
    try:
        for group in range(5):
            with pytest.raises(StorageUnavailableError):
                await store.submit("app", "events", _items(group, 1))
        assert store._process.starts == 1
        store._process.RESTART_AFTER = 0  # a second later: tried again
        with pytest.raises(StorageUnavailableError):
            await store.submit("app", "events", _items(9, 1))
        assert store._process.starts == 2
    finally:
        await store.close()
        await db.dispose()


async def test_a_group_that_cannot_be_sent_is_503_and_the_next_one_is_stored(tmp_path: Path) -> None:
    """Nothing a provider sends is like this (its data is JSON or form text), but if a value
    could not cross the pipe, that group gets 503s and the answers of later groups still go to
    the right requests."""
    async with _writer_process(tmp_path) as (_, store):
        await store.submit("app", "events", _items(0, 1))  # the writer is up: groups go straight to it
        odd = Incoming(type="order.created", provider_event_id="odd", data=MappingProxyType({"x": lambda: 1}))
        with pytest.raises(StorageUnavailableError):  # not left waiting for an answer that never comes
            await asyncio.wait_for(store.submit("app", "events", [odd]), timeout=10)
        assert (await asyncio.wait_for(store.submit("app", "events", _items(1, 3)), timeout=10)).stored == 3


async def test_a_group_after_an_opt_out_group_is_written_after_it(tmp_path: Path) -> None:
    """An opt-out's group reads its contacts and passes the send gates before it is written;
    a group that arrives meanwhile waits for it rather than overtaking it in the log."""
    async with _writer_process(tmp_path) as (db, store):
        await store.submit("app", "events", _items(0, 1))  # the writer is up: groups go straight to it
        stop_word = Incoming(type="contact.opted_out", provider_event_id="SM9:received:opt", channel="sms",
                             contact=ContactRef(phone="+4915112345678"))
        first = asyncio.create_task(store.submit("twilio", "twilio", [stop_word]))
        for _ in range(3):  # its group starts, and waits for its read
            await asyncio.sleep(0)
        second = asyncio.create_task(store.submit("app", "events", _items(5, 1)))
        await asyncio.gather(first, second)
        async with db.read.connect() as conn:
            order = [r[0] for r in await conn.exec_driver_sql(
                "SELECT provider_event_id FROM events WHERE provider_event_id IN ('SM9:received:opt', '5-0') "
                "ORDER BY seq")]
        assert order == ["SM9:received:opt", "5-0"]


async def test_a_writer_process_that_cannot_start_is_a_readiness_problem(tmp_path: Path) -> None:
    db = connect(sqlite_url(tmp_path))
    await migrate.upgrade(db)
    store = Committer(db, Policies(), writer="process")
    assert store._process is not None and store.problem() is None  # not started: nothing to say yet
    store._process.command = [sys.executable, "-c", "import sys; sys.exit(3)"]
    try:
        with pytest.raises(StorageUnavailableError):
            await store.submit("app", "events", _items(0, 1))
        assert "ended before it wrote a group" in (store.problem() or "")
        store._process.command = [sys.executable, "-m", "ingest.writer"]
        store._process.RESTART_AFTER = 0
        assert (await store.submit("app", "events", _items(1, 1))).stored == 1  # a working one replaces it
        assert store.problem() is None
    finally:
        await store.close()
        await db.dispose()


async def test_readyz_reports_a_readiness_problem(tmp_path: Path) -> None:
    db = connect(sqlite_url(tmp_path))
    await migrate.upgrade(db)
    await db.dispose()
    problem: list[str | None] = ["the ingest writer process ended before it wrote a group (see the log)"]
    # the app runs on the test client's own event loop, with connections of its own
    app = build_app(connect(sqlite_url(tmp_path)), state={"readiness": {"ingest_writer": lambda: problem[0]}})
    async with AsyncTestClient(app=app) as client:
        answer = await client.get("/readyz")
        assert answer.status_code == 503
        assert answer.json() == {"status": "unavailable", "database": "ok", "ingest_writer": problem[0]}
        problem[0] = None
        assert (await client.get("/readyz")).json()["status"] == "ok"
