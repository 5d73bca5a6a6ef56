"""Group commit: requests that arrive together share one transaction.

Each request hands its normalized events to the committer and waits; the committer takes
everything waiting (up to a limit), resolves contacts, stores the events (deduplicated),
updates suppressions, and commits once. Only then does each request get its answer, so a
2xx always means committed. If the database fails, every waiting request gets 503 and
nothing of theirs was acknowledged.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from collections import deque
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from sqlalchemy.engine import Connection, Engine

from actions.gate import GATES
from engine.db.database import Database
from engine.events import Event
from engine.store import new_event_id, store_events_sync
from ingest import contacts, optout
from ingest.errors import StorageUnavailableError
from ingest.incoming import Incoming
from journeys.config import Policies

log = logging.getLogger("journeys.ingest")

# How long the event loop waits for a SQLite group commit before it runs on (Committer).
BLOCK_FOR = 0.05
# After a group of at least BUSY_GROUP requests, the next group is collected for GROUP_WINDOW
# seconds before it commits; after a smaller one, it commits at once.
BUSY_GROUP = 8
GROUP_WINDOW = 0.003
# SQLite: the ingest writer checkpoints the write-ahead log after this many events (Committer._checkpoint).
CHECKPOINT_EVERY = 1000


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
    """Group commit: one transaction for the requests that arrived together.

    A commit is scheduled when the first request of a group arrives and starts once the
    event loop has run every request that was ready with it, so one group holds what came in
    together; when the last group was large, it also waits GROUP_WINDOW for more. The
    requests that arrive while it commits form the next group: groups grow with the load by
    themselves, and a lone webhook is committed at once.

    On SQLite the group is written by a thread of our own on a synchronous connection
    (Database.sqlite_writer), while the process's one async write connection is held so no
    transaction of the engine is open meanwhile. Through aiosqlite every statement is several
    hand-offs between the event loop and the driver's thread, which cost more than the
    statements. The event loop waits for the thread (up to BLOCK_FOR) instead of running on:
    a thread that has to win the interpreter lock back from a busy event loop at every call
    into SQLite takes several times as long.
    """

    def __init__(self, db: Database, policies: Policies, *, max_batch: int = 512) -> None:
        self.db = db
        self.policies = policies
        self.max_batch = max_batch
        self._pending: deque[_Job] = deque()
        self._busy = False  # a commit is scheduled or running
        self._last_group = 0  # requests in the last group: is the endpoint busy?
        self._idle = asyncio.Event()
        self._idle.set()
        self._sqlite: Engine | None = None
        self._thread: concurrent.futures.ThreadPoolExecutor | None = None
        self._since_checkpoint = 0  # items written since the last WAL checkpoint (SQLite)
        self._checkpointing = False  # one is queued or running in the writer's thread

    async def submit(self, source: str, provider: str, items: list[Incoming],
                     received_at: datetime | None = None) -> Outcome:
        loop = asyncio.get_running_loop()
        job = _Job(source, provider, items, received_at or datetime.now(UTC), loop.create_future())
        self._pending.append(job)
        if not self._busy:
            self._busy = True
            self._idle.clear()
            self._schedule(loop)
        return await job.future

    async def run(self, stop: asyncio.Event) -> None:
        """Wait for *stop*, then for the requests still waiting to be committed; close the writer."""
        await stop.wait()
        await self._idle.wait()
        self.close()

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._last_group >= BUSY_GROUP:
            # Under load, wait a moment for the requests on their way: one commit of many
            # costs far less than several of a few (PostgreSQL's commit_delay, in effect).
            loop.call_later(GROUP_WINDOW, self._start, loop)
        else:
            # after the requests the event loop has ready now: they join this group
            loop.call_soon(self._start, loop)

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        jobs: list[_Job] = []
        count = 0
        while self._pending and (not jobs or count + len(self._pending[0].items) <= self.max_batch):
            job = self._pending.popleft()
            jobs.append(job)
            count += len(job.items)
        self._last_group = len(jobs)
        task = loop.create_task(self._commit(jobs))
        task.add_done_callback(lambda finished: self._finish(loop, jobs, finished))

    def _finish(self, loop: asyncio.AbstractEventLoop, jobs: list[_Job], finished: asyncio.Task[list[Outcome]]) -> None:
        error = finished.exception()
        if error is not None:
            log.error("storing %d requests failed", len(jobs), exc_info=error)
            unavailable = StorageUnavailableError(f"storage unavailable: {type(error).__name__}", retry_after=5)
            for job in jobs:
                if not job.future.done():
                    job.future.set_exception(unavailable)
        else:
            for job, outcome in zip(jobs, finished.result(), strict=True):
                if not job.future.done():
                    job.future.set_result(outcome)
        if self._pending:
            self._schedule(loop)
        else:
            self._busy = False
            self._idle.set()

    async def _commit(self, jobs: list[_Job]) -> list[Outcome]:
        # Sends in flight to a contact that opts out here finish first; later ones wait for
        # this commit and then see the suppression (actions/gate.py).
        opting_out = await self._opting_out(jobs)
        now = datetime.now(UTC)
        async with GATES.opting_out(opting_out):
            if not self.db.is_sqlite:
                async with self.db.write.begin() as conn:
                    return await conn.run_sync(self._write_on, jobs, now)
            async with self.db.write.connect():  # see the class docstring
                return await self._write_in_thread(jobs, now)

    async def _write_in_thread(self, jobs: list[_Job], now: datetime) -> list[Outcome]:
        """The SQLite group commit, in the writer's thread; checkpoints after it now and then."""
        writer = self._writer()
        written = writer.submit(self._write_sqlite, jobs, now)
        if self._checkpointing:
            # queued behind a checkpoint (tens of ms): the event loop runs on meanwhile
            outcomes = await asyncio.wrap_future(written)
        else:
            try:
                outcomes = written.result(timeout=BLOCK_FOR)
            except concurrent.futures.TimeoutError:
                # Someone else holds SQLite's lock (another process, or a connection of this
                # one that needs the event loop to finish): let the loop run meanwhile.
                outcomes = await asyncio.wrap_future(written)
        self._since_checkpoint += sum(len(job.items) for job in jobs)
        if self._since_checkpoint >= CHECKPOINT_EVERY:
            # next in the writer's queue, but nobody waits for it: see _checkpoint
            self._since_checkpoint = 0
            self._checkpointing = True
            writer.submit(self._checkpoint)
        return outcomes

    def _writer(self) -> concurrent.futures.ThreadPoolExecutor:
        if self._thread is None:
            self._thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="journeys-ingest-writer")
        return self._thread

    async def _opting_out(self, jobs: list[_Job]) -> list[str]:
        refs = [i.contact for job in jobs for i in job.items
                if i.type in optout.OPT_OUT_TYPES and i.contact is not None]
        if not refs:
            return []
        async with self.db.read.connect() as conn:
            return await contacts.existing(conn, refs)

    def _write_sqlite(self, jobs: list[_Job], now: datetime) -> list[Outcome]:
        if self._sqlite is None:
            self._sqlite = self.db.sqlite_writer()
        with self._sqlite.begin() as conn:
            return self._write_on(conn, jobs, now)

    def _checkpoint(self) -> None:
        """Copy the write-ahead log back into the database file.

        SQLite does this itself after a commit that finds the log over 1,000 pages, and that
        commit's requests wait for the copy. The writer's connection has that turned off, and
        does it here, between two commits: in its own thread, with SQLite's C code not holding
        the interpreter lock, while the event loop answers the requests just committed. With
        no write open, the checkpoint reaches the end of the log, and the next write starts the
        log over (a checkpointer running beside the writer never catches up, and the log grows
        without end)."""
        assert self._sqlite is not None
        # On the driver's connection: through SQLAlchemy the statement would first begin a write.
        pooled = self._sqlite.raw_connection()
        try:
            pooled.driver_connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()  # type: ignore[union-attr]
        except Exception:  # the next one tries again; nothing waits on this
            log.exception("WAL checkpoint failed")
        finally:
            pooled.close()
            self._checkpointing = False

    def _write_on(self, conn: Connection, jobs: list[_Job], now: datetime) -> list[Outcome]:
        refs = [item.contact for job in jobs for item in job.items]
        ids = iter(contacts.resolve_sync(conn, refs, now))
        per_job: list[list[Event]] = []
        for job in jobs:
            per_job.append([
                to_event(item, job.source, job.provider, next(ids),
                         item.contact.phone if item.contact else None, job.received_at)
                for item in job.items
            ])
        # One statement for the whole group: the point of group commit.
        everything = [e for batch in per_job for e in batch]
        stored = store_events_sync(conn, everything, now)
        fresh = set(stored.inserted)
        optout.apply_sync(conn, [e for e in everything if e.id in fresh], self.policies, now)
        return [Outcome(sum(e.id in fresh for e in batch), sum(e.id not in fresh for e in batch))
                for batch in per_job]

    def close(self) -> None:
        """Close the SQLite writer's connection, in its thread, and the thread."""
        thread, engine = self._thread, self._sqlite
        self._thread = self._sqlite = None
        if thread is not None:
            if engine is not None:
                thread.submit(engine.dispose).result()
            thread.shutdown()


def cleaned(items: list[Incoming]) -> list[Incoming]:
    """Items with canonical phones and emails (raises MalformedError on a bad one)."""
    out = []
    for item in items:
        if item.contact is not None:
            contact = contacts.clean(item.contact)
            if contact != item.contact:  # most providers send canonical numbers already
                item = replace(item, contact=contact)
        out.append(item)
    return out
