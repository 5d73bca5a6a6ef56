"""Vonage Messages API webhooks (signed): message statuses and inbound messages.

Signature: ``Authorization: Bearer <JWT>``, HS256 with the signature secret; its claim
``payload_hash`` is the hex SHA-256 of the body, which we check (Vonage's own SDK does
not); ``iat`` must be within the tolerance. Our message id travels as ``client_ref``.
"""

from __future__ import annotations

import hashlib
import hmac
import warnings
from types import MappingProxyType
from typing import Any

import jwt

from ingest.errors import MalformedError, SignatureError
from ingest.incoming import ContactRef, Incoming
from ingest.providers.base import Reply, check_timestamp, parse_time, require
from ingest.request import RawRequest
from ingest.status import known_meaning
from journeys.config import SourceConfig


def _claims(token: str, secrets: tuple[str, ...]) -> dict[str, Any]:
    for secret in secrets:
        try:
            with warnings.catch_warnings():
                # the secret's length is Vonage's choice, not ours to refuse
                warnings.simplefilter("ignore")
                claims: dict[str, Any] = jwt.decode(token, secret, algorithms=["HS256"],
                                                    options={"require": ["iat", "payload_hash"]})
            return claims
        except jwt.InvalidTokenError:
            continue
    raise SignatureError("the Vonage JWT does not verify with any configured signature secret")


class VonageProvider:
    name: str = "vonage"
    content_types: tuple[str, ...] = ("application/json",)

    def verify(self, request: RawRequest, source: SourceConfig) -> None:
        header = require(request.header("authorization"), "Authorization header")
        if not header.lower().startswith("bearer "):
            raise SignatureError("the Authorization header must be Bearer <JWT>")
        claims = _claims(header[7:].strip(), source.secrets)
        check_timestamp(str(claims["iat"]), request.received_at, source.tolerance_ms, "JWT iat")
        body_hash = hashlib.sha256(request.body).hexdigest()
        if not hmac.compare_digest(str(claims["payload_hash"]).lower(), body_hash):
            raise SignatureError("payload_hash does not match the body")

    def normalize(self, request: RawRequest, source: SourceConfig) -> list[Incoming]:
        request.require_media_type(*self.content_types)
        body = request.json()
        if not isinstance(body, dict) or not isinstance(body.get("message_uuid"), str):
            raise MalformedError("not a Vonage Messages webhook (message_uuid is required)")
        uuid = body["message_uuid"]
        channel = str(body.get("channel", "sms"))
        channel = channel if channel in ("sms", "whatsapp") else "sms"
        occurred = parse_time(body.get("timestamp"), "timestamp")
        if "status" not in body:
            text = body.get("text")
            return [Incoming(type="message.received", provider_event_id=f"{uuid}:received", channel=channel,
                             contact=ContactRef(phone=str(body.get("from"))) if body.get("from") else None,
                             occurred_at=occurred, provider_message_id=uuid,
                             text=str(text) if text is not None else None, inbound=True,
                             data=MappingProxyType({"message_type": body.get("message_type")}))]
        word = str(body["status"])
        found = known_meaning(self.name, word, f"unknown Vonage status {word!r}")
        if found.type is None:
            return []
        details: dict[str, Any] = {"status": word}
        if found.type == "message.failed":
            raw_error = body.get("error")
            error: dict[str, Any] = raw_error if isinstance(raw_error, dict) else {}
            # the error type is a URL ending in "#1360" (or "/1360"): the code is its last part
            code = str(error.get("type", "")).rstrip("/").replace("#", "/").rsplit("/", 1)[-1] or word
            details.update(reason=code, title=error.get("title"), permanent=found.permanent)
        ours = body.get("client_ref")
        return [Incoming(type=found.type, provider_event_id=f"{uuid}:{word}", channel=channel,
                         contact=ContactRef(phone=str(body.get("to"))) if body.get("to") else None,
                         occurred_at=occurred, provider_message_id=uuid, status=word,
                         message_id=ours if isinstance(ours, str) else None, data=MappingProxyType(details))]

    def reply(self, request: RawRequest, items: list[Incoming]) -> Reply:
        return Reply(200)


PROVIDER = VonageProvider()
