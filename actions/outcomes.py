"""Writing what jobs came to, many jobs to a commit.

A job's outcome is its new status, the attempt on the instance's timeline, and whatever
the action changed (the message record, suppressions, contact attributes, emitted events;
``action.failed`` for a dead letter), all in one transaction. Jobs finish one by one at
their own times; :class:`OutcomeWriter` writes every outcome that finished while the
previous commit was on its way in the next one (a group commit), so a thousand jobs a
second do not cost a thousand commits, and a lone job is written at once.

Each write is fenced: only jobs still ``running`` under this executor's claim are written.
One whose claim was lost (its executor stalled past the lease and another took it) is
left to the other. A group that cannot be written is written again job by job, so one bad
outcome cannot hold the others back.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from types import MappingProxyType
from typing import Any

from sqlalchemy import bindparam, delete, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from actions.base import Outcome
from engine.db.database import Database
from engine.db.schema import contacts, jobs, messages, steps, suppressions
from engine.events import Event
from engine.store import store_events_sync

log = logging.getLogger("journeys.actions")

# job statuses an outcome can set
DONE, PENDING, DEAD, SKIPPED = "done", "pending", "dead", "skipped"


@dataclass
class Verdict:
    status: str  # DONE | PENDING | DEAD | SKIPPED
    detail: str
    next_attempt_at: datetime | None = None
    outcome: Outcome | None = None
    error: str | None = None
    attempt_counted: bool = True
    # a message row written for a send that then did not go (the contact opted out meanwhile)
    unsent_message: str | None = None


@dataclass(frozen=True)
class Finished:
    job: Any
    verdict: Verdict
    contact_id: str | None
    now: datetime
    message_id: str


def write_outcomes(conn: Connection, worker_id: str, finished: Sequence[Finished]) -> list[Finished]:
    """Write *finished* in the caller's transaction; returns those written (still ours)."""
    ids = [f.job.id for f in finished]
    query = select(jobs.c.id).where(jobs.c.id.in_(ids), jobs.c.claimed_by == worker_id, jobs.c.status == "running")
    if conn.dialect.name == "postgresql":
        query = query.with_for_update()
    held = {r.id for r in conn.execute(query)}
    mine = [f for f in finished if f.job.id in held]
    if not mine:
        return []
    conn.execute(
        update(jobs).where(jobs.c.id == bindparam("b_id")).values(
            status=bindparam("status"), updated_at=bindparam("now"), claimed_by=None, lease_until=None,
            attempts=bindparam("attempts"), next_attempt_at=bindparam("next_attempt_at"),
            last_error=bindparam("last_error"), result=bindparam("result")),
        [{"b_id": f.job.id, "status": f.verdict.status, "now": f.now, "attempts": _attempts(f),
          "next_attempt_at": f.verdict.next_attempt_at or f.job.next_attempt_at, "last_error": f.verdict.error,
          "result": dict(f.verdict.outcome.result) if f.verdict.outcome else None} for f in mine])
    conn.execute(steps.insert(), [
        {"instance_id": f.job.instance_id, "at": f.now, "kind": "attempt", "event_id": None, "event_type": None,
         "from_state": None, "to_state": None,
         "detail": f"{f.job.action} {f.job.id} attempt {_attempts(f)}: {f.verdict.status}: {f.verdict.detail}"
                   + (f" ({f.verdict.error})" if f.verdict.error else "")}
        for f in mine])
    sent = [f for f in mine if f.verdict.outcome is not None and f.verdict.outcome.sent is not None]
    if sent:
        conn.execute(update(messages).where(messages.c.id == bindparam("b_id")).values(
            provider=bindparam("provider"), provider_message_id=bindparam("provider_message_id"),
            to=bindparam("to"), body=bindparam("body"), updated_at=bindparam("now")),
            [{"b_id": f.message_id, "provider": s.provider, "provider_message_id": s.provider_message_id,
              "to": s.to, "body": s.body, "now": f.now}
             for f in sent if (s := f.verdict.outcome.sent) is not None])  # type: ignore[union-attr]
    unsent = [f.verdict.unsent_message for f in mine if f.verdict.unsent_message]
    if unsent:
        conn.execute(update(messages).where(messages.c.id.in_(unsent), messages.c.provider_message_id.is_(None),
                                            messages.c.status == "queued").values(status="blocked"))
    events: list[Event] = []
    for f in mine:
        if f.verdict.outcome is not None and f.contact_id is not None:
            events += _apply(conn, f, f.verdict.outcome, f.contact_id)
        if f.verdict.status == DEAD:
            events.append(Event(
                id=f"action-failed:{f.job.id}", type="action.failed", occurred_at=f.now, source="engine",
                provider_event_id=f"action-failed:{f.job.id}", contact_id=f.contact_id, received_at=f.now,
                data=MappingProxyType({"instance_id": f.job.instance_id, "action": f.job.action, "key": f.job.id,
                                       "error": f.verdict.error, "attempts": _attempts(f)})))
    if events:
        store_events_sync(conn, events, mine[-1].now)
    return mine


