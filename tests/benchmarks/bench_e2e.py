"""Benchmark: journeys end to end, from signed webhooks in to ``http`` actions out, as users run it.

Run by hand (not collected by pytest), from the repository root, with PostgreSQL and Redis up:

    .venv/bin/python tests/benchmarks/bench_e2e.py                      # about 4 minutes on 2 quiet cores
    .venv/bin/python tests/benchmarks/bench_e2e.py --rounds 3 --only throughput   # medians of 3 rounds
    .venv/bin/python tests/benchmarks/bench_e2e.py --orders 2000        # quicker
    .venv/bin/python tests/benchmarks/bench_e2e.py --only throughput    # or webhooks, latency, burst
    .venv/bin/python tests/benchmarks/bench_e2e.py --keep               # keep the logs and SQLite files

Every process is started as a user starts it: ``journeys serve DIR``, ``journeys worker DIR``,
``journeys db upgrade DIR`` and ``journeys loadtest`` are subprocesses. The deployment (written
to a temporary folder, see e2e_support.py) has one ``events`` source and one journey: an
``order.created`` event starts it, it runs one ``http`` POST to a local receiver (a bare asyncio
server in its own process that answers 200 at once and records each Idempotency-Key with its
arrival time) and is final. Each order is its own contact. PostgreSQL: a new database per run on
JOURNEYS_TEST_PG_URL's server (default postgresql+asyncpg://postgres@127.0.0.1/test), dropped
afterwards. Redis: one of the databases 10 to 13 (``--redis``), locked as the test suite locks
the databases it uses (tests/actions/conftest.py), and emptied before each run.

1. Throughput, in ``--rounds`` rounds (default 1), the four side by side in each: ``--orders``
   (default 4,000) signed ``order.created`` webhooks posted by
   ``journeys loadtest`` from 64 connections as fast as they are acknowledged, and the time from
   its start until the receiver has every key (the last first arrival): actions per second.

   (b) plain arq, the yardstick: the same number of jobs enqueued from this process as fast as
       possible (64 at a time) into one arq worker process (JSON serializer, poll_delay 0.05,
       max_jobs 50, keep_result 0) whose job makes the same POST with httpx;
   (a) ``journeys serve DIR`` on SQLite (ingest, engine and the embedded executor);
   (c) ``journeys serve`` + one ``journeys worker``, on PostgreSQL and Redis;
   (d) the same with two ``journeys worker`` processes.

   Printed per round: the rate, its ratio to plain arq, when the webhooks were all acknowledged,
   and the CPU each process spent per action (from /proc/PID/stat; serve includes its writer
   process; ``postgres`` and ``redis-server`` are every process of that name on the machine;
   loadtest's figure includes its start-up). Then the medians over the rounds.

2. Webhooks: ``journeys loadtest`` from 64 connections for ``--duration`` seconds (default 5),
   as fast as they are answered, against a bare Litestar endpoint (tests/benchmarks/bare_app.py)
   and against ``journeys serve`` on SQLite running the journey on every event (the engine and
   the executor work while the webhooks come in), back to back in each of ``--webhook-rounds``
   rounds (default 3; a new serve and database each): the ratio of the rates and the p99.

3. Latency: ``journeys serve`` on SQLite, after one warm-up order has gone all the way through,
   ``journeys loadtest --rate R`` for ``--latency-for``
   seconds (default 5), R = 200 and then 50 (``--latency-rates``), with ``sent_at: {time}`` in
   each event's data. The receiver's arrival time minus the send time is an upper bound of the
   time from an event's commit to its action's start (it adds the webhook's own
   acknowledgement): its p50, p99 and max. When the actions cannot keep up with R, this is a
   figure of the backlog, and the actions' own rate is printed beside it.

4. A 10x burst: ``journeys serve`` on SQLite, 20 webhooks/s for 10 s, then 200/s for 5 s
   (``--burst-rate``): the burst's acknowledgement latency, and the drain time from the end of
   the burst until every instance is completed (no pending event left, one completed instance
   per order) and until the receiver has every action.

Problems seen in the product while running (a process slow to stop or leaving a child behind,
tracebacks in its log, webhooks refused, actions missing) are listed at the end.

On 2 cores every process here (load generator, receiver, PostgreSQL, Redis) shares the
machine with journeys: compare ratios and CPU per action rather than rates between machines.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.benchmarks.e2e_support import (  # noqa: E402
    JOURNEYS,
    SECRET,
    Process,
    Receiver,
    cpu_of_named,
    cpu_seconds,
    create_database,
    db_upgrade,
    drop_database,
    environment,
    flush_redis,
    free_port,
    machine,
    median,
    order_request,
    percentile,
    pg_counts,
    post_once,
    receiver_main,
    redis_database,
    serve,
    sqlite_counts,
    worker,
    write_deployment,
)

ARQ_QUEUE = "bench:e2e"
DATA = '{"order_id": "o-{n}", "sent_at": "{time}"}'
CONNECTIONS = 64
PROBLEMS: list[str] = []  # what went wrong in the product while running (printed at the end)

# --- plain arq ------------------------------------------------------------------------------------


def arq_worker_main(redis_url: str, log_file: str) -> None:
    """One arq worker as ``journeys worker`` configures arq, whose job is the same POST."""
    import httpx
    from arq.connections import RedisSettings
    from arq.worker import Worker, func

    from actions.queue import _dumps, _loads

    logging.basicConfig(level=logging.INFO, filename=log_file,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "httpcore", "arq.worker", "arq.jobs"):  # as journeys worker does
        logging.getLogger(noisy).setLevel(logging.WARNING)

    async def post(ctx: dict[str, Any], url: str, key: str, order: str, sent_at: str) -> None:
        response = await ctx["client"].post(url, json={"order": order, "sent_at": sent_at},
                                            headers={"Idempotency-Key": key})
        response.raise_for_status()

    async def startup(ctx: dict[str, Any]) -> None:
        ctx["client"] = httpx.AsyncClient(timeout=10)

    async def shutdown(ctx: dict[str, Any]) -> None:
        await ctx["client"].aclose()

    async def work() -> None:
        worker = Worker(functions=[func(post, name="post")], queue_name=ARQ_QUEUE,
                        redis_settings=RedisSettings.from_dsn(redis_url), handle_signals=False, max_jobs=50,
                        poll_delay=0.05, keep_result=0, job_serializer=_dumps, job_deserializer=_loads,
                        log_results=False, on_startup=startup, on_shutdown=shutdown)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        task = asyncio.create_task(worker.async_run())
        print("arq workers on", flush=True)
        await stop.wait()
        await worker.close()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(work())


async def enqueue(redis_url: str, url: str, tag: str, n: int) -> None:
    from actions.queue import pool

    redis = await pool(redis_url)
    try:
        async def some(start: int) -> None:
            for i in range(start, n, CONNECTIONS):
                key = f"{tag}:{i}"
                await redis.enqueue_job("post", url, key, f"o-{i}", f"{time.time():.6f}", _job_id=key,
                                        _queue_name=ARQ_QUEUE)

        await asyncio.gather(*(some(start) for start in range(CONNECTIONS)))
    finally:
        await redis.aclose()


# --- a deployment running -------------------------------------------------------------------------


@dataclass
class Running:
    """A setup up and ready: where to post, what runs, and how far the database is."""

    setup: str
    port: int
    folder: Path
    processes: dict[str, Process] = field(default_factory=dict)
    database_url: str | None = None

    def counts(self) -> dict[str, int]:
        if self.database_url is None:
            return sqlite_counts(self.folder)
        return asyncio.run(pg_counts(self.database_url))

    def cpu(self) -> dict[str, float]:
        out = {name: p.cpu() for name, p in self.processes.items()}
        if self.database_url is not None:
            out["postgres"] = cpu_of_named("postgres")
            out["redis-server"] = cpu_of_named("redis-server")
        return out


SETUPS = {"sqlite": "(a) serve, SQLite, embedded executor", "pg1": "(c) serve + 1 worker, PostgreSQL, Redis",
          "pg2": "(d) serve + 2 workers, PostgreSQL, Redis", "arq": "(b) plain arq, 1 worker"}


@contextlib.contextmanager
def running(setup: str, tag: str, receiver: Receiver, tmp: Path, redis_url: str) -> Iterator[Running]:
    """``journeys serve`` (and workers) for *setup* (sqlite, pg1, pg2) on a new database, warmed up
    with one webhook no journey listens to; stopped (SIGTERM) afterwards, noting a slow stop."""
    folder = write_deployment(tmp / tag, receiver.port, tag)
    port = free_port()
    run = Running(setup, port, folder)
    db_name = f"bench_e2e_{tag}_{os.getpid()}".replace("-", "_")
    try:
        if setup == "sqlite":
            env = environment()
        else:
            run.database_url = asyncio.run(create_database(db_name))
            asyncio.run(flush_redis(redis_url))
            env = environment(run.database_url, redis_url)
            db_upgrade(folder, env)
            for w in range(int(setup[-1])):
                run.processes[f"worker{w + 1}"] = worker(folder, env, tmp / f"{tag}-worker{w + 1}.log")
        run.processes["serve"] = serve(folder, env, port, tmp / f"{tag}-serve.log")
        # the first webhook after a start waits for serve's writer process: not part of the figures
        body, headers = order_request(0, event_id="warm-up", kind="bench.warmup")
        if post_once(port, body, headers) >= 300:
            raise RuntimeError(f"the warm-up webhook was refused:\n{run.processes['serve'].tail()}")
        yield run
    finally:
        # serve first: it relays or runs jobs; then the workers
        for name in sorted(run.processes, key=lambda n: n != "serve"):
            process = run.processes[name]
            took = process.stop()
            if took > 10:
                PROBLEMS.append(f"{tag}: {name} took {took:.1f} s to exit after SIGTERM")
            PROBLEMS.extend(f"{tag}: {p}" for p in process.problems)
            PROBLEMS.extend(f"{tag}: {name} printed {n} traceback(s) ending in {line[:200]!r}"
                            for line, n in Counter(process.tracebacks()).items())
        if run.database_url is not None:
            asyncio.run(drop_database(db_name))


class LoadTest:
    """``journeys loadtest`` in its own process; its output and CPU once it is done."""

    def __init__(self, port: int, *args: str, log: Path) -> None:
        self.log = log
        with log.open("w") as out:
            self.proc = subprocess.Popen(
                [JOURNEYS, "loadtest", f"http://127.0.0.1:{port}/ingest/shop", "--secret", SECRET,
                 "--concurrency", str(CONNECTIONS), "--type", "order.created", "--data", DATA,
                 "--contacts", "1000000000", *args], stdout=out, stderr=subprocess.STDOUT)
        self.done_at: float | None = None
        self.cpu = 0.0

    def poll(self) -> bool:
        """Whether it has exited (reaped here, with its CPU time)."""
        if self.done_at is None:
            pid, status, usage = os.wait4(self.proc.pid, os.WNOHANG)
            if pid:
                self.done_at = time.time()
                self.cpu = usage.ru_utime + usage.ru_stime
                self.proc.returncode = os.waitstatus_to_exitcode(status)
        return self.done_at is not None

    def wait(self, timeout: float = 600) -> str:
        deadline = time.monotonic() + timeout
        while not self.poll():
            if time.monotonic() > deadline:
                self.proc.kill()
            time.sleep(0.02)
        return self.output()

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def parse_phase(text: str) -> dict[str, float]:
    """Requests, accepted, rate and latencies from one phase of loadtest's summary."""
    total = re.search(r"(\d+) requests in ([\d.]+) s \(([^)]*)\)", text)
    rate = re.search(r"throughput: ([\d,]+)", text)
    lat = re.search(r"p50 ([\d.]+) ms, p90 ([\d.]+) ms, p99 ([\d.]+) ms, max ([\d.]+) ms", text)
    if not (total and rate and lat):
        raise RuntimeError(f"cannot read loadtest's output:\n{text}")
    accepted = sum(int(n) for code, n in re.findall(r"(\d{3}): (\d+)", total.group(3)) if code.startswith("2"))
    return {"requests": int(total.group(1)), "accepted": accepted, "elapsed": float(total.group(2)),
            "rate": float(rate.group(1).replace(",", "")), "p50": float(lat.group(1)), "p90": float(lat.group(2)),
            "p99": float(lat.group(3)), "max": float(lat.group(4))}


