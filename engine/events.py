"""The canonical event: what every provider payload becomes.

Ingest builds these; the engine and ``journeys test`` consume them. ``scope()`` is the
read-only view that journey expressions see as ``event``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from types import MappingProxyType
from typing import Any

SCHEMA_VERSION = 1

# message.* types that report a message's progress, and the status each stands for
STATUS_OF_TYPE: Mapping[str, str] = MappingProxyType({
    "message.sent": "sent",
    "message.deferred": "deferred",
    "message.delivered": "delivered",
    "message.read": "read",
    "message.failed": "failed",
})



# Types that are news about one message we sent (a reply is not: it belongs to the conversation).
ABOUT_A_MESSAGE: frozenset[str] = frozenset({*STATUS_OF_TYPE, "message.opened", "message.clicked"})


@dataclass(frozen=True)
class Event:
    id: str
    type: str
    occurred_at: datetime
    source: str = "internal"
    provider: str | None = None
    provider_event_id: str | None = None
    channel: str | None = None
    contact_id: str | None = None
    conversation_id: str | None = None
    message_id: str | None = None
    provider_message_id: str | None = None
    received_at: datetime | None = None
    status: str | None = None
    text: str | None = None
    data: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    schema_version: int = SCHEMA_VERSION

    @cached_property
    def view(self) -> Mapping[str, Any]:
        """:meth:`scope` as a read-only mapping, built once per event (events are immutable).

        A cached_property is kept in the instance dict on first use, so every later read is a
        plain attribute lookup (its lock is only taken when the value is missing)."""
        return MappingProxyType(self.scope())

    def scope(self) -> dict[str, Any]:
        """What expressions see as ``event``."""
        return {
            "id": self.id,
            "type": self.type,
            "source": self.source,
            "provider": self.provider,
            "channel": self.channel,
            "contact_id": self.contact_id,
            "conversation_id": self.conversation_id,
            "message_id": self.message_id,
            "provider_message_id": self.provider_message_id,
            "occurred_at": self.occurred_at,
            "status": self.status,
            "text": self.text,
            "data": self.data,
        }
