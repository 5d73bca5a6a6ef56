"""The durable runtime on SQLite and PostgreSQL: stored once, atomic, in order per partition, poison quarantined,
timers across restarts, version pinning, waiting for messages, quarantine."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from engine import timers as timer_loop
from engine.db.database import Database
from engine.db.schema import messages
from engine.runtime import Engine, EngineSettings
from engine.versions import VersionConflictError, load_registry, register
from tests.engine.runtime_helpers import (
    REMINDER,
    T0,
    count,
    deploy,
    drain,
    engine_for,
    ev,
    events,
    instances,
    jobs,
    journey,
    put,
    rows,
    steps,
    timers,
)

pytestmark = pytest.mark.anyio


async def test_an_event_starts_an_instance_with_jobs_and_timers(db: Database) -> None:
    registry = await deploy(db, journey())
    await put(db, ev("invoice.overdue", data={"invoice_id": "INV-1"}))
    assert await drain(engine_for(db, registry)) == 1
    [inst] = await rows(db, select(instances))
    assert (inst.journey, inst.state, inst.status, inst.contact_id) == ("reminder", "waiting", "active", "c-1")
    assert inst.vars == {"invoice": "INV-1"}
    [job] = await rows(db, select(jobs))
    assert (job.action, job.status, job.inputs) == ("send_sms", "pending", {"body": "Invoice INV-1"})
    assert job.id == f"{inst.id}:1:0"
    [timer] = await rows(db, select(timers))
    assert (timer.status, timer.delay) == ("pending", "1h")
    [event] = await rows(db, select(events))
    assert event.status == "done" and "started" in event.outcome
    assert event.claimed_by is None


async def test_invariant_2_stored_and_processed_once(db: Database) -> None:
    registry = await deploy(db, journey())
    first = await put(db, ev("invoice.overdue", id="x", provider_event_id="p1", data={"invoice_id": "I"}))
    again = await put(db, ev("invoice.overdue", id="y", provider_event_id="p1", data={"invoice_id": "I"}),
                      ev("invoice.overdue", id="z", provider_event_id="p1", data={"invoice_id": "I"}))
    assert first.inserted == ["x"] and again.inserted == [] and len(again.duplicates) == 2
    # concurrent requests with the same event: one row, all repeats counted
    await asyncio.gather(*(put(db, ev("misc.ping", id=f"n{i}", provider_event_id="p2")) for i in range(5)))
    assert await count(db, events) == 2
    [dup] = await rows(db, select(events.c.duplicates).where(events.c.provider_event_id == "p1"))
    assert dup.duplicates == 2
    [dup] = await rows(db, select(events.c.duplicates).where(events.c.provider_event_id == "p2"))
    assert dup.duplicates == 4
    await drain(engine_for(db, registry))
    assert await count(db, instances) == 1 and await count(db, jobs) == 1


class FailingFlush(Engine):
    """Our own engine with its final write made to fail after everything else was written."""

    def _flush(self, conn: Any, batch: Any, now: Any) -> None:
        super()._flush(conn, batch, now)
        raise RuntimeError("crash after the writes, before the commit")


async def test_invariant_3_processing_is_atomic(db: Database) -> None:
    registry = await deploy(db, journey())
    await put(db, ev("invoice.overdue", data={"invoice_id": "INV-1"}))
    broken = FailingFlush(db, registry, "w1", clock=lambda: T0)
    rows_ = await broken.claim(T0)
    with pytest.raises(RuntimeError, match="crash after the writes"):
        await broken._process(rows_, T0)
    # nothing of the decision is visible: no instance, step, job or timer; the event is still pending
    for table in (instances, steps, jobs, timers):
        assert await count(db, table) == 0, table.name
    [event] = await rows(db, select(events))
    assert event.status == "pending"
    # a healthy engine picks it up once the lease is gone, and does it all, once
    later = engine_for(db, registry, "w2", now=T0 + timedelta(minutes=1))
    assert await drain(later) == 1
    assert (await count(db, instances), await count(db, jobs), await count(db, timers)) == (1, 1, 1)


class PoisonEngine(Engine):
    def _apply(self, batch: Any, row: Any, now: Any, event: Any = None) -> None:
        if row.id == "poison":
            raise ValueError("a payload nobody expected")
        super()._apply(batch, row, now, event)


async def test_invariant_8_poison_event_is_quarantined(db: Database) -> None:
    registry = await deploy(db, journey())
    await put(db, ev("invoice.overdue", "c-1", data={"invoice_id": "1"}),
              ev("invoice.overdue", "c-2", id="poison", data={"invoice_id": "2"}),
              ev("invoice.overdue", "c-3", data={"invoice_id": "3"}))
    assert await drain(PoisonEngine(db, registry, "w1", clock=lambda: T0)) == 3
    statuses = dict((r.id, (r.status, r.error)) for r in await rows(db, select(events.c.id, events.c.status,
                                                                               events.c.error)))
    assert statuses["poison"][0] == "quarantined"
    assert "ValueError: a payload nobody expected" in statuses["poison"][1]
    assert sorted(s for s, _ in statuses.values()) == ["done", "done", "quarantined"]
    assert await count(db, instances) == 2


async def test_events_of_one_contact_apply_in_arrival_order(db: Database) -> None:
    registry = await deploy(db, journey())
    await put(db, ev("invoice.overdue", data={"invoice_id": "1"}))
    await put(db, ev("note.added", id="n1"), ev("note.added", id="n2"), ev("invoice.paid"))
    await drain(engine_for(db, registry, batch_size=2))
    order = [r.event_id for r in await rows(db, select(steps.c.event_id).order_by(steps.c.id))]
    assert order[1:] == ["n1", "n2", "invoice.paid:c-1:2026-01-05T10:00:00+00:00:[]",
                         "invoice.paid:c-1:2026-01-05T10:00:00+00:00:[]"]
    [inst] = await rows(db, select(instances))
    assert (inst.state, inst.status) == ("paid", "completed")


async def test_timers_fire_after_a_restart(db: Database) -> None:
    registry = await deploy(db, journey())
    await put(db, ev("invoice.overdue", data={"invoice_id": "1"}))
    await drain(engine_for(db, registry))
    # a new process: fresh registry from the database, a clock an hour later
    async with db.write.begin() as conn:
        fresh = await load_registry(conn)
    later = T0 + timedelta(hours=1, seconds=1)
    assert await timer_loop.fire_due(db, later) == 1
    assert await timer_loop.fire_due(db, later) == 0  # fired once, however often asked
    await drain(engine_for(db, fresh, "w2", now=later))
    [inst] = await rows(db, select(instances))
    assert (inst.state, inst.status) == ("reminded", "completed")
    assert sorted(j.action for j in await rows(db, select(jobs.c.action))) == ["send_email", "send_sms"]


async def test_a_timer_of_a_state_left_is_cancelled_and_a_stale_firing_ignored(db: Database) -> None:
    registry = await deploy(db, journey())
    await put(db, ev("invoice.overdue", data={"invoice_id": "1"}))
    await drain(engine_for(db, registry))
    await put(db, ev("message.delivered", at=T0 + timedelta(minutes=5)))
    await drain(engine_for(db, registry, now=T0 + timedelta(minutes=5)))
    states = {r.delay: r.status for r in await rows(db, select(timers))}
    assert states == {"1h": "cancelled", "1d": "pending"}
    assert await timer_loop.fire_due(db, T0 + timedelta(hours=2)) == 0


async def test_version_pinning(db: Database) -> None:
    v1 = journey()
    registry = await deploy(db, v1)
    await put(db, ev("invoice.overdue", "c-1", data={"invoice_id": "1"}))
    await drain(engine_for(db, registry))
    v2 = journey(REMINDER_V2)
    registry = await deploy(db, v1, v2)
    await put(db, ev("invoice.overdue", "c-2", data={"invoice_id": "2"}),
              ev("message.delivered", "c-1"), ev("message.delivered", "c-2"))
    await drain(engine_for(db, registry))
    by_contact = {r.contact_id: (r.version, r.state) for r in await rows(db, select(instances))}
    # c-1 keeps version 1 (delivered -> delivered); c-2 started on version 2 (delivered -> thanked)
    assert by_contact == {"c-1": (1, "delivered"), "c-2": (2, "thanked")}
    changed = journey(REMINDER.replace("after: {1h: reminded}", "after: {2h: reminded}"))
    async with db.write.begin() as conn:
        with pytest.raises(VersionConflictError, match="version 1 changed since it was deployed"):
            await register(conn, [changed], T0)


REMINDER_V2 = """
journey: reminder
version: 2
trigger: {on: invoice.overdue}
initial: waiting
states:
  waiting: {on: {message.delivered: thanked}, after: {1h: thanked}}
  thanked: {final: true}
