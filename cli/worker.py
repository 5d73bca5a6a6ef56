"""``journeys worker DIR``: arq workers carrying out the deployment's jobs from Redis."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from pathlib import Path

from journeys.errors import ConfigError, UsageError


def run(path: str) -> int:
    from sqlalchemy.engine import make_url

    from actions.executor import Executor
    from actions.queue import run_until_signalled
    from actions.templates import TemplateStore
    from engine.db import migrate
    from engine.db.database import connect, database_url
    from journeys.deployment import load_deployment

    folder = Path(path)
    if not folder.is_dir():
        raise UsageError(f"{path}: not a deployment folder")
    url = os.environ.get("JOURNEYS_REDIS_URL")
    if not url:
        raise ConfigError("journeys worker needs JOURNEYS_REDIS_URL (redis://host:6379/0)")
    deployment = load_deployment(str(folder))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # one line per outbound call (with its full URL, which may carry a secret) is too much
    for noisy in ("httpx", "httpcore", "arq.worker", "arq.jobs"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    async def main() -> None:
        db = connect(database_url(folder))
        await migrate.ensure_current(db, f"journeys db upgrade {folder}")
        executor = Executor(db, deployment.config, TemplateStore(folder / "templates"),
                            f"worker:{socket.gethostname()}:{os.getpid()}")
        shown = make_url(url.replace("redis://", "redis+x://", 1)).render_as_string(hide_password=True)

        def ready(count: int) -> None:
            print(f"journeys: {count} arq workers on {shown.replace('redis+x://', 'redis://', 1)} for {folder}",
                  flush=True)

        await run_until_signalled(executor, url, ready)
        await db.dispose()

    asyncio.run(main())
    return 0
