"""POST /ingest/{source} end to end: the real app, real databases, requests signed by the
providers' own SDKs (twilio, standardwebhooks), every status code the endpoint answers."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any
from urllib.parse import urlencode

import pytest
from litestar.testing import AsyncTestClient
from sqlalchemy import select
from standardwebhooks import Webhook
from twilio.request_validator import RequestValidator

from engine.db.database import Database, connect
from engine.db.schema import contacts, events, suppressions
from ingest.app import build_app
from ingest.committer import Committer
from ingest.providers.events import sign
from ingest.routes import ROUTES, Ingest
from journeys.config import Config, Policies, SourceConfig

pytestmark = pytest.mark.anyio

APP_SECRET = "whsec_" + base64.b64encode(b"journeys-test-secret-0123456789!").decode()
TWILIO_TOKEN = "twilio-auth-token-0123456789abcdef"
PUBLIC = "https://hooks.example.com/ingest/twilio"


def config(**overrides: Any) -> Config:
    sources = {
        "app": SourceConfig("app", "events", secrets=(APP_SECRET,), max_batch=50),
        "twilio": SourceConfig("twilio", "twilio", secrets=(TWILIO_TOKEN,), public_url=PUBLIC),
        "small": SourceConfig("small", "events", secrets=(APP_SECRET,), max_body_bytes=2048),
        "limited": SourceConfig("limited", "events", secrets=(APP_SECRET,), rate_limit=(2, 60_000)),
        "wa": SourceConfig("wa", "whatsapp", secrets=("meta-app-secret",), verify_token="our-verify-token"),
    }
    return Config(MappingProxyType(sources), MappingProxyType({}), overrides.get("policies", Policies()))


@asynccontextmanager
async def client(db: Database, cfg: Config | None = None, store: Database | None = None
                 ) -> AsyncIterator[AsyncTestClient[Any]]:
    """The app on its own connections to the same database (it runs on another event loop)."""
    app_db = store or connect(db.url.render_as_string(hide_password=False), schema=db.schema)
    cfg = cfg or config()
    committer = Committer(app_db, cfg.policies)
    app = build_app(app_db, loops=[committer.run], state={"ingest": Ingest(cfg, committer)}, route_handlers=ROUTES)
    async with AsyncTestClient(app=app) as test_client:
        yield test_client


def signed(body: Any, msg_id: str = "msg_1", at: datetime | None = None) -> tuple[bytes, dict[str, str]]:
    data = json.dumps(body)
    when = at or datetime.now(UTC)
    signature = Webhook(APP_SECRET).sign(msg_id, when, data)
    return data.encode(), {"webhook-id": msg_id, "webhook-timestamp": str(int(when.timestamp())),
                           "webhook-signature": signature, "content-type": "application/json"}


def twilio_form(params: dict[str, str], query: str = "") -> tuple[bytes, dict[str, str], str]:
    url = f"{PUBLIC}?{query}" if query else PUBLIC
    signature = RequestValidator(TWILIO_TOKEN).compute_signature(url, params)
    return urlencode(params).encode(), {"x-twilio-signature": signature,
                                        "content-type": "application/x-www-form-urlencoded"}, url


async def rows(db: Database, query: Any) -> list[Any]:
    async with db.read.connect() as conn:
        return list((await conn.execute(query)).all())


EVENT = {"id": "inv-1", "type": "invoice.overdue", "contact": {"id": "c-1", "phone": "+49 151 12345678",
                                                               "email": "Ana@Example.com"},
         "data": {"amount_due": 40}}


async def test_a_signed_event_is_stored_once_and_repeats_counted(db: Database) -> None:
    body, headers = signed(EVENT)
    async with client(db) as c:
        first = await c.post("/ingest/app", content=body, headers=headers)
        again = await c.post("/ingest/app", content=body, headers=headers)
        # concurrent repeats: one row, every repeat counted, every request the same 2xx
        answers = await asyncio.gather(*(c.post("/ingest/app", content=body, headers=headers) for _ in range(5)))
    assert first.status_code == again.status_code == 202
    assert {a.status_code for a in answers} == {202}
    [row] = await rows(db, select(events))
    assert (row.provider_event_id, row.type, row.contact_id, row.duplicates) == ("inv-1", "invoice.overdue", "c-1", 6)
    [contact] = await rows(db, select(contacts))
    assert (contact.id, contact.phone, contact.email) == ("c-1", "+4915112345678", "ana@example.com")


async def test_a_batch_with_duplicates_inside(db: Database) -> None:
    batch = [EVENT, {**EVENT, "id": "inv-2"}, EVENT]
    body, headers = signed(batch)
    async with client(db) as c:
        answer = await c.post("/ingest/app", content=body, headers=headers)
    assert answer.status_code == 202
    stored = {r.provider_event_id: r.duplicates for r in await rows(db, select(events))}
    assert stored == {"inv-1": 1, "inv-2": 0}


@pytest.mark.parametrize(("case", "status"), [
    ("forged", 401), ("missing", 401), ("stale", 401), ("unknown source", 404), ("malformed", 400),
    ("not utf-8", 400), ("deep", 400), ("too large", 413), ("content type", 415), ("batch too long", 400),
    ("message type", 400),
])
async def test_bad_requests(db: Database, case: str, status: int) -> None:
    body, headers = signed(EVENT)
    path = "/ingest/app"
    if case == "forged":
        headers["webhook-signature"] = "v1," + base64.b64encode(b"x" * 32).decode()
    elif case == "missing":
        del headers["webhook-signature"]
    elif case == "stale":
        body, headers = signed(EVENT, at=datetime(2026, 1, 1, tzinfo=UTC))
    elif case == "unknown source":
        path = "/ingest/nope"
    elif case == "malformed":
        body, headers = signed({"type": "invoice.overdue"})  # no id
    elif case == "not utf-8":
        body = b"\xff\xfe"
        # the SDK signs text; these bytes are not text, so sign them the way the scheme defines
        headers["webhook-signature"] = sign(APP_SECRET, "msg_1", int(headers["webhook-timestamp"]), body)
    elif case == "deep":
        body, headers = signed({**EVENT, "data": json.loads("[" * 40 + "]" * 40)})
    elif case == "too large":
        path = "/ingest/small"
        body, headers = signed({**EVENT, "data": {"x": "y" * 5000}})
    elif case == "content type":
        headers["content-type"] = "text/plain"
    elif case == "batch too long":
        body, headers = signed([{**EVENT, "id": f"e{i}"} for i in range(51)])
    elif case == "message type":
        body, headers = signed({**EVENT, "type": "message.delivered"})
    async with client(db) as c:
        answer = await c.post(path, content=body, headers=headers)
    assert answer.status_code == status, answer.text
    assert "error" in answer.json()
    assert await rows(db, select(events)) == []


async def test_rate_limit_answers_429_with_retry_after(db: Database) -> None:
    async with client(db) as c:
        codes = []
        for i in range(3):
            body, headers = signed({**EVENT, "id": f"r{i}"}, msg_id=f"m{i}")
            answer = await c.post("/ingest/limited", content=body, headers=headers)
            codes.append(answer.status_code)
    assert codes == [202, 202, 429]
    assert int(answer.headers["retry-after"]) >= 1


async def test_storage_down_is_503_and_nothing_acknowledged(db: Database) -> None:
    down = connect("postgresql+asyncpg://postgres@127.0.0.1:1/test")
    body, headers = signed(EVENT)
    async with client(db, store=down) as c:
        answer = await c.post("/ingest/app", content=body, headers=headers)
    assert answer.status_code == 503
    assert answer.headers.get("retry-after")
    assert await rows(db, select(events)) == []


async def test_twilio_inbound_stop_suppresses_every_channel_and_answers_twiml(db: Database) -> None:
    params = {"MessageSid": "SM1", "SmsStatus": "received", "From": "+4915112345678", "To": "+15005550006",
              "Body": " stop ", "AccountSid": "AC1"}
    body, headers, _ = twilio_form(params)
    async with client(db) as c:
        answer = await c.post("/ingest/twilio", content=body, headers=headers)
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/xml")
    assert answer.text == '<?xml version="1.0" encoding="UTF-8"?><Response/>'
    stored = [(r.type, r.provider_event_id, r.conversation_id) for r in await rows(db, select(events)
                                                                                  .order_by(events.c.seq))]
    assert stored == [("message.received", "SM1:received", "sms:+4915112345678"),
                      ("contact.opted_out", "SM1:received:opt", None)]
    [contact] = await rows(db, select(contacts))
    channels = sorted(r.channel for r in await rows(db, select(suppressions)))
    assert channels == ["email", "push", "sms", "voice", "whatsapp"]
    assert contact.phone == "+4915112345678"
    # START lifts the suppression of that channel only
    start = {**params, "MessageSid": "SM2", "Body": "START"}
    body, headers, _ = twilio_form(start)
    async with client(db) as c:
        assert (await c.post("/ingest/twilio", content=body, headers=headers)).status_code == 200
    channels = sorted(r.channel for r in await rows(db, select(suppressions)))
    assert channels == ["email", "push", "voice", "whatsapp"]


async def test_twilio_status_with_our_message_id_and_a_forged_url(db: Database) -> None:
    params = {"MessageSid": "SM9", "MessageStatus": "delivered", "To": "+4915112345678", "From": "+15005550006"}
    body, headers, _ = twilio_form(params, "message_id=m-7")
    async with client(db) as c:
        good = await c.post("/ingest/twilio?message_id=m-7", content=body, headers=headers)
        # the same signature for another message id: the URL is part of what Twilio signed
        bad = await c.post("/ingest/twilio?message_id=m-8", content=body, headers=headers)
    assert (good.status_code, bad.status_code) == (200, 401)
    [row] = await rows(db, select(events))
    assert (row.type, row.message_id, row.provider_message_id) == ("message.delivered", "m-7", "SM9")


async def test_a_retried_request_after_a_failure_is_stored(db: Database) -> None:
    """503 then a retry: the provider's retry lands once the storage is back."""
    body, headers = signed(EVENT)
    down = connect("postgresql+asyncpg://postgres@127.0.0.1:1/test")
    async with client(db, store=down) as c:
        assert (await c.post("/ingest/app", content=body, headers=headers)).status_code == 503
    async with client(db) as c:
        assert (await c.post("/ingest/app", content=body, headers=headers)).status_code == 202
    assert len(await rows(db, select(events))) == 1


