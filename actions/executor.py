"""The executor: runs the jobs the engine wrote, with send-time policy, retries and dead letters.

A job is claimed with a lease (a crashed executor's jobs come back), checked (instance
exited, channel suppressed, quiet hours, frequency cap), run with its policy's timeout, and
its outcome written in one transaction together with everything the action changed: the
message record, suppressions, contact attributes, emitted events, the attempt on the
instance's timeline. Out of attempts, or failed for good, it becomes a dead letter and the
instance receives ``action.failed``. The same code serves the embedded loop of ``serve``
and the arq workers.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Any

import httpx
from sqlalchemy import delete, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from actions import registry
from actions.base import ActionContext, ActionError, Outcome
from actions.gate import GATES
from actions.policy import cap_until, quiet_until
from actions.retry import backoff, is_transient
from actions.templates import TemplateStore
from engine.db.database import Database
from engine.db.schema import contacts, instances, jobs, messages, steps, suppressions
from engine.events import Event
from engine.instance import Contact
from engine.loops import repeat
from engine.runtime import aware
from engine.store import store_events
from journeys.build import policy_from_data
from journeys.config import Config
from journeys.model import RetryPolicy

log = logging.getLogger("journeys.actions")


def message_id_for(job_id: str) -> str:
    """Our id of the message a job sends: the same on every attempt of that job."""
    return "msg-" + hashlib.sha256(job_id.encode()).hexdigest()[:24]


def policy_of(raw: Mapping[str, Any]) -> RetryPolicy:
    return policy_from_data("job", dict(raw))


@dataclass(frozen=True)
class ExecutorSettings:
    batch_size: int = 50
    concurrency: int = 20
    idle_sleep: float = 0.05
    # how long a claimed job stays ours: beyond any attempt's timeout; a dead executor's jobs
    # come back after it (and arq re-runs a dead worker's job after its job timeout + 10 s)
    lease: timedelta = timedelta(seconds=120)


@dataclass
class _Verdict:
    status: str  # done | pending | dead | skipped
    detail: str
    next_attempt_at: datetime | None = None
    outcome: Outcome | None = None
    error: str | None = None
    attempt_counted: bool = True


@dataclass
class Executor:
    db: Database
    config: Config
    templates: TemplateStore
    worker_id: str
    settings: ExecutorSettings = field(default_factory=ExecutorSettings)
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    rng: random.Random = field(default_factory=random.Random)
    http: httpx.AsyncClient | None = None

    # -- claiming ----------------------------------------------------------------

    async def claim(self, now: datetime, ids: Sequence[str] | None = None) -> list[Any]:
        """Jobs due now (or exactly *ids*, for a queue worker): pending ones, and running ones
        whose lease ran out (their executor died). Transactional before marketing."""
        async with self.db.write.begin() as conn:
            due = (jobs.c.status == "pending") & (jobs.c.next_attempt_at <= now)
            stale = (jobs.c.status == "running") & (jobs.c.lease_until < now)
            query = select(jobs.c.id).where(due | stale)
            if ids is not None:
                query = query.where(jobs.c.id.in_(list(ids)))
            query = query.order_by((jobs.c.priority == "marketing"), jobs.c.next_attempt_at).limit(
                self.settings.batch_size)
            if conn.dialect.name == "postgresql":
                query = query.with_for_update(skip_locked=True)
            chosen = await _in_order([r.id for r in await conn.execute(query)], conn)
            if not chosen:
                return []
            result = await conn.execute(
                update(jobs).where(jobs.c.id.in_(chosen), due | stale)
                .values(status="running", claimed_by=self.worker_id, updated_at=now,
                        lease_until=now + self.settings.lease)
                .returning(*jobs.c)
            )
            return list(result.all())

    # -- running -----------------------------------------------------------------

    async def run_once(self) -> int:
        now = self.clock()
        claimed = await self.claim(now)
        await self.execute(claimed)
        return len(claimed)

    async def execute(self, claimed: Sequence[Any]) -> None:
        """Run claimed jobs: one instance's jobs in order, different instances at once."""
        by_instance: dict[str, list[Any]] = {}
        for job in sorted(claimed, key=lambda j: _order(j.id)):
            by_instance.setdefault(job.instance_id, []).append(job)
        gate = asyncio.Semaphore(self.settings.concurrency)

        async def lane(lane_jobs: list[Any]) -> None:
            async with gate:
                for job in lane_jobs:
                    await self.run_job(job)

        await asyncio.gather(*(lane(j) for j in by_instance.values()))

    async def run_job(self, job: Any) -> str:
        now = self.clock()
        policy = policy_of(job.retry)
        try:
            verdict = await self._attempt(job, policy, now)
        except Exception as exc:  # a bug in an action must not stop the executor
            log.exception("job %s raised", job.id)
            verdict = self._failure(job, policy, now, ActionError(f"{type(exc).__name__}: {exc}", transient=False))
        await self._write(job, verdict, now)
        return verdict.status

    async def _attempt(self, job: Any, policy: RetryPolicy, now: datetime) -> _Verdict:
        channel = registry.SEND_CHANNELS.get(job.action)
        async with self.db.read.connect() as conn:
            inst = (await conn.execute(select(instances).where(instances.c.id == job.instance_id))).first()
            contact = await _contact(conn, inst.contact_id if inst else None)
            # Only sends need the suppression list, only marketing sends the recent messages.
            suppressed = set() if contact is None or channel is None else {r.channel for r in await conn.execute(
                select(suppressions.c.channel).where(suppressions.c.contact_id == contact.id))}
            sent_at = [] if contact is None or channel is None or job.priority != "marketing" else [
                aware(r.created_at) for r in await conn.execute(
                    select(messages.c.created_at).join(jobs, jobs.c.id == messages.c.job_id)
                    .where(messages.c.contact_id == contact.id, jobs.c.priority == "marketing"))]
        if inst is not None and inst.status == "exited":
            return _Verdict("skipped", "skipped: the instance exited before the action ran", attempt_counted=False)
        if channel is not None:
            if channel in suppressed:
                return _Verdict("skipped", f"blocked: {channel} is suppressed for this contact",
                                attempt_counted=False)
            if job.priority == "marketing":
                pol = self.config.policies
                later = quiet_until(now, pol.quiet_hours, contact.timezone if contact else None,
                                    pol.quiet_hours_timezone) or cap_until(now, sent_at, pol.frequency_cap)
                if later is not None:
                    return _Verdict("pending", f"deferred to {later.isoformat()} (quiet hours or frequency cap)",
                                    next_attempt_at=later, attempt_counted=False)
        action = registry.implementation(job.action)
        ctx = ActionContext(
            job_id=job.id, action=job.action, instance_id=job.instance_id, journey=job.journey,
            attempt=job.attempts + 1, inputs=MappingProxyType(dict(job.inputs)), contact=contact,
            vars=MappingProxyType(dict(inst.vars)) if inst else MappingProxyType({}), config=self.config,
            templates=self.templates, http=self._client(), now=now, timeout=policy.timeout_ms / 1000,
            message_id=message_id_for(job.id),
        )
        if channel is None:
            return await self._run(job, policy, now, action, ctx)
        contact_id = contact.id if contact else None
        async with GATES.sending(contact_id), self._share_lock(contact_id) as conn:
            # Checked again under the gate: an opt-out that committed meanwhile wins.
            if contact_id is not None and await _suppressed(conn, contact_id, channel):
                return _Verdict("skipped", f"blocked: {channel} is suppressed for this contact",
                                attempt_counted=False)
            await self._record_message(job, ctx, channel, contact, now,
                                       conn if self.db.dialect == "postgresql" else None)
            return await self._run(job, policy, now, action, ctx)

    async def _run(self, job: Any, policy: RetryPolicy, now: datetime, action: Any, ctx: ActionContext) -> _Verdict:
        try:
            outcome = await asyncio.wait_for(action.run(ctx), timeout=ctx.timeout)
        except TimeoutError:
            return self._failure(job, policy, now, ActionError(f"timeout after {ctx.timeout:g} s", transient=True))
        except ActionError as exc:
            return self._failure(job, policy, now, exc)
        return _Verdict("done", outcome.detail, outcome=outcome)

    @contextlib.asynccontextmanager
    async def _share_lock(self, contact_id: str | None) -> AsyncIterator[AsyncConnection]:
        """A connection for the check; on PostgreSQL it also holds the contact row FOR SHARE until
        the send is over, so an opt-out in another process waits for it (and the next send for that)."""
        engine = self.db.write if self.db.dialect == "postgresql" else self.db.read
        async with engine.connect() as conn:
            if self.db.dialect == "postgresql" and contact_id is not None:
                async with conn.begin():
                    await conn.execute(select(contacts.c.id).where(contacts.c.id == contact_id)
                                       .with_for_update(read=True))
                    yield conn
            else:
                yield conn

    def _failure(self, job: Any, policy: RetryPolicy, now: datetime, error: ActionError) -> _Verdict:
        attempt = job.attempts + 1
        if is_transient(error, policy) and attempt < policy.max_attempts:
            wait = backoff(policy, attempt, self.rng, error.retry_after)
            return _Verdict("pending", f"attempt {attempt} failed, retry in {wait.total_seconds():.1f} s",
                            next_attempt_at=now + wait, error=error.reason)
        why = "out of attempts" if is_transient(error, policy) else "permanent failure"
        return _Verdict("dead", f"attempt {attempt} failed ({why})", error=error.reason)

    def _client(self) -> httpx.AsyncClient:
        if self.http is None:
            self.http = httpx.AsyncClient(follow_redirects=False)
        return self.http

    async def _record_message(self, job: Any, ctx: ActionContext, channel: str, contact: Contact | None,
                              now: datetime, held: AsyncConnection | None = None) -> None:
        """The message row, written before the provider is called, so its callbacks find it.

        On PostgreSQL it goes through the connection that holds the contact's row lock (one
        connection per send, however many run); it is visible when the send is over, and a
        delivery receipt faster than that waits for it (the engine's bounded message wait).
        """
        settings = self.config.channels.get(channel)
        row = {"id": ctx.message_id, "channel": channel, "provider": settings.provider if settings else "console",
               "status": "queued", "instance_id": job.instance_id, "contact_id": contact.id if contact else None,
               "job_id": job.id, "created_at": now, "updated_at": now}
        if held is not None:
            await held.execute(postgresql.insert(messages).on_conflict_do_nothing(), [row])
            return
        async with self.db.write.begin() as conn:
            insert = postgresql.insert(messages) if conn.dialect.name == "postgresql" else sqlite.insert(messages)
            await conn.execute(insert.on_conflict_do_nothing(), [row])

    # -- writing -----------------------------------------------------------------

    async def _write(self, job: Any, verdict: _Verdict, now: datetime) -> None:
        async with self.db.write.begin() as conn:
            held = await conn.execute(
                update(jobs).where(jobs.c.id == job.id, jobs.c.claimed_by == self.worker_id,
                                   jobs.c.status == "running")
                .values(status=verdict.status, updated_at=now, claimed_by=None, lease_until=None,
                        attempts=jobs.c.attempts + (1 if verdict.attempt_counted else 0),
                        next_attempt_at=verdict.next_attempt_at or job.next_attempt_at,
                        last_error=verdict.error,
                        result=dict(verdict.outcome.result) if verdict.outcome else None)
                .returning(jobs.c.id)
            )
            if held.first() is None:
                return  # our lease ran out and another executor has this job now
            attempt = job.attempts + (1 if verdict.attempt_counted else 0)
            await conn.execute(steps.insert().values(
                instance_id=job.instance_id, at=now, kind="attempt", event_id=None, event_type=None,
                from_state=None, to_state=None,
                detail=f"{job.action} {job.id} attempt {attempt}: {verdict.status}: {verdict.detail}"
                + (f" ({verdict.error})" if verdict.error else "")))
            inst = (await conn.execute(select(instances.c.contact_id).where(instances.c.id == job.instance_id))
                    ).first()
            contact_id = inst.contact_id if inst else None
            if verdict.outcome is not None:
                await self._apply(conn, job, verdict.outcome, contact_id, now)
            if verdict.status == "dead":
                await store_events(conn, [Event(
                    id=f"action-failed:{job.id}", type="action.failed", occurred_at=now, source="engine",
                    provider_event_id=f"action-failed:{job.id}", contact_id=contact_id, received_at=now,
                    data=MappingProxyType({"instance_id": job.instance_id, "action": job.action, "key": job.id,
                                           "error": verdict.error, "attempts": attempt}),
                )], now)

    async def _apply(self, conn: AsyncConnection, job: Any, outcome: Outcome, contact_id: str | None,
                     now: datetime) -> None:
        sent = outcome.sent
        if sent is not None:
            await conn.execute(update(messages).where(messages.c.id == message_id_for(job.id)).values(
                provider=sent.provider, provider_message_id=sent.provider_message_id, to=sent.to, body=sent.body,
                updated_at=now))
        if contact_id is None:
            return
        if outcome.suppress:
            insert = postgresql.insert(suppressions) if conn.dialect.name == "postgresql" else sqlite.insert(
                suppressions)
            await conn.execute(insert.on_conflict_do_nothing(), [
                {"contact_id": contact_id, "channel": c, "reason": f"suppress by {job.journey}", "event_id": None,
                 "created_at": now} for c in outcome.suppress])
        if outcome.unsuppress:
            await conn.execute(delete(suppressions).where(suppressions.c.contact_id == contact_id,
                                                          suppressions.c.channel.in_(list(outcome.unsuppress))))
        if outcome.attributes:
            row = (await conn.execute(select(contacts.c.attributes).where(contacts.c.id == contact_id))).first()
            if row is not None:
                merged = {**(row.attributes or {}), **outcome.attributes}
                await conn.execute(update(contacts).where(contacts.c.id == contact_id).values(
                    attributes=merged, updated_at=now))
        if outcome.emit:
            await store_events(conn, [
                Event(id=f"emit:{job.id}:{n}", type=kind, occurred_at=now, source="emit",
                      provider_event_id=f"emit:{job.id}:{n}", contact_id=contact_id, received_at=now,
                      data=MappingProxyType(dict(data)))
                for n, (kind, data) in enumerate(outcome.emit)], now)

    async def run(self, stop: asyncio.Event) -> None:
        await repeat(self.run_once, stop, idle=self.settings.idle_sleep, log=log, what="executor loop")
        await self.close()

    async def close(self) -> None:
        """Close the HTTP client, if a job opened one."""
        if self.http is not None:
            await self.http.aclose()
            self.http = None


