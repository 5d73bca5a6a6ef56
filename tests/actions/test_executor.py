"""The executor on SQLite and PostgreSQL: jobs done once, checks at send time, retries, dead letters."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
from sqlalchemy import select, update

from actions.executor import Executor, ExecutorSettings, dead_letters, discard_dead, message_id_for, retry_dead
from actions.templates import TemplateStore
from engine.db.database import Database
from engine.db.schema import contacts, events, instances, jobs, messages, steps, suppressions
from journeys.config import Config, Policies
from tests.engine.runtime_helpers import T0, deploy, drain, engine_for, ev, journey, put, rows

pytestmark = pytest.mark.anyio

STATEFUL = """
journey: welcome
version: 1
trigger: {on: user.signed_up}
exit: [{on: user.deleted}]
initial: hello
states:
  hello:
    enter:
      - action: send_sms
        with: {body: "Welcome {{ contact.id }}"}
      - action: set_contact
        with: {attributes: {welcomed: true}}
      - action: suppress
        with: {channels: [email], reason: "sms only"}
      - action: emit
        with: {type: app.welcomed, data: {who: "{{ contact.id }}"}}
    after: {1d: done}
  done: {final: true}
"""


def config(**policies: Any) -> Config:
    return Config(MappingProxyType({}), MappingProxyType({}), Policies(**policies))


def executor(db: Database, tmp_path: Path, now: Any = T0, **policies: Any) -> Executor:
    return Executor(db, config(**policies), TemplateStore(tmp_path), "x1", ExecutorSettings(),
                    clock=lambda: now, rng=random.Random(3))


async def started(db: Database, text: str = STATEFUL, contact: str = "c-1", **kw: Any) -> None:
    registry = await deploy(db, journey(text))
    async with db.write.begin() as conn:
        await conn.execute(contacts.insert().values(id=contact, phone="+4915112345678", email="a@example.com",
                                                    timezone=kw.get("timezone"), locale=None, attributes={"a": 1},
                                                    created_at=T0, updated_at=T0))
    await put(db, ev("user.signed_up", contact))
    await drain(engine_for(db, registry))


async def test_jobs_run_once_with_their_effects(db: Database, tmp_path: Path, capsys: Any) -> None:
    await started(db)
    run = executor(db, tmp_path)
    assert await run.run_once() == 4
    assert await run.run_once() == 0  # done jobs are never run again
    statuses = {r.action: r.status for r in await rows(db, select(jobs.c.action, jobs.c.status))}
    assert statuses == {"send_sms": "done", "set_contact": "done", "suppress": "done", "emit": "done"}
    [job] = await rows(db, select(jobs.c.id).where(jobs.c.action == "send_sms"))
    [msg] = await rows(db, select(messages))
    assert (msg.id, msg.channel, msg.provider, msg.provider_message_id, msg.to) == (
        message_id_for(job.id), "sms", "console", message_id_for(job.id), "+4915112345678")
    assert msg.body is None  # bodies are kept only with policies.store_message_bodies
    assert "[console] sms to +4915112345678" in capsys.readouterr().out
    [contact] = await rows(db, select(contacts.c.attributes))
    assert contact.attributes == {"a": 1, "welcomed": True}
    assert [r.channel for r in await rows(db, select(suppressions.c.channel))] == ["email"]
    [emitted] = await rows(db, select(events).where(events.c.type == "app.welcomed"))
    assert (emitted.contact_id, emitted.data) == ("c-1", {"who": "c-1"})
    attempts = [r.detail for r in await rows(db, select(steps.c.detail).where(steps.c.kind == "attempt"))]
    assert len(attempts) == 4 and all(": done:" in a for a in attempts)


async def test_a_suppressed_channel_blocks_the_send(db: Database, tmp_path: Path) -> None:
    await started(db)
    async with db.write.begin() as conn:
        await conn.execute(suppressions.insert().values(contact_id="c-1", channel="sms", reason="STOP",
                                                        event_id=None, created_at=T0))
    await executor(db, tmp_path).run_once()
    [job] = await rows(db, select(jobs).where(jobs.c.action == "send_sms"))
    assert (job.status, job.attempts) == ("skipped", 0)
    assert await rows(db, select(messages)) == []
    [step] = await rows(db, select(steps.c.detail).where(steps.c.detail.like("%send_sms%")))
    assert "blocked: sms is suppressed" in step.detail


async def test_jobs_of_an_exited_instance_are_skipped(db: Database, tmp_path: Path) -> None:
    await started(db)
    async with db.write.begin() as conn:
        await conn.execute(update(instances).values(status="exited"))
    await executor(db, tmp_path).run_once()
    assert {r.status for r in await rows(db, select(jobs.c.status))} == {"skipped"}


async def test_marketing_sends_wait_for_the_end_of_quiet_hours(db: Database, tmp_path: Path) -> None:
    await started(db, STATEFUL.replace("version: 1", "version: 1\npriority: marketing"),
                 timezone="America/New_York")
    late = T0 + timedelta(hours=17)  # 03:00 UTC = 22:00 in New York, quiet until 08:00 there (13:00 UTC)
    await executor(db, tmp_path, now=late, quiet_hours=("21:00", "08:00")).run_once()
    [job] = await rows(db, select(jobs).where(jobs.c.action == "send_sms"))
    assert job.status == "pending" and job.attempts == 0
    assert job.next_attempt_at.replace(tzinfo=None) == (T0 + timedelta(days=1, hours=3)).replace(tzinfo=None)
    # the other actions are not sends: they ran
    assert {r.status for r in await rows(db, select(jobs.c.status).where(jobs.c.action != "send_sms"))} == {"done"}


async def test_a_permanent_failure_is_a_dead_letter_and_an_action_failed_event(db: Database, tmp_path: Path
                                                                            ) -> None:
    # a recipient that cannot be a phone number: permanent, no retry
    await started(db, STATEFUL.replace('with: {body: "Welcome {{ contact.id }}"}',
                                       'with: {body: "Welcome", to: "not a number"}'))
    await executor(db, tmp_path).run_once()
    [dead] = await dead_letters(db)
    assert (dead.action, dead.attempts) == ("send_sms", 1)
    assert "not a number" in dead.last_error
    [failed] = await rows(db, select(events).where(events.c.type == "action.failed"))
    assert failed.data["key"] == dead.id and failed.contact_id == "c-1"
    # retried: a new set of attempts; discarded: gone from the list
    assert await retry_dead(db, dead.id, now=T0)
    assert not await retry_dead(db, dead.id, now=T0)
    await executor(db, tmp_path).run_once()
    [again] = await dead_letters(db)
    assert await discard_dead(db, again.id)
    assert await dead_letters(db) == []


async def test_a_crashed_executors_job_comes_back_after_its_lease(db: Database, tmp_path: Path) -> None:
    await started(db)
    crashed = executor(db, tmp_path)
    claimed = await crashed.claim(T0)
    assert len(claimed) == 4  # ... and the process dies before running them
    assert await executor(db, tmp_path, now=T0 + timedelta(seconds=5)).run_once() == 0
    # no heartbeat renews the claim: it is free again well within 15 s
    later = executor(db, tmp_path, now=T0 + timedelta(seconds=10))
    assert await later.run_once() == 4
    assert {r.status for r in await rows(db, select(jobs.c.status))} == {"done"}
    # the crashed one cannot write over the successor's outcome
    await crashed.run_job(claimed[0])
    assert len(await rows(db, select(messages))) == 1


HOOK = """
journey: hook
version: 1
trigger: {{on: order.paid}}
initial: notify
states:
  notify:
    enter:
      - action: http
        with: {{url: "{url}", json: {{order: 1}}}}
        retry: {{max_attempts: 1, timeout: 5s}}
    final: true
