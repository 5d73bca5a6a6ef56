"""Connections: one place that knows the differences between SQLite and PostgreSQL.

SQLite (the embedded default) needs WAL, a busy timeout, ``synchronous=NORMAL`` and
``BEGIN IMMEDIATE`` for writes; plain ``BEGIN`` with concurrent writers gives "database is
locked" at commit. Reads use a second engine with deferred transactions so that the
admin API never takes the write lock. PostgreSQL uses asyncpg; an optional schema (for
tests) goes into the search path.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import create_engine, event
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import SingletonThreadPool

from engine.db.sendlocks import WebhookTurn
from journeys.errors import ConfigError

DEFAULT_FILE = "journeys.db"
BUSY_TIMEOUT_MS = 10_000
log = logging.getLogger("journeys.db")
T = TypeVar("T")

POLL = 0.0005  # seconds between tries for SQLite's write lock, where a connection polls for it


def database_url(folder: str | Path, environ: dict[str, str] | None = None) -> str:
    """``JOURNEYS_DATABASE_URL``, or a SQLite file in the deployment folder."""
    env = os.environ if environ is None else environ
    url = env.get("JOURNEYS_DATABASE_URL")
    if url:
        return url
    path = (Path(folder) / DEFAULT_FILE).resolve()
    return f"sqlite+aiosqlite:///{path}"


def _sqlite_pragmas(engine: Engine, *, immediate: bool, poll: bool = False,
                    own_checkpoints: bool | None = None) -> None:
    """WAL and the rest for every connection of *engine*; BEGIN IMMEDIATE when *immediate*.

    *poll*: wait for another writer by trying BEGIN IMMEDIATE again every POLL seconds rather
    than through SQLite's busy handler, which sleeps up to 100 ms at a time once a wait has
    lasted a while: a webhook would wait a whole sleep after the lock came free. Only a
    connection used from a thread of its own may poll (the waits block its thread). Such a
    connection also leaves the write-ahead log's checkpoints to its owner (Checkpoints)."""

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        # Let us issue BEGIN ourselves: the driver's own BEGIN is deferred.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={0 if poll else BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        if poll if own_checkpoints is None else own_checkpoints:
            cursor.execute("PRAGMA wal_autocheckpoint=0")  # the ingest writer does it between commits
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Any) -> None:
        if not poll:
            conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")
            return
        raw = conn.connection.driver_connection
        deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
        while True:
            try:
                raw.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
            time.sleep(POLL)


