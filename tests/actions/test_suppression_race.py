"""Invariant 7: after an opt-out commits, no message to that contact on a suppressed channel leaves.

A slow provider (a local fake Twilio API that takes its time) keeps a send in flight while
the contact texts STOP: the opt-out's commit waits for the send to finish, and a send that
starts after the opt-out sees the suppression and is blocked, never handed to the provider.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
from sqlalchemy import select

from actions.executor import Executor
from actions.templates import TemplateStore
from engine.db import migrate
from engine.db.database import Database, connect
from engine.db.schema import contacts, jobs
from ingest.committer import Committer
from ingest.incoming import ContactRef, Incoming
from journeys.config import ChannelConfig, Config, Policies
from tests.engine.runtime_helpers import T0, deploy, drain, engine_for, ev, journey, put, rows
from tests.services import sqlite_url

pytestmark = pytest.mark.anyio

SEND = """
journey: nudge
version: 1
reentry: always
trigger: {on: nudge.requested}
initial: send
states:
  send:
    enter: [{action: send_sms, with: {body: "hello"}}]
    final: true
"""


@pytest.fixture
def slow_twilio() -> Iterator[dict[str, Any]]:
    seen: dict[str, Any] = {"requests": [], "started": threading.Event(), "finished": []}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["content-length"]))
            seen["requests"].append(time.monotonic())
            seen["started"].set()
            time.sleep(0.8)  # the provider takes its time: the send is in flight
            body = json.dumps({"sid": f"SM{len(seen['requests'])}"}).encode()
            self.send_response(201)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            seen["finished"].append(time.monotonic())

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    seen["url"] = f"http://127.0.0.1:{server.server_address[1]}"
    yield seen
    server.shutdown()
    server.server_close()


def twilio_config(api_base: str) -> Config:
    sms = ChannelConfig("sms", "twilio", MappingProxyType({
        "provider": "twilio", "account_sid": "AC1", "auth_token": "t", "from": "+15005550006", "api_base": api_base}))
    return Config(MappingProxyType({}), MappingProxyType({"sms": sms}), Policies())


async def test_an_opt_out_waits_for_the_send_in_flight_and_blocks_the_next(
        db: Database, tmp_path: Path, slow_twilio: dict[str, Any]) -> None:
    registry = await deploy(db, journey(SEND))
    async with db.write.begin() as conn:
        await conn.execute(contacts.insert().values(id="c-1", phone="+4915112345678", email=None, timezone=None,
                                                    locale=None, attributes={}, created_at=T0, updated_at=T0))
    await put(db, ev("nudge.requested", id="n1"))
    await drain(engine_for(db, registry))
    config = twilio_config(slow_twilio["url"])
    executor = Executor(db, config, TemplateStore(tmp_path), "x1", clock=lambda: T0)
    store = connect(db.url.render_as_string(hide_password=False), schema=db.schema)
    committer = Committer(store, config.policies)
    stop = asyncio.Event()
    committing = asyncio.create_task(committer.run(stop))
    try:
        sending = asyncio.create_task(executor.run_once())
        await asyncio.to_thread(slow_twilio["started"].wait, 10)
        stop_reply = Incoming(type="contact.opted_out", provider_event_id="SM-in:received:opt", channel="sms",
                              contact=ContactRef(phone="+4915112345678"))
        await committer.submit("twilio", "twilio", [stop_reply])
        committed_at = time.monotonic()
        await sending
        # the opt-out was acknowledged only after the provider had answered the send in flight
        assert committed_at >= slow_twilio["finished"][0]
        # a send that starts after the opt-out never reaches the provider
        await put(db, ev("nudge.requested", id="n2"))
        await drain(engine_for(db, registry))
        await executor.run_once()
    finally:
        stop.set()
        await committing
        await store.dispose()
        if executor.http is not None:
            await executor.http.aclose()
    assert len(slow_twilio["requests"]) == 1
    statuses = sorted(r.status for r in await rows(db, select(jobs.c.status)))
    assert statuses == ["done", "skipped"]


async def test_across_processes_on_sqlite_an_opt_out_waits_for_the_send_in_flight(
        tmp_path: Path, slow_twilio: dict[str, Any]) -> None:
    """`journeys serve` runs the executor in a process of its own: the in-process gate cannot see
    it, the lock bytes beside the SQLite file (engine.db.sendlocks) must. Here `journeys engine`
    sends, and this process commits the opt-out as ingest does."""
    folder = tmp_path / "ops"
    (folder / "journeys").mkdir(parents=True)
    (folder / "journeys" / "nudge.yaml").write_text(SEND.lstrip(), encoding="utf-8")
    (folder / "config.yaml").write_text(
        "sources: {}\nchannels:\n  sms: {provider: twilio, account_sid: AC1, auth_token: env:TWILIO_AUTH_TOKEN, "
        f'from: "+15005550006", api_base: "{slow_twilio["url"]}"}}\n', encoding="utf-8")
    db = connect(sqlite_url(folder))
    await migrate.upgrade(db)
    now = datetime.now(UTC)
    async with db.write.begin() as conn:
        await conn.execute(contacts.insert().values(id="c-1", phone="+4915112345678", email=None, timezone=None,
                                                    locale=None, attributes={}, created_at=now, updated_at=now))
    await put(db, ev("nudge.requested", id="n1", at=now), at=now)
    env = {**os.environ, "TWILIO_AUTH_TOKEN": "t", "JOURNEYS_DATABASE_URL": sqlite_url(folder)}
    log = (tmp_path / "engine.log").open("wb")
    engine = subprocess.Popen([str(Path(sys.executable).parent / "journeys"), "engine", str(folder)], env=env,
                              stdout=log, stderr=subprocess.STDOUT)
    committer = Committer(db, Policies())
    stop = asyncio.Event()
    committing = asyncio.create_task(committer.run(stop))
    try:
        if not await asyncio.to_thread(slow_twilio["started"].wait, 30):
            raise AssertionError((tmp_path / "engine.log").read_text())
        stop_reply = Incoming(type="contact.opted_out", provider_event_id="SM-in:received:opt", channel="sms",
                              contact=ContactRef(phone="+4915112345678"))
        await committer.submit("twilio", "twilio", [stop_reply])
        committed_at = time.monotonic()
        assert slow_twilio["finished"] and committed_at >= slow_twilio["finished"][0]
        # a send that starts after the opt-out never reaches the provider
        later = datetime.now(UTC)
        await put(db, ev("nudge.requested", id="n2", at=later), at=later)
        deadline = time.monotonic() + 30
        statuses: list[str] = []
        while time.monotonic() < deadline and statuses != ["done", "skipped"]:
            await asyncio.sleep(0.1)
            statuses = sorted(r.status for r in await rows(db, select(jobs.c.status)))
        assert statuses == ["done", "skipped"]
    finally:
        stop.set()
        await committing
        engine.send_signal(signal.SIGTERM)
        engine.wait(30)
        log.close()
        await db.dispose()
    assert len(slow_twilio["requests"]) == 1
