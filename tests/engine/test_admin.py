"""The admin API and the health endpoints, end to end: the real Litestar app
from ``build_app`` behind ``AsyncTestClient``, on a real SQLite file and a real PostgreSQL schema.

Test data comes in the ways production makes it (journeys deployed, events stored with
``put`` and applied by the engine run dry) or, for rows that other components write
(contacts, suppressions, messages; the quarantined status of one event), written directly.

The test client runs the app on an event loop of its own (in a portal thread), where
connections pooled by the test's loop must not go: the app gets a second ``Database`` on the
same data (``twin``), which its shutdown disposes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient
from sqlalchemy import select, text, update

from engine.db import migrate
from engine.db.database import Database, connect
from engine.db.schema import contacts, events, instances, messages, suppressions
from engine.versions import Registry
from ingest.app import build_app
from tests.engine.runtime_helpers import T0, count, deploy, drain, engine_for, ev, journey, put, rows
from tests.services import pg_schema, sqlite_url

pytestmark = [
    pytest.mark.anyio,
    # Litestar 2.25 warns at app build time about every path/query parameter of engine/admin.py declared the
    # inferred way (no FromPath/FromQuery); pyproject turns warnings into errors. Not what this file tests.
]

Client = AsyncTestClient[Litestar]
TOKEN = "s3cret-admin-token"

INSTANCE_FIELDS = {"id", "journey", "version", "subject", "state", "status", "started_at", "ended_at"}
EVENT_FIELDS = {"id", "source", "provider_event_id", "type", "status", "contact_id", "message_id", "duplicates"}
MESSAGE_FIELDS = {"id", "channel", "provider", "provider_message_id", "status", "body", "instance_id"}
CONTACT_FIELDS = {"id", "phone", "email", "attributes", "suppressed"}

WELCOME = """
journey: welcome
version: 1
trigger: {on: user.signed_up}
initial: greeting
states:
  greeting: {on: {note.added: done}}
  done: {final: true}
"""

REMINDER_V2 = """
journey: reminder
version: 2
trigger: {on: invoice.overdue}
initial: waiting
states:
  waiting: {on: {message.delivered: thanked}, after: {1h: thanked}}
  thanked: {final: true}
"""


# -- helpers ---------------------------------------------------------------------------------------------------


async def twin(db: Database) -> Database:
    """A second ``Database`` on the data of *db* (same file, or same PostgreSQL schema)."""
    url = db.url.render_as_string(hide_password=False)
    if db.is_sqlite:
        return connect(url)
    async with db.read.connect() as conn:
        schema = (await conn.execute(text("SELECT current_schema()"))).scalar_one()
    return connect(url, schema=schema)


@asynccontextmanager
async def serve(db: Database, *, admin_token: str | None = None, own: bool = False) -> AsyncIterator[Client]:
    """The app on *db*'s data (or, with *own*, on *db* itself, which the app then disposes)."""
    app = build_app(db if own else await twin(db), admin_token=admin_token)
    async with AsyncTestClient(app=app) as client:
        yield client


def when(value: str | None) -> datetime | None:
    """A time of the API (ISO 8601, ``Z`` or an offset) as an aware datetime."""
    return None if value is None else datetime.fromisoformat(value)


async def items(client: Client, path: str, **params: Any) -> list[dict[str, Any]]:
    response = await client.get(path, params=params)
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"items"}, body
    listed: list[dict[str, Any]] = body["items"]
    return listed


def ids(listed: Sequence[Mapping[str, Any]]) -> list[str]:
    return [item["id"] for item in listed]


async def settle(db: Database, registry: Registry, now: datetime = T0) -> None:
    """Run the engine (clock *now*) until no event is pending.

    ``drain`` alone can stop early on PostgreSQL: ``claim`` skips a partition whose advisory lock
    (``hashtext(partition_key)``, per database, not per schema) another process holds, e.g. a
    concurrent test run in another schema applying an event of its own ``contact:c-1``.
    """
    for _ in range(100):
        await drain(engine_for(db, registry, now=now))
        if not await count(db, events, events.c.status == "pending"):
            return
        await anyio.sleep(0.02)
    raise AssertionError("events stay pending")


