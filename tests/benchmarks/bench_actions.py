"""Benchmark: action jobs per second through the executors, and the latency from event to action.

Run by hand (not collected by pytest):

    python tests/benchmarks/bench_actions.py                       # SQLite, about 1.5 minutes on 2 cores
    python tests/benchmarks/bench_actions.py --jobs 5000 --rate 100
    python tests/benchmarks/bench_actions.py --postgres             # also (a) to (c) on PostgreSQL
    python tests/benchmarks/bench_actions.py --redis redis://127.0.0.1:6379/14 --keep

Jobs: a one-state journey whose ``enter`` runs an ``http`` POST to a local receiver (a bare
asyncio HTTP server in its own process that answers 200 at once; ``http_allow_networks:
[127.0.0.0/8]``). For each throughput figure a new database gets N trigger events, the engine
is drained (N pending jobs, not timed), then the clock runs until every job is ``done`` in
the database:

(a) the embedded executor of ``journeys serve`` (its default settings), in this process;
(b) arq: the relay of ``serve`` in this process, one ``journeys worker`` process;
(c) the same with two ``journeys worker`` processes;
(d) plain arq, side by side: the same number of jobs of a no-op ``async def`` enqueued one by
    one from this process into worker processes that are already waiting (JSON serializer,
    poll_delay 0.05 s, max_jobs 50, keep_result 0, INFO logging to a file as ``journeys
    worker`` does), until the queue is empty (arq takes a job out of its queue when it ends).

Latency: ``serve``'s engine loop and embedded executor, on one event loop in this process, with
a producer committing trigger events at ``--rate`` per second on the same loop (as ingest shares
serve's). For each event, the time from its commit to the start of its job
(the executor starting its attempt), and to the request's arrival at the receiver. Once with serve's
settings, once with both loops polling every 5 ms when idle. The rate actually achieved is
printed: when the process is saturated the producer falls behind, and the figure is then one
of saturation, not of the offered rate.

Redis: a database of its own (default ``/14``); the keys ``journeys:*``, ``arq:*`` and
``bench:*`` in it are deleted before each arq run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import platform
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from select import select as select_fds
from types import MappingProxyType
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from sqlalchemy import func, select  # noqa: E402

from actions.executor import Executor  # noqa: E402
from actions.templates import TemplateStore  # noqa: E402
from engine.db import migrate  # noqa: E402
from engine.db.database import Database, connect  # noqa: E402
from engine.db.schema import contacts, instances, jobs  # noqa: E402
from engine.events import Event  # noqa: E402
from engine.runtime import Engine, EngineSettings  # noqa: E402
from engine.store import store_events  # noqa: E402
from engine.versions import load_registry, register  # noqa: E402
from journeys.deployment import Deployment, load_deployment  # noqa: E402

EXE = str(Path(sys.executable).parent / "journeys")
POLL_DELAY = 0.05  # what actions.queue.workers uses
MAX_JOBS = 50
NOOP_QUEUE = "bench:noop"
PG_URL = os.environ.get("JOURNEYS_TEST_PG_URL", "postgresql+asyncpg://postgres@127.0.0.1/test")

JOURNEY = """\
journey: bench-hook
version: 1
trigger: {on: bench.ping}
initial: call
states:
  call:
    enter:
      - action: http
        with:
          method: POST
          url: "http://127.0.0.1:PORT/hook"
          json: {contact: "{{ contact.id }}"}
    final: true
"""

# --- the receiver: a bare HTTP/1.1 server that answers 200 and notes when each key arrived -------

ANSWER = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{"ok":true}'


def receiver_main() -> None:
    arrivals: dict[str, float] = {}

    class Hook(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            assert isinstance(transport, asyncio.Transport)
            self.transport = transport
            self.buffer = b""

        def data_received(self, data: bytes) -> None:
            now = time.time()
            self.buffer += data
            while True:
                end = self.buffer.find(b"\r\n\r\n")
                if end < 0:
                    return
                lines = self.buffer[:end].decode("latin-1").split("\r\n")
                headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
                length = int(headers.get("content-length", "0"))
                if len(self.buffer) < end + 4 + length:
                    return
                self.buffer = self.buffer[end + 4 + length:]
                if lines[0].startswith("GET /dump"):
                    raw = json.dumps(arrivals).encode()
                    arrivals.clear()
                    self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                                         b"Content-Length: %d\r\n\r\n%s" % (len(raw), raw))
                    continue
                key = headers.get("idempotency-key")
                if key:
                    arrivals.setdefault(key, now)
                self.transport.write(ANSWER)

    async def serve_hooks() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Hook, "127.0.0.1", 0, backlog=1024)
        print(f"port {server.sockets[0].getsockname()[1]}", flush=True)
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        server.close()

    asyncio.run(serve_hooks())


async def dump_arrivals(port: int) -> dict[str, float]:
    """The receiver's arrival times by Idempotency-Key since the last dump (it forgets them)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /dump HTTP/1.1\r\nHost: bench\r\nContent-Length: 0\r\n\r\n")
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length"))
    body = await reader.readexactly(length)
    writer.close()
    found: dict[str, float] = json.loads(body)
    return found


