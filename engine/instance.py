"""An instance of a journey for one subject, and the contact as expressions see it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from types import MappingProxyType
from typing import Any, Literal, NamedTuple

Status = Literal["active", "completed", "exited", "failed"]
ENDED: frozenset[str] = frozenset({"completed", "exited", "failed"})
RECENT_EVENTS = 32


class Instance(NamedTuple):
    """Where one subject is in one journey version. Replaced, never changed.

    A NamedTuple rather than a frozen dataclass: every decision that moves an instance makes
    a new one, and the interpreter builds it from the old one's fields in one tuple (the field
    order is part of that: see engine.interpreter)."""

    id: str
    journey: str
    version: int
    subject: str
    state: str
    status: Status
    started_at: datetime
    entered_at: datetime
    # Bumped on every entry into a state: names action keys and timers of that entry.
    seq: int = 1
    contact_id: str | None = None
    vars: Mapping[str, Any] = MappingProxyType({})  # read-only, so one empty default serves all
    ended_at: datetime | None = None
    goal_reached_at: datetime | None = None
    error: str | None = None
    # Ids of the last events applied: a redelivered event changes nothing.
    recent_events: tuple[str, ...] = ()

    @property
    def active(self) -> bool:
        return self.status == "active"

    def evolve(self, **changes: Any) -> Instance:
        """A copy with *changes*."""
        return self._replace(**changes)

    def scope(self, entering: str | None = None, at: datetime | None = None) -> dict[str, Any]:
        """What expressions see as ``instance``; as it is once it enters state *entering* at *at*,
        when given (the inputs of that state's actions are rendered so)."""
        return {
            "id": self.id,
            "state": entering or self.state,
            "status": self.status,
            "subject": self.subject,
            "started_at": self.started_at,
            "entered_at": at or self.entered_at,
        }


@dataclass(frozen=True)
class Contact:
    id: str
    phone: str | None = None
    email: str | None = None
    timezone: str | None = None
    locale: str | None = None
    attributes: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    @cached_property
    def view(self) -> Mapping[str, Any]:
        """:meth:`scope` as a read-only mapping, built once (contacts are immutable; see Event.view)."""
        return MappingProxyType(self.scope())

    def scope(self) -> dict[str, Any]:
        """What expressions see as ``contact``."""
        return {
            "id": self.id,
            "phone": self.phone,
            "email": self.email,
            "timezone": self.timezone,
            "locale": self.locale,
            "attributes": self.attributes,
        }


@dataclass(frozen=True)
class History:
    """What the runtime knows of earlier instances of a (journey, subject): for ``reentry``."""

    count: int = 0
    last_ended_at: datetime | None = None


NO_HISTORY = History()