async def step(db: Database, registry: Registry, *batch: Any, at: datetime) -> None:
    """Store *batch* as received at *at* and let the engine (clock *at*) apply it."""
    await put(db, *batch, at=at)
    await settle(db, registry, at)


async def instance_ids(db: Database) -> dict[tuple[str, str], str]:
    """Instance ids by (journey, contact)."""
    return {(r.journey, r.contact_id): r.id
            for r in await rows(db, select(instances.c.id, instances.c.journey, instances.c.contact_id))}


async def three_instances(db: Database) -> dict[str, str]:
    """A: reminder for c-1, started at T0 and completed at T0+3m; B: welcome for c-2 (T0+1m);
    C: reminder for c-2 (T0+2m). B and C stay active."""
    registry = await deploy(db, journey(), journey(WELCOME))
    m = timedelta(minutes=1)
    await step(db, registry, ev("invoice.overdue", "c-1", data={"invoice_id": "INV-1"}), at=T0)
    await step(db, registry, ev("user.signed_up", "c-2", at=T0 + m), at=T0 + m)
    await step(db, registry, ev("invoice.overdue", "c-2", at=T0 + 2 * m, data={"invoice_id": "INV-2"}),
               at=T0 + 2 * m)
    await step(db, registry, ev("invoice.paid", "c-1", at=T0 + 3 * m), at=T0 + 3 * m)
    found = await instance_ids(db)
    return {"A": found["reminder", "c-1"], "B": found["welcome", "c-2"], "C": found["reminder", "c-2"]}


def message_row(id: str, contact: str, created: datetime, **fields: Any) -> dict[str, Any]:
    row = {"id": id, "channel": "sms", "provider": "twilio", "provider_message_id": None, "status": "queued",
           "body": None, "to": None, "instance_id": None, "contact_id": contact, "job_id": None,
           "created_at": created, "updated_at": created}
    row.update(fields)
    return row


# -- /api/journeys ---------------------------------------------------------------------------------------------


async def test_journeys_lists_every_deployed_version_newest_first(db: Database) -> None:
    await deploy(db, journey(), journey(WELCOME))
    later = T0 + timedelta(hours=1)
    await deploy(db, journey(), journey(WELCOME), journey(REMINDER_V2), now=later)
    async with serve(db) as client:
        listed = await items(client, "/api/journeys")
    assert (listed[0]["journey"], listed[0]["version"]) == ("reminder", 2)
    assert sorted((j["journey"], j["version"]) for j in listed) == [("reminder", 1), ("reminder", 2),
                                                                   ("welcome", 1)]
    assert [when(j["registered_at"]) for j in listed] == [later, T0, T0]


async def test_journeys_is_an_empty_list_before_any_deploy(db: Database) -> None:
    async with serve(db) as client:
        assert await items(client, "/api/journeys") == []


# -- /api/instances --------------------------------------------------------------------------------------------


async def test_instances_have_the_spec_fields_newest_first(db: Database) -> None:
    made = await three_instances(db)
    async with serve(db) as client:
        listed = await items(client, "/api/instances")
    assert ids(listed) == [made["C"], made["B"], made["A"]]
    for item in listed:
        assert set(item) >= INSTANCE_FIELDS, item
    a, b, c = listed[2], listed[1], listed[0]
    m = timedelta(minutes=1)
    assert (a["journey"], a["version"], a["subject"], a["state"], a["status"]) == (
        "reminder", 1, "c-1", "paid", "completed")
    assert (when(a["started_at"]), when(a["ended_at"])) == (T0, T0 + 3 * m)
    assert (b["journey"], b["version"], b["subject"], b["state"], b["status"]) == (
        "welcome", 1, "c-2", "greeting", "active")
    assert (when(b["started_at"]), b["ended_at"]) == (T0 + m, None)
    assert (c["journey"], c["version"], c["subject"], c["state"], c["status"]) == (
        "reminder", 1, "c-2", "waiting", "active")
    assert (when(c["started_at"]), c["ended_at"]) == (T0 + 2 * m, None)


