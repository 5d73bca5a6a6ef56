"""``journeys serve`` and ``journeys db upgrade``: the long-running process and its database."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import socket
import sys
from collections.abc import Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine import timers
from engine.db import migrate
from engine.db.database import Database, connect, database_url
from engine.loops import Waker
from engine.runtime import Engine, EngineSettings
from engine.versions import load_registry, register
from journeys.deployment import Deployment, DevEnvironment, load_deployment
from journeys.errors import ConfigError, UsageError

if TYPE_CHECKING:  # the app (and Litestar) is imported by serve alone
    from ingest.app import Loop


def _folder(path: str) -> Path:
    folder = Path(path)
    if not folder.is_dir():
        raise UsageError(f"{path}: not a deployment folder")
    return folder


async def _open(folder: Path) -> Database:
    url = database_url(folder)
    db = connect(url)
    try:
        await migrate.current(db)
    except OSError as exc:
        await db.dispose()
        raise ConfigError(f"cannot reach the database {db.url.render_as_string(hide_password=True)}: {exc}") from exc
    return db


async def prepare(folder: Path, deployment: Deployment, *, registered: bool = False) -> tuple[Database, Engine]:
    """The database, checked, with the deployment registered (unless *registered*: serve's engine
    process, whose server did it), and an engine for it."""
    db = await _open(folder)
    try:
        await migrate.ensure_current(db, f"journeys db upgrade {folder}")
        if not registered:
            async with db.write.begin() as conn:
                await register(conn, deployment.journeys.values(), datetime.now(UTC))
        # Compiling the journeys takes a while: not inside a write transaction, which on SQLite
        # would keep webhook commits waiting for it.
        async with db.read.connect() as conn:
            registry = await load_registry(conn, deployment.journeys)
    except BaseException:
        await db.dispose()
        raise
    worker = f"{socket.gethostname()}:{os.getpid()}"
    # SQLite has one writer: shorter engine transactions let webhook commits in between.
    batch = 100 if db.is_sqlite else 500
    settings = EngineSettings(batch_size=batch, keep_bodies=deployment.config.policies.store_message_bodies)
    return db, Engine(db, registry, worker, settings)


def _load(path: str, dev: bool) -> tuple[Path, Deployment, dict[str, str]]:
    """The deployment, and the secrets --dev made up for this run (a child process gets them too)."""
    folder = _folder(path)
    environ = DevEnvironment(os.environ) if dev else None
    deployment = load_deployment(str(folder), environ)
    generated: dict[str, str] = {}
    if environ is not None:
        generated = dict(environ.generated)
        for name, value in sorted(generated.items()):
            print(f"journeys: --dev: {name} is not set; using {value} for this run", flush=True)
    return folder, deployment, generated


def processing(folder: Path, deployment: Deployment, db: Database, engine: Engine) -> list[Loop]:
    """The loops that move journeys along: the engine, the timers, and the actions (run here by
    the embedded executor, or relayed to `journeys worker` when JOURNEYS_REDIS_URL is set).
    Each wakes the next when it wrote work for it, so nothing waits for a poll."""
    from actions.executor import Executor
    from actions.templates import TemplateStore

    redis_url = os.environ.get("JOURNEYS_REDIS_URL")
    if redis_url:
        # arq workers (`journeys worker`) run the jobs; this process only relays the due ones
        from actions.queue import relay

        waker = Waker()
        engine.on_jobs = waker.wake

        def run_jobs(stop: asyncio.Event) -> Coroutine[Any, Any, None]:
            return relay(db, redis_url, stop, waker=waker)
    else:
        executor = Executor(db, deployment.config, TemplateStore(folder / "templates"), engine.worker_id,
                            written=engine.wake)
        engine.on_jobs = executor.wake
        run_jobs = executor.run
    return [engine.run, lambda stop: timers.run(db, stop, fired=engine.wake), run_jobs]


def logs() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # one line per outbound call (with its full URL, which may carry a secret) is too much
    for noisy in ("httpx", "httpcore", "arq.worker", "arq.jobs"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)  # readiness checks ask it every few seconds


def settle() -> None:
    """For a long-running process, once start-up is done.

    What start-up built (journeys, the app, SQLAlchemy's tables) lives as long as the process:
    frozen, the collector stops walking it, and its full passes no longer stall requests for
    tens of milliseconds. The database driver runs in a thread; with the default 5 ms switch
    interval it waits that long for the interpreter lock whenever the event loop is busy."""
    sys.setswitchinterval(0.0005)
    gc.collect()
    gc.freeze()
    # A webhook allocates a few hundred objects: collect the young generation every 10,000
    # allocations rather than every 700 (a few per cent of the time a request takes).
    gc.set_threshold(10_000, 20, 20)


def serve(path: str, host: str, port: int, dev: bool = False, engine_here: bool = True) -> int:
    import uvicorn

    from cli.engine_process import EngineProcess
    from ingest.app import build_app
    from ingest.committer import Committer
    from ingest.routes import ROUTES, Ingest

    folder, deployment, generated = _load(path, dev)

    async def set_up() -> tuple[Database, Engine]:
        db, engine = await prepare(folder, deployment)
        # The pool was made on this loop; uvicorn runs its own (asyncpg connections cannot move).
        await db.dispose()
        return db, engine

    db, engine = asyncio.run(set_up())
    # Journey work runs in a child process at a lower priority, woken after each commit that
    # stored events (cli/engine_process.py): webhooks never wait behind it.
    child = EngineProcess(folder, {**os.environ, **generated}) if engine_here else None
    committer = Committer(db, deployment.config.policies, writer="process",
                          stored=child.wake if child is not None else None)
    loops: list[Loop] = [committer.run]
    if child is not None:
        # not a readiness check: webhooks are taken while the engine process restarts
        loops.append(child.run)
    app = build_app(db, loops=loops, admin_token=os.environ.get("JOURNEYS_ADMIN_TOKEN") or None,
                    state={"deployment": deployment, "registry": engine.registry,
                           "ingest": Ingest(deployment.config, committer),
                           "readiness": {"ingest_writer": committer.problem}},
                    route_handlers=ROUTES)
    logs()
    print(f"journeys: serving {folder} on http://{host}:{port} with {len(deployment.journeys)} journeys, "
          f"database {db.url.render_as_string(hide_password=True)}"
          + ("" if engine_here else "; no engine here (run `journeys engine`)"), flush=True)
    settle()
    # no access log: a line per webhook costs more than storing it; errors are still logged
    uvicorn.run(app, host=host, port=port, log_level="info", access_log=False, timeout_graceful_shutdown=20)
    return 0


def run_engine(path: str, dev: bool = False) -> int:
    """``journeys engine``: the processing loops of serve, without HTTP, until SIGTERM or SIGINT."""
    folder, deployment, _ = _load(path, dev)

    async def main() -> None:
        db, engine = await prepare(folder, deployment)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGUSR1, engine.wake)  # `kill -USR1`: look for new events now
        tasks = [asyncio.create_task(run(stop)) for run in processing(folder, deployment, db, engine)]
        print(f"journeys: engine for {folder} with {len(deployment.journeys)} journeys, database "
              f"{db.url.render_as_string(hide_password=True)}", flush=True)
        await stop.wait()
        # each loop finishes its batch and hands back what it claimed
        for result in await asyncio.gather(*tasks, return_exceptions=True):
            if isinstance(result, BaseException):
                logging.getLogger("journeys.engine").error("loop ended with %r", result)
        await db.dispose()

    logs()
    settle()
    asyncio.run(main())
    return 0


def upgrade(path: str) -> int:
    folder = _folder(path)

    async def run() -> str:
        db = await _open(folder)
        try:
            await migrate.upgrade(db)
            return await migrate.current(db) or "?"
        finally:
            await db.dispose()

    print(f"journeys: database migrated to {asyncio.run(run())}")
    return 0
