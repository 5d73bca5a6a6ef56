"""Opt-outs and opt-ins: keywords in replies, and the suppression list they change.

A reply whose whole text is an opt-out keyword (policies.opt_out_keywords, case-insensitive)
yields a second event, ``contact.opted_out``, right after the reply itself; an opt-in
keyword yields ``contact.opted_in``. The suppression list changes in the same transaction
that stores the event, before any journey runs.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace
from datetime import datetime
from types import MappingProxyType

from sqlalchemy import delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from engine.db.schema import contacts, suppressions
from engine.events import Event
from ingest.incoming import Incoming
from journeys.config import Policies

OPT_OUT_TYPES = ("contact.opted_out", "contact.complained")


def with_keywords(items: Iterable[Incoming], policies: Policies) -> list[Incoming]:
    given = list(items)
    ids = {i.provider_event_id for i in given}
    out: list[Incoming] = []
    for item in given:
        out.append(item)
        if item.type != "message.received" or item.text is None:
            continue
        word = item.text.strip().upper()
        kind = ("contact.opted_out" if word in policies.opt_out_keywords
                else "contact.opted_in" if word in policies.opt_in_keywords else None)
        if kind is None:
            continue
        derived = replace(item, type=kind, provider_event_id=f"{item.provider_event_id}:opt", text=None,
                          inbound=False, data=MappingProxyType({"keyword": word, "via": "keyword"}))
        # a provider's own opt-out flag makes the same event: keep one
        if derived.provider_event_id not in ids:
            ids.add(derived.provider_event_id)
            out.append(derived)
    return out


def apply_sync(conn: Connection, stored: Sequence[Event], policies: Policies, now: datetime) -> None:
    """Update the suppression list for the opt-outs and opt-ins among newly stored events, in order.

    Synchronous: it is part of the group commit (ingest.committer)."""
    if not any(e.contact_id and (e.type in OPT_OUT_TYPES or e.type == "contact.opted_in") for e in stored):
        return  # most groups: nothing to build a statement for
    insert = postgresql.insert(suppressions) if conn.dialect.name == "postgresql" else sqlite.insert(suppressions)
    opting_out = sorted({e.contact_id for e in stored if e.contact_id and e.type in OPT_OUT_TYPES})
    if opting_out and conn.dialect.name == "postgresql":
        # Wait for sends in flight in other processes (they hold the row FOR SHARE).
        conn.execute(select(contacts.c.id).where(contacts.c.id.in_(opting_out)).with_for_update())
    for event in stored:
        if not event.contact_id:
            continue
        if event.type in OPT_OUT_TYPES:
            conn.execute(insert.on_conflict_do_nothing(), [
                {"contact_id": event.contact_id, "channel": channel, "reason": event.type, "event_id": event.id,
                 "created_at": now} for channel in policies.opt_out_scope])
        elif event.type == "contact.opted_in":
            channels: Iterable[str] = [event.channel] if event.channel else policies.opt_out_scope
            conn.execute(delete(suppressions).where(suppressions.c.contact_id == event.contact_id,
                                                          suppressions.c.channel.in_(list(channels))))
