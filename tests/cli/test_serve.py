"""``journeys serve`` as a real process: it starts, serves, runs the engine, stops cleanly on SIGTERM,
and refuses a database whose migrations are behind; ``serve --no-engine`` beside ``journeys engine``."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType

import httpx
import pytest
from sqlalchemy import select, text

from engine.db.database import connect
from engine.db.schema import events
from engine.events import Event
from engine.store import store_events
from ingest.contacts import resolve
from ingest.incoming import ContactRef

EXE = str(Path(sys.executable).parent / "journeys")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("JOURNEYS_DATABASE_URL", None)
    return env


def _serving(args: list[str], log: Path, env: dict[str, str],
             new_session: bool = False) -> tuple[subprocess.Popen[bytes], str]:
    """``journeys <args> --port P`` on a free port, once it answers /healthz (in a process group
    of its own with *new_session*, as a terminal would start it)."""
    port = free_port()
    with log.open("wb") as out:
        proc = subprocess.Popen([EXE, *args, "--port", str(port)], env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=new_session)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                return proc, base
        except httpx.TransportError:
            time.sleep(0.1)
    proc.kill()
    proc.wait()
    raise AssertionError(f"serve did not start:\n{log.read_text(errors='replace')}")


@pytest.fixture
def server(deployment: Path, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], str, Path]]:
    """``journeys serve`` on a free port, its output in a file (a pipe nobody reads can fill and
    stall the server; a file also closes cleanly whichever way the test ends)."""
    log = tmp_path / "serve.log"
    proc, base = _serving(["serve", str(deployment), "--dev"], log, _env())
    yield proc, base, log
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def _store(db_file: Path, contact: ContactRef, *batch: Event) -> None:
    async def run() -> None:
        db = connect(f"sqlite+aiosqlite:///{db_file}")
        async with db.write.begin() as conn:
            await resolve(conn, [contact], datetime.now(UTC))
            await store_events(conn, batch, datetime.now(UTC))
        await db.dispose()

    asyncio.run(run())


def test_serve_runs_the_engine_and_stops_cleanly(server: tuple[subprocess.Popen[bytes], str, Path],
                                                 deployment: Path) -> None:
    proc, base, log = server
    assert httpx.get(f"{base}/readyz").json()["status"] == "ok"
    journeys = {j["journey"] for j in httpx.get(f"{base}/api/journeys").json()["items"]}
    assert journeys == {"payment-reminder", "opt-out", "sms-helpdesk", "cart-recovery"}
    now = datetime.now(UTC)
    # the contact has a phone, so the console SMS is sent and the journey waits in `remind` for
    # its delivery receipt (without one the send fails at once and the journey moves on)
    overdue = Event(id="e1", type="invoice.overdue", occurred_at=now, source="app", contact_id="c-1",
                    data=MappingProxyType({"amount_due": 5, "invoice_id": "I-1"}))
    _store(deployment / "journeys.db", ContactRef(id="c-1", phone="+4915112345678"), overdue)
    deadline = time.monotonic() + 15
    sent: list[dict[str, object]] = []
    # the executor reserves the message row before the provider call and fills in `to` after it
    while time.monotonic() < deadline and not (sent and sent[0]["to"]):
        sent = httpx.get(f"{base}/api/messages", params={"contact_id": "c-1"}).json()["items"]
        time.sleep(0.1)
    assert [(m["channel"], m["to"]) for m in sent] == [("sms", "+4915112345678")]
    items = httpx.get(f"{base}/api/instances", params={"contact_id": "c-1"}).json()["items"]
    assert [(i["journey"], i["state"], i["status"]) for i in items] == [("payment-reminder", "remind", "active")]
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)
    out = log.read_text(errors="replace")
    # uvicorn re-raises the signal after its graceful shutdown, as process managers expect
    assert proc.returncode == -signal.SIGTERM, out
    assert "Application shutdown complete" in out

    async def claimed() -> int:
        db = connect(f"sqlite+aiosqlite:///{deployment / 'journeys.db'}")
        async with db.read.connect() as conn:
            rows = (await conn.execute(select(events.c.id).where(events.c.claimed_by.is_not(None)))).all()
        await db.dispose()
        return len(rows)

    assert asyncio.run(claimed()) == 0


def test_serve_refuses_a_database_behind(deployment: Path) -> None:
    assert subprocess.run([EXE, "db", "upgrade", str(deployment)], env=_env(), capture_output=True).returncode == 0

    async def rewind() -> None:
        db = connect(f"sqlite+aiosqlite:///{deployment / 'journeys.db'}")
        async with db.write.begin() as conn:
            await conn.execute(text("UPDATE alembic_version SET version_num = '0000'"))
        await db.dispose()

    asyncio.run(rewind())
    proc = subprocess.run([EXE, "serve", str(deployment), "--dev", "--port", str(free_port())], env=_env(),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert f"run `journeys db upgrade {deployment}`" in proc.stderr


def test_serve_names_a_missing_secret(deployment: Path) -> None:
    env = _env()
    for name in ("TWILIO_AUTH_TOKEN", "SENDGRID_WEBHOOK_PUBLIC_KEY", "APP_WEBHOOK_SECRET", "APP_WEBHOOK_SECRET_OLD"):
        env.pop(name, None)
    proc = subprocess.run([EXE, "serve", str(deployment), "--port", str(free_port())], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "environment variable TWILIO_AUTH_TOKEN is not set" in proc.stderr


def _start(args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen([EXE, *args], env=env, stdout=out, stderr=subprocess.STDOUT)


def _post_overdue(base: str, secret: str, key: str, contact: dict[str, str]) -> httpx.Response:
    """A signed invoice.overdue event (id ``inv-<key>``) to the deployment's ``app`` source."""
    from ingest.providers.events import sign

    body = json.dumps({"id": f"inv-{key}", "type": "invoice.overdue", "contact": contact,
                       "data": {"amount_due": 12, "invoice_id": f"I-{key}"}}).encode()
    stamp = int(time.time())
    return httpx.post(f"{base}/ingest/app", content=body, headers={
        "content-type": "application/json", "webhook-id": f"msg_{key}", "webhook-timestamp": str(stamp),
        "webhook-signature": sign(secret, f"msg_{key}", stamp, body)})


