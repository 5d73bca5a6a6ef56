"""arq, kept behind this one module: the relay that enqueues due jobs, and the workers.

The database is the truth; Redis only carries work. The relay (in ``journeys serve`` when
``JOURNEYS_REDIS_URL`` is set) hands due jobs to arq in batches: one arq job carries the ids
of up to BATCH jobs, and a worker claims them in the database, runs them and writes their
outcomes together, as the embedded executor does. A job handed over is marked (claimed_by
"relay" until now + HOLD), so the relay's next passes look past it; if no worker claims it
in time (Redis lost it), it is due again and handed over again. A worker that dies loses
its claims when their lease ends (seconds: the live ones renew theirs), and the relay hands
those jobs over again; one arq runs twice is claimed once.

The relay keeps at most MAX_QUEUED batches waiting in each queue: a backlog waits in the
database, in order, not in Redis, and a job never waits in Redis long enough to be handed
over a second time. The jobs of one instance are handed over in the order the journey wrote
them: one whose earlier sibling is not finished waits for it in the database.

Pitfalls handled here: arq's default serializer is pickle (we use JSON); its default
poll delay (0.5 s) and ``max_jobs`` (10) are slow; deferred jobs live only in Redis (we never
defer in Redis: the relay enqueues jobs when they are due); arq re-runs a killed worker's job
only after its timeout (we do not wait for that: the database lease comes back first).
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from arq.connections import ArqRedis, RedisSettings, create_pool
from arq.worker import Worker, func
from sqlalchemy import select, update
from sqlalchemy.engine import Connection

from actions.executor import Executor, in_order
from engine.db.database import Database
from engine.db.schema import jobs
from engine.loops import Waker

log = logging.getLogger("journeys.queue")

QUEUES = {"transactional": "journeys:transactional", "marketing": "journeys:marketing"}
FUNCTION = "journeys_run_jobs"
BATCH = 50  # job ids per arq job
MAX_QUEUED = 20  # arq jobs waiting in one queue before the relay holds back
JOB_TIMEOUT = 300  # seconds for one arq job (a batch): beyond any batch; the lease, not this, recovers jobs


def _dumps(value: dict[str, Any]) -> bytes:
    return json.dumps(value, default=str).encode()


def _loads(raw: bytes) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(raw)
    return loaded


def settings(url: str) -> RedisSettings:
    return RedisSettings.from_dsn(url)


async def pool(url: str) -> ArqRedis:
    return await create_pool(settings(url), job_serializer=_dumps, job_deserializer=_loads)


RELAY = "relay"  # claimed_by of a job handed to Redis and not yet claimed by a worker
HOLD = timedelta(seconds=6)  # after this, a queued job nobody claimed is queued again (Redis lost it)


async def relay_once(db: Database, redis: ArqRedis, now: datetime, limit: int = 500, hold: timedelta = HOLD) -> int:
    """Hand due jobs to arq in batches, transactional first; returns how many were handed over."""
    room = {kind: MAX_QUEUED - await redis.zcard(queue) for kind, queue in QUEUES.items()}
    if all(free <= 0 for free in room.values()):
        return 0
    batches = await db.transaction(_choose, now, limit, hold, room)
    if not any(batches.values()):
        return 0
    for kind, queue in batches.items():
        for batch in queue:
            await redis.enqueue_job(FUNCTION, batch, _queue_name=QUEUES[kind])
    return sum(len(batch) for queue in batches.values() for batch in queue)


def _choose(conn: Connection, now: datetime, limit: int, hold: timedelta,
            room: dict[str, int]) -> dict[str, list[list[str]]]:
    """The due jobs to hand over now, in batches per queue, marked as handed over."""
    waiting = (jobs.c.claimed_by.is_(None)) | (jobs.c.lease_until < now)
    due = (jobs.c.status == "pending") & (jobs.c.next_attempt_at <= now) & waiting
    stale = (jobs.c.status == "running") & (jobs.c.lease_until < now)
    rows = conn.execute(select(jobs.c.id, jobs.c.priority).where(due | stale)
                        .order_by(jobs.c.priority == "marketing", jobs.c.next_attempt_at).limit(limit)).all()
    ready = set(in_order([r.id for r in rows], conn))
    batches: dict[str, list[list[str]]] = {kind: [] for kind in QUEUES}
    for row in rows:
        if row.id not in ready:
            continue
        kind = row.priority if row.priority in QUEUES else "transactional"
        queue = batches[kind]
        if not queue or len(queue[-1]) >= BATCH:
            if len(queue) >= room[kind]:
                continue  # this queue is full: the rest waits here
            queue.append([])
        queue[-1].append(row.id)
    chosen = [i for queue in batches.values() for batch in queue for i in batch]
    if chosen:
        conn.execute(update(jobs).where(jobs.c.id.in_(chosen), due | stale).values(
            status="pending", claimed_by=RELAY, lease_until=now + hold, updated_at=now))
    return batches


async def relay(db: Database, url: str, stop: asyncio.Event, clock: Callable[[], datetime] = lambda: datetime.now(UTC),
                interval: float = 0.25, waker: Waker | None = None) -> None:
    """Relay until *stop*: at once when *waker* rings (the engine wrote jobs), else every *interval*."""
    redis = await pool(url)
    bell = waker or Waker()
    try:
        while not stop.is_set():
            try:
                handed = await relay_once(db, redis, clock())
            except Exception:
                log.exception("relay failed; retrying")
                handed = 0
                await bell.wait(stop, 1.0)
            if not handed:
                await bell.wait(stop, interval)
    finally:
        await redis.aclose()


async def run_jobs(ctx: dict[str, Any], ids: list[str]) -> str:
    """The arq function: claim the batch in the database, run it, write its outcomes.

    A job not claimable now (taken, not due, or behind an earlier sibling) goes back to the
    relay at once."""
    executor: Executor = ctx["executor"]
    claimed = await executor.claim(executor.clock(), ids=ids)
    statuses = await executor.execute(claimed)
    rest = sorted(set(ids) - {j.id for j in claimed})
    if rest:
        async with executor.db.write.begin() as conn:
            await conn.execute(update(jobs).where(jobs.c.id.in_(rest), jobs.c.claimed_by == RELAY,
                                                  jobs.c.status == "pending")
                               .values(claimed_by=None, lease_until=None))
    return f"{len(statuses)} run, {len(rest)} handed back"


async def run_until_signalled(executor: Executor, url: str, ready: Callable[[int], None]) -> None:
    """Run the arq :func:`workers` until SIGTERM or SIGINT, then stop them and close the
    executor's HTTP client. *ready* is told how many workers run, once they have started."""
    running = workers(executor, url)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    tasks = [asyncio.create_task(w.async_run()) for w in running]
    ready(len(running))
    await stop.wait()
    for w in running:
        await w.close()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await executor.close()


def workers(executor: Executor, url: str, *, burst: bool = False, max_jobs: int = 4,
            poll_delay: float = 0.05) -> list[Worker]:
    """One arq worker per priority queue: marketing bursts never wait in front of transactional sends."""
    return [
        Worker(
            functions=[func(run_jobs, name=FUNCTION, timeout=JOB_TIMEOUT, max_tries=1000)],
            queue_name=queue, redis_settings=settings(url), burst=burst, handle_signals=False,
            max_jobs=max_jobs, poll_delay=poll_delay, keep_result=0, job_timeout=JOB_TIMEOUT,
            job_serializer=_dumps, job_deserializer=_loads, ctx={"executor": executor}, log_results=False,
        )
        for queue in QUEUES.values()
    ]
