"""One engine loop in its own process, for tests that kill it or run several at once.

Not a test: ``python -m tests.engine.engine_process --url URL [--schema S] ...`` (from the
repository root). It loads the journey registry from the database, then runs
``Engine.run`` until it is killed, gets SIGTERM/SIGINT (a clean stop: claims released), or
finds no pending event for ``--idle-exit`` seconds.

With ``--log FILE`` every committed batch appends one JSON line per event:
``{"pid", "worker", "seq", "id", "partition", "pos", "start", "end"}`` where ``start`` is
``time.monotonic_ns()`` taken after the claim transaction returned and ``end`` is taken
inside the processing transaction, after every write and just before its commit. Both lie
inside the window in which the partition must belong to this process alone (from the
claim's commit to the processing commit), so two logged intervals of one partition that
overlap prove two processes held it at once (invariant 6). CLOCK_MONOTONIC is one clock
for every process of a machine. A line is written only after its commit returned, so a
kill can lose the line of a committed batch, never invent one.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import IO, Any

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from sqlalchemy.engine import Connection

from engine.db.database import connect
from engine.runtime import Batch, Engine, EngineSettings, pending_count
from engine.versions import load_registry


class LoggingEngine(Engine):
    """The real engine, with its processing intervals written down and optionally widened."""

    def __init__(self, *args: Any, log: IO[str] | None = None, hold: float = 0.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.log = log
        self.hold = hold  # seconds to sleep inside each processing transaction
        self.claimed_at = 0
        self.flushed_at = 0

    async def claim(self, now: datetime) -> list[Any]:
        rows = await super().claim(now)
        self.claimed_at = time.monotonic_ns()
        return rows

    def _flush(self, conn: Connection, batch: Batch, now: datetime) -> None:
        if self.hold:
            time.sleep(self.hold)  # inside the transaction, in the thread (or greenlet) that runs it
        super()._flush(conn, batch, now)
        self.flushed_at = time.monotonic_ns()

    async def _process(self, rows: Sequence[Any], now: datetime) -> tuple[int, int]:
        processed, deferred = await super()._process(rows, now)
        if self.log is not None:
            pid = os.getpid()
            lines = [json.dumps({"pid": pid, "worker": self.worker_id, "seq": r.seq, "id": r.id,
                                 "partition": r.partition_key, "pos": i, "start": self.claimed_at,
                                 "end": self.flushed_at, "size": len(rows)})
                     for i, r in enumerate(rows)]
            self.log.write("\n".join(lines) + "\n")
            self.log.flush()
        return processed, deferred


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--url", required=True, help="database URL")
    p.add_argument("--schema", default=None, help="PostgreSQL schema (search path)")
    p.add_argument("--worker", default=f"proc-{os.getpid()}", help="worker id written into claims")
    p.add_argument("--batch-size", type=int, default=EngineSettings.batch_size)
    p.add_argument("--lease", type=float, default=EngineSettings.lease.total_seconds(), help="seconds")
    p.add_argument("--idle-sleep", type=float, default=EngineSettings.idle_sleep, help="seconds")
    p.add_argument("--hold", type=float, default=0.0, help="seconds to sleep inside each processing transaction")
    p.add_argument("--idle-exit", type=float, default=0.0,
                   help="stop after this many seconds without pending events (0: run until stopped)")
    p.add_argument("--log", type=Path, default=None, help="append one JSON line per processed event")
    return p.parse_args(argv)


async def main(args: argparse.Namespace) -> int:
    db = connect(args.url, schema=args.schema)
    log = args.log.open("a", encoding="utf-8") if args.log is not None else None
    try:
        async with db.write.begin() as conn:
            registry = await load_registry(conn)
        settings = EngineSettings(batch_size=args.batch_size, lease=timedelta(seconds=args.lease),
                                  idle_sleep=args.idle_sleep)
        engine = LoggingEngine(db, registry, args.worker, settings, log=log, hold=args.hold)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)

        async def watch_idle() -> None:
            idle_since: float | None = None
            while not stop.is_set():
                await asyncio.sleep(0.1)
                if await pending_count(db) > 0:
                    idle_since = None
                elif idle_since is None:
                    idle_since = time.monotonic()
                elif time.monotonic() - idle_since >= args.idle_exit:
                    stop.set()

        watcher = asyncio.create_task(watch_idle()) if args.idle_exit > 0 else None
        print(f"ready {args.worker}", flush=True)
        await engine.run(stop)
        if watcher is not None:
            await watcher
        return 0
    finally:
        if log is not None:
            log.close()
        await db.dispose()


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse())))