@dataclass
class Database:
    """The engines of one database: ``write`` for transactions that change data, ``read`` for the rest."""

    url: URL
    write: AsyncEngine
    read: AsyncEngine
    schema: str | None = None  # PostgreSQL: the schema every table lives in (tests, shared databases)
    # SQLite: the thread and synchronous engine of transaction(), made on first use
    _thread: concurrent.futures.ThreadPoolExecutor | None = field(default=None, repr=False)
    _sync: Engine | None = field(default=None, repr=False)
    _turn: WebhookTurn | None = field(default=None, repr=False)
    _sync_read: Engine | None = field(default=None, repr=False)

    @property
    def dialect(self) -> str:
        return self.write.dialect.name

    @property
    def is_sqlite(self) -> bool:
        return self.dialect == "sqlite"

    def sqlite_writer(self) -> Engine:
        """:func:`sqlite_writer` on this database's file."""
        assert self.is_sqlite
        return sqlite_writer(self.url)

    async def transaction(self, work: Callable[..., T], *args: Any) -> T:
        """Run ``work(conn, *args)`` in one write transaction, and return what it returns.

        On SQLite the whole transaction runs in a thread of its own, on a synchronous connection:
        through aiosqlite every statement is a hand-off to the driver's thread and back through
        the event loop, and SQLite's one write lock is held meanwhile. In a process whose event
        loop is busy or whose priority is low (``serve``'s engine process), those hand-offs
        stretched a few milliseconds of work into tens or hundreds, and every webhook commit
        waited for them. On PostgreSQL, the async engine's connection runs it."""
        if not self.is_sqlite:
            async with self.write.begin() as conn:
                return await conn.run_sync(work, *args)
        self._start_thread()
        assert self._turn is not None and self._thread is not None
        await self._turn.wait_for_webhooks()  # webhooks go first (sendlocks.WebhookTurn)

        def run() -> T:
            assert self._sync is not None
            with self._sync.begin() as conn:
                return work(conn, *args)

        return await asyncio.wrap_future(self._thread.submit(run))

    async def reading(self, work: Callable[..., T], *args: Any) -> T:
        """Run ``work(conn, *args)`` on a read connection, and return what it returns.

        On SQLite it runs whole in the thread of :meth:`transaction`, on a synchronous connection
        of its own that takes no write lock: a read through aiosqlite costs about three times
        the CPU (a hand-off per statement), which the engine process pays several times per
        batch. On PostgreSQL, the async engine's connection runs it."""
        if not self.is_sqlite:
            async with self.read.connect() as conn:
                return await conn.run_sync(work, *args)
        self._start_thread()
        assert self._thread is not None

        def run() -> T:
            assert self._sync_read is not None
            with self._sync_read.connect() as conn, conn.begin():
                return work(conn, *args)

        return await asyncio.wrap_future(self._thread.submit(run))

    def _start_thread(self) -> None:
        if self._thread is None:
            self._thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="journeys-db-writer")
            self._sync = _sqlite_thread_engine(self.url)
            self._sync_read = create_engine(make_url(self.url).set(drivername="sqlite+pysqlite"),
                                            poolclass=SingletonThreadPool, pool_size=1)
            _sqlite_pragmas(self._sync_read, immediate=False)
            self._turn = WebhookTurn(self.url.database or "")

    async def dispose(self) -> None:
        await self.write.dispose()
        if self.read is not self.write:
            await self.read.dispose()
        thread, sync, sync_read = self._thread, self._sync, self._sync_read
        self._thread = self._sync = self._sync_read = None
        if thread is not None:
            await asyncio.to_thread(thread.shutdown)
        for engine in (sync, sync_read):
            if engine is not None:
                engine.dispose()
        if self._turn is not None:
            self._turn.close()
            self._turn = None


def sqlite_writer(url: URL | str) -> Engine:
    """A synchronous engine on a SQLite file, for a write transaction that runs whole in one
    thread (the ingest group commit: through aiosqlite every statement is several hand-offs
    between the event loop and its thread, which cost more than the statement).

    It is one more writer on the file: SQLite's lock (BEGIN IMMEDIATE, polled for: see
    _sqlite_pragmas) keeps its transactions and those of any other engine apart, in this
    process or another. Its owner checkpoints the write-ahead log (:func:`checkpoint`)."""
    engine = create_engine(make_url(url).set(drivername="sqlite+pysqlite"), poolclass=SingletonThreadPool,
                           pool_size=1)
    _sqlite_pragmas(engine, immediate=True, poll=True)
    return engine


def _sqlite_thread_engine(url: URL | str) -> Engine:
    """A synchronous engine for Database.transaction: its one connection lives in one thread,
    which polls for the write lock (SQLite's busy handler sleeps up to 100 ms at a time, and
    this process's async write connection contends with it too); SQLite checkpoints the
    write-ahead log itself as usual."""
    engine = create_engine(make_url(url).set(drivername="sqlite+pysqlite"), poolclass=SingletonThreadPool,
                           pool_size=1)
    _sqlite_pragmas(engine, immediate=True, poll=True, own_checkpoints=False)
    return engine


