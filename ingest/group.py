"""One group commit's writes, in the caller's transaction: contacts, events, suppressions.

The same on every path: PostgreSQL (through SQLAlchemy's async engine), SQLite in a thread
of the server's process, and SQLite in the writer process of ``journeys serve``
(ingest.writer). Synchronous, so that a SQLite group runs whole where it started.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from sqlalchemy.engine import Connection

from engine.events import Event
from engine.store import new_event_id, store_events_sync
from ingest import contacts, optout
from ingest.incoming import Incoming
from journeys.config import Policies


@dataclass(frozen=True)
class Outcome:
    """What became of one request's events."""

    stored: int
    duplicates: int


class Submitted(Protocol):
    """One request's share of a group."""

    @property
    def source(self) -> str: ...

    @property
    def provider(self) -> str: ...

    @property
    def items(self) -> list[Incoming]: ...

    @property
    def received_at(self) -> datetime: ...


def to_event(item: Incoming, source: str, provider: str, contact_id: str | None, phone: str | None,
             received_at: datetime) -> Event:
    conversation = None
    if item.inbound and item.channel:
        conversation = f"{item.channel}:{phone or contact_id}"
    return Event(
        id=new_event_id(), type=item.type, occurred_at=item.occurred_at or received_at, source=source,
        provider=provider, provider_event_id=item.provider_event_id, channel=item.channel, contact_id=contact_id,
        conversation_id=conversation, message_id=item.message_id, provider_message_id=item.provider_message_id,
        received_at=received_at, status=item.status, text=item.text, data=item.data,
    )


def write_group(conn: Connection, requests: Sequence[Submitted], now: datetime, policies: Policies) -> list[Outcome]:
    """Resolve the group's contacts, store its events (deduplicated), apply its opt-outs and
    opt-ins; one Outcome per request, in order."""
    refs = [item.contact for request in requests for item in request.items]
    ids = iter(contacts.resolve_sync(conn, refs, now))
    per_request: list[list[Event]] = []
    for request in requests:
        per_request.append([
            to_event(item, request.source, request.provider, next(ids),
                     item.contact.phone if item.contact else None, request.received_at)
            for item in request.items
        ])
    # One statement for the whole group: the point of group commit.
    everything = [e for batch in per_request for e in batch]
    stored = store_events_sync(conn, everything, now)
    fresh = set(stored.inserted)
    optout.apply_sync(conn, [e for e in everything if e.id in fresh], policies, now)
    return [Outcome(sum(e.id in fresh for e in batch), sum(e.id not in fresh for e in batch))
            for batch in per_request]