# --- plain arq: a worker for a no-op function ---------------------------------------------------


async def noop(ctx: dict[str, Any], n: int) -> None:
    return None


def noop_worker_main(url: str, log_file: str) -> None:
    from arq.connections import RedisSettings
    from arq.worker import Worker, func

    from actions.queue import _dumps, _loads

    logging.basicConfig(level=logging.INFO, filename=log_file,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    async def work() -> None:
        worker = Worker(functions=[func(noop, name="noop")], queue_name=NOOP_QUEUE,
                        redis_settings=RedisSettings.from_dsn(url), handle_signals=False, max_jobs=MAX_JOBS,
                        poll_delay=POLL_DELAY, keep_result=0, job_serializer=_dumps, job_deserializer=_loads,
                        log_results=False)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        task = asyncio.create_task(worker.async_run())
        print("ready", flush=True)
        await stop.wait()
        await worker.close()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(work())


# --- set-up -------------------------------------------------------------------------------------


def write_deployment(folder: Path, port: int) -> Deployment:
    (folder / "journeys").mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(textwrap.dedent("""\
        sources: {}
        channels: {}
        policies:
          http_allow_networks: [127.0.0.0/8]
        """), encoding="utf-8")
    (folder / "journeys" / "hook.yaml").write_text(JOURNEY.replace("PORT", str(port)), encoding="utf-8")
    return load_deployment(str(folder))


def ping(tag: str, i: int, now: datetime) -> Event:
    return Event(id=f"{tag}-e{i}", type="bench.ping", occurred_at=now, source="app", contact_id=f"{tag}-c{i}",
                 data=MappingProxyType({}))


async def fresh_database(url: str, deployment: Deployment, tag: str, n: int, events_n: int) -> Database:
    """A new database with the journey, *n* contacts, and the first *events_n* of their pings drained into jobs."""
    now = datetime.now(UTC)
    db = connect(url)
    await migrate.upgrade(db)
    async with db.write.begin() as conn:
        await register(conn, deployment.journeys.values(), now)
        await conn.execute(contacts.insert(), [
            {"id": f"{tag}-c{i}", "phone": None, "email": None, "timezone": None, "locale": None,
             "attributes": {}, "created_at": now, "updated_at": now} for i in range(n)])
    for start in range(0, events_n, 2000):
        async with db.write.begin() as conn:
            await store_events(conn, [ping(tag, i, now) for i in range(start, min(events_n, start + 2000))], now)
    if events_n:
        engine = await serve_engine(db, deployment, "setup")
        while await engine.run_once():
            pass
    return db


async def serve_engine(db: Database, deployment: Deployment, worker: str) -> Engine:
    """The engine as ``journeys serve`` makes it."""
    async with db.write.begin() as conn:
        registry = await load_registry(conn, deployment.journeys)
    return Engine(db, registry, worker, EngineSettings(batch_size=100 if db.is_sqlite else 500,
                                                        keep_bodies=deployment.config.policies.store_message_bodies))


async def job_counts(db: Database) -> dict[str, int]:
    async with db.read.connect() as conn:
        return {r.status: r.n for r in await conn.execute(
            select(jobs.c.status, func.count().label("n")).group_by(jobs.c.status))}


async def done_count(db: Database) -> int:
    async with db.read.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(jobs).where(jobs.c.status == "done"))
                    ).scalar_one())


async def until_done(db: Database, n: int, timeout: float) -> tuple[float, dict[str, int]]:
    """Seconds until *n* jobs are done (from the call), and the final counts. The check is a
    cheap indexed count every 50 ms: it shares the loop with the embedded executor."""
    start = time.perf_counter()
    deadline = start + timeout
    while await done_count(db) < n and time.perf_counter() < deadline:
        await asyncio.sleep(0.05)
    elapsed = time.perf_counter() - start
    return elapsed, await job_counts(db)