def test_webhooks_and_the_engine_in_two_processes(deployment: Path, tmp_path: Path) -> None:

    secret = "whsec_" + base64.b64encode(b"two-processes-secret-0123456789ab").decode()
    env = {**_env(), "APP_WEBHOOK_SECRET": secret}
    web, base = _serving(["serve", str(deployment), "--dev", "--no-engine"], tmp_path / "web.log", env)
    engine: subprocess.Popen[bytes] | None = None
    try:
        answer = _post_overdue(base, secret, "9", {"id": "c-9", "phone": "+4915112345679"})
        assert answer.status_code == 202, answer.text
        time.sleep(0.5)
        # stored, and nobody here to process it
        [stored] = httpx.get(f"{base}/api/events", params={"contact_id": "c-9"}).json()["items"]
        assert stored["status"] == "pending"
        assert httpx.get(f"{base}/api/instances", params={"contact_id": "c-9"}).json()["items"] == []

        engine = _start(["engine", str(deployment), "--dev"], tmp_path / "engine.log", env)
        items: list[dict[str, object]] = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not items:
            items = httpx.get(f"{base}/api/instances", params={"contact_id": "c-9"}).json()["items"]
            time.sleep(0.1)
        assert [(i["journey"], i["state"], i["status"]) for i in items] == [("payment-reminder", "remind", "active")]
        engine.send_signal(signal.SIGTERM)
        assert engine.wait(timeout=30) == 0, (tmp_path / "engine.log").read_text(errors="replace")
        assert "journeys: engine for" in (tmp_path / "engine.log").read_text()
        assert "no engine here" in (tmp_path / "web.log").read_text()
    finally:
        for proc in (web, engine):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=30)


def test_ctrl_c_stops_serve_and_its_writer_process_after_the_last_webhook(deployment: Path, tmp_path: Path) -> None:
    """SIGINT to the whole process group (Ctrl+C in a terminal): the server and its writer
    process are both gone afterwards, and what was acknowledged is stored."""

    secret = "whsec_" + base64.b64encode(b"ctrl-c-test-secret-0123456789abc").decode()
    env = {**_env(), "APP_WEBHOOK_SECRET": secret}
    proc, base = _serving(["serve", str(deployment), "--dev", "--no-engine"], tmp_path / "web.log", env,
                          new_session=True)
    try:
        writers = subprocess.run(["pgrep", "-g", str(proc.pid), "-f", "ingest.writer"], capture_output=True,
                                 text=True).stdout.split()
        assert len(writers) == 1, writers
        answer = _post_overdue(base, secret, "c", {"id": "c-c"})
        assert answer.status_code == 202, answer.text
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=30)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.killpg(proc.pid, 0)  # anyone left in the group?
            except ProcessLookupError:
                break
            time.sleep(0.1)
        else:
            raise AssertionError("the writer process outlived the server")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    with sqlite3.connect(deployment / "journeys.db") as conn:
        assert conn.execute("SELECT count(*) FROM events WHERE provider_event_id = 'inv-c'").fetchone()[0] == 1


def test_the_writer_process_ends_when_the_server_is_killed(deployment: Path, tmp_path: Path) -> None:
    """SIGKILL leaves the server no time to stop anything: its writer process sees its stdin
    close and ends by itself."""
    proc, _ = _serving(["serve", str(deployment), "--dev", "--no-engine"], tmp_path / "web.log", _env())
    writers = subprocess.run(["pgrep", "-P", str(proc.pid), "-f", "ingest.writer"], capture_output=True,
                             text=True).stdout.split()
    assert len(writers) == 1, writers
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(int(writers[0]), 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    os.kill(int(writers[0]), signal.SIGKILL)
    raise AssertionError("the writer process outlived the server")
