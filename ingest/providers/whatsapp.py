"""Meta WhatsApp Cloud API webhooks: message statuses and inbound messages, in batches.

Signature: ``X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the raw body>`` keyed with
the app secret; verified on the exact bytes (re-serialised JSON would not match). No
timestamp: only the dedupe store stops a replay. The GET handshake answers
``hub.challenge`` when ``hub.verify_token`` is the configured one.
"""

from __future__ import annotations

import hashlib
import hmac
from types import MappingProxyType
from typing import Any
from urllib.parse import parse_qsl

from ingest.errors import MalformedError, SignatureError
from ingest.incoming import ContactRef, Incoming
from ingest.providers.base import Reply, any_equal, as_object, equal, objects, parse_time, require
from ingest.request import RawRequest
from ingest.status import known_meaning
from journeys.config import SourceConfig

# Errors after which the same message may still go later (rate limits, the 24-hour window).
TEMPORARY_ERRORS = {130429, 131047, 131048, 131056, 133004}




class WhatsAppProvider:
    name: str = "whatsapp"
    content_types: tuple[str, ...] = ("application/json",)

    def verify(self, request: RawRequest, source: SourceConfig) -> None:
        given = require(request.header("x-hub-signature-256"), "X-Hub-Signature-256 header")
        if not given.startswith("sha256="):
            raise SignatureError("X-Hub-Signature-256 must start with sha256=")
        expected = [hmac.new(secret.encode(), request.body, hashlib.sha256).hexdigest() for secret in source.secrets]
        if not any_equal([given[7:].lower()], expected):
            raise SignatureError("X-Hub-Signature-256 does not match the app secret")

    def handshake(self, request: RawRequest, source: SourceConfig) -> bytes:
        params = dict(parse_qsl(request.query))
        token = source.verify_token or ""
        if params.get("hub.mode") != "subscribe" or not token or not equal(params.get("hub.verify_token", ""), token):
            raise SignatureError("the verify token does not match")
        return params.get("hub.challenge", "").encode()

    def normalize(self, request: RawRequest, source: SourceConfig) -> list[Incoming]:
        request.require_media_type(*self.content_types)
        body = as_object(request.json())
        if body.get("object") != "whatsapp_business_account":
            raise MalformedError("not a WhatsApp Business webhook (object must be whatsapp_business_account)")
        out: list[Incoming] = []
        for entry in objects(body.get("entry")):
            for change in objects(entry.get("changes")):
                value = as_object(change.get("value"))
                names = {c.get("wa_id"): as_object(c.get("profile")).get("name")
                         for c in objects(value.get("contacts"))}
                for status in objects(value.get("statuses")):
                    item = self._status(status)
                    if item is not None:
                        out.append(item)
                for message in objects(value.get("messages")):
                    out.append(self._message(message, names))
        if len(out) > source.max_batch:
            raise MalformedError(f"{len(out)} events in one request; the limit is {source.max_batch}")
        return out

    def _status(self, status: dict[str, Any]) -> Incoming | None:
        message_id, word = status.get("id"), str(status.get("status", ""))
        if not isinstance(message_id, str):
            raise MalformedError("a WhatsApp status without an id")
        found = known_meaning(self.name, word, f"unknown WhatsApp status {word!r}")
        if found.type is None:
            return None
        details: dict[str, Any] = {"status": word}
        if found.type == "message.failed":
            errors = objects(status.get("errors"))
            code = errors[0].get("code") if errors else None
            details.update(reason=str(code or word), title=errors[0].get("title") if errors else None,
                           permanent=not (isinstance(code, int) and code in TEMPORARY_ERRORS))
        phone = status.get("recipient_id")
        return Incoming(type=found.type, provider_event_id=f"{message_id}:{word}", channel="whatsapp",
                        contact=ContactRef(phone=str(phone)) if phone else None,
                        occurred_at=parse_time(status.get("timestamp"), "status timestamp"),
                        provider_message_id=message_id, status=word, data=MappingProxyType(details))

    def _message(self, message: dict[str, Any], names: dict[Any, Any]) -> Incoming:
        message_id, sender = message.get("id"), message.get("from")
        if not isinstance(message_id, str) or not sender:
            raise MalformedError("a WhatsApp message without id or from")
        kind = str(message.get("type", ""))
        text = as_object(message.get("text")).get("body") if kind == "text" else None
        if kind == "button":
            text = as_object(message.get("button")).get("text")
        details: dict[str, Any] = {"message_type": kind}
        if names.get(sender):
            details["profile_name"] = names[sender]
        context = as_object(message.get("context"))
        if context.get("id"):
            details["in_reply_to"] = context["id"]
        return Incoming(type="message.received", provider_event_id=message_id, channel="whatsapp",
                        contact=ContactRef(phone=str(sender)),
                        occurred_at=parse_time(message.get("timestamp"), "message timestamp"),
                        provider_message_id=message_id, text=text, inbound=True, data=MappingProxyType(details))

    def reply(self, request: RawRequest, items: list[Incoming]) -> Reply:
        return Reply(200)


PROVIDER = WhatsAppProvider()
