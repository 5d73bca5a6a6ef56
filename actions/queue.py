"""arq, kept behind this one module: the relay that enqueues due jobs, and the workers.

The database is the truth; Redis only carries work. The relay (in ``journeys serve`` when
``JOURNEYS_REDIS_URL`` is set) enqueues every due job that is pending, or running with a
lease that ran out, with arq's ``_job_id`` = job id + attempt, so a job is queued at most
once per attempt however often the relay passes. Workers claim the job in the database
before running it (the same lease and fence as the embedded executor), so a job Redis
lost is simply enqueued again, and one arq runs twice is claimed once.

Pitfalls handled here: arq's default serializer is pickle (we use JSON); its default
poll delay (0.5 s) and ``max_jobs`` (10) are slow; ``_job_id`` is refused while a result
exists (we keep no results); deferred jobs live only in Redis (we never defer in Redis:
the relay enqueues jobs when they are due).
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

from actions.executor import Executor
from engine.db.database import Database
from engine.db.schema import jobs
from engine.loops import repeat

log = logging.getLogger("journeys.queue")

QUEUES = {"transactional": "journeys:transactional", "marketing": "journeys:marketing"}
FUNCTION = "journeys_run_job"
JOB_TIMEOUT = 120  # seconds: beyond any action timeout; arq re-runs a dead worker's job after this + 10 s


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
HOLD = timedelta(seconds=30)  # after this, a queued job nobody claimed is queued again (Redis lost it)


async def relay_once(db: Database, redis: ArqRedis, now: datetime, limit: int = 500, hold: timedelta = HOLD) -> int:
    """Enqueue due jobs, transactional first; returns how many were newly queued.

    A job handed over is marked (claimed_by "relay" until now + *hold*), so the next passes
    look past it instead of offering Redis the same backlog again; if no worker claims it in
    time (Redis lost it), it is due again and enqueued again. A job whose worker died (its
    lease ran out) is put back to pending the same way.
    """
    waiting = (jobs.c.claimed_by.is_(None)) | (jobs.c.lease_until < now)
    due = (jobs.c.status == "pending") & (jobs.c.next_attempt_at <= now) & waiting
    stale = (jobs.c.status == "running") & (jobs.c.lease_until < now)
    async with db.read.connect() as conn:
        rows = (await conn.execute(select(jobs.c.id, jobs.c.attempts, jobs.c.priority).where(due | stale)
                                   .order_by(jobs.c.priority == "marketing", jobs.c.next_attempt_at)
                                   .limit(limit))).all()
    if not rows:
        return 0
    async with db.write.begin() as conn:
        await conn.execute(update(jobs).where(jobs.c.id.in_([r.id for r in rows]), due | stale).values(
            status="pending", claimed_by=RELAY, lease_until=now + hold, updated_at=now))
    queued = 0
    for row in rows:
        queue = QUEUES.get(row.priority, QUEUES["transactional"])
        job = await redis.enqueue_job(FUNCTION, row.id, _job_id=f"{row.id}:{row.attempts}", _queue_name=queue)
        queued += job is not None
    return queued


async def relay(db: Database, url: str, stop: asyncio.Event, clock: Callable[[], datetime] = lambda: datetime.now(UTC),
                interval: float = 0.05) -> None:
    redis = await pool(url)
    try:
        await repeat(lambda: relay_once(db, redis, clock()), stop, idle=interval, log=log, what="relay")
    finally:
        await redis.aclose()


WAIT_FOR_SIBLINGS = 5.0  # seconds a worker waits for an earlier job of the same instance to finish


async def run_job(ctx: dict[str, Any], job_id: str) -> str:
    """The arq function: claim the job in the database, run it there, write its outcome.

    The jobs of one instance must run in the order the journey wrote them; they reach
    workers at the same time, so a later one waits here (briefly) for the earlier one.
    """
    executor: Executor = ctx["executor"]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_FOR_SIBLINGS
    while True:
        claimed = await executor.claim(executor.clock(), ids=[job_id])
        if claimed:
            return await executor.run_job(claimed[0])
        if loop.time() >= deadline or not await _waits_for_sibling(executor.db, job_id):
            break
        await asyncio.sleep(0.05)
    # Not now (not due, taken, or behind a sibling waiting for a retry): back to the relay at once.
    async with executor.db.write.begin() as conn:
        await conn.execute(update(jobs).where(jobs.c.id == job_id, jobs.c.claimed_by == RELAY,
                                              jobs.c.status == "pending")
                           .values(claimed_by=None, lease_until=None))
    return "not now: handed back to the relay"


async def _waits_for_sibling(db: Database, job_id: str) -> bool:
    """Whether *job_id* is pending and an earlier job of its instance is running or due now."""
    instance = job_id.rsplit(":", 2)[0]
    async with db.read.connect() as conn:
        rows = (await conn.execute(select(jobs.c.id, jobs.c.status).where(
            jobs.c.instance_id == instance, jobs.c.status.in_(["pending", "running"])))).all()
    mine = next((r for r in rows if r.id == job_id), None)
    if mine is None or mine.status != "pending":
        return False
    order = [int(x) for x in job_id.rsplit(":", 2)[1:]]
    return any([int(x) for x in r.id.rsplit(":", 2)[1:]] < order for r in rows if r.id != job_id)


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


def workers(executor: Executor, url: str, *, burst: bool = False, max_jobs: int = 50,
            poll_delay: float = 0.05) -> list[Worker]:
    """One arq worker per priority queue: marketing bursts never wait in front of transactional sends."""
    return [
        Worker(
            functions=[func(run_job, name=FUNCTION, timeout=JOB_TIMEOUT, max_tries=1000)],
            queue_name=queue, redis_settings=settings(url), burst=burst, handle_signals=False,
            max_jobs=max_jobs, poll_delay=poll_delay, keep_result=0, job_timeout=JOB_TIMEOUT,
            job_serializer=_dumps, job_deserializer=_loads, ctx={"executor": executor}, log_results=False,
        )
        for queue in QUEUES.values()
    ]
