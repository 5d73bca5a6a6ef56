"""Telnyx messaging webhooks: message.sent, message.finalized, message.received.

Signature: Ed25519 over ``timestamp|raw body``; headers ``telnyx-signature-ed25519``
(base64) and ``telnyx-timestamp``; the public key is base64 of the raw 32-byte key.
The event's own ``data.id`` is the dedupe key.
"""

from __future__ import annotations

import base64
import binascii
from functools import lru_cache
from types import MappingProxyType
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ingest.errors import MalformedError, SignatureError
from ingest.incoming import ContactRef, Incoming
from ingest.providers.base import Reply, as_object, check_timestamp, decode_signature, parse_time, require
from ingest.request import RawRequest
from ingest.status import known_meaning
from journeys.config import SourceConfig


@lru_cache(maxsize=32)  # the configured keys rarely change; decode each once, not on every request
def _key(text: str) -> Ed25519PublicKey:
    return Ed25519PublicKey.from_public_bytes(base64.b64decode(text))


class TelnyxProvider:
    name: str = "telnyx"
    content_types: tuple[str, ...] = ("application/json",)

    def verify(self, request: RawRequest, source: SourceConfig) -> None:
        given = require(request.header("telnyx-signature-ed25519"), "telnyx-signature-ed25519 header")
        stamp = require(request.header("telnyx-timestamp"), "telnyx-timestamp header")
        check_timestamp(stamp, request.received_at, source.tolerance_ms)
        signature = decode_signature(given, "Telnyx signature")
        message = stamp.encode() + b"|" + request.body
        for text in source.public_keys:
            try:
                _key(text).verify(signature, message)
                return
            except (InvalidSignature, ValueError, binascii.Error):
                continue
        raise SignatureError("the Telnyx signature does not match any configured public_key")

    def normalize(self, request: RawRequest, source: SourceConfig) -> list[Incoming]:
        request.require_media_type(*self.content_types)
        data = as_object(as_object(request.json()).get("data"))
        event_id, kind = data.get("id"), data.get("event_type")
        payload = as_object(data.get("payload"))
        if not isinstance(event_id, str) or not isinstance(kind, str) or not payload:
            raise MalformedError("not a Telnyx event: data.id, data.event_type and data.payload are required")
        message_id = payload.get("id") if isinstance(payload.get("id"), str) else None
        occurred = parse_time(data.get("occurred_at"), "data.occurred_at")
        channel = "whatsapp" if str(payload.get("type", "")).lower() == "whatsapp" else "sms"
        if kind == "message.received":
            phone = as_object(payload.get("from")).get("phone_number")
            return [Incoming(type="message.received", provider_event_id=event_id, channel=channel,
                             contact=ContactRef(phone=phone) if phone else None, occurred_at=occurred,
                             provider_message_id=message_id, text=str(payload.get("text") or ""), inbound=True,
                             data=MappingProxyType({"to": [t.get("phone_number") for t in payload.get("to", [])
                                                           if isinstance(t, dict)]}))]
        if kind not in ("message.sent", "message.finalized"):
            return []  # other Telnyx events (calls, numbers) are not ours to store
        recipients = [t for t in payload.get("to", []) if isinstance(t, dict)]
        first = recipients[0] if recipients else {}
        word = str(first.get("status", ""))
        found = known_meaning(self.name, word, f"unknown Telnyx status {word!r}")
        if found.type is None:
            return []
        details: dict[str, Any] = {"status": word}
        if found.type == "message.failed":
            errors = [e for e in payload.get("errors", []) if isinstance(e, dict)]
            error = errors[0] if errors else {}
            title = str(error.get("title", ""))
            details.update(reason=str(error.get("code") or word), title=title,
                           permanent="temporar" not in title.lower())
        phone = first.get("phone_number")
        return [Incoming(type=found.type, provider_event_id=event_id, channel=channel,
                         contact=ContactRef(phone=phone) if phone else None, occurred_at=occurred,
                         provider_message_id=message_id, status=word, data=MappingProxyType(details))]

    def reply(self, request: RawRequest, items: list[Incoming]) -> Reply:
        return Reply(200)


PROVIDER = TelnyxProvider()