async def test_instances_filters_and_limit(db: Database) -> None:
    made = await three_instances(db)
    a, b, c = made["A"], made["B"], made["C"]
    cases: list[tuple[dict[str, Any], list[str]]] = [
        ({"contact_id": "c-1"}, [a]),
        ({"contact_id": "c-2"}, [c, b]),
        ({"contact_id": "c-404"}, []),
        ({"journey": "reminder"}, [c, a]),
        ({"journey": "welcome"}, [b]),
        ({"journey": "nope"}, []),
        ({"status": "active"}, [c, b]),
        ({"status": "completed"}, [a]),
        ({"status": "failed"}, []),
        ({"contact_id": "c-2", "journey": "reminder"}, [c]),
        ({"contact_id": "c-1", "status": "active"}, []),
        ({"journey": "reminder", "status": "active", "contact_id": "c-2"}, [c]),
        ({"limit": 2}, [c, b]),
        ({"limit": 1}, [c]),
        ({"journey": "reminder", "limit": 1}, [c]),
        ({"limit": 100}, [c, b, a]),
    ]
    async with serve(db) as client:
        for params, expected in cases:
            assert ids(await items(client, "/api/instances", **params)) == expected, params
        assert (await client.get("/api/instances", params={"limit": "many"})).status_code == 400


# -- /api/instances/{id} ---------------------------------------------------------------------------------------


async def test_an_instance_has_its_fields_and_a_timeline_in_order(db: Database) -> None:
    registry = await deploy(db, journey())
    overdue = ev("invoice.overdue", "c-1", id="e-overdue", data={"invoice_id": "INV-1"})
    await step(db, registry, overdue, ev("invoice.overdue", "c-9", id="e-other", data={"invoice_id": "INV-9"}),
               at=T0)
    t1, t2, t3 = (T0 + timedelta(minutes=n) for n in (5, 9, 10))
    await step(db, registry, ev("message.delivered", "c-1", id="e-delivered", at=t1), at=t1)
    await step(db, registry, ev("note.added", "c-1", id="e-note", at=t2), at=t2)
    await step(db, registry, ev("invoice.paid", "c-1", id="e-paid", at=t3), at=t3)
    made = await instance_ids(db)
    async with serve(db) as client:
        [summary] = await items(client, "/api/instances", contact_id="c-1")
        response = await client.get(f"/api/instances/{made['reminder', 'c-1']}")
    assert response.status_code == 200, response.text
    detail = response.json()
    assert INSTANCE_FIELDS | {"timeline"} <= set(detail)
    assert {k: detail[k] for k in INSTANCE_FIELDS} == {k: summary[k] for k in INSTANCE_FIELDS}
    assert (detail["id"], detail["state"], detail["status"]) == (made["reminder", "c-1"], "paid", "completed")

    timeline = detail["timeline"]
    for item in timeline:
        assert {"at", "kind"} <= set(item), item
    times = [when(item["at"]) for item in timeline]
    assert times == sorted(t for t in times if t is not None)
    assert [(item["kind"], when(item["at"])) for item in timeline] == [
        ("event", T0), ("started", T0), ("action", T0),
        ("event", t1), ("transition", t1),
        ("event", t2), ("transition", t2),
        ("event", t3), ("exited", t3), ("completed", t3),
    ]
    seen = [(item["event_id"], item["event_type"]) for item in timeline if item["kind"] == "event"]
    # every event it saw, once each (invoice.paid caused two steps), and none of another contact's
    assert seen == [("e-overdue", "invoice.overdue"), ("e-delivered", "message.delivered"),
                    ("e-note", "note.added"), ("e-paid", "invoice.paid")]
    moves = [(item["kind"], item["from"], item["to"], item["event_id"]) for item in timeline
             if item["kind"] in ("transition", "exited")]
    assert moves == [("transition", "waiting", "delivered", "e-delivered"),
                     ("transition", "delivered", "delivered", "e-note"),
                     ("exited", "delivered", "paid", "e-paid")]
    [action] = [item for item in timeline if item["kind"] == "action"]
    assert (action["action"], action["status"], action["attempts"]) == ("send_sms", "pending", 0)