# --- 1. throughput --------------------------------------------------------------------------------


@dataclass
class Throughput:
    setup: str
    n: int
    elapsed: float  # start -> the receiver's last first arrival
    acked: float | None  # start -> every webhook acknowledged (None for plain arq)
    cpu_ms: dict[str, float]

    @property
    def rate(self) -> float:
        return self.n / self.elapsed if self.elapsed else 0.0


def cpu_line(cpu_ms: dict[str, float]) -> str:
    return ", ".join(f"{name} {ms:.1f}" for name, ms in cpu_ms.items())


def throughput_journeys(setup: str, tag: str, n: int, receiver: Receiver, tmp: Path, redis_url: str,
                        timeout: float) -> Throughput:
    with running(setup, tag, receiver, tmp, redis_url) as run:
        before = run.cpu()
        receiver_before = cpu_seconds([receiver.proc.pid])
        start = time.time()
        load = LoadTest(run.port, "--requests", str(n), "--duration", "600", log=tmp / f"{tag}-loadtest.log")
        while receiver.count(tag)["keys"] < n and time.time() - start < timeout:
            load.poll()
            time.sleep(0.05)
        after = run.cpu()
        receiver_after = cpu_seconds([receiver.proc.pid])
        out = load.wait()
        records = receiver.records(tag)
        got = len(records)
        if got < n:
            PROBLEMS.append(f"{tag}: the receiver had {got:,} of {n:,} actions after {timeout:.0f} s "
                            f"(database: {run.counts()})")
        accepted = parse_phase(out)["accepted"]
        if accepted != n:
            PROBLEMS.append(f"{tag}: loadtest had {accepted:,} of {n:,} webhooks accepted:\n{out}")
    last = max((r[0] for r in records.values()), default=start)
    cpu_ms = {name: (after[name] - before[name]) / max(got, 1) * 1000 for name in after}
    cpu_ms["loadtest"] = load.cpu / max(got, 1) * 1000
    cpu_ms["receiver"] = (receiver_after - receiver_before) / max(got, 1) * 1000
    return Throughput(setup, got, last - start, (load.done_at or start) - start, cpu_ms)


