"""The engine loop: claim pending events, route them, decide, and write everything at once.

One claim takes a batch of pending events in arrival order, keeping each partition
(a contact, else a conversation) whole and in order: a partition whose earlier event is
leased by another engine, or waits for its message, is skipped. On PostgreSQL an advisory
lock per partition closes the window between two claimers. A crashed engine's claims come
back when their lease runs out.

Processing a batch is one transaction: instance state, timeline steps, timers, jobs,
message statuses and each event's own status commit together or not at all. An event
whose processing raises (a bug, a payload nobody expected) is quarantined with its error
and the others flow on: if the batch cannot be written, it is retried one event at a time.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Any

from sqlalchemy import and_, bindparam, func, or_, select, text, tuple_, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from engine.compiled import CompiledJourney
from engine.db.database import Database
from engine.db.schema import contacts, events, instances, jobs, messages, steps, timers
from engine.decision import Decision
from engine.events import ABOUT_A_MESSAGE, STATUS_OF_TYPE, Event
from engine.instance import NO_HISTORY, Contact, History, Instance
from engine.interpreter import decide, subject_of
from engine.loops import Waker, heartbeat, repeat
from engine.messages import advance
from engine.timeutil import aware
from engine.versions import Registry
from journeys.errors import ExpressionError
from journeys.events import TIMER_FIRED
from journeys.model import RetryPolicy

log = logging.getLogger("journeys.engine")


def utcnow() -> datetime:
    return datetime.now(UTC)


def _aware(value: datetime | None) -> datetime | None:
    return None if value is None else aware(value)


@dataclass(frozen=True)
class EngineSettings:
    batch_size: int = 500
    # A claim's lease, renewed by a heartbeat while its batch is processed: a dead engine's
    # events come back after it, a live one never loses them to a slow batch.
    lease: timedelta = timedelta(seconds=9)
    # how long a status event waits for the message it is about to be recorded
    message_wait: timedelta = timedelta(seconds=30)
    idle_sleep: float = 0.05
    # policies.store_message_bodies: keep the text of replies after the journeys have seen it
    keep_bodies: bool = False


def event_from_row(row: Any) -> Event:
    return Event(
        id=row.id,
        type=row.type,
        occurred_at=_aware(row.occurred_at) or utcnow(),
        source=row.source,
        provider=row.provider,
        provider_event_id=row.provider_event_id,
        channel=row.channel,
        contact_id=row.contact_id,
        conversation_id=row.conversation_id,
        message_id=row.message_id,
        provider_message_id=row.provider_message_id,
        received_at=_aware(row.received_at),
        status=row.status_text,
        text=row.text,
        data=MappingProxyType(dict(row.data or {})),
        schema_version=row.schema_version,
    )


def instance_from_row(row: Any) -> Instance:
    return Instance(
        id=row.id, journey=row.journey, version=row.version, subject=row.subject, state=row.state,
        status=row.status, started_at=_aware(row.started_at) or utcnow(),
        entered_at=_aware(row.entered_at) or utcnow(), seq=row.seq, contact_id=row.contact_id,
        vars=MappingProxyType(dict(row.vars or {})), ended_at=_aware(row.ended_at),
        goal_reached_at=_aware(row.goal_reached_at), error=row.error,
        recent_events=tuple(row.recent_events or ()),
    )


def instance_values(instance: Instance, now: datetime) -> dict[str, Any]:
    return {
        "id": instance.id, "journey": instance.journey, "version": instance.version, "subject": instance.subject,
        "contact_id": instance.contact_id, "state": instance.state, "status": instance.status,
        "vars": dict(instance.vars), "seq": instance.seq, "started_at": instance.started_at,
        "entered_at": instance.entered_at, "ended_at": instance.ended_at,
        "goal_reached_at": instance.goal_reached_at, "error": instance.error,
        "recent_events": list(instance.recent_events), "updated_at": now,
    }


@dataclass
class _Message:
    id: str
    instance_id: str | None
    status: str | None


@dataclass
class Batch:
    """What one batch needs from the database, and everything it will write back."""

    contacts: dict[str, Contact] = field(default_factory=dict)
    messages: dict[str, _Message] = field(default_factory=dict)
    by_provider_id: dict[tuple[str | None, str], str] = field(default_factory=dict)
    instances: dict[str, Instance] = field(default_factory=dict)
    active: dict[tuple[str, str], str] = field(default_factory=dict)
    history: dict[tuple[str, str], History] = field(default_factory=dict)
    # writes
    new_instances: set[str] = field(default_factory=set)
    changed_instances: set[str] = field(default_factory=set)
    steps: list[dict[str, Any]] = field(default_factory=list)
    timers: list[dict[str, Any]] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    jobs: list[dict[str, Any]] = field(default_factory=list)
    message_status: dict[str, str] = field(default_factory=dict)
    done: list[dict[str, Any]] = field(default_factory=list)

    def active_of_contact(self, journey: str, contact_id: str | None) -> list[Instance]:
        return [i for i in self.instances.values()
                if i.journey == journey and i.active and contact_id is not None and i.contact_id == contact_id]


class Deferred(Exception):  # noqa: N818 - a signal, not an error
    """The event must wait (for its message to be recorded): release it and its partition."""


class Engine:
    def __init__(
        self,
        db: Database,
        registry: Registry,
        worker_id: str,
        settings: EngineSettings | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.db = db
        self.registry = registry
        self.worker_id = worker_id
        self.settings = settings or EngineSettings()
        self.clock = clock
        # test hook: called with the claimed rows before they are processed
        self.on_claim: Callable[[Sequence[Any]], Any] | None = None
        # told when a batch wrote jobs: the executor (or the relay) looks at once
        self.on_jobs: Callable[[], None] | None = None
        self.waker = Waker()
        self._wrote_jobs = False

    def wake(self) -> None:
        """New events may be pending (ingest stored some, a timer fired): look now."""
        self.waker.wake()

    # -- claiming ----------------------------------------------------------------

    async def claim(self, now: datetime) -> list[Any]:
        # A look without the write lock first: an idle engine must not take SQLite's one write
        # lock away from webhook commits several times a second to find nothing.
        if not await self.db.reading(_anything_pending):
            return []
        return await self.db.transaction(self._claim, now)

    def _claim(self, conn: Connection, now: datetime) -> list[Any]:
        size = self.settings.batch_size
        scan = conn.execute(
            select(events.c.seq, events.c.partition_key, events.c.claimed_by, events.c.lease_until,
                   events.c.not_before)
            .where(events.c.status == "pending").order_by(events.c.seq).limit(size * 4)
        )
        blocked: set[str] = set()
        chosen: list[tuple[int, str]] = []
        for r in scan:
            if r.partition_key in blocked:
                continue
            lease = _aware(r.lease_until)
            leased = r.claimed_by not in (None, self.worker_id) and lease is not None and lease > now
            not_before = _aware(r.not_before)
            if leased or (not_before is not None and not_before > now):
                blocked.add(r.partition_key)  # later events of it must wait their turn
                continue
            chosen.append((r.seq, r.partition_key))
            if len(chosen) >= size:
                break
        if not chosen:
            return []
        if conn.dialect.name == "postgresql":
            # SQLite serializes claimers with BEGIN IMMEDIATE; PostgreSQL needs a lock per
            # partition, held to our commit, and then a fresh look at the leases: a claimer
            # that committed after our scan is visible now, and one that did not is waiting
            # for our locks.
            keys = sorted({p for _, p in chosen})
            locked = conn.execute(
                # the schema is part of the key: deployments sharing a database do not block each other
                text("SELECT k FROM unnest(CAST(:keys AS text[])) AS k "
                     "WHERE pg_try_advisory_xact_lock(hashtext(current_schema() || ':' || k))"),
                {"keys": keys},
            )
            mine = {r.k for r in locked}
            taken = conn.execute(
                select(events.c.partition_key).distinct().where(
                    events.c.partition_key.in_(sorted(mine)),
                    events.c.status == "pending",
                    events.c.claimed_by.is_not(None),
                    events.c.claimed_by != self.worker_id,
                    events.c.lease_until >= now,
                )
            )
            mine -= {r.partition_key for r in taken}
            chosen = [(s, p) for s, p in chosen if p in mine]
            if not chosen:
                return []
        result = conn.execute(
            update(events)
            .where(
                events.c.seq.in_([s for s, _ in chosen]),
                events.c.status == "pending",
                or_(events.c.lease_until.is_(None), events.c.lease_until < now,
                    events.c.claimed_by == self.worker_id),
            )
            .values(claimed_by=self.worker_id, lease_until=now + self.settings.lease,
                    attempts=events.c.attempts + 1)
            .returning(*events.c)
        )
        return sorted(result.all(), key=lambda r: r.seq)

    async def release(self) -> int:
        """Give back this engine's claims (clean shutdown): nothing half-done stays claimed."""
        async with self.db.write.begin() as conn:
            result = await conn.execute(
                update(events).where(events.c.claimed_by == self.worker_id, events.c.status == "pending")
                .values(claimed_by=None, lease_until=None)
            )
            return result.rowcount or 0

    # -- loading -----------------------------------------------------------------

    def _load(self, conn: Connection, evs: list[Event]) -> Batch:
        batch = Batch()
        contact_ids = {e.contact_id for e in evs if e.contact_id}
        if contact_ids:
            for r in conn.execute(select(contacts).where(contacts.c.id.in_(contact_ids))):
                batch.contacts[r.id] = Contact(r.id, r.phone, r.email, r.timezone, r.locale,
                                               MappingProxyType(dict(r.attributes or {})))
        message_ids = {e.message_id for e in evs if e.message_id}
        provider_ids = {e.provider_message_id for e in evs if e.provider_message_id and not e.message_id}
        if message_ids or provider_ids:
            cond = []
            if message_ids:
                cond.append(messages.c.id.in_(message_ids))
            if provider_ids:
                cond.append(messages.c.provider_message_id.in_(provider_ids))
            query = select(messages.c.id, messages.c.instance_id, messages.c.status, messages.c.provider,
                           messages.c.provider_message_id).where(or_(*cond))
            for r in conn.execute(query):
                batch.messages[r.id] = _Message(r.id, r.instance_id, r.status)
                if r.provider_message_id:
                    batch.by_provider_id[(r.provider, r.provider_message_id)] = r.id
        ids = {str(e.data["instance_id"]) for e in evs
               if e.type in (TIMER_FIRED, "action.failed") and e.data.get("instance_id")}
        ids |= {m.instance_id for m in batch.messages.values() if m.instance_id}
        pairs: set[tuple[str, str]] = set()
        contact_journeys: set[str] = set()
        for e in evs:
            contact = batch.contacts.get(e.contact_id or "")
            for jid in self.registry.interested(e.type):
                try:
                    subject = subject_of(self.registry.newest[jid], e, contact)
                except ExpressionError:
                    continue
                if subject is None:
                    contact_journeys.add(jid)
                else:
                    pairs.add((jid, subject))
        conds: list[Any] = []
        if ids:
            conds.append(instances.c.id.in_(ids))
        if pairs:
            conds.append(and_(tuple_(instances.c.journey, instances.c.subject).in_(sorted(pairs)),
                              instances.c.status == "active"))
        if contact_journeys and contact_ids:
            conds.append(and_(instances.c.journey.in_(contact_journeys), instances.c.contact_id.in_(contact_ids),
                              instances.c.status == "active"))
        if conds:
            for r in conn.execute(select(instances).where(or_(*conds))):
                instance = instance_from_row(r)
                batch.instances[instance.id] = instance
                if instance.active:
                    batch.active[(instance.journey, instance.subject)] = instance.id
        if pairs:
            query = (select(instances.c.journey, instances.c.subject, func.count(), func.max(instances.c.ended_at))
                     .where(tuple_(instances.c.journey, instances.c.subject).in_(sorted(pairs)),
                            instances.c.status != "active")
                     .group_by(instances.c.journey, instances.c.subject))
            for r in conn.execute(query):
                batch.history[(r[0], r[1])] = History(int(r[2]), _aware(r[3]))
        return batch

    # -- deciding ----------------------------------------------------------------

    def _targets(self, batch: Batch, event: Event, contact: Contact | None,
                 message: _Message | None) -> list[tuple[CompiledJourney, Instance | None, History]]:
        owner = event.data.get("instance_id") if event.type in (TIMER_FIRED, "action.failed") else None
        if owner is None and message is not None and message.instance_id is not None \
                and event.type in ABOUT_A_MESSAGE:
            owner = message.instance_id
        if owner is not None:
            instance = batch.instances.get(str(owner))
            if instance is None or (event.type in ABOUT_A_MESSAGE and not instance.active):
                return []  # news of an ended instance's message is kept in the log only
            cj = self.registry.get(instance.journey, instance.version)
            return [] if cj is None else [(cj, instance, NO_HISTORY)]
        out: list[tuple[CompiledJourney, Instance | None, History]] = []
        for jid in self.registry.interested(event.type):
            newest = self.registry.newest[jid]
            try:
                subject = subject_of(newest, event, contact)
            except ExpressionError:
                continue
            if subject is None:
                for instance in batch.active_of_contact(jid, event.contact_id):
                    cj = self.registry.get(instance.journey, instance.version)
                    if cj is not None:
                        out.append((cj, instance, NO_HISTORY))
                continue
            active_id = batch.active.get((jid, subject))
            if active_id is not None:
                instance = batch.instances[active_id]
                cj = self.registry.get(instance.journey, instance.version)
                if cj is not None:
                    out.append((cj, instance, NO_HISTORY))
            else:
                out.append((newest, None, batch.history.get((jid, subject), NO_HISTORY)))
        return out

    def _apply(self, batch: Batch, row: Any, now: datetime, event: Event | None = None) -> None:
        event = event or event_from_row(row)
        contact = batch.contacts.get(event.contact_id or "")
        message = None
        if event.message_id:
            message = batch.messages.get(event.message_id)
        elif event.provider_message_id:
            found = batch.by_provider_id.get((event.provider, event.provider_message_id))
            if found:
                message = batch.messages[found]
                event = replace(event, message_id=found)
        about_message = event.type.startswith("message.") and event.type != "message.received"
        if about_message and (event.message_id or event.provider_message_id) and message is None:
            received = event.received_at or now
            if now < received + self.settings.message_wait:
                raise Deferred
        status = "done"
        progress = None
        if message is not None and event.type in STATUS_OF_TYPE:
            progress = advance(message.status, event.type)
            if not progress.forward:
                status = "stale"
        decisions: list[tuple[CompiledJourney, Decision]] = []
        for cj, instance, history in self._targets(batch, event, contact, message):
            decisions.append((cj, decide(cj, instance, event, now, contact, history=history,
                                         message_status=message.status if message else None)))
        # Nothing is merged into the batch until every decision of this event is made.
        for cj, decision in decisions:
            self._merge(batch, cj, decision, event, now)
        if message is not None and progress is not None and progress.forward and progress.status:
            message.status = progress.status
            batch.message_status[message.id] = progress.status
        outcome = "; ".join(f"{cj.id}: {d.outcome}: {d.reason}" for cj, d in decisions
                            if d.outcome != "not_started") or "no journey"
        if status == "stale" and progress is not None:
            outcome = f"stale: {progress.reason}"
        batch.done.append({"b_seq": row.seq, "status": status, "outcome": outcome[:2000], "error": None,
                           "processed_at": now, "message_id": event.message_id})

    def _merge(self, batch: Batch, cj: CompiledJourney, decision: Decision, event: Event, now: datetime) -> None:
        instance = decision.instance
        if instance is None or not decision.changed:
            return
        previous = batch.instances.get(instance.id)
        if previous is None:
            batch.new_instances.add(instance.id)
        else:
            batch.changed_instances.add(instance.id)
        batch.instances[instance.id] = instance
        key = (instance.journey, instance.subject)
        if instance.active:
            batch.active[key] = instance.id
        elif batch.active.get(key) == instance.id:
            del batch.active[key]
            old = batch.history.get(key, NO_HISTORY)
            batch.history[key] = History(old.count + 1, instance.ended_at)
        for step in decision.steps:
            batch.steps.append({"instance_id": instance.id, "at": step.at, "kind": step.kind,
                                "event_id": step.event_id, "event_type": step.event_type,
                                "from_state": step.from_state, "to_state": step.to_state, "detail": step.detail})
        partition = f"contact:{instance.contact_id}" if instance.contact_id else f"instance:{instance.id}"
        for timer in decision.timers_set:
            batch.timers.append({"id": timer.id, "instance_id": timer.instance_id, "partition_key": partition,
                                 "due_at": timer.due_at, "state": timer.state, "seq": timer.seq,
                                 "idx": timer.idx, "delay": timer.delay, "status": "pending"})
        batch.cancelled.extend(decision.timers_cancelled)
        for action in decision.actions:
            batch.jobs.append({
                "id": action.key, "instance_id": action.instance_id, "journey": instance.journey,
                "action": action.action, "inputs": dict(action.inputs), "retry": _retry_dict(action.retry),
                "priority": action.priority, "status": "pending", "attempts": 0, "next_attempt_at": now,
                "created_at": now, "updated_at": now,
            })

    # -- writing -----------------------------------------------------------------

    def _insert(self, conn: Connection, table: Any) -> Any:
        return (postgresql.insert(table) if conn.dialect.name == "postgresql" else sqlite.insert(table))

    def _flush(self, conn: Connection, batch: Batch, now: datetime) -> None:
        # Updates first: an instance that ended in this batch must leave the "one active per
        # subject" index before the one that replaces it is inserted.
        changed = batch.changed_instances - batch.new_instances
        if changed:
            values = [{"b_id": i, **{k: v for k, v in instance_values(batch.instances[i], now).items() if k != "id"}}
                      for i in sorted(changed)]
            cols: dict[str, Any] = {k: bindparam(k) for k in values[0] if k != "b_id"}
            conn.execute(update(instances).where(instances.c.id == bindparam("b_id")).values(cols), values)
        if batch.new_instances:
            conn.execute(instances.insert(),
                               [instance_values(batch.instances[i], now) for i in sorted(batch.new_instances)])
        if batch.steps:
            conn.execute(steps.insert(), batch.steps)
        # Inserts first: a timer set and cancelled within this batch must end cancelled.
        if batch.timers:
            conn.execute(self._insert(conn, timers).on_conflict_do_nothing(index_elements=["id"]), batch.timers)
        if batch.cancelled:
            conn.execute(update(timers).where(timers.c.id.in_(batch.cancelled), timers.c.status == "pending")
                               .values(status="cancelled"))
        if batch.jobs:
            conn.execute(self._insert(conn, jobs).on_conflict_do_nothing(index_elements=["id"]), batch.jobs)
            self._wrote_jobs = True
        for message_id, status in batch.message_status.items():
            conn.execute(update(messages).where(messages.c.id == message_id)
                               .values(status=status, updated_at=now))
        if batch.done:
            done: dict[str, Any] = {
                "status": bindparam("status"), "outcome": bindparam("outcome"), "error": bindparam("error"),
                "processed_at": bindparam("processed_at"), "message_id": bindparam("message_id"),
                "claimed_by": None, "lease_until": None,
            }
            if not self.settings.keep_bodies:
                done["text"] = None  # the journeys have seen it; the log keeps only what they need
            conn.execute(update(events).where(events.c.seq == bindparam("b_seq")).values(done), batch.done)

    def _fence(self, conn: Connection, rows: Sequence[Any], now: datetime) -> list[Any]:
        """Renew our claims inside the writing transaction, and keep only what we still hold.

        The rows stay locked to our commit, so a successor whose claim comes after waits and
        then finds them done; if a successor took some already (we stalled past the lease),
        their whole partition is left to it, and nothing of it is applied twice or out of order.
        """
        held = conn.execute(
            update(events)
            .where(events.c.seq.in_([r.seq for r in rows]), events.c.claimed_by == self.worker_id,
                   events.c.status == "pending")
            .values(lease_until=now + self.settings.lease)
            .returning(events.c.seq)
        )
        kept = {r.seq for r in held}
        lost = {r.partition_key for r in rows if r.seq not in kept}
        if lost:
            log.warning("lost the claim of %d partitions to another engine; leaving them to it", len(lost))
        return [r for r in rows if r.partition_key not in lost]

    async def _process(self, rows: Sequence[Any], now: datetime) -> tuple[int, int]:
        """Decide and write *rows* in one transaction; returns (processed, deferred)."""
        return await self.db.transaction(self._process_in, rows, now)

    def _process_in(self, conn: Connection, rows: Sequence[Any], now: datetime) -> tuple[int, int]:
        deferred: list[Any] = []
        rows = self._fence(conn, rows, now)
        evs = [event_from_row(r) for r in rows]
        batch = self._load(conn, evs)
        waiting: set[str] = set()
        for row, event in zip(rows, evs, strict=True):
            if row.partition_key in waiting:
                deferred.append(row)
                continue
            try:
                self._apply(batch, row, now, event)
            except Deferred:
                waiting.add(row.partition_key)
                deferred.append(row)
            except Exception as exc:  # a poison event: quarantine it, the rest flow on
                batch.done.append({"b_seq": row.seq, "status": "quarantined", "outcome": None,
                                   "error": _describe(exc), "processed_at": now,
                                   "message_id": row.message_id})
                log.exception("event %s quarantined", row.id)
        self._flush(conn, batch, now)
        if deferred:
            retry_at = now + timedelta(seconds=1)
            conn.execute(
                update(events).where(events.c.seq.in_([r.seq for r in deferred]))
                .values(claimed_by=None, lease_until=None,
                        not_before=retry_at)
            )
        return len(rows) - len(deferred), len(deferred)

    async def run_once(self) -> int:
        """Claim and process one batch; returns how many events were processed."""
        now = self.clock()
        rows = await self.claim(now)
        if not rows:
            return 0
        self._wrote_jobs = False
        async with heartbeat(functools.partial(self._renew, rows), self.settings.lease.total_seconds() / 3, log):
            if self.on_claim is not None:
                await self.on_claim(rows)
            processed = await self._process_all(rows, now)
        if self._wrote_jobs and self.on_jobs is not None:
            self.on_jobs()
        return processed

    async def _renew(self, rows: Sequence[Any]) -> None:
        """The heartbeat of a batch in progress: its claims stay ours while we work on it."""
        async with self.db.write.begin() as conn:
            await conn.execute(update(events).where(events.c.seq.in_([r.seq for r in rows]),
                                                    events.c.claimed_by == self.worker_id,
                                                    events.c.status == "pending")
                               .values(lease_until=self.clock() + self.settings.lease))

    async def _process_all(self, rows: Sequence[Any], now: datetime) -> int:
        try:
            processed, _ = await self._process(rows, now)
        except Exception:
            # The batch could not be written as a whole: find the event that breaks it.
            log.exception("batch of %d failed; retrying one event at a time", len(rows))
            processed = 0
            waiting: set[str] = set()
            for row in rows:
                if row.partition_key in waiting:
                    await self._release([row])  # an earlier event of it waits: keep arrival order
                    continue
                try:
                    done, held_back = await self._process([row], now)
                    processed += done
                    if held_back:
                        waiting.add(row.partition_key)
                except Exception as exc:
                    await self._quarantine(row, exc, now)
                    processed += 1
        return processed

    async def _release(self, rows: Sequence[Any]) -> None:
        async with self.db.write.begin() as conn:
            await conn.execute(update(events).where(events.c.seq.in_([r.seq for r in rows]),
                                                    events.c.claimed_by == self.worker_id)
                               .values(claimed_by=None, lease_until=None))

    async def _quarantine(self, row: Any, exc: BaseException, now: datetime) -> None:
        async with self.db.write.begin() as conn:
            await conn.execute(update(events).where(events.c.seq == row.seq).values(
                status="quarantined", error=_describe(exc), processed_at=now, claimed_by=None, lease_until=None))

    async def run(self, stop: asyncio.Event) -> None:
        """Process until *stop* is set; a batch in progress always finishes first. Between
        batches it waits for a wake-up (:meth:`wake`) or, at the longest, the idle delay."""
        await repeat(self.run_once, stop, idle=self.settings.idle_sleep, log=log, what="engine loop",
                     waker=self.waker)
        await self.release()


def _anything_pending(conn: Connection) -> bool:
    return conn.execute(select(events.c.seq).where(events.c.status == "pending").limit(1)).first() is not None


@functools.lru_cache(maxsize=1024)
def _retry_dict(policy: RetryPolicy) -> dict[str, Any]:
    return policy.to_dict()


def _describe(exc: BaseException) -> str:
    lines = traceback.format_exception_only(type(exc), exc)
    return "".join(lines).strip()[:2000]


async def pending_count(db: Database) -> int:
    async with db.read.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(events)
                                       .where(events.c.status == "pending"))).scalar_one())

