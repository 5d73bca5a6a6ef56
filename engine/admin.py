"""The read-only admin API and the health endpoints.

Lists are ``{"items": [...]}``, newest first, with ``limit`` (default 100, at most 1000).
With ``JOURNEYS_ADMIN_TOKEN`` set, every ``/api`` route wants ``Authorization: Bearer``
with that token, compared in constant time.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from litestar import Controller, Request, get, post
from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException, NotFoundException
from litestar.handlers.base import BaseRouteHandler
from litestar.params import FromPath, FromQuery
from litestar.response import Response
from sqlalchemy import ColumnElement, Row, Select, select

from engine.db import migrate
from engine.db.database import Database
from engine.db.schema import contacts, events, instances, jobs, journey_versions, messages, steps, suppressions
from engine.store import contact_partition

MAX_LIMIT = 1000


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:  # SQLite returns naive UTC
        return value.isoformat() + "Z"
    return value.isoformat().replace("+00:00", "Z")


def _limit(limit: int) -> int:
    return max(1, min(limit, MAX_LIMIT))


def db_of(request: Request[Any, Any, Any]) -> Database:
    database: Database = request.app.state["db"]
    return database


def _matching(query: Select[Any], *filters: tuple[ColumnElement[Any], str | None]) -> Select[Any]:
    """*query* narrowed by each (column, value) filter the caller gave; an absent one matches all."""
    for column, value in filters:
        if value is not None:
            query = query.where(column == value)
    return query


async def _all(request: Request[Any, Any, Any], query: Select[Any]) -> Sequence[Row[Any]]:
    async with db_of(request).read.connect() as conn:
        rows: Sequence[Row[Any]] = (await conn.execute(query)).all()
    return rows


async def admin_guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    token: str | None = connection.app.state.get("admin_token")
    if not token:
        return
    header = connection.headers.get("authorization", "")
    given = header[7:] if header.lower().startswith("bearer ") else ""
    if not hmac.compare_digest(given.encode(), token.encode()):
        raise NotAuthorizedException("a bearer token is required (JOURNEYS_ADMIN_TOKEN)")


def instance_summary(r: Any) -> dict[str, Any]:
    return {"id": r.id, "journey": r.journey, "version": r.version, "subject": r.subject, "state": r.state,
            "status": r.status, "contact_id": r.contact_id, "started_at": _iso(r.started_at),
            "ended_at": _iso(r.ended_at), "vars": r.vars, "error": r.error}


class AdminController(Controller):
    path = "/api"
    guards = [admin_guard]  # noqa: RUF012 - Litestar reads it as a class attribute

    @get("/journeys")
    async def list_journeys(self, request: Request[Any, Any, Any]) -> dict[str, Any]:
        rows = await _all(request, select(journey_versions.c.journey, journey_versions.c.version,
                                          journey_versions.c.content_hash, journey_versions.c.file,
                                          journey_versions.c.registered_at)
                          .order_by(journey_versions.c.registered_at.desc()))
        return {"items": [{"journey": r.journey, "version": r.version, "content_hash": r.content_hash,
                           "file": r.file, "registered_at": _iso(r.registered_at)} for r in rows]}

    @get("/instances")
    async def list_instances(self, request: Request[Any, Any, Any], contact_id: FromQuery[str | None] = None,
                             journey: FromQuery[str | None] = None, status: FromQuery[str | None] = None,
                             limit: FromQuery[int] = 100) -> dict[str, Any]:
        query = _matching(select(instances), (instances.c.contact_id, contact_id), (instances.c.journey, journey),
                          (instances.c.status, status))
        rows = await _all(request, query.order_by(instances.c.started_at.desc(), instances.c.id.desc())
                          .limit(_limit(limit)))
        return {"items": [instance_summary(r) for r in rows]}

    @get("/instances/{instance_id:str}")
    async def get_instance(self, request: Request[Any, Any, Any], instance_id: FromPath[str]) -> dict[str, Any]:
        async with db_of(request).read.connect() as conn:
            row = (await conn.execute(select(instances).where(instances.c.id == instance_id))).first()
            if row is None:
                raise NotFoundException(f"no instance {instance_id}")
            step_rows = (await conn.execute(select(steps).where(steps.c.instance_id == instance_id)
                                            .order_by(steps.c.id))).all()
            job_rows = (await conn.execute(select(jobs).where(jobs.c.instance_id == instance_id)
                                           .order_by(jobs.c.created_at, jobs.c.id))).all()
        return {**instance_summary(row), "seq": row.seq, "timeline": timeline(step_rows, job_rows)}


    @get("/events")
    async def list_events(self, request: Request[Any, Any, Any], source: FromQuery[str | None] = None,
                          type: FromQuery[str | None] = None, contact_id: FromQuery[str | None] = None,
                          status: FromQuery[str | None] = None, limit: FromQuery[int] = 100) -> dict[str, Any]:
        query: Select[Any] = select(events.c.id, events.c.source, events.c.provider_event_id, events.c.type,
                                    events.c.status, events.c.contact_id, events.c.message_id, events.c.duplicates,
                                    events.c.occurred_at, events.c.received_at, events.c.outcome, events.c.error)
        # a contact's events by their partition, which is indexed (see the schema)
        query = _matching(query, (events.c.source, source), (events.c.type, type),
                          (events.c.partition_key, contact_partition(contact_id) if contact_id else None),
                          (events.c.status, status))
        rows = await _all(request, query.order_by(events.c.seq.desc()).limit(_limit(limit)))
        return {"items": [{"id": r.id, "source": r.source, "provider_event_id": r.provider_event_id,
                           "type": r.type, "status": r.status, "contact_id": r.contact_id,
                           "message_id": r.message_id, "duplicates": r.duplicates,
                           "occurred_at": _iso(r.occurred_at), "received_at": _iso(r.received_at),
                           "outcome": r.outcome, "error": r.error} for r in rows]}

    @get("/messages")
    async def list_messages(self, request: Request[Any, Any, Any], contact_id: FromQuery[str | None] = None,
                            instance_id: FromQuery[str | None] = None, limit: FromQuery[int] = 100) -> dict[str, Any]:
        query = _matching(select(messages), (messages.c.contact_id, contact_id),
                          (messages.c.instance_id, instance_id))
        rows = await _all(request, query.order_by(messages.c.created_at.desc(), messages.c.id.desc())
                          .limit(_limit(limit)))
        return {"items": [{"id": r.id, "channel": r.channel, "provider": r.provider,
                           "provider_message_id": r.provider_message_id, "status": r.status, "body": r.body,
                           "to": r.to, "instance_id": r.instance_id, "contact_id": r.contact_id,
                           "created_at": _iso(r.created_at)} for r in rows]}

    @get("/dead-letters")
    async def list_dead_letters(self, request: Request[Any, Any, Any], limit: FromQuery[int] = 100) -> dict[str, Any]:
        rows = await _all(request, select(jobs).where(jobs.c.status == "dead")
                          .order_by(jobs.c.updated_at.desc()).limit(_limit(limit)))
        return {"items": [{"id": r.id, "action": r.action, "instance_id": r.instance_id, "journey": r.journey,
                           "attempts": r.attempts, "last_error": r.last_error, "inputs": r.inputs,
                           "updated_at": _iso(r.updated_at)} for r in rows]}

    @post("/dead-letters/{job_id:str}/retry", status_code=200)
    async def retry_dead_letter(self, request: Request[Any, Any, Any], job_id: FromPath[str]) -> dict[str, Any]:
        from actions.executor import retry_dead

        if not await retry_dead(db_of(request), job_id):
            raise NotFoundException(f"no dead letter {job_id}")
        return {"id": job_id, "status": "pending"}

    @post("/dead-letters/{job_id:str}/discard", status_code=200)
    async def discard_dead_letter(self, request: Request[Any, Any, Any], job_id: FromPath[str]) -> dict[str, Any]:
        from actions.executor import discard_dead

        if not await discard_dead(db_of(request), job_id):
            raise NotFoundException(f"no dead letter {job_id}")
        return {"id": job_id, "status": "discarded"}

    @get("/contacts/{contact_id:str}")
    async def get_contact(self, request: Request[Any, Any, Any], contact_id: FromPath[str]) -> dict[str, Any]:
        async with db_of(request).read.connect() as conn:
            row = (await conn.execute(select(contacts).where(contacts.c.id == contact_id))).first()
            if row is None:
                raise NotFoundException(f"no contact {contact_id}")
            channels = (await conn.execute(select(suppressions.c.channel)
                                           .where(suppressions.c.contact_id == contact_id)
                                           .order_by(suppressions.c.channel))).scalars().all()
        return {"id": row.id, "phone": row.phone, "email": row.email, "timezone": row.timezone,
                "locale": row.locale, "attributes": row.attributes, "suppressed": list(channels),
                "created_at": _iso(row.created_at), "updated_at": _iso(row.updated_at)}


def timeline(step_rows: Any, job_rows: Any) -> list[dict[str, Any]]:
    """Steps in the order they were written, each event once before its first step, and each
    action right after the step that entered the state it belongs to (its key holds that entry's
    number). Times alone cannot order them: a batch of events shares one clock reading."""
    by_entry: dict[int, list[Any]] = {}
    for job in job_rows:
        entry = int(job.id.rsplit(":", 2)[-2])
        by_entry.setdefault(entry, []).append(job)
    items: list[dict[str, Any]] = []
    seen: set[str] = set()
    entry = 0
    for s in step_rows:
        if s.event_id and s.event_id not in seen:
            seen.add(s.event_id)
            items.append({"at": _iso(s.at), "kind": "event", "event_id": s.event_id, "event_type": s.event_type})
        items.append({"at": _iso(s.at), "kind": s.kind, "from": s.from_state, "to": s.to_state,
                      "event_id": s.event_id, "detail": s.detail})
        if s.kind in ("started", "transition") or (s.kind == "exited" and s.to_state):
            entry += 1
            for j in sorted(by_entry.pop(entry, []), key=lambda j: int(j.id.rsplit(":", 1)[-1])):
                items.append({"at": _iso(j.created_at), "kind": "action", "action": j.action, "key": j.id,
                              "status": j.status, "attempts": j.attempts, "last_error": j.last_error})
    for jobs_left in by_entry.values():  # not expected; listed rather than hidden
        for j in jobs_left:
            items.append({"at": _iso(j.created_at), "kind": "action", "action": j.action, "key": j.id,
                          "status": j.status, "attempts": j.attempts, "last_error": j.last_error})
    return items


@get("/schema", include_in_schema=False)
async def openapi_document(request: Request[Any, Any, Any]) -> dict[str, Any]:
    """The OpenAPI document as JSON (the browsable pages are under /schema/ui)."""
    document: dict[str, Any] = request.app.openapi_schema.to_schema()
    return document


@get("/healthz", sync_to_thread=False)
def healthz() -> dict[str, str]:
    """Liveness: the process answers."""
    return {"status": "ok"}


@get("/readyz")
async def readyz(request: Request[Any, Any, Any]) -> Response[dict[str, Any]]:
    """Readiness: the database answers, its migrations are current, and every check in
    ``app.state["readiness"]`` (name -> a function giving a problem or None) passes."""
    try:
        at = await migrate.current(db_of(request))
    except Exception as exc:
        return Response({"status": "unavailable", "database": f"unreachable: {type(exc).__name__}"},
                        status_code=503)
    want = migrate.head()
    if at != want:
        return Response({"status": "unavailable", "database": f"at migration {at}, needs {want}"}, status_code=503)
    checks: dict[str, Callable[[], str | None]] = request.app.state.get("readiness", {})
    problems = {name: problem for name, check in checks.items() if (problem := check())}
    if problems:
        return Response({"status": "unavailable", "database": "ok", **problems}, status_code=503)
    return Response({"status": "ok", "database": "ok", "migration": at})