def throughput_arq(tag: str, n: int, receiver: Receiver, tmp: Path, redis_url: str, timeout: float) -> Throughput:
    asyncio.run(flush_redis(redis_url))
    log = tmp / f"{tag}-arq.log"
    process = Process("plain arq worker", [sys.executable, __file__, "--arq-worker", redis_url, str(log)],
                      environment(), tmp / f"{tag}-arq-out.log")
    process.start()
    try:
        process.wait_for_line("arq workers on")
        time.sleep(0.2)  # its first poll
        before = {"worker": process.cpu(), "redis-server": cpu_of_named("redis-server")}
        receiver_before = cpu_seconds([receiver.proc.pid])
        start = time.time()
        cpu_start = time.process_time()
        asyncio.run(enqueue(redis_url, f"http://127.0.0.1:{receiver.port}/hook/{tag}", tag, n))
        enqueue_cpu = time.process_time() - cpu_start
        while receiver.count(tag)["keys"] < n and time.time() - start < timeout:
            time.sleep(0.05)
        after = {"worker": process.cpu(), "redis-server": cpu_of_named("redis-server")}
        receiver_after = cpu_seconds([receiver.proc.pid])
    finally:
        process.stop()
        PROBLEMS.extend(f"{tag}: {p}" for p in process.problems)
    records = receiver.records(tag)
    got = len(records)
    if got < n:
        PROBLEMS.append(f"{tag}: plain arq delivered {got:,} of {n:,} within {timeout:.0f} s")
    last = max((r[0] for r in records.values()), default=start)
    cpu_ms = {name: (after[name] - before[name]) / max(got, 1) * 1000 for name in after}
    cpu_ms["enqueuer"] = enqueue_cpu / max(got, 1) * 1000
    cpu_ms["receiver"] = (receiver_after - receiver_before) / max(got, 1) * 1000
    return Throughput("arq", got, last - start, None, cpu_ms)


