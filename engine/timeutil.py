"""Times as the database gives them back: one rule for SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime


def aware(value: datetime) -> datetime:
    """A database time as an aware UTC datetime, whichever database gave it (SQLite hands back
    naive datetimes; everything stored is UTC)."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


__all__ = ["aware"]
