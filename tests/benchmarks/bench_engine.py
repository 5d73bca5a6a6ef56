"""Benchmark: events per second through the whole engine loop (claim, route, decide, commit).

Run by hand (not collected by pytest):

    python tests/benchmarks/bench_engine.py                    # SQLite, then PostgreSQL with 1, 2, 4 processes
    python tests/benchmarks/bench_engine.py --only sqlite --events 40000
    python tests/benchmarks/bench_engine.py --memory 1000000   # RSS while 1,000,000 instances exist

Traffic: the example payment-reminder journey; per contact an ``invoice.overdue`` (starts an
instance: vars, an SMS job, a timer), a reply (guards, a transition), and ``invoice.paid``
(exit to a final state). Events are stored before the clock starts; the figure is events
processed per second until none is pending. Latency: a producer commits events at a steady
rate while one engine runs; for each event, the time from its commit to the commit of its
decision. Targets (issue 4): SQLite at least 5,000 events/s.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from engine.db import migrate  # noqa: E402
from engine.db.database import Database, connect  # noqa: E402
from engine.db.schema import contacts, instances  # noqa: E402
from engine.events import Event  # noqa: E402
from engine.runtime import Engine, EngineSettings, pending_count  # noqa: E402
from engine.store import store_events  # noqa: E402
from engine.versions import load_registry, register  # noqa: E402
from journeys.loader import load_journey  # noqa: E402

PG_URL = os.environ.get("JOURNEYS_TEST_PG_URL", "postgresql+asyncpg://postgres@127.0.0.1/test")
JOURNEY = ROOT / "examples" / "journeys" / "payment-reminder.yaml"


def traffic(contacts_n: int, now: datetime) -> list[Event]:
    out = []
    for phase, (kind, data, text) in enumerate([
        ("invoice.overdue", {"amount_due": 40, "invoice_id": "INV"}, None),
        ("message.received", {}, "thanks, will pay"),
        ("invoice.paid", {}, None),
    ]):
        for i in range(contacts_n):
            out.append(Event(id=f"e{phase}-{i}", type=kind, occurred_at=now, source="app", contact_id=f"c-{i}",
                             text=text, data=MappingProxyType({**data, "invoice_id": f"INV-{i}"})))
    return out


async def prepare(url: str, schema: str | None, contacts_n: int, now: datetime) -> Database:
    db = connect(url, schema=schema)
    await migrate.upgrade(db)
    journey = load_journey(str(JOURNEY))
    async with db.write.begin() as conn:
        await register(conn, [journey], now)
        await conn.execute(contacts.insert(), [
            {"id": f"c-{i}", "phone": f"+1555{i:07d}", "email": None, "timezone": None, "locale": None,
             "attributes": {}, "created_at": now, "updated_at": now} for i in range(contacts_n)])
    return db


async def store(db: Database, batch: list[Event], now: datetime) -> None:
    for start in range(0, len(batch), 2000):
        async with db.write.begin() as conn:
            await store_events(conn, batch[start:start + 2000], now)


async def engine_for(db: Database, worker: str) -> Engine:
    async with db.write.begin() as conn:
        registry = await load_registry(conn)
    return Engine(db, registry, worker, EngineSettings(batch_size=500, idle_sleep=0.01))


async def run_until_empty(db: Database, worker: str) -> int:
    engine = await engine_for(db, worker)
    done = 0
    idle = 0
    while idle < 20:
        n = await engine.run_once()
        done += n
        if n:
            idle = 0
            continue
        idle += 1
        if await pending_count(db) == 0:
            break
        await asyncio.sleep(0.01)
    return done


def worker_main(url: str, schema: str | None, worker: str) -> None:
    async def main() -> None:
        db = connect(url, schema=schema)
        done = await run_until_empty(db, worker)
        await db.dispose()
        print(done, flush=True)

    asyncio.run(main())


async def throughput(url: str, schema: str | None, processes: int, contacts_n: int) -> tuple[int, float]:
    now = datetime.now(UTC)
    db = await prepare(url, schema, contacts_n, now)
    batch = traffic(contacts_n, now)
    await store(db, batch, now)
    await db.dispose()
    start = time.perf_counter()
    if processes == 1:
        db = connect(url, schema=schema)
        done = await run_until_empty(db, "w0")
        await db.dispose()
    else:
        procs = [subprocess.Popen([sys.executable, __file__, "--worker", url, schema or "", f"w{i}"],
                                  stdout=subprocess.PIPE, text=True) for i in range(processes)]
        done = sum(int(p.communicate()[0].strip() or 0) for p in procs)
    elapsed = time.perf_counter() - start
    return done, elapsed


async def latency(url: str, schema: str | None, contacts_n: int, rate: int) -> list[float]:
    """Commit-to-decision latency with a producer at *rate* events/s and one engine."""
    now = datetime.now(UTC)
    db = await prepare(url, schema, contacts_n, now)
    committed: dict[str, float] = {}
    decided: dict[str, float] = {}

    class Timed(Engine):
        async def _process(self, rows: Any, when: Any) -> tuple[int, int]:
            result = await super()._process(rows, when)
            t = time.perf_counter()
            for r in rows:
                decided.setdefault(r.id, t)
            return result

    async with db.write.begin() as conn:
        registry = await load_registry(conn)
    engine = Timed(db, registry, "lat", EngineSettings(batch_size=500, idle_sleep=0.002))
    stop = asyncio.Event()
    runner = asyncio.create_task(engine.run(stop))
    events = traffic(contacts_n, now)
    chunk = max(1, rate // 100)  # a commit every 10 ms
    for start in range(0, len(events), chunk):
        part = events[start:start + chunk]
        async with db.write.begin() as conn:
            await store_events(conn, part, datetime.now(UTC))
        t = time.perf_counter()
        for e in part:
            committed[e.id] = t
        await asyncio.sleep(0.01)
    while len(decided) < len(events):
        await asyncio.sleep(0.01)
    stop.set()
    await runner
    await db.dispose()
    return sorted((decided[k] - committed[k]) * 1000 for k in committed)


async def memory(url: str, count: int) -> None:
    """RSS of an engine processing events with 0 instances and with *count* instances in the table."""
    now = datetime.now(UTC)
    db = await prepare(url, None, 2000, now)

    def rss_mib() -> float:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    async def process_round(tag: str) -> None:
        batch = [Event(id=f"{tag}-{i}", type="invoice.overdue", occurred_at=now, source="app",
                       contact_id=f"c-{i % 2000}", data=MappingProxyType({"amount_due": 5, "invoice_id": "I"}))
                 for i in range(20000)]
        await store(db, batch, now)
        await run_until_empty(db, "mem")

    await process_round("warm")
    before = rss_mib()
    print(f"  RSS after 20,000 events with 2,000 instances: {before:.0f} MiB")
    row = {"journey": "payment-reminder", "version": 1, "state": "paid", "status": "completed", "vars": {},
           "seq": 2, "started_at": now, "entered_at": now, "ended_at": now, "recent_events": [], "updated_at": now}
    for start in range(0, count, 50_000):
        async with db.write.begin() as conn:
            await conn.execute(instances.insert(), [
                {**row, "id": f"old-{n}", "subject": f"old-{n}", "contact_id": f"old-{n}"}
                for n in range(start, min(count, start + 50_000))])
    await process_round("after")
    after = rss_mib()
    print(f"  RSS after 20,000 more events with {count:,} instances in the table: {after:.0f} MiB "
          f"({after - before:+.0f} MiB)")
    await db.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--contacts", type=int, default=5000, help="contacts; 3 events each")
    parser.add_argument("--only", choices=["sqlite", "postgresql"])
    parser.add_argument("--processes", default="1,2,4", help="engine processes on PostgreSQL")
    parser.add_argument("--rate", type=int, default=2000, help="events/s offered in the latency run")
    parser.add_argument("--memory", type=int, default=0, help="instances for the memory run (0: skip)")
    parser.add_argument("--worker", nargs=3, metavar=("URL", "SCHEMA", "ID"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        url, schema, worker = args.worker
        worker_main(url, schema or None, worker)
        return
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"{platform.platform()}")
    events_n = args.contacts * 3
    if args.only in (None, "sqlite"):
        with tempfile.TemporaryDirectory() as tmp:
            url = f"sqlite+aiosqlite:///{tmp}/bench.db"
            done, elapsed = asyncio.run(throughput(url, None, 1, args.contacts))
            print(f"SQLite, 1 engine: {done:,} events in {elapsed:.2f} s = {done / elapsed:,.0f} events/s "
                  "(target >= 5,000)")
        with tempfile.TemporaryDirectory() as tmp:
            url = f"sqlite+aiosqlite:///{tmp}/lat.db"
            lat = asyncio.run(latency(url, None, args.contacts // 5, args.rate))
            print(f"SQLite latency at {args.rate:,} events/s offered: p50 {statistics.median(lat):.1f} ms, "
                  f"p99 {lat[int(len(lat) * 0.99) - 1]:.1f} ms ({len(lat):,} events)")
        if args.memory:
            with tempfile.TemporaryDirectory() as tmp:
                asyncio.run(memory(f"sqlite+aiosqlite:///{tmp}/mem.db", args.memory))
    if args.only in (None, "postgresql"):
        import asyncpg

        async def schema_op(sql: str) -> None:
            conn = await asyncpg.connect(PG_URL.replace("postgresql+asyncpg", "postgresql"))
            await conn.execute(sql)
            await conn.close()

        for n in [int(x) for x in args.processes.split(",")]:
            schema = f"bench_{uuid.uuid4().hex[:8]}"
            asyncio.run(schema_op(f'CREATE SCHEMA "{schema}"'))
            try:
                done, elapsed = asyncio.run(throughput(PG_URL, schema, n, args.contacts))
            finally:
                asyncio.run(schema_op(f'DROP SCHEMA "{schema}" CASCADE'))
            print(f"PostgreSQL, {n} engine process{'es' if n > 1 else ''}: {done:,} of {events_n:,} events in "
                  f"{elapsed:.2f} s = {done / elapsed:,.0f} events/s")
        schema = f"bench_{uuid.uuid4().hex[:8]}"
        asyncio.run(schema_op(f'CREATE SCHEMA "{schema}"'))
        try:
            lat = asyncio.run(latency(PG_URL, schema, args.contacts // 5, args.rate))
        finally:
            asyncio.run(schema_op(f'DROP SCHEMA "{schema}" CASCADE'))
        print(f"PostgreSQL latency at {args.rate:,} events/s offered: p50 {statistics.median(lat):.1f} ms, "
              f"p99 {lat[int(len(lat) * 0.99) - 1]:.1f} ms ({len(lat):,} events)")


if __name__ == "__main__":
    main()
