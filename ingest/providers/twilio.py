"""Twilio: SMS and WhatsApp status callbacks and inbound messages.

Signature (X-Twilio-Signature): base64 HMAC-SHA1, keyed with the auth token, of the full
URL Twilio called followed by every form parameter, sorted by name, as name+value. For
JSON bodies Twilio adds ``bodySHA256`` (hex SHA-256 of the body) to the URL and signs the
URL alone. The URL is the configured ``public_url`` (never X-Forwarded-* headers, which the
sender controls) plus the query string as received. Twilio signs without a timestamp:
only the dedupe store stops a replay.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from types import MappingProxyType
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from ingest.errors import MalformedError, SignatureError
from ingest.incoming import ContactRef, Incoming
from ingest.providers.base import Reply, any_equal, require
from ingest.request import RawRequest
from ingest.status import meaning
from journeys.config import SourceConfig

TWIML_EMPTY = b'<?xml version="1.0" encoding="UTF-8"?><Response/>'
MESSAGE_ID_PARAM = "m"  # our message id in the StatusCallback URL


def signature(token: str, url: str, params: list[tuple[str, str]]) -> str:
    payload = url + "".join(k + v for k, v in sorted(params, key=lambda kv: kv[0]))
    return base64.b64encode(hmac.new(token.encode(), payload.encode(), hashlib.sha1).digest()).decode()


def _url_variants(url: str) -> list[str]:
    """The URL with and without the default port: Twilio signs whichever it was given."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    default = 443 if parts.scheme == "https" else 80
    bare = urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))
    with_port = urlunsplit((parts.scheme, f"{host}:{parts.port or default}", parts.path, parts.query,
                            parts.fragment))
    return list(dict.fromkeys([url, bare, with_port]))


def _called_url(request: RawRequest, source: SourceConfig) -> str:
    base = source.public_url or ""
    return f"{base}?{request.query}" if request.query else base


class TwilioProvider:
    name: str = "twilio"
    content_types: tuple[str, ...] = ("application/x-www-form-urlencoded", "application/json")

    def verify(self, request: RawRequest, source: SourceConfig) -> None:
        given = require(request.header("x-twilio-signature"), "X-Twilio-Signature header")
        url = _called_url(request, source)
        if request.media_type == "application/json":
            body_hash = dict(parse_qsl(request.query)).get("bodySHA256")
            if not body_hash or not hmac.compare_digest(body_hash.lower(),
                                                        hashlib.sha256(request.body).hexdigest()):
                raise SignatureError("bodySHA256 is missing or does not match the body")
            params: list[tuple[str, str]] = []
        else:
            params = parse_qsl(request.text(), keep_blank_values=True)
        expected = [signature(token, variant, params) for token in source.secrets for variant in _url_variants(url)]
        if not any_equal([given], expected):
            raise SignatureError("X-Twilio-Signature does not match (check public_url and the auth token)")

    def normalize(self, request: RawRequest, source: SourceConfig) -> list[Incoming]:
        kind = request.require_media_type(*self.content_types)
        if kind == "application/json":
            body = request.json()
            if not isinstance(body, dict):
                raise MalformedError("a Twilio JSON body is an object")
            form = {str(k): str(v) for k, v in body.items() if v is not None}
        else:
            form = request.form()
        sid = form.get("MessageSid") or form.get("SmsSid") or form.get("SmsMessageSid")
        if not sid:
            raise MalformedError("no MessageSid: not a Twilio messaging webhook")
        word = (form.get("MessageStatus") or form.get("SmsStatus") or "").lower()
        sender, recipient = form.get("From", ""), form.get("To", "")
        channel = "whatsapp" if sender.startswith("whatsapp:") or recipient.startswith("whatsapp:") else "sms"
        ours = dict(parse_qsl(request.query)).get(MESSAGE_ID_PARAM)
        inbound = word in ("received", "receiving", "") and "Body" in form
        if inbound:
            phone = sender.removeprefix("whatsapp:")
            extra: dict[str, object] = {k: form[k] for k in ("To", "NumMedia", "NumSegments", "AccountSid",
                                                             "MessagingServiceSid") if k in form}
            items = [Incoming(type="message.received", provider_event_id=f"{sid}:received", channel=channel,
                              contact=ContactRef(phone=phone), provider_message_id=sid, status="received",
                              text=form.get("Body", ""), data=MappingProxyType(extra), inbound=True)]
            opt = form.get("OptOutType", "").upper()
            # Twilio's own keyword handling: the same derived event the keyword rule makes
            if opt in ("STOP", "START"):
                items.append(Incoming(type="contact.opted_out" if opt == "STOP" else "contact.opted_in",
                                      provider_event_id=f"{sid}:received:opt", channel=channel,
                                      contact=ContactRef(phone=phone), provider_message_id=sid,
                                      data=MappingProxyType({"keyword": form.get("Body", "").strip(),
                                                             "via": "OptOutType"})))
            return items
        found = meaning(self.name, word)
        if found is None:
            raise MalformedError(f"unknown Twilio MessageStatus {word!r}")
        if found.type is None:
            return []
        data: dict[str, object] = {"status": word}
        if found.type == "message.failed":
            data.update(reason=form.get("ErrorMessage") or f"Twilio error {form.get('ErrorCode', 'unknown')}",
                        error_code=form.get("ErrorCode"), permanent=found.permanent)
        return [Incoming(type=found.type, provider_event_id=f"{sid}:{word}", channel=channel,
                         contact=ContactRef(phone=recipient.removeprefix("whatsapp:") or None),
                         provider_message_id=sid, message_id=ours, status=word, data=MappingProxyType(data))]

    def reply(self, request: RawRequest, items: list[Incoming]) -> Reply:
        # An empty TwiML answer: no auto-reply from Twilio on our behalf.
        return Reply(200, TWIML_EMPTY, "text/xml")


PROVIDER = TwilioProvider()