def rate_line(label: str, n: int, elapsed: float, counts: dict[str, int]) -> str:
    done = counts.get("done", 0)
    other = {k: v for k, v in counts.items() if k != "done"}
    extra = f" (NOT DONE: {other})" if other or done < n else ""
    return f"  {label:<44} {done:>6,} jobs in {elapsed:6.2f} s = {done / elapsed:>7,.0f} jobs/s{extra}"


# --- the runs -----------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def database_url(base: str, tmp: Path, name: str) -> AsyncIterator[str]:
    """A URL for a new, empty database: a SQLite file (*base* ``sqlite``), or a PostgreSQL
    database created on the server *base* names, dropped afterwards."""
    if base == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp / (name + '.db')}"
        return
    import asyncpg
    from sqlalchemy.engine import make_url

    parsed = make_url(base)
    admin = parsed.set(drivername="postgresql").render_as_string(hide_password=False)
    db_name = f"bench_{name}_{os.getpid()}"
    conn = await asyncpg.connect(admin)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{db_name}"')
        await conn.execute(f'CREATE DATABASE "{db_name}"')
        yield parsed.set(database=db_name).render_as_string(hide_password=False)
    finally:
        await conn.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')
        await conn.close()


async def embedded(tmp: Path, deployment: Deployment, n: int, base: str) -> str:
    async with database_url(base, tmp, "embedded") as url:
        db = await fresh_database(url, deployment, "emb", n, n)
        executor = Executor(db, deployment.config, TemplateStore(deployment.root / "templates"), "bench:embedded")
        stop = asyncio.Event()
        cpu = time.process_time()
        task = asyncio.create_task(executor.run(stop))
        elapsed, counts = await until_done(db, n, timeout=90)
        stop.set()
        await task
        cpu = time.process_time() - cpu
        await db.dispose()
    return (rate_line("(a) embedded executor (serve)", n, elapsed, counts)
            + f"\n      CPU per job: {cpu / n * 1000:.1f} ms (this process)")


def start_process(args: list[str], env: dict[str, str], log: Path, ready: str, timeout: float = 30
                  ) -> subprocess.Popen[str]:
    """Start *args* (stderr to *log*) and wait for a line containing *ready* on its stdout."""
    with log.open("a") as err:
        proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=err, text=True)
    assert proc.stdout is not None
    readable, _, _ = select_fds([proc.stdout], [], [], timeout)
    line = proc.stdout.readline() if readable else ""
    if ready not in line:
        stop_processes([proc])
        raise RuntimeError(f"{' '.join(args[:2])} did not start ({line!r}); see {log}")
    return proc