def throughput(args: argparse.Namespace, receiver: Receiver, tmp: Path) -> None:
    n = args.orders
    print(f"\n1. throughput: {n:,} order.created webhooks -> {n:,} http actions, {CONNECTIONS} connections, "
          f"{args.rounds} round(s); CPU in ms per action", flush=True)
    results: dict[str, list[Throughput]] = {s: [] for s in args.setups}
    for r in range(1, args.rounds + 1):
        print(f"  round {r}:", flush=True)
        arq: Throughput | None = None
        for setup in args.setups:
            tag = f"tp{r}-{setup}"
            if setup == "arq":
                result = throughput_arq(tag, n, receiver, tmp, args.redis, args.timeout)
                arq = result
            else:
                result = throughput_journeys(setup, tag, n, receiver, tmp, args.redis, args.timeout)
            results[setup].append(result)
            ratio = f"{result.rate / arq.rate:5.2f} of arq" if arq and arq.rate else ""
            acked = f"; webhooks acknowledged after {result.acked:.1f} s" if result.acked is not None else ""
            print(f"    {SETUPS[setup]:<42} {result.n:>6,} in {result.elapsed:6.2f} s = {result.rate:>6,.0f}/s "
                  f"{ratio}{acked}\n      CPU ms/action: {cpu_line(result.cpu_ms)}", flush=True)
    print("  medians over the rounds:")
    arq_rates = [t.rate for t in results.get("arq", [])]
    for setup, runs in results.items():
        rates = [t.rate for t in runs]
        ratios = [t.rate / a for t, a in zip(runs, arq_rates, strict=False) if a] if setup != "arq" else []
        cpu = {name: median([t.cpu_ms.get(name, 0.0) for t in runs]) for name in runs[0].cpu_ms} if runs else {}
        ratio = f", ratio to plain arq {median(ratios):.2f} (rounds {', '.join(f'{x:.2f}' for x in ratios)})" \
            if ratios else ""
        print(f"    {SETUPS[setup]:<42} {median(rates):>6,.0f} actions/s{ratio}\n"
              f"      CPU ms/action: {cpu_line(cpu)}", flush=True)


