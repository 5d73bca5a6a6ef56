"""Mailgun webhooks: one event per request, signed inside the body.

Signature: hex HMAC-SHA256, keyed with the webhook signing key, of ``timestamp + token``,
given in the body's ``signature`` object. The token is unique per webhook and is the
dedupe key; the timestamp is checked against the tolerance.
"""

from __future__ import annotations

import hashlib
import hmac
from types import MappingProxyType
from typing import Any

from ingest.errors import MalformedError, SignatureError
from ingest.incoming import ContactRef, Incoming
from ingest.providers.base import Reply, any_equal, as_object, check_timestamp, parse_time
from ingest.request import RawRequest
from ingest.status import known_meaning
from journeys.config import SourceConfig

MESSAGE_ID_VAR = "journeys_message_id"


def _signature_block(request: RawRequest) -> tuple[dict[str, Any], dict[str, Any]]:
    body = request.json()
    if not isinstance(body, dict):
        raise MalformedError("a Mailgun webhook body is a JSON object")
    sig, data = body.get("signature"), body.get("event-data")
    if not isinstance(sig, dict):
        raise SignatureError("no signature object in the body")
    if not isinstance(data, dict):
        raise MalformedError("no event-data object in the body")
    return sig, data



class MailgunProvider:
    name: str = "mailgun"
    content_types: tuple[str, ...] = ("application/json",)

    def verify(self, request: RawRequest, source: SourceConfig) -> None:
        request.require_media_type(*self.content_types)
        sig, _ = _signature_block(request)
        stamp, token, given = (str(sig.get(k, "")) for k in ("timestamp", "token", "signature"))
        if not (stamp and token and given):
            raise SignatureError("the signature object needs timestamp, token and signature")
        check_timestamp(stamp, request.received_at, source.tolerance_ms)
        expected = [hmac.new(key.encode(), (stamp + token).encode(), hashlib.sha256).hexdigest()
                    for key in source.secrets]
        if not any_equal([given.lower()], expected):
            raise SignatureError("the Mailgun signature does not match any configured signing key")

    def normalize(self, request: RawRequest, source: SourceConfig) -> list[Incoming]:
        sig, data = _signature_block(request)
        word = str(data.get("event", ""))
        key = f"{word}:{str(data.get('severity', '')).lower()}" if word == "failed" else word
        found = known_meaning(self.name, key, f"unknown Mailgun event {word!r}")
        if found.type is None:
            return []
        message = as_object(data.get("message"))
        headers = as_object(message.get("headers"))
        variables = as_object(data.get("user-variables"))
        details: dict[str, Any] = {"event": word}
        for k in ("severity", "reason", "url", "log-level"):
            if k in data:
                details[k] = data[k]
        status = as_object(data.get("delivery-status"))
        if status:
            details["delivery_status"] = {k: status[k] for k in ("code", "message", "description") if k in status}
        if found.type in ("message.failed", "message.deferred"):
            details["permanent"] = bool(found.permanent)
            details.setdefault("reason", status.get("description") or status.get("message") or word)
        recipient = data.get("recipient")
        # The event's own id, not the request's token: a webhook Mailgun retries keeps its event id.
        raw_id = data.get("id")
        event_id = raw_id if isinstance(raw_id, str) and raw_id else str(sig.get("token"))
        return [Incoming(
            type=found.type, provider_event_id=event_id, channel="email",
            contact=ContactRef(email=recipient) if isinstance(recipient, str) and recipient else None,
            occurred_at=parse_time(data.get("timestamp"), "event-data.timestamp"),
            provider_message_id=str(headers.get("message-id")) if headers.get("message-id") else None,
            message_id=variables.get(MESSAGE_ID_VAR) if isinstance(variables.get(MESSAGE_ID_VAR), str) else None,
            status=word, data=MappingProxyType(details),
        )]

    def reply(self, request: RawRequest, items: list[Incoming]) -> Reply:
        return Reply(200)


PROVIDER = MailgunProvider()