async def test_a_timeline_keeps_order_within_one_engine_batch(db: Database) -> None:
    registry = await deploy(db, journey())
    # two events applied in one batch: one clock reading for both
    await step(db, registry, ev("invoice.overdue", "c-1", id="e-overdue", data={"invoice_id": "INV-1"}),
               ev("message.delivered", "c-1", id="e-delivered"), at=T0)
    made = await instance_ids(db)
    async with serve(db) as client:
        response = await client.get(f"/api/instances/{made['reminder', 'c-1']}")
    assert response.status_code == 200, response.text
    kinds = [(item["kind"], item.get("event_id") if item["kind"] == "event" else None)
             for item in response.json()["timeline"]]
    assert kinds == [("event", "e-overdue"), ("started", None), ("action", None),
                     ("event", "e-delivered"), ("transition", None)]


async def test_an_unknown_instance_is_404(db: Database) -> None:
    async with serve(db) as client:
        response = await client.get("/api/instances/i-nope")
    assert response.status_code == 404
    assert response.json()["status_code"] == 404


# -- /api/events -----------------------------------------------------------------------------------------------


async def test_events_fields_statuses_duplicates_and_filters(db: Database) -> None:
    registry = await deploy(db, journey())
    async with db.write.begin() as conn:
        await conn.execute(messages.insert(), [message_row("m-1", "c-2", T0, status="delivered",
                                                           provider_message_id="SM1")])
    # done: starts an instance
    await put(db, ev("invoice.overdue", "c-1", id="e-done", provider_event_id="p-done",
                     data={"invoice_id": "INV-1"}))
    # stale: "sent" does not move a message already delivered
    await put(db, ev("message.sent", "c-2", id="e-stale", source="twilio", provider="twilio",
                     provider_event_id="SM1-sent", message_id="m-1", channel="sms"))
    # quarantined (set below: which event breaks the engine is what test_runtime covers)
    await put(db, ev("note.added", "c-3", id="e-poison", provider_event_id="p-poison"))
    await settle(db, registry)
    async with db.write.begin() as conn:
        await conn.execute(update(events).where(events.c.id == "e-poison")
                           .values(status="quarantined", error="ValueError: a payload nobody expected"))
    # pending: stored, not yet applied
    await put(db, ev("note.added", "c-1", id="e-pending", provider_event_id="p-pending"))
    # repeats of e-done: once alone, then twice in one batch (a fresh id, the same provider event)
    await put(db, ev("invoice.overdue", "c-1", id="e-done", provider_event_id="p-done"))
    await put(db, ev("invoice.overdue", "c-1", id="e-again-1", provider_event_id="p-done"),
              ev("invoice.overdue", "c-1", id="e-again-2", provider_event_id="p-done"))

    async with serve(db) as client:
        listed = await items(client, "/api/events")
        filtered = {
            "source=twilio": ids(await items(client, "/api/events", source="twilio")),
            "source=app": ids(await items(client, "/api/events", source="app")),
            "source=nope": ids(await items(client, "/api/events", source="nope")),
            "type=note.added": ids(await items(client, "/api/events", type="note.added")),
            "type=invoice.overdue": ids(await items(client, "/api/events", type="invoice.overdue")),
            "contact_id=c-1": ids(await items(client, "/api/events", contact_id="c-1")),
            "contact_id=c-2": ids(await items(client, "/api/events", contact_id="c-2")),
            "status=pending": ids(await items(client, "/api/events", status="pending")),
            "status=done": ids(await items(client, "/api/events", status="done")),
            "status=stale": ids(await items(client, "/api/events", status="stale")),
            "status=quarantined": ids(await items(client, "/api/events", status="quarantined")),
            "source=app&type=note.added&contact_id=c-1": ids(await items(
                client, "/api/events", source="app", type="note.added", contact_id="c-1")),
            "limit=2": ids(await items(client, "/api/events", limit=2)),
            "source=app&limit=1": ids(await items(client, "/api/events", source="app", limit=1)),
        }

    # newest (last stored) first; repeats are not listed again
    assert ids(listed) == ["e-pending", "e-poison", "e-stale", "e-done"]
    for item in listed:
        assert set(item) >= EVENT_FIELDS, item
    by_id = {item["id"]: {k: item[k] for k in EVENT_FIELDS} for item in listed}
    assert by_id == {
        "e-done": {"id": "e-done", "source": "app", "provider_event_id": "p-done", "type": "invoice.overdue",
                   "status": "done", "contact_id": "c-1", "message_id": None, "duplicates": 3},
        "e-stale": {"id": "e-stale", "source": "twilio", "provider_event_id": "SM1-sent", "type": "message.sent",
                    "status": "stale", "contact_id": "c-2", "message_id": "m-1", "duplicates": 0},
        "e-poison": {"id": "e-poison", "source": "app", "provider_event_id": "p-poison", "type": "note.added",
                     "status": "quarantined", "contact_id": "c-3", "message_id": None, "duplicates": 0},
        "e-pending": {"id": "e-pending", "source": "app", "provider_event_id": "p-pending", "type": "note.added",
                      "status": "pending", "contact_id": "c-1", "message_id": None, "duplicates": 0},
    }
    assert filtered == {
        "source=twilio": ["e-stale"],
        "source=app": ["e-pending", "e-poison", "e-done"],
        "source=nope": [],
        "type=note.added": ["e-pending", "e-poison"],
        "type=invoice.overdue": ["e-done"],
        "contact_id=c-1": ["e-pending", "e-done"],
        "contact_id=c-2": ["e-stale"],
        "status=pending": ["e-pending"],
        "status=done": ["e-done"],
        "status=stale": ["e-stale"],
        "status=quarantined": ["e-poison"],
        "source=app&type=note.added&contact_id=c-1": ["e-pending"],
        "limit=2": ["e-pending", "e-poison"],
        "source=app&limit=1": ["e-pending"],
    }