# --- 2. webhooks ----------------------------------------------------------------------------------


def webhooks(args: argparse.Namespace, receiver: Receiver, tmp: Path) -> None:
    print(f"\n2. webhooks: loadtest, {CONNECTIONS} connections, {args.duration:g} s as fast as answered; bare "
          f"Litestar endpoint vs journeys serve (SQLite) running the journey on every event; "
          f"{args.webhook_rounds} rounds", flush=True)
    bare_port = free_port()
    bare = Process("bare endpoint", [sys.executable, "-m", "uvicorn", "tests.benchmarks.bare_app:app", "--port",
                                     str(bare_port), "--no-access-log", "--log-level", "warning"],
                   environment(), tmp / "bare.log")
    with contextlib.chdir(ROOT):
        bare.start()
    ratios, p99s = [], []
    try:
        wait_up_bare(bare_port, bare)
        for r in range(1, args.webhook_rounds + 1):
            load = LoadTest(bare_port, "--duration", str(args.duration), log=tmp / f"wh{r}-bare.log")
            b = parse_phase(load.wait())
            tag = f"wh{r}"
            with running("sqlite", tag, receiver, tmp, args.redis) as run:
                load = LoadTest(run.port, "--duration", str(args.duration), log=tmp / f"wh{r}-serve.log")
                j = parse_phase(load.wait())
                counts = run.counts()
            ratio = j["rate"] / b["rate"] if b["rate"] else 0.0
            ratios.append(ratio)
            p99s.append(j["p99"])
            print(f"  round {r}: bare {b['rate']:>6,.0f}/s (p99 {b['p99']:.1f} ms), journeys {j['rate']:>6,.0f}/s "
                  f"(p50 {j['p50']:.1f}, p99 {j['p99']:.1f} ms): {ratio:.2f}; "
                  f"when it stopped: {counts['orders']:,} stored, {counts['pending_events']:,} not yet processed, "
                  f"{counts['jobs_done']:,} of {counts['jobs']:,} actions done", flush=True)
    finally:
        bare.stop()
    print(f"  median ratio {median(ratios):.2f}, median p99 {median(p99s):.1f} ms", flush=True)