"""


async def test_a_job_longer_than_its_lease_stays_with_its_live_executor(
        db: Database, tmp_path: Path, key_receiver: Any) -> None:
    """The receiver holds the call 2 s; the lease is 0.6 s. The heartbeat renews it while the call
    runs, so a second executor looking all the while never takes the job: it runs once, at once."""
    key_receiver.hold = 2.0
    registry = await deploy(db, journey(HOOK.format(url=key_receiver.url)))
    await put(db, ev("order.paid", "c-1"))
    await drain(engine_for(db, registry))
    allow = Config(MappingProxyType({}), MappingProxyType({}), Policies(http_allow_networks=("127.0.0.0/8",)))
    short = ExecutorSettings(lease=timedelta(seconds=0.6))
    live = Executor(db, allow, TemplateStore(tmp_path), "live", short)
    other = Executor(db, allow, TemplateStore(tmp_path), "other", short)
    running = asyncio.create_task(live.run_once())
    assert await asyncio.to_thread(key_receiver.holding.wait, 10)  # the live one claimed it and called
    taken = 0
    while not running.done():
        taken += len(await other.claim(datetime.now(UTC)))
        await asyncio.sleep(0.1)
    assert await running == 1
    await live.close()
    assert taken == 0
    [job] = await rows(db, select(jobs))
    assert (job.status, job.attempts, job.claimed_by) == ("done", 1, None)
    assert key_receiver.keys == [job.id]
