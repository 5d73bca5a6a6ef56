"""What a provider's payload says, before contacts are resolved and it becomes a canonical event."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Any


@dataclass(frozen=True)
class ContactRef:
    """How a payload names its contact: our id (events sources), else a phone or an email."""

    id: str | None = None
    phone: str | None = None
    email: str | None = None
    timezone: str | None = None
    locale: str | None = None
    attributes: Mapping[str, Any] | None = None  # set by events sources only


@dataclass(frozen=True)
class Incoming:
    type: str
    provider_event_id: str
    channel: str | None = None
    contact: ContactRef | None = None
    occurred_at: datetime | None = None
    provider_message_id: str | None = None
    message_id: str | None = None  # ours, when the provider echoes it back
    status: str | None = None  # the provider's own word
    text: str | None = None
    data: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    inbound: bool = False  # a message from the contact: it has a conversation
