"""A queue worker in its own process, for tests that kill it: ``journeys worker`` with short timeouts.

Not a test: ``python tests/actions/worker_process.py DIR --lease 3 --job-timeout 2`` (Redis from
``JOURNEYS_REDIS_URL``, the database from ``JOURNEYS_DATABASE_URL`` or DIR/journeys.db). It runs
the arq workers through :func:`actions.queue.run_until_signalled` as ``journeys worker`` does, except that
the executor's lease and arq's job timeout are short, so a killed worker's job comes back in
seconds instead of minutes (arq lets another worker take it ``job timeout + 10 s`` after it was
started; the database lets another executor claim it once the lease ran out). SIGTERM/SIGINT
stop it cleanly.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from actions import queue
from actions.executor import Executor, ExecutorSettings
from actions.templates import TemplateStore
from engine.db.database import connect, database_url
from journeys.deployment import load_deployment


async def main(folder: Path, url: str, lease: float, job_timeout: int) -> None:
    deployment = load_deployment(str(folder))
    db = connect(database_url(folder))
    executor = Executor(db, deployment.config, TemplateStore(folder / "templates"), f"test-worker:{os.getpid()}",
                        ExecutorSettings(lease=timedelta(seconds=lease)))
    queue.JOB_TIMEOUT = job_timeout  # read when the workers are built
    await queue.run_until_signalled(executor, url, lambda _count: print(f"ready {os.getpid()}", flush=True))
    await db.dispose()


def cli(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("dir")
    parser.add_argument("--lease", type=float, default=3.0, help="the executor's lease, seconds")
    parser.add_argument("--job-timeout", type=int, default=2, help="arq's job timeout, whole seconds")
    args = parser.parse_args(argv)
    url = os.environ.get("JOURNEYS_REDIS_URL")
    if not url:
        parser.error("JOURNEYS_REDIS_URL is not set")
    asyncio.run(main(Path(args.dir), url, args.lease, args.job_timeout))
    return 0


if __name__ == "__main__":
    sys.exit(cli())