# -- /api/messages ---------------------------------------------------------------------------------------------


async def test_messages_fields_newest_first_by_contact(db: Database) -> None:
    made = await three_instances(db)
    s = timedelta(seconds=1)
    async with db.write.begin() as conn:
        await conn.execute(messages.insert(), [
            message_row("m-1", "c-1", T0 + s, provider_message_id="SM-1", status="delivered",
                        body="Invoice INV-1", to="+4915112345678", instance_id=made["A"]),
            message_row("m-2", "c-1", T0 + 5 * s, channel="email", provider="sendgrid",
                        provider_message_id="sg-2", status="sent", body=None, to="ana@example.com"),
            message_row("m-3", "c-2", T0 + 3 * s, provider_message_id="SM-3", body="Invoice INV-2",
                        instance_id=made["C"]),
        ])
    async with serve(db) as client:
        everyone = await items(client, "/api/messages")
        c1 = await items(client, "/api/messages", contact_id="c-1")
        c2 = await items(client, "/api/messages", contact_id="c-2")
        nobody = await items(client, "/api/messages", contact_id="c-404")
        of_c = await items(client, "/api/messages", instance_id=made["C"])
    assert ids(everyone) == ["m-2", "m-3", "m-1"]
    assert ids(c1) == ["m-2", "m-1"]
    assert ids(c2) == ["m-3"]
    assert nobody == []
    assert ids(of_c) == ["m-3"]
    for item in everyone:
        assert set(item) >= MESSAGE_FIELDS, item
    assert [{k: item[k] for k in MESSAGE_FIELDS} for item in c1] == [
        {"id": "m-2", "channel": "email", "provider": "sendgrid", "provider_message_id": "sg-2", "status": "sent",
         "body": None, "instance_id": None},
        {"id": "m-1", "channel": "sms", "provider": "twilio", "provider_message_id": "SM-1", "status": "delivered",
         "body": "Invoice INV-1", "instance_id": made["A"]},
    ]


