"""The relay and the arq workers against a real Redis (invariants 4 and 5).

The database is the truth and Redis only carries work: every due job ends done whatever
Redis keeps, a job is queued once per attempt however often the relay passes, transactional
and marketing jobs travel on queues of their own, a worker killed with SIGKILL in the middle
of an outside call loses nothing, and the call it repeats carries the same idempotency key.

Each test has a Redis database of its own (see conftest.py); nothing is mocked.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from arq.connections import ArqRedis
from sqlalchemy import func, select

from actions.executor import Executor, ExecutorSettings
from actions.queue import BATCH, FUNCTION, HOLD, QUEUES, pool, relay, relay_once, workers
from actions.templates import TemplateStore
from engine.db import migrate
from engine.db.database import Database, connect
from engine.db.schema import contacts, jobs, messages, steps
from journeys.config import Config, Policies
from tests.actions.conftest import KeyReceiver
from tests.engine.runtime_helpers import T0, deploy, drain, engine_for, ev, journey, put, rows
from tests.services import sqlite_url

pytestmark = [
    pytest.mark.anyio,
    # arq 0.28's Worker.close() calls redis' deprecated close(); that is arq's, not ours to fail on
    pytest.mark.filterwarnings("ignore:Call to deprecated close:DeprecationWarning"),
    pytest.mark.usefixtures("close_http_action"),
]

ROOT = Path(__file__).resolve().parents[2]
EXE = str(Path(sys.executable).parent / "journeys")
WORKER_SCRIPT = Path(__file__).resolve().parent / "worker_process.py"
LEASE = ExecutorSettings().lease

WELCOME = """
journey: welcome
version: 1
trigger: {on: user.signed_up}
initial: hello
states:
  hello:
    enter:
      - action: send_sms
        with: {body: "Welcome {{ contact.id }}"}
      - action: set_contact
        with: {attributes: {welcomed: true}}
    final: true
"""

PROMO = """
journey: promo
version: 1
priority: marketing
trigger: {on: promo.started}
initial: offer
states:
  offer:
    enter: [{action: send_sms, with: {body: "20% off"}}]
    final: true
"""


FAREWELL = """
journey: farewell
version: 1
trigger: {on: user.left}
initial: gone
states:
  gone:
    enter:
      - action: suppress
        with: {channels: [sms], reason: "left"}
      - action: send_sms
        with: {body: "this must not leave: sms is suppressed by the action before"}
    final: true