def wait_up_bare(port: int, process: Process) -> None:
    import httpx

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            httpx.post(f"http://127.0.0.1:{port}/ingest/probe", content=b"", timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    raise RuntimeError(f"the bare endpoint did not start:\n{process.tail()}")


# --- 3. latency -----------------------------------------------------------------------------------


def wait_until(check: Callable[[], bool], timeout: float, every: float = 0.1) -> float | None:
    """Seconds until *check* holds (None if it did not within *timeout*)."""
    start = time.time()
    while time.time() - start < timeout:
        if check():
            return time.time() - start
        time.sleep(every)
    return None


def latency(args: argparse.Namespace, receiver: Receiver, tmp: Path) -> None:
    seconds = args.latency_for
    for rate in args.latency_rates:
        print(f"\n3. latency: journeys serve (SQLite), loadtest at {rate:g}/s for {seconds:g} s; receiver arrival "
              "minus send time (an upper bound of event commit -> action start)", flush=True)
        tag = f"lat{rate:g}"
        with running("sqlite", tag, receiver, tmp, args.redis) as run:
            # one order first, through the whole path: what follows is measured on a server whose
            # engine process has started, not on its start-up
            body, headers = order_request(999_999_999, event_id=f"warm-up-{tag}")
            post_once(run.port, body, headers)
            wait_until(lambda tag=tag: receiver.count(tag)["keys"] >= 1, args.timeout)
            warm = set(receiver.records(tag))
            load = LoadTest(run.port, "--rate", str(rate), "--duration", str(seconds), log=tmp / f"{tag}-loadtest.log")
            ack = parse_phase(load.wait())
            n = int(ack["accepted"])
            want = n + len(warm)
            drained = wait_until(lambda want=want, tag=tag: receiver.count(tag)["keys"] >= want, args.timeout)
            records = {k: r for k, r in receiver.records(tag).items() if k not in warm}
        lat = [(r[0] - r[4]) * 1000 for r in records.values() if r[4] is not None]
        first, last = min(r[0] for r in records.values()), max(r[0] for r in records.values())
        actions_rate = (len(records) - 1) / (last - first) if last > first else 0.0
        note = (f"every action arrived {drained:.1f} s after the last webhook" if drained is not None
                else f"only {len(records):,} of {n:,} actions arrived within {args.timeout:.0f} s")
        print(f"  {n:,} webhooks acknowledged at {ack['rate']:,.0f}/s (ack p50 {ack['p50']:.1f} ms, p99 "
              f"{ack['p99']:.1f} ms); actions at {actions_rate:,.0f}/s; {note}\n"
              f"  send -> action at the receiver: p50 {percentile(lat, 0.5):.1f} ms, p99 {percentile(lat, 0.99):.1f} "
              f"ms, max {max(lat, default=float('nan')):.1f} ms ({len(lat):,} samples)", flush=True)


# --- 4. burst -------------------------------------------------------------------------------------


def burst(args: argparse.Namespace, receiver: Receiver, tmp: Path) -> None:
    steady, high, steady_for, burst_for = args.burst_rate // 10, args.burst_rate, 10, 5
    print(f"\n4. burst: journeys serve (SQLite), {steady}/s for {steady_for} s, then {high}/s for {burst_for} s",
          flush=True)
    tag = "burst"
    with running("sqlite", tag, receiver, tmp, args.redis) as run:
        load = LoadTest(run.port, "--rate", str(steady), "--duration", str(steady_for), "--burst-rate", str(high),
                        "--burst-for", str(burst_for), log=tmp / "burst-loadtest.log")
        out = load.wait()
        ended = load.done_at or time.time()
        steady_part, burst_part = out.split("\nburst:\n")
        s, b = parse_phase(steady_part), parse_phase(burst_part)
        n = int(s["accepted"] + b["accepted"])
        at_end = run.counts()

        # from the burst's end: until every instance is completed, and until every action arrived
        instances: float | None = None
        actions: float | None = None
        while (instances is None or actions is None) and time.time() - ended < args.timeout:
            if instances is None:
                counts = run.counts()
                if counts["completed"] >= n and counts["pending_events"] == 0:
                    instances = time.time() - ended
            if actions is None and receiver.count(tag)["keys"] >= n:
                actions = time.time() - ended
            time.sleep(0.05)
        final = run.counts()
    print(f"  steady: {s['accepted']:,.0f} acknowledged, p50 {s['p50']:.1f} ms, p99 {s['p99']:.1f} ms\n"
          f"  burst:  {b['accepted']:,.0f} acknowledged at {b['rate']:,.0f}/s, p50 {b['p50']:.1f} ms, "
          f"p90 {b['p90']:.1f} ms, p99 {b['p99']:.1f} ms, max {b['max']:.1f} ms\n"
          f"  at the burst's end: {at_end['pending_events']:,} events not yet processed, "
          f"{at_end['jobs'] - at_end['jobs_done']:,} of {at_end['jobs']:,} actions not yet done", flush=True)
    drain_i = f"{instances:.1f} s" if instances is not None else f"not within {args.timeout:.0f} s ({final})"
    drain_a = f"{actions:.1f} s" if actions is not None else f"not within {args.timeout:.0f} s"
    print(f"  drained after the burst: every instance completed {drain_i}, every action at the receiver {drain_a}",
          flush=True)


# --- main -----------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--orders", type=int, default=4000, help="webhooks (= actions) per throughput run")
    parser.add_argument("--rounds", type=int, default=1, help="rounds of the throughput runs")
    parser.add_argument("--setups", default="arq,sqlite,pg1,pg2",
                        help="throughput setups in the order run: arq, sqlite, pg1, pg2 (default all)")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds of each webhook run")
    parser.add_argument("--webhook-rounds", type=int, default=3)
    parser.add_argument("--latency-for", type=float, default=5.0, help="seconds of each latency run")
    parser.add_argument("--latency-rates", default="200,50",
                        help="webhooks/s offered in the latency runs, one run each (default 200,50)")
    parser.add_argument("--burst-rate", type=int, default=200, help="the burst's rate; the steady one is a tenth")
    parser.add_argument("--only", choices=["throughput", "webhooks", "latency", "burst"], action="append")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the actions of a run")
    parser.add_argument("--redis", default=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379"),
                        help="the Redis server, or one database of it numbered 10 to 13 (default: the first "
                        "of 10 to 13 that no test run has locked)")
    parser.add_argument("--keep", action="store_true", help="keep the folders, databases and logs")
    parser.add_argument("--receiver", type=int, metavar="FAIL_EVERY", help=argparse.SUPPRESS)
    parser.add_argument("--arq-worker", nargs=2, metavar=("URL", "LOG"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.receiver is not None:
        receiver_main(args.receiver)
        return
    if args.arq_worker:
        arq_worker_main(*args.arq_worker)
        return
    args.latency_rates = [float(r) for r in args.latency_rates.split(",") if r.strip()]
    args.setups = [s.strip() for s in args.setups.split(",") if s.strip()]
    if unknown := set(args.setups) - set(SETUPS):
        parser.error(f"unknown setups: {', '.join(sorted(unknown))}")
    began = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="bench-e2e-"))
    if args.keep:
        print(f"files are kept in {tmp}")
    receiver = Receiver(__file__)
    stack = contextlib.ExitStack()
    try:
        args.redis = stack.enter_context(redis_database(args.redis))
        print(machine(args.redis), flush=True)
        parts = args.only or ["throughput", "webhooks", "latency", "burst"]
        for part, run in (("throughput", throughput), ("webhooks", webhooks), ("latency", latency),
                          ("burst", burst)):
            if part in parts:
                run(args, receiver, tmp)
    finally:
        stack.close()
        receiver.stop()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    if PROBLEMS:
        print("\nproblems seen while running:")
        runs: dict[str, list[str]] = {}  # the same problem in several runs: once, naming the runs
        for problem in PROBLEMS:
            tag, _, what = problem.partition(": ")
            runs.setdefault(what, []).append(tag)
        for what, tags in runs.items():
            problem = f"{what} (in {', '.join(tags)}; their logs are kept with --keep)"
            print(f"  - {problem}")
    print(f"\nwhole run: {time.perf_counter() - began:.0f} s")


if __name__ == "__main__":
    main()
