"""The timer loop: due timers become ``timer.fired`` events in the log.

Each firing is stored with the id ``timer:<timer id>``, so a timer claimed twice (two
loops, a crash between insert and mark) is a duplicate in the log, never a second
firing in the journey. The interpreter then ignores it if the instance has moved on.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime
from types import MappingProxyType

from sqlalchemy import select, update
from sqlalchemy.engine import Connection

from engine.db.database import Database
from engine.db.schema import instances, timers
from engine.events import Event
from engine.loops import repeat
from engine.runtime import utcnow
from engine.store import store_events_sync
from journeys.events import TIMER_FIRED

log = logging.getLogger("journeys.timers")


async def fire_due(db: Database, now: datetime, limit: int = 1000) -> int:
    """Turn up to *limit* due timers into events; returns how many fired."""
    # A look without the write lock first: most passes find nothing due.
    if not await db.reading(_any_due, now):
        return 0
    return await db.transaction(_fire, now, limit)


def _any_due(conn: Connection, now: datetime) -> bool:
    query = select(timers.c.id).where(timers.c.status == "pending", timers.c.due_at <= now).limit(1)
    return conn.execute(query).first() is not None


def _fire(conn: Connection, now: datetime, limit: int) -> int:
    rows = conn.execute(
        select(timers, instances.c.contact_id)
        .join(instances, instances.c.id == timers.c.instance_id, isouter=True)
        .where(timers.c.status == "pending", timers.c.due_at <= now)
        .order_by(timers.c.due_at).limit(limit)
    ).all()
    if not rows:
        return 0
    batch = [
        Event(
            id=f"timer:{r.id}",
            type=TIMER_FIRED,
            occurred_at=r.due_at,
            source="timer",
            provider_event_id=r.id,
            contact_id=r.contact_id,
            data=MappingProxyType({"instance_id": r.instance_id, "state": r.state, "seq": r.seq, "index": r.idx,
                                   "timer_id": r.id, "delay": r.delay}),
        )
        for r in rows
    ]
    store_events_sync(conn, batch, now)
    conn.execute(update(timers).where(timers.c.id.in_([r.id for r in rows])).values(status="fired"))
    return len(rows)


async def run(db: Database, stop: asyncio.Event, clock: Callable[[], datetime] = utcnow,
              interval: float = 0.2, fired: Callable[[], None] | None = None) -> None:
    """Fire due timers until *stop*; *fired* is told when some fired (the engine looks at once)."""

    async def step() -> int:
        count = await fire_due(db, clock())
        if count and fired is not None:
            fired()
        return count

    await repeat(step, stop, idle=interval, log=log, what="timer loop", pause_on_error=0)
