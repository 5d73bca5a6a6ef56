"""``events`` sources: our own systems, signed the Standard Webhooks way.

Headers ``webhook-id``, ``webhook-timestamp``, ``webhook-signature: v1,<base64>`` (several,
space-separated, during rotation); the signature is HMAC-SHA256 of ``id.timestamp.body``
with the secret ``whsec_<base64>``. The body is one event object or a list of them, each
with its own ``id`` (the dedupe key), a ``type``, and optionally ``occurred_at``,
``contact`` (which creates or updates the contact) and ``data``.
"""

from __future__ import annotations

import base64
import hmac
import re
from functools import lru_cache
from types import MappingProxyType
from typing import Any

from ingest.errors import MalformedError, SignatureError
from ingest.incoming import ContactRef, Incoming
from ingest.providers.base import Reply, any_equal, check_timestamp, parse_time, require
from ingest.request import RawRequest
from journeys.config import SourceConfig

_TYPE = re.compile(r"^[a-z][a-z0-9_-]*(\.[a-z0-9_-]+)+$")
# only providers and the engine produce these; a business system may still opt people in or out
_FORBIDDEN = ("message.", "timer.", "action.")
_CONTACT_KEYS = {"id", "phone", "email", "timezone", "locale", "attributes"}


@lru_cache(maxsize=256)
def secret_key(secret: str) -> bytes:
    """The HMAC key of a Standard Webhooks secret (``whsec_`` + base64)."""
    raw = secret.removeprefix("whsec_")
    try:
        return base64.b64decode(raw, validate=True)
    except ValueError:
        return secret.encode()  # not base64: use the text itself, as some senders do


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    content = f"{msg_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.digest(secret_key(secret), content, "sha256")).decode()


class EventsProvider:
    name: str = "events"
    content_types: tuple[str, ...] = ("application/json",)

    def verify(self, request: RawRequest, source: SourceConfig) -> None:
        msg_id = require(request.header("webhook-id"), "webhook-id header")
        stamp = require(request.header("webhook-timestamp"), "webhook-timestamp header")
        given = require(request.header("webhook-signature"), "webhook-signature header")
        seconds = check_timestamp(stamp, request.received_at, source.tolerance_ms, "webhook-timestamp")
        signatures = [part.strip() for part in given.split(" ") if part.strip().startswith("v1,")]
        expected = [sign(secret, msg_id, seconds, request.body) for secret in source.secrets]
        if not signatures or not any_equal(signatures, expected):
            raise SignatureError("webhook-signature does not match any configured secret")

    def normalize(self, request: RawRequest, source: SourceConfig) -> list[Incoming]:
        request.require_media_type(*self.content_types)
        body = request.json()
        items = body if isinstance(body, list) else [body]
        if len(items) > source.max_batch:
            raise MalformedError(f"{len(items)} events in one request; the limit is {source.max_batch}")
        return [self._one(item, n) for n, item in enumerate(items)]

    def _one(self, item: Any, n: int) -> Incoming:
        where = f"event {n}" if n else "the event"
        if not isinstance(item, dict):
            raise MalformedError(f"{where} is not a JSON object")
        event_id = item.get("id")
        if not isinstance(event_id, str) or not event_id or len(event_id) > 200:
            raise MalformedError(f"{where}: `id` (text, at most 200 characters) is required")
        kind = item.get("type")
        if not isinstance(kind, str) or not _TYPE.match(kind):
            raise MalformedError(f"{where}: `type` must be lower-case with a dot, like invoice.paid")
        if kind.startswith(_FORBIDDEN):
            raise MalformedError(f"{where}: {kind!r} events come from providers and the engine, not from an "
                                 "events source")
        data = item.get("data", {})
        if not isinstance(data, dict):
            raise MalformedError(f"{where}: `data` must be an object")
        contact = item.get("contact")
        ref = None
        if contact is not None:
            if not isinstance(contact, dict) or not (set(contact) <= _CONTACT_KEYS):
                raise MalformedError(f"{where}: `contact` is an object with {', '.join(sorted(_CONTACT_KEYS))}")
            if not any(isinstance(contact.get(k), str) and contact.get(k) for k in ("id", "phone", "email")):
                raise MalformedError(f"{where}: `contact` needs an id, a phone or an email")
            attributes = contact.get("attributes")
            if attributes is not None and not isinstance(attributes, dict):
                raise MalformedError(f"{where}: `contact.attributes` must be an object")
            ref = ContactRef(id=contact.get("id"), phone=contact.get("phone"), email=contact.get("email"),
                             timezone=contact.get("timezone"), locale=contact.get("locale"),
                             attributes=MappingProxyType(attributes) if attributes else None)
        channel = item.get("channel") if kind.startswith("contact.") else None
        return Incoming(type=kind, provider_event_id=event_id, contact=ref, channel=channel,
                        occurred_at=parse_time(item.get("occurred_at"), f"{where}: occurred_at"),
                        data=MappingProxyType(data))

    def reply(self, request: RawRequest, items: list[Incoming]) -> Reply:
        return Reply(202, b'{"ok":true}')


PROVIDER = EventsProvider()
