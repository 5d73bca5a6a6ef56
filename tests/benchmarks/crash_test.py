"""Crash test: journeys killed with SIGKILL under load loses nothing and does nothing twice.

Run by hand (pytest collects no test from this file), from the repository root:

    .venv/bin/python tests/benchmarks/crash_test.py               # SQLite, about 3 minutes
    .venv/bin/python tests/benchmarks/crash_test.py --postgres    # PostgreSQL + Redis + journeys worker
    .venv/bin/python tests/benchmarks/crash_test.py --kill-group  # SIGKILL serve's whole process group
    .venv/bin/python tests/benchmarks/crash_test.py --keep        # keep the folder, database and logs

What it does: the deployment of e2e_support.py (an ``events`` source; the journey ``order-hook``
starts on ``order.created``, posts once to a receiver with the ``http`` action, retry policy
``hook``: 10 attempts from 200 ms, and is final). ``journeys serve DIR`` runs as a user runs it.
A sender in this process posts ``--rate`` (150) signed ``order.created`` webhooks a second for
``--seconds`` (20), 3,000 orders, each its own contact, from up to 64 connections. Each order is
resent (the same event id, a fresh signature) until it gets a 2xx: on connection errors,
timeouts (5 s), 429 and 5xx, after 50 ms doubling to at most 1 s, with jitter. The receiver
answers 500 to one request in ten, so the action's retries are used too.

While that runs, ``journeys serve`` is killed with SIGKILL at 6 s and 13 s (``--kills``) and
started again at once on the same port. By default only serve's own process is killed, as the
OOM killer would; on SQLite its writer process must then exit by itself. ``--kill-group``
kills serve's process group instead (the writer with it), as a container's end would.
With ``--postgres``: PostgreSQL (a new database, ``journeys db upgrade`` first) and Redis (one
of the databases 10 to 13, locked as the test suite locks them), and one ``journeys worker``,
itself killed with SIGKILL once (``--worker-kill``, 10 s) and started again at once.

Then, from the last restart, it waits for all of these to hold, and prints how long it took:

- every webhook acknowledged (a 2xx for each of the 3,000 orders);
- every event stored once: 3,000 ``order.created`` rows with 3,000 distinct provider event ids,
  and no other event (an ``action.failed`` would be one);
- no event left pending, and 3,000 instances, every one ``completed``;
- 3,000 jobs, every one ``done``;
- the receiver has exactly 3,000 distinct Idempotency-Keys, the jobs' ids, each answered with a
  2xx at least once (a key delivered more than once is counted, and allowed).

It passes when they all hold within ``--deadline`` (60 s) of the last restart. It goes on
watching for up to ``--observe`` (150 s) after the last restart to say when they came to hold,
if later. The exit status is 1 when a check fails, and each failing check is printed. Problems
of the product seen on the way (a killed serve's writer process still running, a process slow
to stop, tracebacks in the logs) are printed too.

Also printed: how long each restarted serve took to acknowledge a webhook again, and when each
check came to hold.

On the code of 2026-12-03 this fails, as expected: everything but the actions holds within about
30 s of the last restart (events claimed by the killed engine stay pending until their lease,
30 s, ends), and the jobs the killed executor had claimed stay ``running`` until their lease
(120 s) ends, so the last actions arrive about 120 s after the last restart. Nothing is lost or
stored twice.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import shutil
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from cli.loadtest import _Connection  # noqa: E402
from tests.benchmarks.e2e_support import (  # noqa: E402
    JOURNEYS,
    Process,
    Receiver,
    create_database,
    db_upgrade,
    drop_database,
    environment,
    free_port,
    job_ids_pg,
    job_ids_sqlite,
    machine,
    order_request,
    pg_counts,
    receiver_main,
    redis_database,
    sqlite_counts,
    wait_gone,
    worker,
    write_deployment,
)

CONNECTIONS = 64
ATTEMPT_TIMEOUT = 5.0


@dataclass
class Sender:
    """Posts each order until it gets a 2xx, from a pool of keep-alive connections."""

    port: int
    acked: dict[int, float] = field(default_factory=dict)  # order -> when its 2xx came
    acked_attempt: dict[int, float] = field(default_factory=dict)  # order -> when the attempt that got it began
    attempts: Counter[int] = field(default_factory=Counter)
    answers: Counter[str] = field(default_factory=Counter)  # status codes and error names
    refused: dict[int, int] = field(default_factory=dict)  # order -> a 4xx other than 429 (permanent)
    pool: asyncio.Queue[_Connection] = field(default_factory=asyncio.Queue)

    def __post_init__(self) -> None:
        for _ in range(CONNECTIONS):
            self.pool.put_nowait(_Connection("127.0.0.1", self.port, False))

    async def deliver(self, n: int, give_up_at: float) -> None:
        backoff = 0.05
        while time.time() < give_up_at:
            body, headers = order_request(n)
            self.attempts[n] += 1
            attempt_began = time.time()
            connection = await self.pool.get()
            try:
                status = await asyncio.wait_for(connection.post("/ingest/shop", body, headers), ATTEMPT_TIMEOUT)
            except (OSError, ConnectionError, asyncio.IncompleteReadError, ValueError, IndexError,
                    TimeoutError) as exc:
                self.answers[type(exc).__name__] += 1
                await connection.close()
                status = 0
            finally:
                self.pool.put_nowait(connection)
            if status:
                self.answers[str(status)] += 1
            if 200 <= status < 300:
                self.acked[n] = time.time()
                self.acked_attempt[n] = attempt_began
                return
            if 400 <= status < 500 and status != 429:
                self.refused[n] = status
                return
            await asyncio.sleep(backoff * random.uniform(0.5, 1.5))
            backoff = min(1.0, backoff * 2)

    async def close(self) -> None:
        while not self.pool.empty():
            await self.pool.get_nowait().close()


@dataclass
class Deployment:
    """serve (and, on PostgreSQL, a worker), restarted after each kill."""

    folder: Path
    env: dict[str, str]
    port: int
    tmp: Path
    kill_group: bool
    database_url: str | None = None
    serve: Process | None = None
    worker: Process | None = None
    problems: list[str] = field(default_factory=list)
    events: list[str] = field(default_factory=list)  # what happened when, for the report
    last_restart: float = 0.0
    retired: list[Process] = field(default_factory=list)
    restarts: list[float] = field(default_factory=list)  # when serve was started again

    def start_serve(self) -> None:
        self.serve = Process("journeys serve", [JOURNEYS, "serve", str(self.folder), "--port", str(self.port)],
                             self.env, self.tmp / "serve.log")
        self.serve.start(new_session=True)

    def start_worker(self) -> None:
        self.worker = worker(self.folder, self.env, self.tmp / "worker.log")

    async def kill_serve(self, began: float) -> None:
        assert self.serve is not None
        children = self.serve.kill(group=self.kill_group)
        self.retired.append(self.serve)
        self.start_serve()
        self.last_restart = time.time()
        self.restarts.append(self.last_restart)
        self.events.append(f"{self.last_restart - began:5.1f} s: serve killed (SIGKILL"
                           f"{' to its process group' if self.kill_group else ''}) and started again")
        if children:
            left = await asyncio.to_thread(wait_gone, children, 5)
            if left:
                self.problems.append(f"the killed serve's child process(es) {left} were still running 5 s later")

    async def kill_worker(self, began: float) -> None:
        assert self.worker is not None
        self.worker.kill()
        self.retired.append(self.worker)
        process = Process("journeys worker", [JOURNEYS, "worker", str(self.folder)], self.env,
                          self.tmp / "worker.log")
        process.start()
        self.worker = process
        self.last_restart = time.time()
        self.events.append(f"{self.last_restart - began:5.1f} s: worker killed (SIGKILL) and started again")

    async def counts(self) -> dict[str, int]:
        if self.database_url is None:
            return await asyncio.to_thread(sqlite_counts, self.folder)
        return await pg_counts(self.database_url)

    async def job_ids(self) -> set[str]:
        if self.database_url is None:
            return await asyncio.to_thread(job_ids_sqlite, self.folder)
        return await job_ids_pg(self.database_url)


def checks(n: int, sender: Sender, counts: dict[str, int], receiver: dict[str, int]) -> dict[str, str | None]:
    """Each check by name: None when it holds, else what is wrong, in words."""
    refused = f", {len(sender.refused)} refused for good ({Counter(sender.refused.values())})" \
        if sender.refused else ""
    return {
        "webhooks acknowledged": None if len(sender.acked) == n else
        f"{len(sender.acked):,} of {n:,} acknowledged{refused}",
        "events stored once": None if counts["orders"] == counts["distinct_orders"] == n else
        f"{counts['orders']:,} order.created rows, {counts['distinct_orders']:,} distinct provider event ids, "
        f"expected {n:,} of each",
        "no other events": None if not counts["other_events"] else
        f"{counts['other_events']:,} events besides the orders",
        "events processed": None if not counts["pending_events"] else
        f"{counts['pending_events']:,} still pending",
        "instances completed": None if counts["instances"] == counts["completed"] == n else
        f"{counts['completed']:,} completed of {counts['instances']:,} instances, expected {n:,}",
        "actions done": None if counts["jobs"] == counts["jobs_done"] == n else
        f"{counts['jobs_done']:,} done of {counts['jobs']:,} jobs, expected {n:,}",
        "receiver has every key": None if receiver["keys"] == receiver["ok"] == n else
        f"{receiver['keys']:,} distinct keys, {receiver['ok']:,} of them answered 2xx, expected {n:,}",
    }


async def run(args: argparse.Namespace, tmp: Path, receiver: Receiver, redis_url: str | None) -> int:
    n = int(args.rate * args.seconds)
    folder = write_deployment(tmp / "ops", receiver.port, "crash")
    db_name = f"crash_test_{os.getpid()}"
    dep = Deployment(folder, environment(), free_port(), tmp, args.kill_group)
    if args.postgres:
        dep.database_url = await create_database(db_name)
        dep.env = environment(dep.database_url, redis_url)
        await asyncio.to_thread(db_upgrade, folder, dep.env)
        await asyncio.to_thread(dep.start_worker)
    try:
        return await crash(args, n, dep, receiver)
    finally:
        for process in [p for p in (dep.serve, dep.worker) if p is not None]:
            took = await asyncio.to_thread(process.stop)
            if took > 10:
                dep.problems.append(f"{process.name} took {took:.1f} s to exit after SIGTERM")
            dep.problems.extend(process.problems)
        for process in {p.log: p for p in [*dep.retired, *(p for p in (dep.serve, dep.worker) if p)]}.values():
            for line, count in Counter(process.tracebacks()).items():
                dep.problems.append(f"{process.log.name}: {count} traceback(s) ending in {line!r}")
        if dep.problems:
            print("\nproblems seen in the product:")
            for problem in dep.problems:
                print(f"  - {problem}")
        if dep.database_url is not None and not args.keep:
            await drop_database(db_name)


async def crash(args: argparse.Namespace, n: int, dep: Deployment, receiver: Receiver) -> int:
    dep.start_serve()
    sender = Sender(dep.port)
    began = time.time()
    dep.last_restart = began
    plan: list[tuple[float, Any]] = [(t, dep.kill_serve) for t in args.kills]
    if args.postgres:
        plan.append((args.worker_kill, dep.kill_worker))
    plan.sort(key=lambda item: item[0])
    last_planned = began + max((t for t, _ in plan), default=0.0)
    give_up_at = last_planned + args.observe
    print(f"sending {n:,} orders at {args.rate:g}/s for {args.seconds:g} s to journeys serve "
          f"({'PostgreSQL + Redis + journeys worker' if args.postgres else 'SQLite'}); the receiver answers 500 "
          "to one request in ten", flush=True)

    async def killer() -> None:
        for at, action in plan:
            await asyncio.sleep(max(0.0, began + at - time.time()))
            await action(began)
            print(f"  {dep.events[-1]}", flush=True)

    async def send_all() -> None:
        tasks = []
        for i in range(n):
            await asyncio.sleep(max(0.0, began + i / args.rate - time.time()))
            tasks.append(asyncio.create_task(sender.deliver(i, give_up_at)))
        await asyncio.gather(*tasks)

    kill_task = asyncio.create_task(killer())
    send_task = asyncio.create_task(send_all())
    await kill_task
    # from the last restart: every check, polled
    passed_after: float | None = None
    held: dict[str, float] = {}  # check -> seconds after the last restart when it (last) came to hold
    failing: list[str] = []
    counts: dict[str, int] = {}
    seen: dict[str, int] = {}
    printed = 0.0
    while True:
        now = time.time()
        counts = await dep.counts()
        seen = await asyncio.to_thread(receiver.count, "crash")
        results = checks(n, sender, counts, seen)
        for name, wrong in results.items():
            if wrong is None:
                held.setdefault(name, now - dep.last_restart)
            else:
                held.pop(name, None)
        failing = [f"{name}: {wrong}" for name, wrong in results.items() if wrong is not None]
        if not failing:
            passed_after = now - dep.last_restart
            break
        if now - dep.last_restart > args.observe:
            break
        if now - printed >= 10:
            printed = now
            print(f"  {now - dep.last_restart:5.1f} s after the last restart: {len(sender.acked):,} acknowledged; "
                  f"events {counts['orders']:,} ({counts['pending_events']:,} pending); instances completed "
                  f"{counts['completed']:,}; jobs done {counts['jobs_done']:,} of {counts['jobs']:,}; receiver "
                  f"{seen['keys']:,} keys ({seen['ok']:,} with a 2xx, {seen['deliveries']:,} deliveries)",
                  flush=True)
        await asyncio.sleep(0.25)
    send_task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await send_task
    await sender.close()
    jobs, keys = await dep.job_ids(), set((await asyncio.to_thread(receiver.records, "crash")).keys())
    if not failing and jobs != keys:
        failing.append(f"receiver keys are the jobs' ids: {len(keys - jobs)} unknown keys, {len(jobs - keys)} "
                       "jobs never delivered")
        passed_after = None
    resent = sum(sender.attempts.values()) - len(sender.attempts)
    for at in dep.restarts:
        # an answer read after the kill may have been sent before it: count attempts begun after the start
        again = min((sender.acked[i] for i, began_at in sender.acked_attempt.items() if began_at > at), default=None)
        print(f"serve started at {at - began:.1f} s acknowledged its first webhook "
              + (f"{again - at:.1f} s later" if again is not None else "never"))
    print("each check held from (seconds after the last restart): "
          + ", ".join(f"{name} {held[name]:.1f}" if name in held else f"{name} never" for name in checks(
              n, sender, counts, seen)))
    print(f"\nwebhooks: {len(sender.acked):,} of {n:,} acknowledged, {resent:,} resends; answers and errors: "
          + ", ".join(f"{k}: {v:,}" for k, v in sorted(sender.answers.items())))
    print(f"database: {counts}")
    print(f"receiver: {seen['keys']:,} distinct keys, {seen['ok']:,} answered 2xx, {seen['deliveries']:,} deliveries "
          f"({seen['deliveries'] - seen['keys']:,} repeats, the 500s' retries included)")
    if passed_after is not None and passed_after <= args.deadline:
        print(f"\nPASS: every check held {passed_after:.1f} s after the last restart "
              f"(deadline {args.deadline:g} s)")
        return 0
    if passed_after is not None:
        print(f"\nFAIL: every check held only {passed_after:.1f} s after the last restart "
              f"(deadline {args.deadline:g} s)")
        return 1
    print(f"\nFAIL: {args.observe:g} s after the last restart these checks still failed:")
    for line in failing:
        print(f"  - {line}")
    return 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=150.0, help="orders per second")
    parser.add_argument("--seconds", type=float, default=20.0, help="seconds of sending")
    parser.add_argument("--kills", default="6,13", help="seconds at which serve is killed (default 6,13)")
    parser.add_argument("--worker-kill", type=float, default=10.0, help="--postgres: when the worker is killed")
    parser.add_argument("--kill-group", action="store_true", help="SIGKILL serve's process group, not serve alone")
    parser.add_argument("--deadline", type=float, default=60.0, help="seconds after the last restart to pass")
    parser.add_argument("--observe", type=float, default=150.0,
                        help="seconds after the last restart to go on watching (to say when it held, if late)")
    parser.add_argument("--postgres", action="store_true", help="PostgreSQL and Redis, with a journeys worker")
    parser.add_argument("--redis", default=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379"),
                        help="the Redis server, or one of its databases 10 to 13")
    parser.add_argument("--keep", action="store_true", help="keep the folder, the database and the logs")
    parser.add_argument("--receiver", type=int, metavar="FAIL_EVERY", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.receiver is not None:
        receiver_main(args.receiver)
        return
    args.kills = [float(t) for t in args.kills.split(",") if t.strip()]
    tmp = Path(tempfile.mkdtemp(prefix="crash-test-"))
    if args.keep:
        print(f"files are kept in {tmp}")
    receiver = Receiver(__file__, fail_every=10)
    status = 1
    try:
        with contextlib.ExitStack() as stack:
            redis_url = stack.enter_context(redis_database(args.redis)) if args.postgres else None
            print(machine(redis_url or args.redis), flush=True)
            status = asyncio.run(run(args, tmp, receiver, redis_url))
    finally:
        receiver.stop()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    sys.exit(status)


if __name__ == "__main__":
    main()
