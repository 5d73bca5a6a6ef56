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
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Literal

from sqlalchemy.engine import Connection

from actions.gate import GATES
from engine.db.database import Checkpoints, Database
from engine.db.sendlocks import SendLocks
from ingest import contacts, optout
from ingest.errors import StorageUnavailableError
from ingest.group import Outcome, write_group
from ingest.incoming import Incoming
from ingest.writer import WriterProcess
from journeys.config import Policies

log = logging.getLogger("journeys.ingest")

# How long the event loop waits for a SQLite group commit before it runs on (Committer).
BLOCK_FOR = 0.05
# After a group of at least BUSY_GROUP requests, the next group is collected for GROUP_WINDOW
# seconds before it commits; after a smaller one, it commits at once.
BUSY_GROUP = 8
GROUP_WINDOW = 0.003
# SQLite: the ingest writer checkpoints the write-ahead log after this many events (database.Checkpoints).
CHECKPOINT_EVERY = 1000


@dataclass
class _Job:
    source: str
    provider: str
    items: list[Incoming]
    received_at: datetime
    future: asyncio.Future[Outcome]


class Committer:
    """Group commit: one transaction for the requests that arrived together.

    A commit is scheduled when the first request of a group arrives and starts once the
    event loop has run every request that was ready with it, so one group holds what came in
    together; when the last group was large, it also waits GROUP_WINDOW for more. The
    requests that arrive while it commits form the next group: groups grow with the load by
    themselves, and a lone webhook is committed at once. With a writer process, two groups
    may be in flight (the second queued behind the first in the writer).

    On SQLite the group is written on a synchronous connection (database.sqlite_writer): through
    aiosqlite every statement is several hand-offs between the event loop and the driver's
    thread, which cost more than the statements. *writer* says where:

    - ``"process"`` (``journeys serve``): a process of its own (ingest.writer), on the other
      core, while the event loop receives the next group. A group without opt-outs is sent
      from _start and answered from the writer's protocol, with no task in between; one with
      opt-outs goes through _commit, for the send gates.
    - ``"thread"`` (the default; tests and tools): a thread of this process, while the
      process's one async write connection is held so no transaction of the engine is open
      meanwhile. The event loop waits for the thread (up to BLOCK_FOR) instead of running on:
      a thread that has to win the interpreter lock back from a busy event loop at every call
      into SQLite takes several times as long.
    """

    def __init__(self, db: Database, policies: Policies, *, max_batch: int = 512,
                 writer: Literal["thread", "process"] = "thread", checkpoint_every: int = CHECKPOINT_EVERY,
                 stored: Callable[[], None] | None = None) -> None:
        self.db = db
        # told after a commit that stored new events: `serve` wakes its engine process with it
        self.stored = stored
        self.locks = SendLocks.for_sqlite_file(db.url.database or "") if db.is_sqlite else SendLocks.none()
        self.policies = policies
        self.max_batch = max_batch
        self.checkpoint_every = checkpoint_every
        self._pending: deque[_Job] = deque()
        self._scheduled = False  # the next group's start is scheduled
        self._running = 0  # groups started and not yet answered
        self._through_commit = 0  # of those, the ones in _commit (see _kick)
        self._last_group = 0  # requests in the last group: is the endpoint busy?
        self._idle = asyncio.Event()
        self._idle.set()
        self._process: WriterProcess | None = None
        if db.is_sqlite and writer == "process":
            self._process = WriterProcess(db.url.render_as_string(hide_password=False), policies, checkpoint_every)
        # Groups in flight: with a writer process, the next group is queued behind the one it
        # writes, so it never waits for us, and we never wait for it while requests come in.
        self._depth = 2 if self._process is not None else 1
        self._sqlite: Connection | None = None  # the writer thread's own (SQLite)
        self._thread: concurrent.futures.ThreadPoolExecutor | None = None
        self._checkpoints: Checkpoints | None = None  # the writer thread's (SQLite)

    async def submit(self, source: str, provider: str, items: list[Incoming],
                     received_at: datetime | None = None) -> Outcome:
        loop = asyncio.get_running_loop()
        job = _Job(source, provider, items, received_at or datetime.now(UTC), loop.create_future())
        self._pending.append(job)
        self._idle.clear()
        self._kick(loop)
        return await job.future

    def problem(self) -> str | None:
        """Why groups cannot be written now (the writer process), else None: a readiness check."""
        return self._process.problem if self._process is not None else None

    async def run(self, stop: asyncio.Event) -> None:
        """Start the writer process (if any), wait for *stop*, then for the requests still
        waiting to be committed; close the writer."""
        if self._process is not None:
            await self._process.start()  # now rather than on the first webhook
        await stop.wait()
        await self._idle.wait()
        await self.close()

    def _kick(self, loop: asyncio.AbstractEventLoop) -> None:
        """Schedule the next group's start, if there is room for one more in flight."""
        # A group on its way through _commit (opt-outs: a read and the gates first) is the last
        # in flight until it is written: one started after it could reach the writer first.
        depth = 1 if self._through_commit else self._depth
        if self._scheduled or self._running >= depth or not self._pending:
            return
        self._scheduled = True
        if self._last_group >= BUSY_GROUP:
            # Under load, wait a moment for the requests on their way: one commit of many
            # costs far less than several of a few (PostgreSQL's commit_delay, in effect).
            loop.call_later(GROUP_WINDOW, self._start, loop)
        else:
            # after the requests the event loop has ready now: they join this group
            loop.call_soon(self._start, loop)

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._scheduled = False
        jobs: list[_Job] = []
        count = 0
        while self._pending and (not jobs or count + len(self._pending[0].items) <= self.max_batch):
            job = self._pending.popleft()
            jobs.append(job)
            count += len(job.items)
        self._last_group = len(jobs)
        self._running += 1
        process = self._process
        if process is not None and process.running and not any(_opts_out(i) for job in jobs for i in job.items):
            # Straight to the writer process, and its answer straight to the requests: no task
            # in between to wait its turn in the event loop's queue (ingest.writer._Child).
            try:
                process.send(jobs, datetime.now(UTC), lambda result: self._finish(loop, jobs, result))
            except Exception as exc:  # not even sent (it could not be encoded): 503 for the group
                self._finish(loop, jobs, exc)
            return
        self._through_commit += 1
        task = loop.create_task(self._commit(jobs))

        def committed(finished: asyncio.Task[list[Outcome]]) -> None:
            self._through_commit -= 1
            self._finish(loop, jobs, finished.exception() or finished.result())

        task.add_done_callback(committed)

    def _finish(self, loop: asyncio.AbstractEventLoop, jobs: list[_Job], result: list[Outcome] | BaseException) -> None:
        error = result if isinstance(result, BaseException) else None
        if error is not None:
            log.error("storing %d requests failed", len(jobs), exc_info=error)
            unavailable = StorageUnavailableError(f"storage unavailable: {type(error).__name__}", retry_after=5)
            for job in jobs:
                if not job.future.done():
                    job.future.set_exception(unavailable)
        else:
            assert not isinstance(result, BaseException)
            for job, outcome in zip(jobs, result, strict=True):
                if not job.future.done():
                    job.future.set_result(outcome)
            if self.stored is not None and any(outcome.stored for outcome in result):
                try:
                    self.stored()
                except Exception:  # a wake-up is a hint; the engine polls anyway
                    log.exception("waking the engine failed")
        self._running -= 1
        self._kick(loop)
        if not (self._running or self._scheduled or self._pending):
            self._idle.set()

    async def _commit(self, jobs: list[_Job]) -> list[Outcome]:
        # Sends in flight to a contact that opts out here finish first; later ones wait for
        # this commit and then see the suppression (actions/gate.py).
        opting_out = await self._opting_out(jobs)
        now = datetime.now(UTC)
        async with GATES.opting_out(opting_out), self.locks.opting_out(opting_out):
            if not self.db.is_sqlite:
                async with self.db.write.begin() as conn:
                    return await conn.run_sync(write_group, jobs, now, self.policies)
            if self._process is not None:
                return await self._process.write(jobs, now)
            async with self.db.write.connect():  # see the class docstring
                return await self._write_in_thread(jobs, now)

    async def _write_in_thread(self, jobs: list[_Job], now: datetime) -> list[Outcome]:
        """The SQLite group commit, in the writer's thread; the checkpoints' turn after it."""
        writer = self._writer()
        written = writer.submit(self._write_sqlite, jobs, now)
        # next in the writer's queue, and nobody waits for it: the requests are answered first
        writer.submit(self._after_write, sum(len(job.items) for job in jobs))
        try:
            return written.result(timeout=BLOCK_FOR)
        except concurrent.futures.TimeoutError:
            # Someone else holds SQLite's lock (another process, or a connection of this
            # one that needs the event loop to finish): let the loop run meanwhile.
            return await asyncio.wrap_future(written)

    def _writer(self) -> concurrent.futures.ThreadPoolExecutor:
        if self._thread is None:
            self._thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="journeys-ingest-writer")
        return self._thread

    async def _opting_out(self, jobs: list[_Job]) -> list[str]:
        refs = [i.contact for job in jobs for i in job.items if _opts_out(i) and i.contact is not None]
        if not refs:
            return []
        async with self.db.read.connect() as conn:
            return await contacts.existing(conn, refs)

    def _write_sqlite(self, jobs: list[_Job], now: datetime) -> list[Outcome]:
        if self._sqlite is None:
            # kept open in the writer's thread: a connection per group costs a pool round trip and a rollback
            self._sqlite = self.db.sqlite_writer().connect()
            self._checkpoints = Checkpoints(self.db.url, self.checkpoint_every)
        with self._sqlite.begin():
            return write_group(self._sqlite, jobs, now, self.policies)

    def _after_write(self, rows: int) -> None:
        if self._sqlite is not None and self._checkpoints is not None:
            self._checkpoints.after_write(self._sqlite, rows)

    async def close(self) -> None:
        """Close the SQLite writer: the process, or the thread and its connection."""
        if self._process is not None:
            await self._process.close()
        thread, conn, checkpoints = self._thread, self._sqlite, self._checkpoints
        self._thread = self._sqlite = self._checkpoints = None
        if thread is not None:
            if conn is not None:
                thread.submit(_dispose, conn).result()
            thread.shutdown()
        if checkpoints is not None:
            checkpoints.close()
        self.locks.close()


def _opts_out(item: Incoming) -> bool:
    """An opt-out: its group waits for the sends in flight to its contact (actions.gate)."""
    return item.type in optout.OPT_OUT_TYPES


def _dispose(conn: Connection) -> None:
    conn.close()
    conn.engine.dispose()


def cleaned(items: list[Incoming]) -> list[Incoming]:
    """Items with canonical phones and emails (raises MalformedError on a bad one)."""
    out = []
    for item in items:
        ref = item.contact
        if ref is not None:
            phone = contacts.e164(ref.phone) if ref.phone else None
            email = contacts.email(ref.email) if ref.email else None
            if phone != ref.phone or email != ref.email:  # most providers send canonical ones already
                item = replace(item, contact=replace(ref, phone=phone, email=email))
        out.append(item)
    return out
