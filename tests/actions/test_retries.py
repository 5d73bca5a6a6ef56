"""Retries through the executor against a real local receiver: transient failures wait their
backoff (Retry-After honoured), attempts are recorded on the timeline, the last one makes a
dead letter and an action.failed event; dead letters are listed, retried and discarded from the
CLI and the admin API."""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
from litestar.testing import AsyncTestClient
from sqlalchemy import select

from actions.executor import Executor, dead_letters
from actions.templates import TemplateStore
from engine.db.database import Database, connect
from engine.db.schema import events, jobs, steps
from ingest.app import build_app
from journeys.config import Config, Policies
from tests.engine.runtime_helpers import T0, deploy, drain, engine_for, ev, journey, put, rows

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("close_http_action")]

CALL = """
journey: ticket
version: 1
trigger: {on: ticket.requested}
initial: open
states:
  open:
    enter:
      - action: http
        with: {url: "URL", json: {n: "{{ event.data.n }}"}}
        retry: {max_attempts: 3, initial: 1s, factor: 2, max: 1m, jitter: none}
    on: {action.failed: failed}
    after: {1d: done}
  failed: {final: true}
  done: {final: true}
"""


@pytest.fixture
def receiver() -> Iterator[dict[str, Any]]:
    seen: dict[str, Any] = {"keys": [], "answers": []}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("content-length", "0")))
            seen["keys"].append(self.headers.get("idempotency-key"))
            status, headers = seen["answers"].pop(0) if seen["answers"] else (200, {})
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("content-length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    seen["url"] = f"http://127.0.0.1:{server.server_address[1]}/tickets"
    yield seen
    server.shutdown()
    server.server_close()


def make(db: Database, tmp_path: Path, now: Any) -> Executor:
    config = Config(MappingProxyType({}), MappingProxyType({}), Policies(http_allow_networks=("127.0.0.0/8",)))
    return Executor(db, config, TemplateStore(tmp_path), "x1", clock=lambda: now, rng=random.Random(1))


async def prepare(db: Database, receiver: dict[str, Any]) -> Any:
    registry = await deploy(db, journey(CALL.replace("URL", receiver["url"])))
    await put(db, ev("ticket.requested", data={"n": 1}))
    await drain(engine_for(db, registry))
    return registry


async def test_transient_failures_back_off_then_succeed(db: Database, tmp_path: Path,
                                                        receiver: dict[str, Any]) -> None:
    await prepare(db, receiver)
    receiver["answers"] += [(503, {}), (429, {"Retry-After": "30"})]
    run = make(db, tmp_path, T0)
    await run.run_once()
    [job] = await rows(db, select(jobs))
    assert (job.status, job.attempts) == ("pending", 1)
    assert job.next_attempt_at.replace(tzinfo=None) == (T0 + timedelta(seconds=1)).replace(tzinfo=None)
    assert await make(db, tmp_path, T0 + timedelta(milliseconds=500)).run_once() == 0  # not due yet
    await make(db, tmp_path, T0 + timedelta(seconds=1)).run_once()
    [job] = await rows(db, select(jobs))
    # the second wait would be 2 s, but the receiver asked for 30
    assert (job.status, job.attempts) == ("pending", 2)
    assert job.next_attempt_at.replace(tzinfo=None) == (T0 + timedelta(seconds=31)).replace(tzinfo=None)
    await make(db, tmp_path, T0 + timedelta(seconds=31)).run_once()
    [job] = await rows(db, select(jobs))
    assert (job.status, job.attempts) == ("done", 3)
    assert len(set(receiver["keys"])) == 1 and receiver["keys"][0] == job.id  # one key, every attempt
    attempts = [r.detail for r in await rows(db, select(steps.c.detail).where(steps.c.kind == "attempt")
                                             .order_by(steps.c.id))]
    assert [a.split(": ")[1] for a in attempts] == ["pending", "pending", "done"]
    assert "503" in attempts[0] and "429" in attempts[1]


async def test_out_of_attempts_is_a_dead_letter_the_journey_can_handle(db: Database, tmp_path: Path,
                                                                      receiver: dict[str, Any]) -> None:
    registry = await prepare(db, receiver)
    receiver["answers"] += [(500, {})] * 3
    for offset in (0, 1, 3):
        await make(db, tmp_path, T0 + timedelta(seconds=offset)).run_once()
    [job] = await rows(db, select(jobs))
    assert (job.status, job.attempts) == ("dead", 3)
    [failed] = await rows(db, select(events).where(events.c.type == "action.failed"))
    assert failed.data["instance_id"] == job.instance_id
    # the engine delivers it to the instance, which handles it like any other event
    await drain(engine_for(db, registry, now=T0 + timedelta(seconds=4)))
    from engine.db.schema import instances

    [inst] = await rows(db, select(instances.c.state, instances.c.status))
    assert (inst.state, inst.status) == ("failed", "completed")


async def test_a_permanent_failure_is_not_retried(db: Database, tmp_path: Path, receiver: dict[str, Any]) -> None:
    await prepare(db, receiver)
    receiver["answers"] += [(400, {})]
    await make(db, tmp_path, T0).run_once()
    [job] = await rows(db, select(jobs))
    assert (job.status, job.attempts) == ("dead", 1)
    assert len(receiver["keys"]) == 1


async def test_dead_letters_from_the_admin_api(db: Database, tmp_path: Path, receiver: dict[str, Any]) -> None:
    await prepare(db, receiver)
    receiver["answers"] += [(400, {})]
    await make(db, tmp_path, T0).run_once()
    [dead] = await dead_letters(db)
    app_db = connect(db.url.render_as_string(hide_password=False), schema=db.schema)
    async with AsyncTestClient(app=build_app(app_db)) as client:
        listed = (await client.get("/api/dead-letters")).json()["items"]
        assert [(d["id"], d["action"], d["attempts"]) for d in listed] == [(dead.id, "http", 1)]
        assert (await client.post(f"/api/dead-letters/{dead.id}/retry")).json() == {"id": dead.id,
                                                                                     "status": "pending"}
        assert (await client.post(f"/api/dead-letters/{dead.id}/retry")).status_code == 404
        assert (await client.get("/api/dead-letters")).json()["items"] == []
    [job] = await rows(db, select(jobs))
    assert (job.status, job.attempts) == ("pending", 0)