def stop_processes(procs: list[subprocess.Popen[str]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def clean_redis(url: str) -> None:
    from actions.queue import pool

    redis = await pool(url)
    try:
        for pattern in ("journeys:*", "arq:*", "bench:*"):
            keys = [k async for k in redis.scan_iter(match=pattern, count=1000)]
            if keys:
                await redis.delete(*keys)
    finally:
        await redis.aclose()


async def with_arq_workers(tmp: Path, deployment: Deployment, n: int, workers: int, redis_url: str,
                           base: str) -> str:
    from actions.queue import relay

    await clean_redis(redis_url)
    async with database_url(base, tmp, f"arq{workers}") as url:
        db = await fresh_database(url, deployment, f"arq{workers}", n, n)
        env = {**os.environ, "JOURNEYS_DATABASE_URL": url, "JOURNEYS_REDIS_URL": redis_url}
        log = tmp / f"worker{workers}.log"
        procs: list[subprocess.Popen[str]] = []
        try:
            for _ in range(workers):
                procs.append(start_process([EXE, "worker", str(deployment.root)], env, log, "arq workers on"))
            stop = asyncio.Event()
            before = [cpu_seconds(p.pid) for p in procs]
            relay_cpu = time.process_time()
            task = asyncio.create_task(relay(db, redis_url, stop))
            elapsed, counts = await until_done(db, n, timeout=90)
            stop.set()
            await task
            relay_cpu = time.process_time() - relay_cpu
            worker_cpu = sum(cpu_seconds(p.pid) - b for p, b in zip(procs, before, strict=True))
        finally:
            stop_processes(procs)
            await db.dispose()
    label = "(b) arq, 1 journeys worker" if workers == 1 else f"(c) arq, {workers} journeys workers"
    return (rate_line(label + " (+ relay)", n, elapsed, counts)
            + f"\n      CPU per job: workers {worker_cpu / n * 1000:.1f} ms, relay {relay_cpu / n * 1000:.1f} ms")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux), 0 elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def plain_arq(tmp: Path, n: int, workers: int, redis_url: str) -> str:
    from actions.queue import pool

    await clean_redis(redis_url)
    log = tmp / f"noop{workers}.log"
    procs: list[subprocess.Popen[str]] = []
    try:
        for _ in range(workers):
            procs.append(start_process([sys.executable, __file__, "--noop-worker", redis_url, str(log)],
                                       dict(os.environ), log, "ready"))
        redis = await pool(redis_url)
        await asyncio.sleep(0.2)  # the workers' first poll
        start = time.perf_counter()
        for i in range(n):
            await redis.enqueue_job("noop", i, _job_id=f"noop:{i}", _queue_name=NOOP_QUEUE)
        enqueued = time.perf_counter() - start
        deadline = start + 90
        while await redis.zcard(NOOP_QUEUE) and time.perf_counter() < deadline:
            await asyncio.sleep(0.005)
        elapsed = time.perf_counter() - start
        left = await redis.zcard(NOOP_QUEUE)
        await redis.aclose()
    finally:
        stop_processes(procs)
    counts = {"done": n - left} | ({"queued": left} if left else {})
    label = f"(d) plain arq no-op, {workers} worker process{'es' if workers > 1 else ''}"
    return rate_line(label, n, elapsed, counts) + f" (enqueueing alone: {enqueued:.2f} s)"


async def latency(tmp: Path, deployment: Deployment, receiver_port: int, n: int, rate: int, idle: float | None,
                  name: str) -> tuple[list[float], list[float], str]:
    """Commit -> job start and commit -> arrival at the receiver, in ms, with serve's engine and
    executor loops in this process; *idle* overrides both loops' idle sleep (None: serve's)."""
    db = await fresh_database(f"sqlite+aiosqlite:///{tmp / (name + '.db')}", deployment, name, n, 0)
    await dump_arrivals(receiver_port)  # forget earlier runs
    started: dict[str, float] = {}

    class Timed(Executor):
        async def _attempt(self, job: Any, *args: Any, **kwargs: Any) -> Any:
            started.setdefault(job.id, time.time())
            return await super()._attempt(job, *args, **kwargs)

    engine = await serve_engine(db, deployment, "bench:latency")
    executor = Timed(db, deployment.config, TemplateStore(deployment.root / "templates"), "bench:latency")
    # wired as in serve's engine process: the engine wakes the executor when it wrote jobs, and
    # the producer wakes the engine after each commit as the server does
    engine.on_jobs = executor.wake
    if idle is not None:
        engine.settings = dataclasses.replace(engine.settings, idle_sleep=idle)
        executor.settings = dataclasses.replace(executor.settings, idle_sleep=idle)
    stop = asyncio.Event()
    loops = [asyncio.create_task(engine.run(stop)), asyncio.create_task(executor.run(stop))]
    committed: dict[str, float] = {}
    now = datetime.now(UTC)
    chunk = max(1, rate // 100)  # a commit every 10 ms, or of one event
    begin = time.perf_counter()
    cpu_begin = time.process_time()
    for start in range(0, n, chunk):
        part = [ping(name, i, now) for i in range(start, min(n, start + chunk))]
        async with db.write.begin() as conn:
            await store_events(conn, part, datetime.now(UTC))
        t = time.time()
        engine.wake()
        for e in part:
            committed[str(e.contact_id)] = t
        # keep the offered rate steady whatever a commit cost
        await asyncio.sleep(max(0.0, begin + (start + chunk) / rate - time.perf_counter()))
    produced = time.perf_counter() - begin
    await until_done(db, n, timeout=60)
    stop.set()
    await asyncio.gather(*loops)
    cpu = time.process_time() - cpu_begin
    arrivals = await dump_arrivals(receiver_port)
    async with db.read.connect() as conn:
        contact_of = {r.id: r.contact_id for r in await conn.execute(
            select(jobs.c.id, instances.c.contact_id).join(instances, instances.c.id == jobs.c.instance_id))}
    await db.dispose()
    to_start = sorted((started[k] - committed[c]) * 1000 for k, c in contact_of.items() if k in started)
    to_arrival = sorted((arrivals[k] - committed[c]) * 1000 for k, c in contact_of.items() if k in arrivals)
    note = (f"{len(contact_of):,} jobs; offered {n / produced:,.0f} events/s achieved; this process's CPU "
            f"{cpu / n * 1000:.1f} ms per event (producer, engine, executor)")
    return to_start, to_arrival, note


def percentiles(values: list[float]) -> str:
    if not values:
        return "no samples"
    p99 = values[max(0, int(len(values) * 0.99) - 1)]
    return f"p50 {statistics.median(values):6.1f} ms, p99 {p99:6.1f} ms, max {values[-1]:6.1f} ms"


def machine(redis_url: str) -> str:
    mem = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = f", {int(line.split()[1]) / 1024 / 1024:.0f} GiB"
    import arq
    import redis

    async def server_version() -> str:
        from actions.queue import pool

        try:
            client = await pool(redis_url)
        except Exception as exc:
            return f"unreachable ({type(exc).__name__})"
        info = await client.info("server")
        await client.aclose()
        return str(info.get("redis_version"))

    return (f"machine: {platform.machine()}, {os.cpu_count()} cores{mem}, Python {platform.python_version()}, "
            f"{platform.platform()}\n         SQLite {sqlite3.sqlite_version}, arq {arq.VERSION}, "
            f"redis-py {redis.__version__}, Redis server {asyncio.run(server_version())} at {redis_url}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=2000, help="jobs per throughput run")
    parser.add_argument("--events", type=int, default=400, help="events per latency run")
    parser.add_argument("--rate", type=int, default=50, help="events/s offered in the latency runs")
    parser.add_argument("--redis", default=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/14"))
    parser.add_argument("--postgres", metavar="URL", nargs="?", const=PG_URL,
                        help=f"also run (a) to (c) on PostgreSQL, a new database each (default {PG_URL})")
    parser.add_argument("--skip-arq", action="store_true", help="only the embedded executor and the latency")
    parser.add_argument("--keep", action="store_true", help="keep the databases and worker logs")
    parser.add_argument("--receiver", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--noop-worker", nargs=2, metavar=("URL", "LOG"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.receiver:
        receiver_main()
        return
    if args.noop_worker:
        noop_worker_main(*args.noop_worker)
        return

    print(machine(args.redis), flush=True)
    # as `journeys serve` does: its database driver runs in a thread and waits for the GIL
    sys.setswitchinterval(0.0005)
    began = time.perf_counter()
    with contextlib.ExitStack() as stack:
        if args.keep:
            tmp = Path(tempfile.mkdtemp(prefix="bench-actions-"))
            print(f"files (databases, worker logs) are kept in {tmp}")
        else:
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        receiver = subprocess.Popen([sys.executable, __file__, "--receiver"], stdout=subprocess.PIPE, text=True)
        try:
            assert receiver.stdout is not None
            port = int(receiver.stdout.readline().split()[1])
            deployment = write_deployment(tmp / "ops", port)
            for base in ["sqlite"] + ([args.postgres] if args.postgres else []):
                where = "SQLite" if base == "sqlite" else "PostgreSQL"
                print(f"throughput, {where}: {args.jobs:,} http jobs per run (POST to a local receiver), "
                      "a new database each", flush=True)
                runs: list[Callable[[], Coroutine[Any, Any, str]]] = [
                    partial(embedded, tmp, deployment, args.jobs, base)]
                if not args.skip_arq:
                    runs += [partial(with_arq_workers, tmp, deployment, args.jobs, workers, args.redis, base)
                             for workers in (1, 2)]
                for run in runs:
                    print(asyncio.run(run()), flush=True)
            if not args.skip_arq:
                print(f"plain arq, the same {args.jobs:,} jobs:", flush=True)
                for workers in (1, 2):
                    print(asyncio.run(plain_arq(tmp, args.jobs, workers, args.redis)), flush=True)
                asyncio.run(clean_redis(args.redis))
            for idle, name, how in [(None, "lat", "serve's settings (woken by commits, else polling)"),
                                    (0.005, "lat5", "both loops sleeping 5 ms when idle instead")]:
                to_start, to_arrival, note = asyncio.run(
                    latency(tmp, deployment, port, args.events, args.rate, idle, name))
                print(f"latency, SQLite, serve's engine and embedded executor in one process, {args.events:,} "
                      f"events at {args.rate}/s, {how}:\n  ({note})", flush=True)
                print(f"  event commit -> job start:           {percentiles(to_start)} ({len(to_start):,} samples)")
                print(f"  event commit -> request at receiver: {percentiles(to_arrival)} "
                      f"({len(to_arrival):,} samples)", flush=True)
        finally:
            stop_processes([receiver])
    print(f"whole run: {time.perf_counter() - began:.1f} s")


if __name__ == "__main__":
    main()