# -- /api/contacts/{id} ----------------------------------------------------------------------------------------


async def test_a_contact_has_its_fields_and_suppressed_channels(db: Database) -> None:
    async with db.write.begin() as conn:
        await conn.execute(contacts.insert(), [
            {"id": "c-1", "phone": "+4915112345678", "email": "ana@example.com", "timezone": "Europe/Berlin",
             "locale": "de", "attributes": {"plan": "pro", "tags": ["vip"]}, "created_at": T0, "updated_at": T0},
            {"id": "c-2", "phone": None, "email": "ben@example.com", "timezone": None, "locale": None,
             "attributes": {}, "created_at": T0, "updated_at": T0},
        ])
        await conn.execute(suppressions.insert(), [
            {"contact_id": "c-1", "channel": "sms", "reason": "STOP", "event_id": None, "created_at": T0},
            {"contact_id": "c-1", "channel": "email", "reason": "unsubscribed", "event_id": None,
             "created_at": T0},
        ])
    async with serve(db) as client:
        one = await client.get("/api/contacts/c-1")
        two = await client.get("/api/contacts/c-2")
    assert one.status_code == 200 and two.status_code == 200
    assert set(one.json()) >= CONTACT_FIELDS
    assert {k: one.json()[k] for k in CONTACT_FIELDS} == {
        "id": "c-1", "phone": "+4915112345678", "email": "ana@example.com",
        "attributes": {"plan": "pro", "tags": ["vip"]}, "suppressed": ["email", "sms"]}
    assert {k: two.json()[k] for k in CONTACT_FIELDS} == {
        "id": "c-2", "phone": None, "email": "ben@example.com", "attributes": {}, "suppressed": []}


async def test_an_unknown_contact_is_404(db: Database) -> None:
    async with serve(db) as client:
        response = await client.get("/api/contacts/c-404")
    assert response.status_code == 404
    assert response.json()["status_code"] == 404


# -- the bearer token ------------------------------------------------------------------------------------------


async def api_paths(db: Database) -> list[str]:
    """One request per admin route, each of which answers 200 on this data."""
    made = await three_instances(db)
    async with db.write.begin() as conn:
        await conn.execute(contacts.insert().values(id="c-1", phone=None, email=None, timezone=None, locale=None,
                                                    attributes={}, created_at=T0, updated_at=T0))
    return ["/api/journeys", "/api/instances", "/api/instances?contact_id=c-1", f"/api/instances/{made['A']}",
            "/api/events", "/api/events?source=app", "/api/messages", "/api/messages?contact_id=c-1",
            "/api/contacts/c-1"]


async def test_with_a_token_every_api_route_wants_it(db: Database) -> None:
    paths = await api_paths(db)
    wrong = [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Bearer {TOKEN}x"},
             {"Authorization": f"Bearer {TOKEN[:-1]}"}, {"Authorization": "Bearer "}, {"Authorization": TOKEN},
             {"Authorization": f"Basic {TOKEN}"}, {"X-Admin-Token": TOKEN}]
    async with serve(db, admin_token=TOKEN) as client:
        for path in paths:
            for headers in wrong:
                response = await client.get(path, headers=headers)
                assert response.status_code == 401, (path, headers, response.text)
            for scheme in ("Bearer", "bearer"):
                response = await client.get(path, headers={"Authorization": f"{scheme} {TOKEN}"})
                assert response.status_code == 200, (path, scheme, response.text)
        # a 404 is not told to someone without the token
        assert (await client.get("/api/instances/i-nope")).status_code == 401
        ok = await client.get("/api/instances/i-nope", headers={"Authorization": f"Bearer {TOKEN}"})
        assert ok.status_code == 404