def checkpoint(conn: Connection) -> None:
    """Copy the write-ahead log back into the database file, between two writes of *conn*'s.

    SQLite does this itself after a commit that finds the log over 1,000 pages, and that
    commit's requests wait for the copy; a polling writer (sqlite_writer) has that turned off
    and is checkpointed by its owner when no request waits. With no write open, the checkpoint
    reaches the end of the log, and the next write starts the log over (a checkpointer running
    beside the writer never catches up, and the log grows without end)."""
    # On the driver's connection: through SQLAlchemy the statement would first begin a write.
    conn.connection.driver_connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()  # type: ignore[union-attr]


class Checkpoints:
    """A polling writer's write-ahead log, copied back into the database file in two steps.

    The copy of what the log holds runs in a thread of its own, on a connection of its own,
    while the writer goes on (SQLite's C code does not hold the interpreter lock). That copy
    never reaches the end of a log that is still being written to, and SQLite starts a log
    over only once a checkpoint has reached its end; so when it is done, the writer copies the
    little written meanwhile itself (:func:`checkpoint`), between two writes, and its next write
    starts the log over. Writes wait for that short copy only, not the long one."""

    def __init__(self, url: URL | str, every: int) -> None:
        self.every = every
        self.since = 0  # rows written since the last checkpoint began
        self._engine = sqlite_writer(url)
        self._thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="journeys-checkpoint")
        self._copy: concurrent.futures.Future[None] | None = None

    def after_write(self, conn: Connection, rows: int) -> None:
        """Called by the writer between two writes, after one of *rows* rows."""
        self.since += rows
        if self._copy is not None and self._copy.done():
            copy, self._copy = self._copy, None
            try:
                copy.result()
                checkpoint(conn)  # the rest: what was written while the thread copied
            except Exception:  # the next one tries again; nothing waits on this
                log.exception("WAL checkpoint failed")
        elif self._copy is None and self.since >= self.every:
            self.since = 0
            self._copy = self._thread.submit(self._copy_in_thread)

    def _copy_in_thread(self) -> None:
        with self._engine.connect() as own:
            checkpoint(own)

    def close(self) -> None:
        self._thread.shutdown(wait=True)
        self._engine.dispose()


def connect(url: str, *, schema: str | None = None, pool_size: int = 10) -> Database:
    """Engines for *url*; *schema* (PostgreSQL) puts every table in that schema."""
    try:
        parsed = make_url(url)
    except Exception as exc:  # sqlalchemy raises ArgumentError with a terse text
        raise ConfigError(f"JOURNEYS_DATABASE_URL {url!r} is not a database URL: {exc}") from exc
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        if parsed.drivername != "sqlite+aiosqlite":
            parsed = parsed.set(drivername="sqlite+aiosqlite")
        database = parsed.database or ""
        if database in ("", ":memory:"):
            # one in-memory database per connection would lose data between connections
            raise ConfigError("SQLite needs a file (sqlite+aiosqlite:///path.db), not :memory:")
        Path(database).parent.mkdir(parents=True, exist_ok=True)
        write = create_async_engine(parsed, pool_size=1, max_overflow=0, pool_timeout=60)
        read = create_async_engine(parsed, pool_size=pool_size)
        _sqlite_pragmas(write.sync_engine, immediate=True)
        _sqlite_pragmas(read.sync_engine, immediate=False)
        return Database(parsed, write, read)
    if backend == "postgresql":
        if parsed.drivername != "postgresql+asyncpg":
            parsed = parsed.set(drivername="postgresql+asyncpg")
        connect_args: dict[str, Any] = {"timeout": 10}
        if schema is not None:
            connect_args["server_settings"] = {"search_path": schema}
        # room for the executor's sends (one connection each while in flight) besides the loops
        engine = create_async_engine(parsed, pool_size=pool_size, max_overflow=2 * pool_size, pool_pre_ping=True,
                                     connect_args=connect_args)
        return Database(parsed, engine, engine, schema)
    raise ConfigError(f"unsupported database {backend!r}: use sqlite+aiosqlite:///FILE or "
                      "postgresql+asyncpg://USER@HOST/DB")
