"""SendGrid Event Webhook: email delivery, engagement and unsubscribes, in batches.

Signature: ECDSA P-256 with SHA-256 over ``timestamp + raw body``; headers
``X-Twilio-Email-Event-Webhook-Signature`` (base64 DER) and ``...-Timestamp``; the public
key is base64 DER as SendGrid shows it. Our message id travels in ``custom_args``
(``journeys_message_id``), which SendGrid puts on every event of that message.
"""

from __future__ import annotations

import base64
import binascii
from functools import lru_cache
from types import MappingProxyType
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_der_public_key

from ingest.errors import MalformedError, SignatureError
from ingest.incoming import ContactRef, Incoming
from ingest.providers.base import Reply, check_timestamp, decode_signature, parse_time, require
from ingest.request import RawRequest
from ingest.status import known_meaning
from journeys.config import SourceConfig

SIGNATURE = "x-twilio-email-event-webhook-signature"
TIMESTAMP = "x-twilio-email-event-webhook-timestamp"
MESSAGE_ID_ARG = "journeys_message_id"


@lru_cache(maxsize=32)  # parsing DER on every request is wasted work: the configured keys rarely change
def _key(text: str) -> ec.EllipticCurvePublicKey:
    try:
        key = load_der_public_key(base64.b64decode(text))
    except (ValueError, binascii.Error) as exc:
        raise SignatureError("the configured SendGrid public_key is not base64 DER") from exc
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise SignatureError("the configured SendGrid public_key is not an EC key")
    return key


class SendGridProvider:
    name: str = "sendgrid"
    content_types: tuple[str, ...] = ("application/json",)

    def verify(self, request: RawRequest, source: SourceConfig) -> None:
        given = require(request.header(SIGNATURE), "X-Twilio-Email-Event-Webhook-Signature header")
        stamp = require(request.header(TIMESTAMP), "X-Twilio-Email-Event-Webhook-Timestamp header")
        check_timestamp(stamp, request.received_at, source.tolerance_ms)
        signature = decode_signature(given, "SendGrid signature")
        signed = stamp.encode() + request.body
        for text in source.public_keys:
            try:
                _key(text).verify(signature, signed, ec.ECDSA(hashes.SHA256()))
                return
            except InvalidSignature:
                continue
        raise SignatureError("the SendGrid signature does not match any configured public_key")

    def normalize(self, request: RawRequest, source: SourceConfig) -> list[Incoming]:
        request.require_media_type(*self.content_types)
        body = request.json()
        if not isinstance(body, list):
            raise MalformedError("a SendGrid event webhook body is a JSON array")
        if len(body) > source.max_batch:
            raise MalformedError(f"{len(body)} events in one request; the limit is {source.max_batch}")
        out = []
        for n, item in enumerate(body):
            incoming = self._one(item, n)
            if incoming is not None:
                out.append(incoming)
        return out

    def _one(self, item: Any, n: int) -> Incoming | None:
        if not isinstance(item, dict):
            raise MalformedError(f"event {n} is not an object")
        event_id, word, address = item.get("sg_event_id"), str(item.get("event", "")), item.get("email")
        if not isinstance(event_id, str) or not event_id:
            raise MalformedError(f"event {n} has no sg_event_id")
        if word == "bounce" and item.get("type") == "blocked":
            word = "blocked"
        found = known_meaning(self.name, word, f"event {n}: unknown SendGrid event {word!r}")
        if found.type is None:
            return None
        sg_id = item.get("sg_message_id")
        data: dict[str, Any] = {"event": item.get("event")}
        for key in ("url", "reason", "status", "response", "attempt", "useragent", "ip", "asm_group_id",
                    "bounce_classification"):
            if key in item:
                data[key] = item[key]
        if found.type in ("message.failed", "message.deferred"):
            data["permanent"] = bool(found.permanent)
            data.setdefault("reason", item.get("response") or word)
        return Incoming(
            type=found.type, provider_event_id=event_id, channel="email",
            contact=ContactRef(email=address) if isinstance(address, str) and address else None,
            occurred_at=parse_time(item.get("timestamp"), f"event {n}: timestamp"),
            provider_message_id=sg_id if isinstance(sg_id, str) and sg_id else None,
            message_id=item.get(MESSAGE_ID_ARG) if isinstance(item.get(MESSAGE_ID_ARG), str) else None,
            status=str(item.get("event")), data=MappingProxyType(data),
        )

    def reply(self, request: RawRequest, items: list[Incoming]) -> Reply:
        return Reply(200)


PROVIDER = SendGridProvider()