async def test_with_a_token_health_stays_open(db: Database) -> None:
    async with serve(db, admin_token=TOKEN) as client:
        assert (await client.get("/healthz")).status_code == 200
        assert (await client.get("/readyz")).status_code == 200


async def test_without_a_token_the_api_is_open(db: Database) -> None:
    paths = await api_paths(db)
    async with serve(db, admin_token=None) as client:
        for path in paths:
            response = await client.get(path)
            assert response.status_code == 200, (path, response.text)
            # a token nobody asked for does no harm
            response = await client.get(path, headers={"Authorization": "Bearer whatever"})
            assert response.status_code == 200, (path, response.text)


# -- /healthz, /readyz -----------------------------------------------------------------------------------------


async def test_healthz(db: Database) -> None:
    async with serve(db) as client:
        response = await client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_readyz_on_a_migrated_database(db: Database) -> None:
    async with serve(db) as client:
        response = await client.get("/readyz")
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "ok"
    assert response.json()["migration"] == migrate.head()


async def test_readyz_is_503_when_the_migration_record_is_gone(db: Database) -> None:
    async with db.write.begin() as conn:
        await conn.execute(text("DELETE FROM alembic_version"))
    async with serve(db) as client:
        response = await client.get("/readyz")
    assert response.status_code == 503, response.text
    assert response.json()["status"] == "unavailable"
    assert migrate.head() in response.json()["database"]


async def test_readyz_is_503_when_the_database_is_at_another_revision(db: Database) -> None:
    async with db.write.begin() as conn:
        await conn.execute(text("UPDATE alembic_version SET version_num = '0000'"))
    async with serve(db) as client:
        response = await client.get("/readyz")
    assert response.status_code == 503, response.text
    assert "0000" in response.json()["database"]


async def test_readyz_is_503_on_a_fresh_empty_database(db: Database, tmp_path: Path) -> None:
    """A new SQLite file, or a new PostgreSQL schema: reachable, but never migrated."""
    if db.is_sqlite:
        async with serve(connect(sqlite_url(tmp_path / "fresh")), own=True) as client:
            response = await client.get("/readyz")
    else:
        async with pg_schema() as schema:
            fresh = connect(db.url.render_as_string(hide_password=False), schema=schema)
            async with serve(fresh, own=True) as client:
                response = await client.get("/readyz")
    assert response.status_code == 503, response.text
    assert response.json()["status"] == "unavailable"
    assert "needs" in response.json()["database"]


async def test_readyz_is_503_when_the_database_is_unreachable() -> None:
    nowhere = connect("postgresql+asyncpg://postgres@127.0.0.1:1/test")  # nothing listens on port 1
    async with serve(nowhere, own=True) as client:
        ready = await client.get("/readyz")
        alive = await client.get("/healthz")
    assert ready.status_code == 503, ready.text
    assert ready.json()["database"].startswith("unreachable")
    assert alive.status_code == 200


# -- /schema ---------------------------------------------------------------------------------------------------


async def test_schema_serves_the_openapi_document(db: Database) -> None:
    async with serve(db, admin_token=TOKEN) as client:
        document = await client.get("/schema")
        page = await client.get("/schema/ui")
    assert page.status_code == 200  # the browsable pages
    assert document.status_code == 200, document.text
    spec = document.json()
    assert spec["openapi"].startswith("3.")
    assert spec["info"]["title"] == "journeys"
    assert {"/api/journeys", "/api/instances", "/api/instances/{instance_id}", "/api/events", "/api/messages",
            "/api/contacts/{contact_id}", "/healthz", "/readyz"} <= set(spec["paths"])
    params = {p["name"] for p in spec["paths"]["/api/instances"]["get"].get("parameters", [])}
    assert {"contact_id", "journey", "status", "limit"} <= params
    params = {p["name"] for p in spec["paths"]["/api/events"]["get"].get("parameters", [])}
    assert {"source", "type", "contact_id", "status"} <= params
