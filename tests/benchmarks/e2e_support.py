"""What bench_e2e.py and crash_test.py share: the deployment they run, the receiver of its
``http`` actions, and starting, watching and stopping ``journeys`` processes as a user runs them.

Not a benchmark itself and not collected by pytest.

The deployment: one ``events`` source (``shop``) and one journey, ``order-hook``: an
``order.created`` event starts it (``reentry: always``), its state ``notify`` runs one ``http``
POST to the receiver (``/hook/<tag>``, the order id and the event's ``sent_at`` in the JSON body;
retry policy ``hook``: 10 attempts from 200 ms, at most 2 s apart, on timeouts, connection errors
and 5xx) and is final. So the instance is completed as soon as the engine has decided, and the
action runs afterwards: "instance completed" and "action done" are two separate checks.

The receiver is a bare asyncio HTTP/1.1 server in a process of its own. It answers 200 at once
(or 500 to every *fail_every*-th request), and records for each Idempotency-Key, per tag: the
time of the first delivery, the deliveries, the 2xx answers, the time of the first 2xx and the
``sent_at`` of the body.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
JOURNEYS = str(BIN / "journeys")
SECRET = "whsec_dGhlLWUyZS1iZW5jaG1hcmstc2VjcmV0LTAxMjM0NTY3"  # base64 of a 32-byte test key
PG_URL = os.environ.get("JOURNEYS_TEST_PG_URL", "postgresql+asyncpg://postgres@127.0.0.1/test")

CONFIG = """\
sources:
  shop: {provider: events, secret: env:BENCH_SECRET}
channels: {}
policies:
  http_allow_networks: [127.0.0.0/8]
"""

JOURNEY = """\
journey: order-hook
version: 1
description: Every new order is posted to the fulfilment hook, then the journey is over.
trigger: {on: order.created}
reentry: always
initial: notify
states:
  notify:
    enter:
      - action: http
        with:
          method: POST
          url: "http://127.0.0.1:PORT/hook/TAG"
          json: {order: "{{ event.data.order_id }}", sent_at: "{{ event.data.sent_at }}"}
        retry: hook
    final: true
retry:
  hook: {max_attempts: 10, initial: 200ms, max: 2s, timeout: 5s, retry_on: [timeout, connection, 5xx]}