def _attempts(f: Finished) -> int:
    return int(f.job.attempts) + (1 if f.verdict.attempt_counted else 0)


def _apply(conn: Connection, f: Finished, outcome: Outcome, contact_id: str) -> list[Event]:
    """The action's own changes; returns the events it emits."""
    if outcome.suppress:
        insert = postgresql.insert(suppressions) if conn.dialect.name == "postgresql" else sqlite.insert(
            suppressions)
        conn.execute(insert.on_conflict_do_nothing(), [
            {"contact_id": contact_id, "channel": c, "reason": f"suppress by {f.job.journey}", "event_id": None,
             "created_at": f.now} for c in outcome.suppress])
    if outcome.unsuppress:
        conn.execute(delete(suppressions).where(suppressions.c.contact_id == contact_id,
                                                suppressions.c.channel.in_(list(outcome.unsuppress))))
    if outcome.attributes:
        row = conn.execute(select(contacts.c.attributes).where(contacts.c.id == contact_id)).first()
        if row is not None:
            merged = {**(row.attributes or {}), **outcome.attributes}
            conn.execute(update(contacts).where(contacts.c.id == contact_id).values(
                attributes=merged, updated_at=f.now))
    return [Event(id=f"emit:{f.job.id}:{n}", type=kind, occurred_at=f.now, source="emit",
                  provider_event_id=f"emit:{f.job.id}:{n}", contact_id=contact_id, received_at=f.now,
                  data=MappingProxyType(dict(data)))
            for n, (kind, data) in enumerate(outcome.emit)]


class OutcomeWriter:
    """Group commits of finished jobs (see the module docstring).

    :meth:`write` returns once the job's outcome is committed (or was found no longer ours),
    so the next job of the same instance starts after the previous one's outcome is stored.
    *written* is told how many outcomes a commit stored that may wake the engine (emitted
    events, dead letters)."""

    def __init__(self, db: Database, worker_id: str, written: Callable[[], None] | None = None) -> None:
        self.db = db
        self.worker_id = worker_id
        self.written = written
        self._queue: list[tuple[Finished, asyncio.Future[bool]]] = []
        self._flushing: asyncio.Task[None] | None = None

    async def write(self, finished: Finished) -> bool:
        """True when written; False when the job was no longer ours."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._queue.append((finished, future))
        if self._flushing is None or self._flushing.done():
            self._flushing = asyncio.create_task(self._flush())
        return await future

    async def _flush(self) -> None:
        while self._queue:
            group, self._queue = self._queue, []
            try:
                written = await self._commit([f for f, _ in group])
            except Exception:
                log.exception("writing %d job outcomes failed; writing them one by one", len(group))
                for item, future in group:
                    try:
                        one = await self._commit([item])
                    except Exception as exc:
                        if not future.done():
                            future.set_exception(exc)
                        continue
                    if not future.done():
                        future.set_result(bool(one))
                continue
            for item, future in group:
                if not future.done():
                    future.set_result(item.job.id in written)

    async def _commit(self, group: list[Finished]) -> set[str]:
        written = await self.db.transaction(write_outcomes, self.worker_id, group)
        if self.written is not None and any(f.verdict.status == DEAD or (f.verdict.outcome and f.verdict.outcome.emit)
                                            for f in written):
            self.written()
        return {f.job.id for f in written}


__all__ = ["DEAD", "DONE", "PENDING", "SKIPPED", "Finished", "OutcomeWriter", "Verdict", "write_outcomes"]