"""


# --- helpers ------------------------------------------------------------------------------


def config() -> Config:
    return Config({}, {}, Policies())


def executor(db: Database, tmp_path: Path, name: str, now: datetime = T0) -> Executor:
    return Executor(db, config(), TemplateStore(tmp_path), name, clock=lambda: now)


_phones = itertools.count(1)


async def add_contacts(db: Database, ids: Iterable[str]) -> None:
    async with db.write.begin() as conn:
        await conn.execute(contacts.insert(), [
            {"id": i, "phone": f"+49151{next(_phones):08d}", "email": None, "timezone": None, "locale": None,
             "attributes": {}, "created_at": T0, "updated_at": T0} for i in ids])


async def start(db: Database, text: str, event_type: str, who: Sequence[str], now: datetime = T0) -> None:
    """Deploy *text*, let every contact in *who* enter it at *now*, and run the engine dry: jobs are written."""
    registry = await deploy(db, journey(text), now=now)
    await add_contacts(db, who)
    await put(db, *[ev(event_type, c, at=now) for c in who], at=now)
    await drain(engine_for(db, registry, now=now, batch_size=500))


async def job_ids(db: Database, *where: Any) -> list[str]:
    return sorted(r.id for r in await rows(db, select(jobs.c.id).where(*where)))


async def statuses(db: Database) -> dict[str, str]:
    return {r.id: r.status for r in await rows(db, select(jobs.c.id, jobs.c.status))}


async def attempts_of(db: Database) -> dict[str, int]:
    """Attempt steps written per job: one per run that wrote an outcome."""
    out: dict[str, int] = {}
    for r in await rows(db, select(steps.c.detail).where(steps.c.kind == "attempt")):
        job = r.detail.split(" ")[1]
        out[job] = out.get(job, 0) + 1
    return out


async def queued(redis: ArqRedis, kind: str) -> list[str]:
    """The job ids the arq jobs waiting in a queue carry (a batch each), sorted; repeats stay."""
    out: list[str] = []
    for arq_id in await redis.zrange(QUEUES[kind], 0, -1):
        raw = await redis.get(f"arq:job:{arq_id.decode()}")
        if raw is not None:
            out += json.loads(raw)["a"][0]
    return sorted(out)


async def run_burst(executors: Sequence[Executor], url: str, only: str | None = None, timeout: float = 30,
                    max_jobs: int = 50, poll_delay: float = 0.05) -> None:
    """arq workers in burst mode (they stop when their queue is empty), all at once."""
    running = [w for ex in executors for w in workers(ex, url, burst=True, max_jobs=max_jobs, poll_delay=poll_delay)
               if only is None or w.queue_name == QUEUES[only]]
    try:
        await asyncio.wait_for(asyncio.gather(*(w.async_run() for w in running)), timeout)
    finally:
        for w in running:
            await w.close()
        for ex in executors:
            await ex.close()


async def work_off(db: Database, redis: ArqRedis, url: str, executors: Sequence[Executor], now: datetime,
                   only: str | None = None, rounds: int = 10, **burst: Any) -> None:
    """Workers empty the queues, the relay passes again, ... until it has nothing more to queue.

    What the relay's loop and long-running workers do together, in deterministic turns: a job a
    worker could not take yet (an earlier job of its instance was unfinished) goes back to the
    relay and is queued again on its next pass.
    """
    for _ in range(rounds):
        await run_burst(executors, url, only=only, **burst)
        if await relay_once(db, redis, now) == 0:
            return
    raise AssertionError(f"the relay still found jobs to queue after {rounds} rounds: {await statuses(db)}")


# --- 1. relay + workers: every due job once, on its own queue -----------------------------


async def test_relayed_jobs_run_exactly_once(db: Database, tmp_path: Path, redis_url: str) -> None:
    await start(db, WELCOME, "user.signed_up", ["c-1", "c-2", "c-3"])
    ids = await job_ids(db)
    assert len(ids) == 6
    redis = await pool(redis_url)
    try:
        assert await relay_once(db, redis, T0) == 6
        # one arq job carries the batch; the relay passes again and again: nothing is queued twice
        # while the jobs are marked as handed over
        assert await redis.zcard(QUEUES["transactional"]) == 1
        assert await relay_once(db, redis, T0) == 0
        assert await queued(redis, "transactional") == ids
        assert await queued(redis, "marketing") == []
        # no worker took them within HOLD (as if Redis had lost them): handed over again; the
        # workers then find each job twice in Redis and claim it once in the database
        assert await relay_once(db, redis, T0 + HOLD + timedelta(seconds=1)) == 6
        assert await queued(redis, "transactional") == sorted(ids + ids)

        # two worker processes' worth of executors and arq workers on the same queues
        await work_off(db, redis, redis_url, [executor(db, tmp_path, "w1"), executor(db, tmp_path, "w2")], T0)
        assert set((await statuses(db)).values()) == {"done"}
        assert await attempts_of(db) == dict.fromkeys(ids, 1)
        async with db.read.connect() as conn:
            assert (await conn.execute(select(func.count()).select_from(messages))).scalar_one() == 3
        # nothing is left in Redis: no queued job, no job or result key (keep_result=0)
        assert await queued(redis, "transactional") == []
        assert await redis.keys("arq:job:*") == [] and await redis.keys("arq:result:*") == []
        assert await relay_once(db, redis, T0 + timedelta(hours=1)) == 0  # done jobs are never due again

        # arq delivers a job a second time (a re-run after a timeout): claimed in the database once
        await redis.enqueue_job(FUNCTION, [ids[0]], _job_id="again", _queue_name=QUEUES["transactional"])
        await run_burst([executor(db, tmp_path, "w3")], redis_url)
        assert await attempts_of(db) == dict.fromkeys(ids, 1)
        assert (await statuses(db))[ids[0]] == "done"
    finally:
        await redis.aclose()


async def test_a_marketing_burst_waits_on_its_own_queue(db: Database, tmp_path: Path, redis_url: str) -> None:
    crowd = [f"m-{n:03d}" for n in range(200)]
    await start(db, PROMO, "promo.started", crowd)
    await start(db, WELCOME, "user.signed_up", ["vip"])
    marketing = await job_ids(db, jobs.c.priority == "marketing")
    transactional = await job_ids(db, jobs.c.priority == "transactional")
    assert (len(marketing), len(transactional)) == (200, 2)
    redis = await pool(redis_url)
    try:
        assert await relay_once(db, redis, T0) == 202
        assert await queued(redis, "marketing") == marketing
        assert await queued(redis, "transactional") == transactional
        # only the transactional worker runs: its jobs are done whatever waits in the marketing queue
        began = time.monotonic()
        await work_off(db, redis, redis_url, [executor(db, tmp_path, "w1")], T0, only="transactional")
        assert time.monotonic() - began < 5
        now = await statuses(db)
        assert {now[i] for i in transactional} == {"done"}
        assert {now[i] for i in marketing} == {"pending"}
        assert len(await queued(redis, "marketing")) == 200  # in batches of BATCH
        assert await redis.zcard(QUEUES["marketing"]) == -(-200 // BATCH)
        # and the marketing worker then works through its own queue
        await work_off(db, redis, redis_url, [executor(db, tmp_path, "w2")], T0, only="marketing")
        assert set((await statuses(db)).values()) == {"done"}
    finally:
        await redis.aclose()


async def test_a_marketing_backlog_larger_than_a_relay_pass_does_not_hold_back_transactional_jobs(
        db: Database, tmp_path: Path, redis_url: str) -> None:
    await start(db, PROMO, "promo.started", [f"m-{n:03d}" for n in range(60)])
    later = T0 + timedelta(seconds=1)
    await start(db, WELCOME, "user.signed_up", ["vip"], now=later)
    transactional = await job_ids(db, jobs.c.priority == "transactional")
    redis = await pool(redis_url)
    try:
        # the relay's loop passes, a few jobs a pass; nobody works the marketing queue yet (a big campaign)
        for _ in range(5):
            await relay_once(db, redis, later, limit=50)
        assert await queued(redis, "transactional") == transactional
        assert len(await queued(redis, "marketing")) == 60
    finally:
        await redis.aclose()


async def test_many_concurrent_sends_do_not_exhaust_the_pool(db: Database, tmp_path: Path, redis_url: str) -> None:
    """A worker runs up to max_jobs (50) at once: on PostgreSQL each send holds a connection (the contact
    row FOR SHARE) for the whole send, so one that needed a second connection from the same pool would
    wait for the pool timeout and become a dead letter ("QueuePool limit ... reached")."""
    await start(db, PROMO, "promo.started", [f"m-{n:03d}" for n in range(100)])
    redis = await pool(redis_url)
    try:
        assert await relay_once(db, redis, T0) == 100
        with contextlib.suppress(TimeoutError):  # 100 sends take about a second when nothing waits on the pool
            await run_burst([executor(db, tmp_path, "w1")], redis_url, only="marketing", timeout=30)
        outcome = collections.Counter((await statuses(db)).values())
        errors = {r.last_error for r in await rows(db, select(jobs.c.last_error).where(jobs.c.last_error.is_not(None)))}
        assert outcome == {"done": 100}, f"{dict(outcome)}; errors: {errors}"
    finally:
        await redis.aclose()


async def test_the_jobs_of_one_instance_run_in_the_order_the_journey_wrote_them(
        db: Database, tmp_path: Path, redis_url: str) -> None:
    """Through Redis as in the embedded executor: the jobs one transition wrote (suppress, then send_sms)
    run in that order, although the relay queues each on its own and a worker runs many at once."""
    await start(db, FAREWELL, "user.left", [f"c-{n:02d}" for n in range(20)])
    redis = await pool(redis_url)
    try:
        assert await relay_once(db, redis, T0) == 40
        await work_off(db, redis, redis_url, [executor(db, tmp_path, "w1")], T0)
    finally:
        await redis.aclose()
    done = collections.Counter((r.action, r.status) for r in await rows(db, select(jobs.c.action, jobs.c.status)))
    assert done == {("suppress", "done"): 20, ("send_sms", "skipped"): 20}  # as the embedded executor does


# --- 2. Redis loses its data: the database has every job ------------------------------------


async def test_a_flushed_redis_loses_no_job(db: Database, tmp_path: Path, redis_url: str) -> None:
    await start(db, WELCOME, "user.signed_up", ["c-1", "c-2", "c-3"])
    ids = await job_ids(db)
    redis = await pool(redis_url)
    try:
        assert await relay_once(db, redis, T0) == 6
        await redis.flushdb()  # Redis restarted without persistence, or evicted the keys
        assert await queued(redis, "transactional") == []
        # no worker claims them: once the relay's hold ran out, it finds every job again
        again = T0 + HOLD + timedelta(seconds=1)
        assert await relay_once(db, redis, again) == 6
        assert await queued(redis, "transactional") == ids

        # mid-run: a worker claimed a job and died, and Redis lost its copy as well
        assert len(await executor(db, tmp_path, "dead", now=again).claim(again, ids=[ids[0]])) == 1
        await redis.flushdb()
        later = again + HOLD + timedelta(seconds=1)
        # the claimed one is not due while its lease runs, and its instance's next job waits for it
        assert await relay_once(db, redis, later) == 4
        after_lease = again + LEASE + timedelta(seconds=1)
        assert await relay_once(db, redis, after_lease) == 2  # ... both come once the lease ran out
        assert await queued(redis, "transactional") == ids

        await work_off(db, redis, redis_url, [executor(db, tmp_path, "w1", now=after_lease)], after_lease)
        assert set((await statuses(db)).values()) == {"done"}
        assert await attempts_of(db) == dict.fromkeys(ids, 1)
    finally:
        await redis.aclose()


# --- 3. kill -9 of a worker in the middle of an outside call --------------------------------


HOOK = """
journey: hook
version: 1
trigger: {{on: order.paid}}
initial: notify
states:
  notify:
    enter:
      - action: http
        with:
          url: "{url}"
          json: {{order: "{{{{ event.data.order }}}}"}}
    final: true