"""


def write_deployment(folder: Path, receiver_port: int, tag: str) -> Path:
    """A deployment folder whose journey posts to the receiver under *tag*."""
    (folder / "journeys").mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(CONFIG, encoding="utf-8")
    (folder / "journeys" / "order-hook.yaml").write_text(
        JOURNEY.replace("PORT", str(receiver_port)).replace("TAG", tag), encoding="utf-8")
    return folder


def environment(database_url: str | None = None, redis_url: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("JOURNEYS_DATABASE_URL", "JOURNEYS_REDIS_URL")}
    env["BENCH_SECRET"] = SECRET
    if database_url:
        env["JOURNEYS_DATABASE_URL"] = database_url
    if redis_url:
        env["JOURNEYS_REDIS_URL"] = redis_url
    return env


def order_request(n: int, *, event_id: str | None = None, sent_at: float | None = None,
                  kind: str = "order.created") -> tuple[bytes, dict[str, str]]:
    """A signed ``events`` webhook for order *n* (contact ``c-<n>``); the same *event_id* on a resend."""
    from ingest.providers.events import sign

    event_id = event_id or f"order-{n}"
    body = json.dumps({"id": event_id, "type": kind, "contact": {"id": f"c-{n}"},
                       "data": {"order_id": f"o-{n}", "sent_at": f"{time.time() if sent_at is None else sent_at:.6f}"}},
                      separators=(",", ":")).encode()
    stamp = int(time.time())
    msg_id = f"msg_{event_id}"
    return body, {"content-type": "application/json", "webhook-id": msg_id, "webhook-timestamp": str(stamp),
                  "webhook-signature": sign(SECRET, msg_id, stamp, body)}


# --- the receiver ---------------------------------------------------------------------------------


def receiver_main(fail_every: int) -> None:
    """Serve until SIGTERM; print ``port N`` once listening."""
    # tag -> key -> [first arrival, deliveries, 2xx answers, first 2xx time, sent_at]
    records: dict[str, dict[str, list[Any]]] = {}
    requests = 0

    def answer(body: bytes, status: bytes = b"200 OK") -> bytes:
        return (b"HTTP/1.1 " + status + b"\r\nContent-Type: application/json\r\nContent-Length: "
                + str(len(body)).encode() + b"\r\n\r\n" + body)

    class Hook(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            assert isinstance(transport, asyncio.Transport)
            self.transport = transport
            self.buffer = b""

        def data_received(self, data: bytes) -> None:
            nonlocal requests
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
                body = self.buffer[end + 4:end + 4 + length]
                self.buffer = self.buffer[end + 4 + length:]
                method, target = lines[0].split(" ")[:2]
                what, _, tag = target.lstrip("/").partition("/")
                if method == "GET":
                    found = records.get(tag, {})
                    if what == "count":
                        deliveries = sum(r[1] for r in found.values())
                        ok = sum(1 for r in found.values() if r[2])
                        self.transport.write(answer(json.dumps({"keys": len(found), "ok": ok,
                                                                "deliveries": deliveries}).encode()))
                    else:  # dump
                        self.transport.write(answer(json.dumps(found).encode()))
                    continue
                key = headers.get("idempotency-key", "")
                requests += 1
                failed = fail_every > 0 and requests % fail_every == 0
                record = records.setdefault(tag, {}).get(key)
                if record is None:
                    sent_at = None
                    with contextlib.suppress(ValueError, TypeError, AttributeError):
                        sent_at = float(json.loads(body).get("sent_at"))
                    record = records[tag][key] = [now, 0, 0, None, sent_at]
                record[1] += 1
                if failed:
                    self.transport.write(answer(b'{"error":"try again"}', b"500 Internal Server Error"))
                else:
                    record[2] += 1
                    if record[3] is None:
                        record[3] = now
                    self.transport.write(answer(b'{"ok":true}'))

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Hook, "127.0.0.1", 0, backlog=1024)
        print(f"port {server.sockets[0].getsockname()[1]}", flush=True)
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        await stop.wait()
        server.close()

    asyncio.run(serve())


class Receiver:
    """The receiver process, and a client for its counts and records."""

    def __init__(self, script: str, fail_every: int = 0) -> None:
        self.proc = subprocess.Popen([sys.executable, script, "--receiver", str(fail_every)],
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        self.port = int(self.proc.stdout.readline().split()[1])

    def _get(self, path: str) -> Any:
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sock:
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: bench\r\nContent-Length: 0\r\n\r\n".encode())
            data = b""
            while b"\r\n\r\n" not in data:
                data += sock.recv(65536)
            head, _, body = data.partition(b"\r\n\r\n")
            length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length"))
            while len(body) < length:
                body += sock.recv(1 << 20)
        return json.loads(body)

    def count(self, tag: str) -> dict[str, int]:
        """``keys`` (distinct), ``ok`` (keys with a 2xx), ``deliveries`` (all requests) for *tag*."""
        found: dict[str, int] = self._get(f"/count/{tag}")
        return found

    def records(self, tag: str) -> dict[str, list[Any]]:
        """Key -> [first arrival, deliveries, 2xx answers, first 2xx time, sent_at] for *tag*."""
        found: dict[str, list[Any]] = self._get(f"/dump/{tag}")
        return found

    def wait_for(self, tag: str, keys: int, timeout: float, field: str = "keys") -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.count(tag)[field] >= keys:
                return True
            time.sleep(0.05)
        return self.count(tag)[field] >= keys

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=10)


# --- processes ------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stat(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def descendants(pid: int) -> list[int]:
    """*pid* and every process under it (Linux /proc)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat(int(entry))
            if fields:
                parents.setdefault(int(fields[1]), []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        todo += parents.get(current, [])
    return out


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds of *pids* so far (those that still exist)."""
    total = 0
    for pid in pids:
        fields = _stat(pid)
        if fields:
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def cpu_of_named(name: str) -> float:
    """CPU seconds of every process whose command is *name* (the PostgreSQL or Redis server)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                comm = Path(f"/proc/{entry}/comm").read_text().strip()
            except OSError:
                continue
            if comm == name:
                pids.append(int(entry))
    return cpu_seconds(pids)


@dataclass
class Process:
    """A ``journeys`` command run as a user runs it, its output in a log file."""

    name: str
    args: list[str]
    env: dict[str, str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    problems: list[str] = field(default_factory=list)

    def start(self, new_session: bool = False) -> None:
        """Start it (in a process group of its own with *new_session*, as a terminal or a
        container would start it: then :meth:`kill` can take its children with it)."""
        with self.log.open("ab") as out:
            out.write(f"--- {time.strftime('%H:%M:%S')} {' '.join(self.args[:3])}\n".encode())
            out.flush()
            self.proc = subprocess.Popen(self.args, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=new_session)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def wait_for_line(self, text: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log.read_text(errors="replace"):
                return
            if self.proc is not None and self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} did not print {text!r}; see {self.log}:\n{self.tail()}")

    def tail(self, lines: int = 15) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def cpu(self) -> float:
        """CPU seconds of the process and its children (serve's writer process) so far."""
        return cpu_seconds(descendants(self.pid)) if self.proc is not None else 0.0

    def kill(self, group: bool = False) -> list[int]:
        """SIGKILL to the process alone, as the OOM killer would (or to its whole process group,
        as a container's end would, when it was started in a session of its own); returns the
        children it had."""
        assert self.proc is not None
        children = [p for p in descendants(self.pid) if p != self.pid]
        if group:
            os.killpg(self.pid, signal.SIGKILL)
        else:
            self.proc.kill()
        self.proc.wait()
        return children

    def stop(self, timeout: float = 30) -> float:
        """SIGTERM, and the seconds it took to exit; notes a process (or child) that did not stop."""
        if self.proc is None or self.proc.poll() is not None:
            return 0.0
        children = [p for p in descendants(self.pid) if p != self.pid]
        began = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.problems.append(f"{self.name} did not exit within {timeout:g} s of SIGTERM; killed")
            self.proc.kill()
            self.proc.wait()
        took = time.monotonic() - began
        left = wait_gone(children, 10)
        if left:
            self.problems.append(f"{self.name}: child process(es) {left} still running 10 s after it exited; killed")
            for pid in left:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
        return took

    def tracebacks(self) -> list[str]:
        """The exception line of each traceback in the log (chained ones included)."""
        lines = self.log.read_text(errors="replace").splitlines()
        out = []
        for i, line in enumerate(lines):
            if line.startswith("Traceback (most recent call last):"):
                out += [follow for follow in lines[i + 1:] if follow and not follow.startswith(" ")][:1]
        return out


def wait_gone(pids: list[int], timeout: float) -> list[int]:
    """The *pids* still alive (and not zombies) after up to *timeout* seconds."""
    deadline = time.monotonic() + timeout
    while True:
        alive = [p for p in pids if (_stat(p) or ["Z"])[0] != "Z"]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.1)


def wait_http(base: str, proc: Process, timeout: float = 30) -> None:
    """Until GET /healthz answers 200."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.proc is not None and proc.proc.poll() is not None:
            raise RuntimeError(f"{proc.name} exited with {proc.proc.returncode}:\n{proc.tail()}")
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{proc.name} did not answer at {base}:\n{proc.tail()}")


def serve(folder: Path, env: dict[str, str], port: int, log: Path, *extra: str) -> Process:
    process = Process("journeys serve", [JOURNEYS, "serve", str(folder), "--port", str(port), *extra], env, log)
    process.start()
    wait_http(f"http://127.0.0.1:{port}", process)
    return process


def worker(folder: Path, env: dict[str, str], log: Path) -> Process:
    process = Process("journeys worker", [JOURNEYS, "worker", str(folder)], env, log)
    process.start()
    process.wait_for_line("arq workers on")
    return process


def db_upgrade(folder: Path, env: dict[str, str]) -> None:
    subprocess.run([JOURNEYS, "db", "upgrade", str(folder)], env=env, check=True, capture_output=True)


def post_once(port: int, body: bytes, headers: dict[str, str], path: str = "/ingest/shop") -> int:
    import httpx

    return httpx.post(f"http://127.0.0.1:{port}{path}", content=body, headers=headers, timeout=30).status_code


# --- PostgreSQL and Redis -------------------------------------------------------------------------


async def create_database(name: str, base: str = PG_URL) -> str:
    """A new, empty PostgreSQL database on *base*'s server; its URL."""
    import asyncpg
    from sqlalchemy.engine import make_url

    parsed = make_url(base)
    conn = await asyncpg.connect(parsed.set(drivername="postgresql").render_as_string(hide_password=False))
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return parsed.set(database=name).render_as_string(hide_password=False)


async def drop_database(name: str, base: str = PG_URL) -> None:
    import asyncpg
    from sqlalchemy.engine import make_url

    parsed = make_url(base)
    conn = await asyncpg.connect(parsed.set(drivername="postgresql").render_as_string(hide_password=False))
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


REDIS_DBS = (10, 11, 12, 13)  # the benchmarks' Redis databases
LOCK_DB = 7  # where tests/actions/conftest.py locks the Redis databases it takes turns on
LOCK_TTL_MS = 300_000


@contextlib.contextmanager
def redis_database(url: str, wait: float = 120) -> Iterator[str]:
    """A Redis database of our own, emptied: the one *url* names (10 to 13), or the first of
    10 to 13 that is free. It is locked the way the test suite locks the databases it uses
    (tests/actions/conftest.py: a key in database 7, renewed while we run), so that a test run
    at the same time neither empties it under us nor has it emptied by us."""
    from redis import Redis

    base, _, tail = url.rstrip("/").rpartition("/")
    if tail.isdigit():
        candidates: tuple[int, ...] = (int(tail),)
        if int(tail) not in REDIS_DBS:
            raise SystemExit(f"{url}: the benchmarks use Redis databases {REDIS_DBS} only")
    else:
        base, candidates = url.rstrip("/"), REDIS_DBS
    locks = Redis.from_url(f"{base}/{LOCK_DB}")
    token = f"bench:{os.getpid()}:{uuid.uuid4().hex}"
    deadline = time.monotonic() + wait
    number: int | None = None
    while number is None:
        for candidate in candidates:
            if locks.set(f"journeys-test:redis-db:{candidate}", token, nx=True, px=LOCK_TTL_MS):
                number = candidate
                break
        else:
            if time.monotonic() > deadline:
                raise SystemExit(f"Redis databases {candidates} stayed locked (by a test run) for {wait:g} s")
            time.sleep(0.5)
    key = f"journeys-test:redis-db:{number}"
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(30):
            locks.eval("if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2])"
                       " else return 0 end", 1, key, token, LOCK_TTL_MS)

    thread = threading.Thread(target=renew, daemon=True)
    thread.start()
    try:
        Redis.from_url(f"{base}/{number}").flushdb()
        yield f"{base}/{number}"
    finally:
        stop.set()
        thread.join()
        Redis.from_url(f"{base}/{number}").flushdb()
        if locks.get(key) == token.encode():
            locks.delete(key)
        locks.close()


async def flush_redis(url: str) -> None:
    """Empty the Redis database of *url*: one :func:`redis_database` gave us."""
    from redis.asyncio import Redis

    client = Redis.from_url(url)
    try:
        await client.flushdb()
    finally:
        await client.aclose()


# --- the database's view --------------------------------------------------------------------------


def sqlite_counts(folder: Path) -> dict[str, int]:
    """Counts in the deployment's SQLite file, read-only (the server keeps writing)."""
    with contextlib.closing(sqlite3.connect(f"file:{folder / 'journeys.db'}?mode=ro", uri=True, timeout=10)) as conn:
        return _counts(conn.execute)


async def pg_counts(url: str) -> dict[str, int]:
    import asyncpg
    from sqlalchemy.engine import make_url

    conn = await asyncpg.connect(make_url(url).set(drivername="postgresql").render_as_string(hide_password=False))
    try:
        async def run(sql: str) -> list[Any]:
            return list(await conn.fetch(sql))

        return {name: int((await run(sql))[0][0] or 0) for name, sql in COUNTS.items()}
    finally:
        await conn.close()


COUNTS = {
    "orders": "SELECT count(*) FROM events WHERE source = 'shop' AND type = 'order.created'",
    "distinct_orders": "SELECT count(DISTINCT provider_event_id) FROM events WHERE source = 'shop' "
                       "AND type = 'order.created'",
    "pending_events": "SELECT count(*) FROM events WHERE status = 'pending'",
    "other_events": "SELECT count(*) FROM events WHERE NOT (source = 'shop' AND type = 'order.created')",
    "duplicates": "SELECT sum(duplicates) FROM events",
    "instances": "SELECT count(*) FROM instances",
    "completed": "SELECT count(*) FROM instances WHERE status = 'completed'",
    "jobs": "SELECT count(*) FROM jobs",
    "jobs_done": "SELECT count(*) FROM jobs WHERE status = 'done'",
}


def _counts(execute: Any) -> dict[str, int]:
    return {name: int(execute(sql).fetchone()[0] or 0) for name, sql in COUNTS.items()}


def job_ids_sqlite(folder: Path) -> set[str]:
    with contextlib.closing(sqlite3.connect(f"file:{folder / 'journeys.db'}?mode=ro", uri=True, timeout=10)) as conn:
        return {row[0] for row in conn.execute("SELECT id FROM jobs")}


async def job_ids_pg(url: str) -> set[str]:
    import asyncpg
    from sqlalchemy.engine import make_url

    conn = await asyncpg.connect(make_url(url).set(drivername="postgresql").render_as_string(hide_password=False))
    try:
        return {row[0] for row in await conn.fetch("SELECT id FROM jobs")}
    finally:
        await conn.close()


# --- reporting ------------------------------------------------------------------------------------


def machine(redis_url: str) -> str:
    model = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = f", {int(line.split()[1]) / 1024 / 1024:.0f} GiB"
    import arq

    async def versions() -> tuple[str, str]:
        import asyncpg
        from redis.asyncio import Redis
        from sqlalchemy.engine import make_url

        pg = redis = "unreachable"
        with contextlib.suppress(Exception):
            conn = await asyncpg.connect(make_url(PG_URL).set(drivername="postgresql").render_as_string(
                hide_password=False), timeout=3)
            pg = str(await conn.fetchval("SHOW server_version"))
            await conn.close()
        with contextlib.suppress(Exception):
            client = Redis.from_url(redis_url)
            redis = str((await client.info("server")).get("redis_version"))
            await client.aclose()
        return pg, redis

    pg, redis = asyncio.run(versions())
    return textwrap.dedent(f"""\
        machine: {platform.machine()}, nproc {os.cpu_count()}, {model}{mem}
                 Python {platform.python_version()}, {platform.platform()}
                 SQLite {sqlite3.sqlite_version}, PostgreSQL {pg}, Redis {redis}, arq {arq.VERSION}""")


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))]


def median(values: list[float]) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2