"""


async def test_a_status_waits_for_its_message_then_goes_on(db: Database) -> None:
    registry = await deploy(db, journey())
    await put(db, ev("invoice.overdue", data={"invoice_id": "1"}))
    await drain(engine_for(db, registry))
    [inst] = await rows(db, select(instances))
    # the provider's callback arrives before our send recorded the message
    await put(db, ev("message.delivered", id="early", message_id="m-1"), ev("note.added", id="after-it"))
    await drain(engine_for(db, registry))
    waiting = {r.id: r.status for r in await rows(db, select(events.c.id, events.c.status))}
    assert waiting["early"] == "pending" and waiting["after-it"] == "pending"  # the partition waits in order
    async with db.write.begin() as conn:
        await conn.execute(messages.insert().values(id="m-1", channel="sms", provider="twilio", status="sent",
                                                    instance_id=inst.id, contact_id="c-1", created_at=T0,
                                                    updated_at=T0))
    await drain(engine_for(db, registry, now=T0 + timedelta(seconds=2)))
    [inst] = await rows(db, select(instances))
    assert inst.state == "delivered"
    [msg] = await rows(db, select(messages))
    assert msg.status == "delivered"


async def test_a_status_for_an_unknown_message_is_bounded(db: Database) -> None:
    registry = await deploy(db, journey())
    await put(db, ev("message.delivered", id="orphan", message_id="m-404"))
    await drain(engine_for(db, registry))
    await drain(engine_for(db, registry, now=T0 + timedelta(seconds=31)))
    [event] = await rows(db, select(events.c.status, events.c.outcome))
    assert event.status == "done"


async def test_a_crashed_claim_comes_back_after_its_lease(db: Database) -> None:
    registry = await deploy(db, journey())
    await put(db, ev("invoice.overdue", data={"invoice_id": "1"}))
    crashed = engine_for(db, registry, "dead")
    assert len(await crashed.claim(T0)) == 1  # ... and the process dies here
    assert await drain(engine_for(db, registry, "w2", now=T0 + timedelta(seconds=5))) == 0
    assert await drain(engine_for(db, registry, "w2", now=T0 + timedelta(seconds=31))) == 1
    assert await count(db, instances) == 1


async def test_clean_shutdown_releases_claims(db: Database) -> None:
    registry = await deploy(db, journey())
    await put(db, ev("invoice.overdue", data={"invoice_id": "1"}))
    engine = engine_for(db, registry)
    await engine.claim(T0)
    assert await engine.release() == 1
    assert await drain(engine_for(db, registry, "w2")) == 1


async def test_reply_text_is_kept_only_when_configured(db: Database) -> None:
    guarded = "note.added:\n        - when: \"'x' in event.text\"\n          to: waiting"
    chatty = journey(REMINDER.replace("note.added: waiting", guarded))
    registry = await deploy(db, chatty)
    await put(db, ev("invoice.overdue", data={"invoice_id": "1"}), ev("note.added", id="n1", text="x marks"))
    await drain(engine_for(db, registry))
    [note] = await rows(db, select(events.c.text, events.c.status).where(events.c.id == "n1"))
    assert note == (None, "done")  # the guard saw the text; the log did not keep it
    [inst] = await rows(db, select(instances.c.seq))
    assert inst.seq == 2  # the guard held: the text was there when the journey ran
    await put(db, ev("note.added", id="n2", text="x again"))
    await drain(engine_for(db, registry, keep_bodies=True))
    [kept] = await rows(db, select(events.c.text).where(events.c.id == "n2"))
    assert kept.text == "x again"


async def test_a_batch_longer_than_its_lease_stays_with_its_live_engine(db: Database) -> None:
    """A batch that takes longer than the lease (here 1.5 s against 0.6 s) is renewed by the
    heartbeat: another engine looking all the while takes nothing, and every event is applied once."""
    registry = await deploy(db, journey())
    now = datetime.now(UTC)
    await put(db, *[ev("invoice.overdue", f"c-{n}", at=now, data={"invoice_id": f"I-{n}"}) for n in range(5)],
              at=now)
    settings = EngineSettings(lease=timedelta(seconds=0.6))
    slow = Engine(db, registry, "slow", settings)
    holding = asyncio.Event()

    async def stall(_rows: Any) -> None:
        holding.set()
        await asyncio.sleep(1.5)

    slow.on_claim = stall
    other = Engine(db, registry, "other", settings)
    running = asyncio.create_task(slow.run_once())
    await holding.wait()
    taken = 0
    while not running.done():
        taken += await other.run_once()
        await asyncio.sleep(0.1)
    assert await running == 5
    assert taken == 0
    assert await count(db, instances) == 5
    assert await count(db, jobs) == 5
