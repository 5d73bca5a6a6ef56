"""Replay stored events through a journey version in a scratch database.

To check a fix before deploying it: take the events a contact (or a time range) really
produced, run them in arrival order through the journey as it is now on disk (or a
stored version), on a clock that follows the events, with timers firing at their own
time, in a fresh SQLite file. Nothing is sent and production is only read.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select

from engine import timers as timer_loop
from engine.db import migrate
from engine.db.database import Database, connect
from engine.db.schema import contacts, events, instances, jobs, messages, steps, timers
from engine.runtime import Engine, EngineSettings, event_from_row
from engine.store import contact_partition, store_events
from engine.timeutil import aware
from engine.versions import Registry
from journeys.model import Journey


@dataclass(frozen=True)
class ReplayResult:
    events: int
    steps: Sequence[Any]
    instances: Sequence[Any]
    jobs: Sequence[Any]
    scratch: str


async def select_events(db: Database, contact: str | None, since: datetime | None,
                        until: datetime | None) -> list[Any]:
    query = select(events).where(events.c.source != "timer")  # timers are fired again by the replay
    if contact is not None:
        query = query.where(events.c.partition_key == contact_partition(contact))  # indexed; see the schema
    if since is not None:
        query = query.where(events.c.occurred_at >= since)
    if until is not None:
        query = query.where(events.c.occurred_at <= until)
    async with db.read.connect() as conn:
        return list((await conn.execute(query.order_by(events.c.seq))).all())


async def replay(source: Database, journey: Journey, *, contact: str | None = None,
                 since: datetime | None = None, until: datetime | None = None,
                 scratch: str | None = None) -> ReplayResult:
    rows = await select_events(source, contact, since, until)
    contact_ids = sorted({r.contact_id for r in rows if r.contact_id})
    async with source.read.connect() as conn:
        contact_rows = (await conn.execute(select(contacts).where(contacts.c.id.in_(contact_ids)))).all()
        message_rows = (await conn.execute(select(messages).where(messages.c.contact_id.in_(contact_ids)))).all()
    path = scratch or str(Path(tempfile.mkdtemp(prefix="journeys-replay-")) / "replay.db")
    db = connect(f"sqlite+aiosqlite:///{path}")
    try:
        await migrate.upgrade(db)
        async with db.write.begin() as conn:
            if contact_rows:
                await conn.execute(contacts.insert(), [dict(r._mapping) for r in contact_rows])
            if message_rows:
                # routing by message needs them; instance links only hold for the same version
                await conn.execute(messages.insert(), [dict(r._mapping) for r in message_rows])
        registry = Registry()
        registry.add(journey)
        clock: list[datetime] = [aware(rows[0].occurred_at) if rows else datetime.now(UTC)]
        engine = Engine(db, registry, "replay", EngineSettings(message_wait=timedelta(0)), clock=lambda: clock[0])

        async def settle(at: datetime) -> None:
            # fire every timer due up to *at*, at its own time, and what those firings cause
            while True:
                async with db.read.connect() as conn:
                    due = (await conn.execute(
                        select(timers.c.due_at).where(timers.c.status == "pending", timers.c.due_at <= at)
                        .order_by(timers.c.due_at).limit(1))).scalar()
                if due is None:
                    break
                clock[0] = max(clock[0], aware(due))
                await timer_loop.fire_due(db, clock[0])
                while await engine.run_once():
                    pass
            clock[0] = max(clock[0], at)

        for row in rows:
            await settle(aware(row.occurred_at))
            async with db.write.begin() as conn:
                await store_events(conn, [event_from_row(row)], clock[0])
            while await engine.run_once():
                pass
        await settle(until or clock[0])
        async with db.read.connect() as conn:
            step_rows = (await conn.execute(select(steps).order_by(steps.c.id))).all()
            instance_rows = (await conn.execute(select(instances).order_by(instances.c.started_at))).all()
            job_rows = (await conn.execute(select(jobs).order_by(jobs.c.created_at, jobs.c.id))).all()
        return ReplayResult(len(rows), step_rows, instance_rows, job_rows, path)
    finally:
        await db.dispose()