async def _in_order(candidates: list[str], conn: AsyncConnection) -> list[str]:
    """The candidates whose earlier siblings (jobs one instance wrote before them) are finished
    or claimed with them: an instance's jobs run in the order the journey wrote them, through
    any executor, even while an earlier one waits for a retry."""
    if not candidates:
        return []
    instance_ids = {_order(c)[0] for c in candidates}
    unfinished = [r.id for r in await conn.execute(
        select(jobs.c.id).where(jobs.c.instance_id.in_(instance_ids), jobs.c.status.in_(["pending", "running"])))]
    chosen = set(candidates)
    blocked: set[str] = set()
    for job_id in sorted(unfinished, key=_order):
        instance = _order(job_id)[0]
        if instance in blocked:
            chosen.discard(job_id)
        elif job_id not in chosen:
            blocked.add(instance)  # an earlier job of it is not ours to run now
    return [c for c in candidates if c in chosen]


def _order(job_id: str) -> tuple[str, int, int]:
    instance, entry, index = job_id.rsplit(":", 2)
    return instance, int(entry), int(index)


async def _suppressed(conn: AsyncConnection, contact_id: str, channel: str) -> bool:
    row = (await conn.execute(select(suppressions.c.channel).where(
        suppressions.c.contact_id == contact_id, suppressions.c.channel == channel))).first()
    return row is not None