"""


def deployment(folder: Path, receiver_url: str) -> str:
    """A deployment folder whose http actions may call 127.0.0.0/8; returns the journey's text."""
    text = textwrap.dedent(HOOK.format(url=receiver_url)).lstrip()
    (folder / "journeys").mkdir(parents=True)
    (folder / "journeys" / "hook.yaml").write_text(text, encoding="utf-8")
    (folder / "config.yaml").write_text(textwrap.dedent("""
        sources: {}
        channels: {}
        policies:
          http_allow_networks: ["127.0.0.0/8"]
    """).lstrip(), encoding="utf-8")
    return text


def spawn(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> int:
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        return proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(5)


async def wait_for_status(db: Database, job_id: str, status: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (await statuses(db)).get(job_id) == status:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"job {job_id} is {(await statuses(db)).get(job_id)!r}, not {status!r}, after {timeout} s")


async def test_a_killed_worker_loses_no_job_and_the_call_it_repeats_has_the_same_key(
        tmp_path: Path, redis_url: str, key_receiver: KeyReceiver) -> None:
    receiver = key_receiver
    folder = tmp_path / "deploy"
    text = deployment(folder, receiver.url)
    db_url = sqlite_url(folder)  # the worker's database is the test's: SQLite file in the folder
    env = {**os.environ, "JOURNEYS_REDIS_URL": redis_url, "JOURNEYS_DATABASE_URL": db_url, "PYTHONUNBUFFERED": "1"}
    db = connect(db_url)
    try:
        await migrate.upgrade(db)
        now = datetime.now(UTC)  # the worker runs on the real clock: the job is due now
        registry = await deploy(db, journey(text), now=now)
        await put(db, ev("order.paid", "c-1", at=now, data={"order": "o-1"}), at=now)
        await drain(engine_for(db, registry, now=now))
        [job_id] = await job_ids(db)
        await kill_and_recover(db, job_id, folder, redis_url, env, receiver, tmp_path)
        [row] = await rows(db, select(jobs))
        assert (row.status, row.attempts, row.result["status"]) == ("done", 1, 201)
        assert await attempts_of(db) == {job_id: 1}
    finally:
        await db.dispose()
    # the call was made twice (the first answer never reached the dead worker), with one key: one effect
    assert receiver.keys == [job_id, job_id]
    assert receiver.effects == {job_id: 1}


async def kill_and_recover(db: Database, job_id: str, folder: Path, redis_url: str, env: dict[str, str],
                           receiver: KeyReceiver, tmp_path: Path) -> None:
    """Kill a worker during its call, then let `journeys worker` finish the job.

    The dead worker's claim in the database runs out (its lease, 3 s, no longer renewed by a
    heartbeat), the relay hands the job over again, and the new worker claims it; arq's own
    re-run of the dead worker's arq job (after its timeout + 10 s) is not waited for.
    """
    redis = await pool(redis_url)
    procs: list[subprocess.Popen[bytes]] = []
    halt = asyncio.Event()
    relaying: asyncio.Task[None] | None = None
    try:
        assert await relay_once(db, redis, datetime.now(UTC)) == 1
        # a worker (arq job timeout 2 s, lease 3 s) takes the job and calls the receiver, which holds the call
        first = spawn([sys.executable, str(WORKER_SCRIPT), str(folder), "--lease", "3", "--job-timeout", "2"], env,
                      tmp_path / "first.log")
        procs.append(first)
        if not await asyncio.to_thread(receiver.holding.wait, 20):
            raise AssertionError(f"the worker never called:\n{(tmp_path / 'first.log').read_text()}")
        assert stop(first, signal.SIGKILL) == -signal.SIGKILL  # kill -9 while the call is in flight
        [row] = await rows(db, select(jobs))
        assert (row.status, row.attempts) == ("running", 0)  # claimed by a dead worker: nothing written

        # the relay of `journeys serve` keeps passing, and a new `journeys worker` starts
        relaying = asyncio.create_task(relay(db, redis_url, halt))
        second = spawn([EXE, "worker", str(folder)], env, tmp_path / "second.log")
        procs.append(second)
        began = time.monotonic()
        await wait_for_status(db, job_id, "done", timeout=30)
        assert time.monotonic() - began < 15  # within seconds of the kill, not after arq's job timeout
        assert stop(second, signal.SIGTERM) == 0  # a clean stop on SIGTERM
        assert "arq workers on" in (tmp_path / "second.log").read_text()
    finally:
        halt.set()
        if relaying is not None:
            await relaying
        for proc in procs:
            stop(proc)
        await redis.aclose()


# --- 4. the CLI refuses to start without Redis -----------------------------------------------


@pytest.mark.parametrize("value", [None, ""])
async def test_the_worker_needs_journeys_redis_url(tmp_path: Path, value: str | None) -> None:
    folder = tmp_path / "deploy"
    deployment(folder, "http://127.0.0.1:9/tickets")
    env = {k: v for k, v in os.environ.items() if k != "JOURNEYS_REDIS_URL"}
    env["JOURNEYS_DATABASE_URL"] = sqlite_url(tmp_path)
    if value is not None:
        env["JOURNEYS_REDIS_URL"] = value
    proc = await asyncio.to_thread(subprocess.run, [EXE, "worker", str(folder)], env=env, capture_output=True,
                                   text=True, timeout=60)
    assert proc.returncode == 1
    assert "journeys: journeys worker needs JOURNEYS_REDIS_URL (redis://host:6379/0)" in proc.stderr
    assert proc.stdout == ""
    assert not (tmp_path / "journeys.db").exists()  # it stopped before touching the database
