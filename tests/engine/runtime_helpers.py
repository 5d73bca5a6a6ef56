"""Helpers for runtime tests: journeys into a database, events into the log, the engine run dry."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

from sqlalchemy import func, select

from engine.db.database import Database
from engine.db.schema import contacts, events, instances, jobs, steps, timers
from engine.events import Event
from engine.runtime import Engine, EngineSettings
from engine.store import Stored, store_events
from engine.versions import Registry, load_registry, register
from journeys.loader import journey_from_text
from journeys.model import Journey

T0 = datetime(2026, 1, 5, 10, 0, tzinfo=UTC)

REMINDER = """
journey: reminder
version: 1
trigger: {on: invoice.overdue}
vars: {invoice: "{{ event.data.invoice_id }}"}
exit: [{on: invoice.paid, to: paid}]
initial: waiting
states:
  waiting:
    enter: [{action: send_sms, with: {body: "Invoice {{ vars.invoice }}"}}]
    on:
      message.delivered: delivered
      note.added: waiting
    after: {1h: reminded}
  delivered: {on: {note.added: delivered}, after: {1d: reminded}}
  reminded: {enter: [{action: send_email, with: {subject: "Reminder", body: "{{ vars.invoice }}"}}], final: true}
  paid: {final: true}
"""


def journey(text: str = REMINDER) -> Journey:
    return journey_from_text(textwrap.dedent(text))


async def deploy(db: Database, *journeys: Journey, now: datetime = T0) -> Registry:
    async with db.write.begin() as conn:
        await register(conn, journeys, now)
        return await load_registry(conn, {j.key: j for j in journeys})


def ev(type: str, contact: str = "c-1", *, id: str | None = None, at: datetime = T0, **fields: Any) -> Event:
    data = fields.pop("data", {})
    return Event(id=id or f"{type}:{contact}:{at.isoformat()}:{sorted(data.items())}", type=type, occurred_at=at,
                 source=fields.pop("source", "app"), contact_id=contact, data=MappingProxyType(data), **fields)


async def put(db: Database, *batch: Event, at: datetime = T0) -> Stored:
    async with db.write.begin() as conn:
        return await store_events(conn, batch, at)


async def add_contacts(db: Database, *ids: str) -> None:
    async with db.write.begin() as conn:
        await conn.execute(contacts.insert(), [
            {"id": i, "phone": None, "email": None, "timezone": None, "locale": None, "attributes": {},
             "created_at": T0, "updated_at": T0} for i in ids])


async def drain(engine: Engine, limit: int = 1000) -> int:
    total = 0
    for _ in range(limit):
        n = await engine.run_once()
        if n == 0:
            return total
        total += n
    raise AssertionError("the engine did not run dry")


def engine_for(db: Database, registry: Registry, worker: str = "w1", now: datetime = T0,
               **settings: Any) -> Engine:
    return Engine(db, registry, worker, EngineSettings(**settings), clock=lambda: now)


async def rows(db: Database, query: Any) -> Sequence[Any]:
    async with db.read.connect() as conn:
        return (await conn.execute(query)).all()


async def count(db: Database, table: Any, *where: Any) -> int:
    async with db.read.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(table).where(*where))).scalar_one())


__all__ = [
    "REMINDER", "T0", "add_contacts", "count", "deploy", "drain", "engine_for", "ev", "events", "instances", "jobs",
    "journey", "put", "rows", "steps", "timers",
]