async def _contact(conn: AsyncConnection, contact_id: str | None) -> Contact | None:
    if contact_id is None:
        return None
    row = (await conn.execute(select(contacts).where(contacts.c.id == contact_id))).first()
    if row is None:
        return None
    return Contact(row.id, row.phone, row.email, row.timezone, row.locale, MappingProxyType(dict(row.attributes or {})))


async def dead_letters(db: Database, limit: int = 100) -> list[Any]:
    async with db.read.connect() as conn:
        return list((await conn.execute(select(jobs).where(jobs.c.status == "dead")
                                         .order_by(jobs.c.updated_at.desc()).limit(limit))).all())


async def retry_dead(db: Database, job_id: str, now: datetime | None = None) -> bool:
    """Give a dead letter a new set of attempts, now. False when there is no such dead letter."""
    when = now or datetime.now(UTC)
    async with db.write.begin() as conn:
        result = await conn.execute(update(jobs).where(jobs.c.id == job_id, jobs.c.status == "dead").values(
            status="pending", attempts=0, next_attempt_at=when, updated_at=when, last_error=None).returning(jobs.c.id))
        return result.first() is not None


async def discard_dead(db: Database, job_id: str, now: datetime | None = None) -> bool:
    when = now or datetime.now(UTC)
    async with db.write.begin() as conn:
        result = await conn.execute(update(jobs).where(jobs.c.id == job_id, jobs.c.status == "dead").values(
            status="discarded", updated_at=when).returning(jobs.c.id))
        return result.first() is not None


__all__ = ["Executor", "ExecutorSettings", "dead_letters", "discard_dead", "message_id_for", "retry_dead"]