async def test_group_commit_answers_each_request_after_the_commit(db: Database) -> None:
    async with client(db) as c:
        requests = [signed({**EVENT, "id": f"g{i}", "contact": {"id": f"c-{i % 7}"}}, msg_id=f"g{i}")
                    for i in range(40)]
        answers = await asyncio.gather(*(c.post("/ingest/app", content=b, headers=h) for b, h in requests))
        # every 2xx was answered after its commit: all 40 are readable right away
        assert {a.status_code for a in answers} == {202}
        assert len(await rows(db, select(events))) == 40



async def test_sqlite_that_cannot_be_written_is_503(db: Database, tmp_path: Any) -> None:
    broken = connect(f"sqlite+aiosqlite:///{tmp_path}")  # a folder, not a database file
    body, headers = signed(EVENT)
    async with client(db, store=broken) as c:
        answer = await c.post("/ingest/app", content=body, headers=headers)
    assert answer.status_code == 503, answer.text
    assert answer.headers.get("retry-after") and "storage unavailable" in answer.json()["error"]
    assert await rows(db, select(events)) == []


@pytest.mark.parametrize(("method", "path", "status"), [
    ("PUT", "/ingest/app", 405), ("DELETE", "/ingest/app", 405), ("GET", "/ingest/app", 405),
    ("POST", "/ingest/", 404), ("POST", "/ingest/app/extra", 404), ("GET", "/ingest/nope", 404),
])
async def test_methods_and_paths_around_the_endpoint(db: Database, method: str, path: str, status: int) -> None:
    body, headers = signed(EVENT)
    async with client(db) as c:
        answer = await c.request(method, path, content=body, headers=headers)
    assert answer.status_code == status, answer.text
    assert answer.json()["error"]
    assert await rows(db, select(events)) == []


