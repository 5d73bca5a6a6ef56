"""Writing events into the log, once each: the entry point of ingest, timers and replays.

``INSERT .. ON CONFLICT (source, provider_event_id) DO NOTHING RETURNING``: an event
already stored is not stored again; its ``duplicates`` counter goes up instead. The
caller owns the transaction, so many requests can share one commit (group commit).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection

from engine.db import sqlite_rows
from engine.db.schema import events
from engine.events import Event


def new_event_id() -> str:
    """The time in milliseconds, then 80 random bits (the layout of a UUIDv7).

    Ids that grow with time are inserted at the end of the ids' index: a random id lands on
    another page of it each time, and once the log has some 50,000 events every insert
    rewrites pages all over that index (more to write at each commit, more to checkpoint)."""
    return f"ev-{time.time_ns() // 1_000_000:012x}{os.urandom(10).hex()}"


def contact_partition(contact_id: str) -> str:
    """The partition of every event about this contact: how its events are found (no index on contact_id)."""
    return f"contact:{contact_id}"


def partition_of(event: Event) -> str:
    """Events of one partition are applied one at a time, in arrival order."""
    if event.contact_id:
        return contact_partition(event.contact_id)
    if event.conversation_id:
        return f"conversation:{event.conversation_id}"
    return f"event:{event.id}"


def row_of(event: Event, received_at: datetime | None = None) -> dict[str, Any]:
    return {
        "id": event.id,
        "source": event.source,
        "provider": event.provider,
        "provider_event_id": event.provider_event_id or event.id,
        "type": event.type,
        "channel": event.channel,
        "contact_id": event.contact_id,
        "conversation_id": event.conversation_id,
        "message_id": event.message_id,
        "provider_message_id": event.provider_message_id,
        "occurred_at": event.occurred_at,
        "received_at": event.received_at or received_at or event.occurred_at,
        "status_text": event.status,
        "text": event.text,
        "data": dict(event.data),
        "schema_version": event.schema_version,
        "partition_key": partition_of(event),
        "status": "pending",
    }


def _insert(conn: Connection) -> Any:
    if conn.dialect.name == "postgresql":
        return postgresql.insert(events)
    return sqlite.insert(events)


def _insert_returning(conn: Connection, rows: list[dict[str, Any]]) -> list[str]:
    """The ids of *rows* that were new."""
    stmt = _insert(conn).on_conflict_do_nothing(index_elements=["source", "provider_event_id"])
    return [r.id for r in conn.execute(stmt.returning(events.c.id), rows)]


def _insert_sqlite(conn: Connection, rows: list[dict[str, Any]]) -> list[str]:
    """The ids of *rows* that were new, from one executemany (engine.db.sqlite_rows).

    Through SQLAlchemy, INSERT .. RETURNING of a group costs several times what SQLite
    spends on it; the count of rows inserted says the same in the usual case (everything
    new), and a group with a repeat costs one more SELECT."""
    # The caller's write transaction keeps other writers out: rows this insert stores are the
    # ones numbered after the last row now (ids alone cannot say: timers and emits reuse theirs).
    last = sqlite_rows.scalar(conn, "SELECT coalesce(max(seq), 0) FROM events")
    count = sqlite_rows.insert_rows(conn, events, rows, "ON CONFLICT (source, provider_event_id) DO NOTHING")
    if count == len(rows):
        return [row["id"] for row in rows]
    return [r.id for r in conn.execute(select(events.c.id).where(events.c.seq > last))]


@dataclass(frozen=True)
class Stored:
    """Which events were new, and which repeated one already in the log."""

    inserted: list[str]
    duplicates: list[tuple[str, str]]  # (source, provider_event_id)


def store_events_sync(conn: Connection, batch: Sequence[Event], received_at: datetime) -> Stored:
    """Insert *batch*; repeats (also within the batch) only bump ``duplicates``.

    Synchronous, so that a SQLite group commit runs whole in one thread (ingest.committer);
    async callers use :func:`store_events`."""
    rows, seen, repeats = [], set(), []
    for event in batch:
        row = row_of(event, received_at)
        key = (row["source"], row["provider_event_id"])
        if key in seen:
            repeats.append(key)
            continue
        seen.add(key)
        rows.append(row)
    inserted: list[str] = []
    if rows:
        inserted = _insert_sqlite(conn, rows) if conn.dialect.name == "sqlite" else _insert_returning(conn, rows)
        fresh = set(inserted)
        repeats += [(r["source"], r["provider_event_id"]) for r in rows if r["id"] not in fresh]
    for source, provider_event_id in repeats:
        conn.execute(
            update(events)
            .where(events.c.source == source, events.c.provider_event_id == provider_event_id)
            .values(duplicates=events.c.duplicates + 1)
        )
    return Stored(inserted, repeats)


async def store_events(conn: AsyncConnection, batch: Sequence[Event], received_at: datetime) -> Stored:
    """:func:`store_events_sync` in the caller's transaction."""
    return await conn.run_sync(store_events_sync, batch, received_at)
