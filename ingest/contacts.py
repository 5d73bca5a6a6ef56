"""Find or create the contact an event is about: by our id, else E.164 phone, else lower-cased email.

Many requests are resolved together (group commit). Inserts use ON CONFLICT DO NOTHING
and read back, so two processes that meet the same new phone at once end up with one
contact.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any, NamedTuple

import phonenumbers
from sqlalchemy import or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection

from engine.db import sqlite_rows
from engine.db.schema import contacts
from ingest.errors import MalformedError
from ingest.incoming import ContactRef


@lru_cache(maxsize=65_536)
def e164(raw: str) -> str:
    """A phone number in E.164 (``+4915112345678``); refuses what cannot be one.

    Cached: parsing costs more than the rest of a status callback, and the same customers'
    numbers come back all day. A refused number raises again each time (not cached)."""
    text = raw.strip().removeprefix("whatsapp:").removeprefix("tel:")
    if text and text[0].isdigit() and len(text) > 7:
        text = "+" + text  # WhatsApp and Telnyx often drop the plus
    try:
        number = phonenumbers.parse(text, None)
    except phonenumbers.NumberParseException as exc:
        raise MalformedError(f"phone {raw!r} is not a number in international format (+4915112345678)") from exc
    if not phonenumbers.is_possible_number(number):
        raise MalformedError(f"phone {raw!r} is not a possible number")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def email(raw: str) -> str:
    value = raw.strip().lower()
    if "@" not in value or len(value) > 320:
        raise MalformedError(f"email {raw!r} is not an address")
    return value


# What resolve_sync and _update read of a contact (not its timestamps: fewer values to convert);
# its attributes (JSON) only when a reference brings some to merge.
_RESOLVE_COLUMNS = (contacts.c.id, contacts.c.phone, contacts.c.email, contacts.c.timezone, contacts.c.locale)
_WITH_ATTRIBUTES = (*_RESOLVE_COLUMNS, contacts.c.attributes)


def _insert(conn: Connection) -> Any:
    return postgresql.insert(contacts) if conn.dialect.name == "postgresql" else sqlite.insert(contacts)


async def existing(conn: AsyncConnection, refs: Sequence[ContactRef]) -> list[str]:
    """Ids of the contacts *refs* name that exist already (read only)."""
    ids = {r.id for r in refs if r.id}
    phones = {r.phone for r in refs if r.phone}
    emails = {r.email for r in refs if r.email}
    conds = [c for c, vals in ((contacts.c.id.in_(ids), ids), (contacts.c.phone.in_(phones), phones),
                               (contacts.c.email.in_(emails), emails)) if vals]
    if not conds:
        return []
    return [r.id for r in await conn.execute(select(contacts.c.id).where(or_(*conds)))]


class _Row(NamedTuple):
    """A contact as resolve_sync reads it (SQLite: see _load)."""

    id: str
    phone: str | None
    email: str | None
    timezone: str | None
    locale: str | None
    attributes: dict[str, Any] | None = None


def _load(conn: Connection, columns: Sequence[Any], ids: set[str], phones: set[str],
          emails: set[str]) -> Sequence[Any]:
    """The *columns* of the contacts with one of these ids, phones or emails."""
    wanted = [(column, values) for column, values in ((contacts.c.id, ids), (contacts.c.phone, phones),
                                                      (contacts.c.email, emails)) if values]
    if not wanted:
        return []
    if conn.dialect.name == "sqlite":
        # One step for the lot: see engine.db.sqlite_rows (the group commit's thread).
        where = " OR ".join(f"{column.name} IN ({', '.join('?' * len(values))})" for column, values in wanted)
        params = [value for _, values in wanted for value in values]
        return [_Row(*row) for row in sqlite_rows.select_rows(conn, contacts, [c.name for c in columns], where,
                                                               params)]
    return list(conn.execute(select(*columns).where(or_(*(column.in_(values) for column, values in wanted)))))


def resolve_sync(conn: Connection, refs: Sequence[ContactRef | None], now: datetime) -> list[str | None]:
    """The contact id of each reference, creating or updating contacts as the references say.

    Synchronous, so that a SQLite group commit runs whole in one thread (ingest.committer);
    async callers use :func:`resolve`."""
    wanted = [r for r in refs if r is not None]
    ids = {r.id for r in wanted if r.id}
    phones = {r.phone for r in wanted if r.phone}
    emails = {r.email for r in wanted if r.email}
    known: dict[str, Any] = {}
    by_phone: dict[str, str] = {}
    by_email: dict[str, str] = {}

    columns = _WITH_ATTRIBUTES if any(r.attributes for r in wanted) else _RESOLVE_COLUMNS

    def load() -> None:
        for row in _load(conn, columns, ids, phones, emails):
            known[row.id] = row
            if row.phone:
                by_phone[row.phone] = row.id
            if row.email:
                by_email[row.email] = row.id

    load()
    # Every contact this group needs that does not exist yet, inserted at once.
    new_rows: dict[str, dict[str, Any]] = {}
    new_handles: set[str] = set()  # the phone (else email) of each new contact
    for ref in wanted:
        if ref.id:
            if ref.id not in known and ref.id not in new_rows:
                new_rows[ref.id] = {
                    "id": ref.id,
                    "phone": ref.phone if ref.phone not in by_phone else None,
                    "email": ref.email if ref.email not in by_email else None,
                    "timezone": ref.timezone, "locale": ref.locale, "attributes": dict(ref.attributes or {}),
                    "created_at": now, "updated_at": now}
                handle = new_rows[ref.id]["phone"] or new_rows[ref.id]["email"]
                if handle:
                    new_handles.add(handle)
        elif not (ref.phone in by_phone or ref.email in by_email):
            handle = ref.phone or ref.email or ""
            if handle and handle not in new_handles:
                new_handles.add(handle)
                new_id = f"ct-{uuid.uuid4().hex[:20]}"
                new_rows[new_id] = {"id": new_id, "phone": ref.phone, "email": ref.email, "timezone": ref.timezone,
                                    "locale": ref.locale, "attributes": {}, "created_at": now, "updated_at": now}
    if new_rows:
        # Two rows of this group may claim one phone; and another process may have inserted
        # the same contact meanwhile: a conflict is skipped, and the reload says who won.
        taken_phones: set[str] = set()
        taken_emails: set[str] = set()
        for row in new_rows.values():
            if row["phone"] in taken_phones:
                row["phone"] = None
            if row["email"] in taken_emails:
                row["email"] = None
            taken_phones.add(row["phone"])
            taken_emails.add(row["email"])
        if conn.dialect.name == "sqlite":
            sqlite_rows.insert_rows(conn, contacts, list(new_rows.values()), "ON CONFLICT DO NOTHING")
        else:
            conn.execute(_insert(conn).on_conflict_do_nothing(), list(new_rows.values()))
        load()
    out: list[str | None] = []
    for given in refs:
        if given is None:
            out.append(None)
            continue
        contact_id = given.id or (by_phone.get(given.phone or "") or by_email.get(given.email or ""))
        out.append(contact_id)
        if given.id and contact_id in known:
            _update(conn, known[contact_id], given, by_phone, by_email, now)
    return out


async def resolve(conn: AsyncConnection, refs: Sequence[ContactRef | None], now: datetime) -> list[str | None]:
    """:func:`resolve_sync` in the caller's transaction."""
    return await conn.run_sync(resolve_sync, refs, now)


def _update(conn: Connection, row: Any, ref: ContactRef, by_phone: dict[str, str],
                  by_email: dict[str, str], now: datetime) -> None:
    """An events source's contact fields win; a phone or email another contact holds is left alone."""
    values: dict[str, Any] = {}
    if ref.phone and ref.phone != row.phone and by_phone.get(ref.phone, row.id) == row.id:
        values["phone"] = ref.phone
    if ref.email and ref.email != row.email and by_email.get(ref.email, row.id) == row.id:
        values["email"] = ref.email
    if ref.timezone and ref.timezone != row.timezone:
        values["timezone"] = ref.timezone
    if ref.locale and ref.locale != row.locale:
        values["locale"] = ref.locale
    if ref.attributes:
        merged = {**(row.attributes or {}), **ref.attributes}
        if merged != row.attributes:
            values["attributes"] = merged
    if values:
        conn.execute(update(contacts).where(contacts.c.id == row.id).values(**values, updated_at=now))