async def _asgi_post(app: Any, path: str, headers: dict[str, str], chunks: list[bytes],
                     hang_up: bool = False) -> tuple[int, list[int]]:
    """POST *chunks* as separate ASGI messages, with no content-length, the client going away
    before the end when *hang_up*; (status, chunks read)."""
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
             "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
             "client": ("127.0.0.1", 1), "server": ("testserver", 80)}
    read: list[int] = []
    out: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        read.append(len(read))
        i = len(read) - 1
        if i >= len(chunks):
            return {"type": "http.disconnect"}
        return {"type": "http.request", "body": chunks[i], "more_body": hang_up or i < len(chunks) - 1}

    async def send(message: dict[str, Any]) -> None:
        out.append(message)

    await app(scope, receive, send)
    return next(m["status"] for m in out if m["type"] == "http.response.start"), read


async def test_a_body_without_a_declared_length_is_held_to_the_limit(db: Database) -> None:
    body, headers = signed({**EVENT, "data": {"x": "y" * 5000}})
    chunks = [body[i:i + 512] for i in range(0, len(body), 512)]
    async with client(db) as c:
        status, read = await _asgi_post(c.app, "/ingest/small", headers, chunks)
        # a body cut short by the client is refused, not stored
        whole, whole_headers = signed(EVENT)
        cut, _ = await _asgi_post(c.app, "/ingest/app", whole_headers, [whole[:20], whole[20:40]], hang_up=True)
    assert (status, cut) == (413, 400)
    assert len(read) == 2048 // 512 + 1 < len(chunks)  # it stopped reading at the limit
    assert await rows(db, select(events)) == []


async def test_the_openapi_document_describes_the_endpoint(db: Database) -> None:
    async with client(db) as c:
        document = (await c.get("/schema")).json()
    operation = document["paths"]["/ingest/{source}"]["post"]
    assert {"200", "202", "400", "401", "404", "413", "415", "429", "503"} <= set(operation["responses"])
    assert "Retry-After" in operation["responses"]["503"]["headers"]
    assert [p["name"] for p in operation["parameters"]] == ["source"]
    assert "get" in document["paths"]["/ingest/{source}"]


async def test_the_whatsapp_subscription_handshake_over_http(db: Database) -> None:
    query = "hub.mode=subscribe&hub.verify_token=our-verify-token&hub.challenge=1158201444"
    async with client(db) as c:
        good = await c.get(f"/ingest/wa?{query}")
        bad = await c.get(f"/ingest/wa?{query.replace('our-', 'their-')}")
    assert (good.status_code, good.text) == (200, "1158201444")
    assert good.headers["content-type"].startswith("text/plain")
    assert bad.status_code == 401 and "verify token" in bad.json()["error"]
