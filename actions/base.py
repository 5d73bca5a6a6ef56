"""The one signature every action has, and what it may return or raise.

An action gets a context (the job, its rendered inputs, the contact, the channels, an HTTP
client, its deadline) and returns an :class:`Outcome`, or raises :class:`ActionError`
(transient: retry later; permanent: give up now). It never touches the database: what it
wants changed (a message sent, a suppression, contact attributes, an event to emit) goes
into the Outcome, and the executor writes it in the same transaction as the job's status.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import httpx

    from actions.templates import TemplateStore
    from engine.instance import Contact
    from journeys.config import Config


class ActionError(Exception):
    """A failed attempt. ``transient``: another attempt may succeed (timeouts, 429, 5xx)."""

    def __init__(self, reason: str, *, transient: bool, retry_after: float | None = None,
                 status: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.transient = transient
        self.retry_after = retry_after
        self.status = status


@dataclass(frozen=True)
class Sent:
    """A message that left: recorded with our id and the provider's."""

    channel: str
    provider: str
    provider_message_id: str | None
    to: str | None
    body: str | None = None


@dataclass(frozen=True)
class Outcome:
    detail: str = "done"
    sent: Sent | None = None
    suppress: tuple[str, ...] = ()
    unsuppress: tuple[str, ...] = ()
    attributes: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    emit: tuple[tuple[str, Mapping[str, Any]], ...] = ()  # (type, data)
    result: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True)
class ActionContext:
    job_id: str  # the idempotency key: (instance, entry, index)
    action: str
    instance_id: str
    journey: str
    attempt: int
    inputs: Mapping[str, Any]
    contact: Contact | None
    vars: Mapping[str, Any]
    config: Config
    templates: TemplateStore
    http: httpx.AsyncClient
    now: datetime
    timeout: float  # seconds this attempt may take
    message_id: str  # our id for a message this job sends (stable across attempts)
    public_urls: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))


class Action(Protocol):
    """An action: built in, or a plugin of the ``journeys.actions`` entry point group."""

    name: str

    async def run(self, ctx: ActionContext) -> Outcome: ...
