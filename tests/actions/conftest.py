"""Fixtures for the queue tests: a real Redis database per test, and a local HTTP receiver.

Redis follows the convention of :mod:`tests.services` for PostgreSQL: on a laptop without
Redis the Redis tests skip, saying why; in CI (CI=true) a missing Redis fails the run.

Each test gets a Redis database of its own (arq's job keys are global to a database and our
job ids are deterministic, so two tests must never share one), locked for it across processes
and flushed before and after.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tests.services import IN_CI

REDIS_BASE = os.environ.get("JOURNEYS_TEST_REDIS_URL", "redis://127.0.0.1:6379").rstrip("/")
# databases this folder's tests take turns on: not the low numbers (people, other suites) nor 14
# (tests/benchmarks/bench_actions.py's default)
REDIS_DBS = (8, 9, 10, 11, 12, 13, 15)
# the database that holds the locks on them: two test runs at once (a person and CI, or xdist
# workers) must never share a database, or one's workers run the other's jobs and its flush
# empties the other's queues
LOCK_DB = 7
LOCK_TTL_MS = 300_000  # a run killed without cleaning up frees its database after this
LOCK_WAIT_S = 120.0
_redis_ok: bool | None = None


async def _probe(url: str) -> bool:
    from redis.asyncio import Redis
    from redis.exceptions import RedisError

    client = Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
    try:
        return bool(await client.ping())
    except (OSError, RedisError):
        return False
    finally:
        await client.aclose()


async def require_redis() -> None:
    global _redis_ok
    if _redis_ok is None:
        _redis_ok = await _probe(f"{REDIS_BASE}/{LOCK_DB}")
    if not _redis_ok:
        message = f"Redis is not reachable at {REDIS_BASE}"
        if IN_CI:
            pytest.fail(f"{message} (CI=true: a missing service fails the run)")
        pytest.skip(message)


@contextlib.asynccontextmanager
async def _database_of_our_own() -> AsyncIterator[int]:
    """Lock one of REDIS_DBS for this test (waiting while all are taken), and free it afterwards."""
    from redis.asyncio import Redis

    locks = Redis.from_url(f"{REDIS_BASE}/{LOCK_DB}")
    token = f"{os.getpid()}:{uuid.uuid4().hex}"
    deadline = time.monotonic() + LOCK_WAIT_S
    try:
        number: int | None = None
        while number is None:
            for candidate in random.sample(REDIS_DBS, len(REDIS_DBS)):
                if await locks.set(f"journeys-test:redis-db:{candidate}", token, nx=True, px=LOCK_TTL_MS):
                    number = candidate
                    break
            else:
                if time.monotonic() > deadline:
                    pytest.fail(f"every Redis test database {REDIS_DBS} stayed locked for {LOCK_WAIT_S:g} s "
                                f"(keys journeys-test:redis-db:* in database {LOCK_DB})")
                await asyncio.sleep(0.2)
        try:
            yield number
        finally:
            key = f"journeys-test:redis-db:{number}"
            if await locks.get(key) == token.encode():
                await locks.delete(key)
    finally:
        await locks.aclose()


@pytest.fixture
async def redis_url() -> AsyncIterator[str]:
    """The URL of an empty Redis database of this test's own, flushed again afterwards."""
    from redis.asyncio import Redis

    await require_redis()
    async with _database_of_our_own() as number:
        url = f"{REDIS_BASE}/{number}"
        client = Redis.from_url(url)
        try:
            await client.flushdb()
            yield url
            await client.flushdb()
        finally:
            await client.aclose()


# --- the http action ------------------------------------------------------------------------

PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY",
                   "ALL_PROXY", "NO_PROXY")


@pytest.fixture(autouse=True)
def _no_proxy_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The http action follows the environment's proxies: none may carry test traffic elsewhere."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)



@pytest.fixture
async def close_http_action() -> AsyncIterator[None]:
    """Close the built-in http action's client when the test ends (it belongs to the test's event loop).

    For tests that run ``http`` jobs through executors without closing them.
    """
    yield
    from actions.http import close

    await close()


# --- a receiver for the http action -------------------------------------------------------


@dataclass
class KeyReceiver:
    """Records the Idempotency-Key of every request; applies an effect once per key.

    The first request is held ``hold`` seconds before it is answered (the effect is applied
    before the wait, as a real system would: the caller may die before it hears the answer).
    """

    hold: float = 2.0
    url: str = ""
    keys: list[str] = field(default_factory=list)
    effects: dict[str, int] = field(default_factory=dict)  # idempotency key -> effects applied
    holding: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    receiver: KeyReceiver

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a killed caller leaves a broken pipe behind: expected here


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        rec = self.server.receiver
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        key = self.headers.get("Idempotency-Key", "")
        with rec.lock:
            rec.keys.append(key)
            first = len(rec.keys) == 1
            if key not in rec.effects:
                rec.effects[key] = 1  # the effect (a ticket, a charge): once per key
        if first:
            rec.holding.set()
            time.sleep(rec.hold)
        body = b'{"ok": true}'
        self.send_response(201)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def key_receiver() -> Iterator[KeyReceiver]:
    """An HTTP receiver on 127.0.0.1 (a thread) that records Idempotency-Keys and holds its first request."""
    rec = KeyReceiver()
    server = _Server(("127.0.0.1", 0), _Handler)
    server.receiver = rec
    rec.url = f"http://127.0.0.1:{server.server_address[1]}/tickets"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield rec
    server.shutdown()
    server.server_close()
    thread.join(5)
