"""The executor: runs the jobs the engine wrote, with send-time policy, retries and dead letters.

Jobs are claimed in batches with a lease, which a heartbeat keeps renewing while they run
(a dead executor's jobs come back within seconds, and a long job is never taken from a
live one). For a batch, what the checks need (instances, contacts, suppressions, recent
marketing sends) is read at once (:mod:`actions.scene`), the message rows of its sends are
written at once, and its jobs run concurrently: one lane per contact (else per instance),
each lane's jobs one after the other in the order the journey wrote them. Outcomes go to
a group commit (:mod:`actions.outcomes`). While there are free slots the loop claims the
next batch: a slow job holds its own slot, not the executor.

Sends and opt-outs on one contact are kept apart (invariant 7): a send holds its contact's
gate (:mod:`actions.gate`, in this process), lock byte (:mod:`engine.db.sendlocks`,
other processes on SQLite) or row ``FOR SHARE`` (other processes on PostgreSQL) from the
suppression check until the provider answered. On SQLite the batch's send contacts are
locked before their suppressions are read; on PostgreSQL each lane takes its row lock and
reads them again under it.

The same code serves the embedded loop of ``serve`` (:meth:`Executor.run`) and the arq
workers (:meth:`Executor.claim` with ids, then :meth:`Executor.execute`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Any

import httpx
from sqlalchemy import select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from actions import registry
from actions.base import ActionContext, ActionError
from actions.gate import GATES
from actions.outcomes import DEAD, DONE, PENDING, SKIPPED, Finished, OutcomeWriter, Verdict
from actions.policy import cap_until, quiet_until
from actions.retry import backoff, is_transient
from actions.scene import Scene, load_scene, read_suppressions
from actions.templates import TemplateStore
from engine.db.database import Database
from engine.db.schema import contacts, jobs, messages
from engine.db.sendlocks import SendLocks, lock_order
from engine.loops import Waker, heartbeat
from journeys.build import policy_from_data
from journeys.config import Config
from journeys.model import RetryPolicy

log = logging.getLogger("journeys.actions")
_Stack = contextlib.AsyncExitStack


def message_id_for(job_id: str) -> str:
    """Our id of the message a job sends: the same on every attempt of that job."""
    return "msg-" + hashlib.sha256(job_id.encode()).hexdigest()[:24]


def policy_of(raw: Mapping[str, Any]) -> RetryPolicy:
    return policy_from_data("job", dict(raw))


@dataclass(frozen=True)
class ExecutorSettings:
    batch_size: int = 100
    concurrency: int = 100  # jobs running at once in this process
    idle_sleep: float = 0.25  # without a wake-up: how often to look for due jobs anyway (retries, other writers)
    # How long a claimed job stays ours without a heartbeat: a dead executor's jobs come
    # back after it. The heartbeat renews it every third of it while the job runs.
    lease: timedelta = timedelta(seconds=9)


ROW_LOCK_CONNECTIONS = 10  # below the pool's size (database.connect: 10, and 20 more on demand)


class Executor:
    def __init__(self, db: Database, config: Config, templates: TemplateStore, worker_id: str,
                 settings: ExecutorSettings | None = None,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC),
                 rng: random.Random | None = None, http: httpx.AsyncClient | None = None,
                 locks: SendLocks | None = None, written: Callable[[], None] | None = None) -> None:
        self.db = db
        self.config = config
        self.templates = templates
        self.worker_id = worker_id
        self.settings = settings or ExecutorSettings()
        self.clock = clock
        self.rng = rng or random.Random()
        self.http = http
        self.locks = locks or (SendLocks.for_sqlite_file(db.url.database or "") if db.is_sqlite else SendLocks.none())
        self.outcomes = OutcomeWriter(db, worker_id, written)
        self.waker = Waker()
        self._held: set[str] = set()  # claimed and not yet written: what the heartbeat renews
        # PostgreSQL: a send holds a pooled connection (its contact's row lock) while the provider
        # answers; at most this many at once, so the others wait here, not for the pool's timeout
        self._row_locks = asyncio.Semaphore(ROW_LOCK_CONNECTIONS)

    def wake(self) -> None:
        """New jobs may be due (the engine wrote some): look now rather than at the next poll."""
        self.waker.wake()

    # -- claiming ----------------------------------------------------------------

    async def claim(self, now: datetime, ids: Sequence[str] | None = None, limit: int | None = None) -> list[Any]:
        """Jobs due now (or exactly *ids*, for a queue worker): pending ones, and running ones
        whose lease ran out (their executor died). Transactional before marketing."""
        due = (jobs.c.status == "pending") & (jobs.c.next_attempt_at <= now)
        stale = (jobs.c.status == "running") & (jobs.c.lease_until < now)
        # A look without the write lock first (see Engine.claim).
        query = select(jobs.c.id).where(due | stale)
        if ids is not None:
            query = query.where(jobs.c.id.in_(list(ids)))
        if not await self.db.reading(_any, query):
            return []
        claimed = await self.db.transaction(self._claim, now, ids, limit or self.settings.batch_size)
        self._held.update(j.id for j in claimed)
        return claimed

    def _claim(self, conn: Connection, now: datetime, ids: Sequence[str] | None, limit: int) -> list[Any]:
        due = (jobs.c.status == "pending") & (jobs.c.next_attempt_at <= now)
        stale = (jobs.c.status == "running") & (jobs.c.lease_until < now)
        query = select(jobs.c.id).where(due | stale)
        if ids is not None:
            query = query.where(jobs.c.id.in_(list(ids)))
        query = query.order_by((jobs.c.priority == "marketing"), jobs.c.next_attempt_at).limit(limit)
        if conn.dialect.name == "postgresql":
            query = query.with_for_update(skip_locked=True)
        chosen = in_order([r.id for r in conn.execute(query)], conn)
        if not chosen:
            return []
        result = conn.execute(
            update(jobs).where(jobs.c.id.in_(chosen), due | stale)
            .values(status="running", claimed_by=self.worker_id, updated_at=now,
                    lease_until=now + self.settings.lease)
            .returning(*jobs.c)
        )
        return list(result.all())

    async def _renew(self) -> None:
        """The heartbeat: our claims stay ours while we live."""
        if not self._held:
            return
        await self.db.transaction(_renew, sorted(self._held), self.worker_id, self.clock() + self.settings.lease)

    # -- running -----------------------------------------------------------------

    async def run_once(self) -> int:
        claimed = await self.claim(self.clock())
        await self.execute(claimed)
        return len(claimed)

    async def run_job(self, job: Any) -> str:
        """Run one claimed job alone; returns its status."""
        statuses = await self.execute([job])
        return statuses.get(job.id, "lost")

    async def execute(self, claimed: Sequence[Any]) -> dict[str, str]:
        """Run claimed jobs and write their outcomes; returns each job's new status."""
        if not claimed:
            return {}
        statuses: dict[str, str] = {}
        try:
            async with heartbeat(self._renew, self.settings.lease.total_seconds() / 3, log):
                scene = await self.db.reading(load_scene, claimed)
                lanes: dict[str, list[Any]] = {}
                for job in sorted(claimed, key=lambda j: _order(j.id)):
                    lanes.setdefault(scene.contact_id_of(job) or job.instance_id, []).append(job)
                async with self._locked(scene, claimed) as gates:
                    await self._record_messages(scene, claimed, self.clock())
                    await asyncio.gather(*(self._lane(lane, scene, gates, statuses) for lane in lanes.values()))
        finally:
            self._held.difference_update(j.id for j in claimed)
        return statuses

    @contextlib.asynccontextmanager
    async def _locked(self, scene: Scene, claimed: Sequence[Any]) -> AsyncIterator[dict[str, _Stack]]:
        """The gates (and, on SQLite, lock bytes) of the batch's send contacts, held shared; each
        lane lets go of its own when it is done. Suppressions read under them are current."""
        senders = lock_order(c for job in claimed if job.action in registry.SEND_CHANNELS
                             and (c := scene.contact_id_of(job)))
        gates: dict[str, _Stack] = {}
        try:
            for contact_id in senders:  # one order everywhere: no deadlock with an opt-out
                stack = contextlib.AsyncExitStack()
                gates[contact_id] = stack
                await stack.enter_async_context(GATES.sending(contact_id))
                await stack.enter_async_context(self.locks.sending(contact_id))
            if senders and self.db.is_sqlite:
                await self.db.reading(read_suppressions, scene, senders)
            yield gates
        finally:
            for stack in gates.values():
                await stack.aclose()

    async def _lane(self, lane: list[Any], scene: Scene, gates: dict[str, _Stack],
                    statuses: dict[str, str]) -> None:
        contact_id = scene.contact_id_of(lane[0])
        try:
            for n, job in enumerate(lane):
                if n:  # what the lane's earlier jobs changed (attributes, suppressions) counts for this one
                    scene = await self.db.reading(load_scene, [job])
                now = self.clock()
                policy = policy_of(job.retry)
                try:
                    verdict = await self._attempt(job, policy, scene, now, first=n == 0)
                except Exception as exc:  # a bug in an action must not stop the executor
                    log.exception("job %s raised", job.id)
                    verdict = self._failure(job, policy, now,
                                            ActionError(f"{type(exc).__name__}: {exc}", transient=False))
                finished = Finished(job, verdict, scene.contact_id_of(job), now, message_id_for(job.id))
                try:
                    written = await self.outcomes.write(finished)
                except Exception:
                    log.exception("the outcome of job %s was not written; it runs again when its claim ends", job.id)
                    return
                statuses[job.id] = verdict.status if written else "lost"
        finally:
            gate = gates.pop(contact_id, None) if contact_id else None
            if gate is not None:
                await gate.aclose()

    def _check(self, job: Any, scene: Scene, now: datetime) -> Verdict | None:
        """The send-time checks that need no call: a verdict when the job must not run now."""
        owner = scene.owners.get(job.instance_id)
        if owner is not None and owner.status == "exited":
            return Verdict(SKIPPED, "skipped: the instance exited before the action ran", attempt_counted=False)
        channel = registry.SEND_CHANNELS.get(job.action)
        if channel is None:
            return None
        contact_id = scene.contact_id_of(job)
        if contact_id is not None and channel in scene.suppressed.get(contact_id, ()):
            return Verdict(SKIPPED, f"blocked: {channel} is suppressed for this contact", attempt_counted=False)
        if job.priority == "marketing":
            contact = scene.contact_of(job)
            pol = self.config.policies
            later = quiet_until(now, pol.quiet_hours, contact.timezone if contact else None,
                                pol.quiet_hours_timezone) or cap_until(
                now, scene.marketing_sent.get(contact_id or "", []), pol.frequency_cap)
            if later is not None:
                return Verdict(PENDING, f"deferred to {later.isoformat()} (quiet hours or frequency cap)",
                               next_attempt_at=later, attempt_counted=False)
        return None

    async def _attempt(self, job: Any, policy: RetryPolicy, scene: Scene, now: datetime, *, first: bool) -> Verdict:
        checked = self._check(job, scene, now)
        if checked is not None:
            return checked
        contact = scene.contact_of(job)
        owner = scene.owners.get(job.instance_id)
        action = registry.implementation(job.action)
        ctx = ActionContext(
            job_id=job.id, action=job.action, instance_id=job.instance_id, journey=job.journey,
            attempt=job.attempts + 1, inputs=MappingProxyType(dict(job.inputs)), contact=contact,
            vars=owner.vars if owner else MappingProxyType({}), config=self.config,
            templates=self.templates, http=self._client(), now=now, timeout=policy.timeout_ms / 1000,
            message_id=message_id_for(job.id),
        )
        channel = registry.SEND_CHANNELS.get(job.action)
        if channel is None:
            return await self._run(job, policy, now, action, ctx)
        if not first:  # a later job of its lane: its message row was not written with the batch's
            await self._record_messages(scene, [job], now)
        if self.db.dialect != "postgresql" or contact is None:
            return await self._run(job, policy, now, action, ctx)
        # Another process's opt-out takes the row FOR UPDATE: hold it FOR SHARE until the
        # provider answered, and read the suppressions again under it.
        async with self._row_locks, self.db.write.connect() as conn, conn.begin():
            await conn.execute(select(contacts.c.id).where(contacts.c.id == contact.id).with_for_update(read=True))
            await conn.run_sync(read_suppressions, scene, [contact.id])
            if channel in scene.suppressed.get(contact.id, ()):
                return Verdict(SKIPPED, f"blocked: {channel} is suppressed for this contact", attempt_counted=False,
                               unsent_message=ctx.message_id)
            return await self._run(job, policy, now, action, ctx)

    async def _run(self, job: Any, policy: RetryPolicy, now: datetime, action: Any, ctx: ActionContext) -> Verdict:
        try:
            outcome = await asyncio.wait_for(action.run(ctx), timeout=ctx.timeout)
        except TimeoutError:
            return self._failure(job, policy, now, ActionError(f"timeout after {ctx.timeout:g} s", transient=True))
        except ActionError as exc:
            return self._failure(job, policy, now, exc)
        return Verdict(DONE, outcome.detail, outcome=outcome)

    def _failure(self, job: Any, policy: RetryPolicy, now: datetime, error: ActionError) -> Verdict:
        attempt = job.attempts + 1
        if is_transient(error, policy) and attempt < policy.max_attempts:
            wait = backoff(policy, attempt, self.rng, error.retry_after)
            return Verdict(PENDING, f"attempt {attempt} failed, retry in {wait.total_seconds():.1f} s",
                           next_attempt_at=now + wait, error=error.reason)
        why = "out of attempts" if is_transient(error, policy) else "permanent failure"
        return Verdict(DEAD, f"attempt {attempt} failed ({why})", error=error.reason)

    def _client(self) -> httpx.AsyncClient:
        if self.http is None:
            self.http = httpx.AsyncClient(follow_redirects=False)
        return self.http

    async def _record_messages(self, scene: Scene, claimed: Sequence[Any], now: datetime) -> None:
        """The message rows of the sends that will go, written before any provider is called, so
        their callbacks find them (a delivery receipt can beat the provider's answer)."""
        rows = []
        for job in claimed:
            channel = registry.SEND_CHANNELS.get(job.action)
            if channel is None or self._check(job, scene, now) is not None:
                continue
            settings = self.config.channels.get(channel)
            rows.append({"id": message_id_for(job.id), "channel": channel,
                         "provider": settings.provider if settings else "console", "status": "queued",
                         "instance_id": job.instance_id, "contact_id": scene.contact_id_of(job), "job_id": job.id,
                         "created_at": now, "updated_at": now})
        if rows:
            await self.db.transaction(_insert_messages, rows)

    # -- the loop ----------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Claim and run jobs until *stop* is set, a new batch whenever slots are free; the jobs
        in flight then finish and are written."""
        running: set[asyncio.Task[dict[str, str]]] = set()

        def finished(task: asyncio.Task[dict[str, str]]) -> None:
            running.discard(task)
            self.waker.wake()  # slots are free again
            if not task.cancelled() and task.exception() is not None:
                log.error("a batch of jobs failed", exc_info=task.exception())

        try:
            while not stop.is_set():
                claimed: list[Any] = []
                free = self.settings.concurrency - len(self._held)
                # while busy, claim when half a batch of slots is free, not slot by slot: each
                # claim is a write transaction and a read of the batch's checks
                if free >= min(self.settings.batch_size, self.settings.concurrency) // 2 or not self._held:
                    try:
                        claimed = await self.claim(self.clock(), limit=min(free, self.settings.batch_size))
                    except Exception:
                        log.exception("claiming jobs failed; retrying")
                        await self.waker.wait(stop, 1.0)
                        continue
                if claimed:
                    task = asyncio.create_task(self.execute(claimed))
                    running.add(task)
                    task.add_done_callback(finished)
                    continue
                await self.waker.wait(stop, self.settings.idle_sleep)
            if running:
                await asyncio.wait(running)
        finally:
            await self.close()

    async def close(self) -> None:
        """Close the HTTP clients jobs opened (``ctx.http``, and the http action's own on this loop)."""
        from actions.http import close as close_http_action

        if self.http is not None:
            await self.http.aclose()
            self.http = None
        await close_http_action()


def _any(conn: Connection, query: Any) -> bool:
    return conn.execute(query.limit(1)).first() is not None


def _renew(conn: Connection, held: list[str], worker_id: str, until: datetime) -> None:
    conn.execute(update(jobs).where(jobs.c.id.in_(held), jobs.c.claimed_by == worker_id, jobs.c.status == "running")
                 .values(lease_until=until))


def _insert_messages(conn: Connection, rows: list[dict[str, Any]]) -> None:
    insert = postgresql.insert(messages) if conn.dialect.name == "postgresql" else sqlite.insert(messages)
    conn.execute(insert.on_conflict_do_nothing(), rows)


def in_order(candidates: list[str], conn: Connection) -> list[str]:
    """The candidates whose earlier siblings (jobs one instance wrote before them) are finished
    or claimed with them: an instance's jobs run in the order the journey wrote them, through
    any executor, even while an earlier one waits for a retry."""
    if not candidates:
        return []
    instance_ids = {_order(c)[0] for c in candidates}
    unfinished = [r.id for r in conn.execute(
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


__all__ = ["Executor", "ExecutorSettings", "dead_letters", "discard_dead", "in_order", "message_id_for", "retry_dead"]
