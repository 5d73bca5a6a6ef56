"""Group commit: requests that arrive together share one transaction.

Each request hands its normalized events to the committer and waits; the committer takes
everything queued (up to a limit), resolves contacts, stores the events (deduplicated),
updates suppressions, and commits once. Only then does each request get its answer, so a
2xx always means committed. If the database fails, every waiting request gets 503 and
nothing of theirs was acknowledged.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from actions.gate import GATES
from engine.db.database import Database
from engine.events import Event
from engine.store import new_event_id, store_events
from ingest import contacts, optout
from ingest.errors import StorageUnavailableError
from ingest.incoming import Incoming
from journeys.config import Policies

log = logging.getLogger("journeys.ingest")


@dataclass(frozen=True)
class Outcome:
    stored: int
    duplicates: int


@dataclass
class _Job:
    source: str
    provider: str
    items: list[Incoming]
    received_at: datetime
    future: asyncio.Future[Outcome]


def to_event(item: Incoming, source: str, provider: str, contact_id: str | None, phone: str | None,
             received_at: datetime) -> Event:
    conversation = None
    if item.inbound and item.channel:
        conversation = f"{item.channel}:{phone or contact_id}"
    return Event(
        id=new_event_id(), type=item.type, occurred_at=item.occurred_at or received_at, source=source,
        provider=provider, provider_event_id=item.provider_event_id, channel=item.channel, contact_id=contact_id,
        conversation_id=conversation, message_id=item.message_id, provider_message_id=item.provider_message_id,
        received_at=received_at, status=item.status, text=item.text, data=item.data,
    )


class Committer:
    def __init__(self, db: Database, policies: Policies, *, max_batch: int = 512) -> None:
        self.db = db
        self.policies = policies
        self.max_batch = max_batch
        self._queue: asyncio.Queue[_Job] = asyncio.Queue()

    async def submit(self, source: str, provider: str, items: list[Incoming],
                     received_at: datetime | None = None) -> Outcome:
        loop = asyncio.get_running_loop()
        job = _Job(source, provider, items, received_at or datetime.now(UTC), loop.create_future())
        await self._queue.put(job)
        return await job.future

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set() or not self._queue.empty():
            try:
                first = await asyncio.wait_for(self._queue.get(), timeout=0.2)
            except TimeoutError:
                continue
            jobs = [first]
            count = len(first.items)
            while not self._queue.empty() and count < self.max_batch:
                job = self._queue.get_nowait()
                jobs.append(job)
                count += len(job.items)
            await self._commit(jobs)

    async def _commit(self, jobs: list[_Job]) -> None:
        now = datetime.now(UTC)
        try:
            # Sends in flight to a contact that opts out here finish first; later ones wait for
            # this commit and then see the suppression (actions/gate.py).
            async with GATES.opting_out(await self._opting_out(jobs)):
                outcomes = await self._write(jobs, now)
        except Exception as exc:
            log.exception("storing %d requests failed", len(jobs))
            error = StorageUnavailableError(f"storage unavailable: {type(exc).__name__}", retry_after=5)
            for job in jobs:
                if not job.future.done():
                    job.future.set_exception(error)
            return
        for job, outcome in zip(jobs, outcomes, strict=True):
            if not job.future.done():
                job.future.set_result(outcome)

    async def _opting_out(self, jobs: list[_Job]) -> list[str]:
        refs = [i.contact for job in jobs for i in job.items
                if i.type in optout.OPT_OUT_TYPES and i.contact is not None]
        if not refs:
            return []
        async with self.db.read.connect() as conn:
            return await contacts.existing(conn, refs)

    async def _write(self, jobs: list[_Job], now: datetime) -> list[Outcome]:
        async with self.db.write.begin() as conn:
            refs = [item.contact for job in jobs for item in job.items]
            ids = iter(await contacts.resolve(conn, refs, now))
            per_job: list[list[Event]] = []
            for job in jobs:
                per_job.append([
                    to_event(item, job.source, job.provider, next(ids),
                             item.contact.phone if item.contact else None, job.received_at)
                    for item in job.items
                ])
            # One statement for the whole group: the point of group commit.
            everything = [e for batch in per_job for e in batch]
            stored = await store_events(conn, everything, now)
            fresh = set(stored.inserted)
            await optout.apply(conn, [e for e in everything if e.id in fresh], self.policies, now)
        return [Outcome(sum(e.id in fresh for e in batch), sum(e.id not in fresh for e in batch))
                for batch in per_job]


def cleaned(items: list[Incoming]) -> list[Incoming]:
    """Items with canonical phones and emails (raises MalformedError on a bad one)."""
    return [replace(i, contact=contacts.clean(i.contact)) if i.contact else i for i in items]
