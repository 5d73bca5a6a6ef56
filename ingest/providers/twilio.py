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
from functools import lru_cache
from types import MappingProxyType
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from ingest.errors import MalformedError, SignatureError
from ingest.incoming import ContactRef, Incoming
from ingest.providers.base import Reply, any_equal, require
from ingest.request import RawRequest
from ingest.status import known_meaning, meaning
from journeys.config import SourceConfig

TWIML_EMPTY = b'<?xml version="1.0" encoding="UTF-8"?><Response/>'
_TWIML_REPLY = Reply(200, TWIML_EMPTY, "text/xml")
MESSAGE_ID_PARAM = "message_id"  # our message id in the StatusCallback URL
# Error codes after which the same message may still get through later (unreachable handset,
# carrier congestion, queue overflow): not a reason to stop trying this contact.
TEMPORARY_ERRORS = {"30001", "30003", "30008", "30009", "30017"}


def _signed_params(params: list[tuple[str, str]]) -> str:
    """The part of what Twilio signs that follows the URL."""
    if len({key for key, _ in params}) == len(params):  # no name twice: the usual callback
        return "".join(key + value for key, value in sorted(params))
    # Twilio sorts by name; a repeated name's values are sorted and counted once.
    values: dict[str, set[str]] = {}
    for key, value in params:
        values.setdefault(key, set()).add(value)
    return "".join(key + value for key in sorted(values) for value in sorted(values[key]))


def _sign(token: str, url: str, signed_params: str, algorithm: str) -> str:
    digest = "sha256" if algorithm == "HMAC_SHA256" else "sha1"
    return base64.b64encode(hmac.digest(token.encode(), (url + signed_params).encode(), digest)).decode()


def signature(token: str, url: str, params: list[tuple[str, str]], algorithm: str = "HMAC_SHA1") -> str:
    return _sign(token, url, _signed_params(params), algorithm)


def _algorithm(request: RawRequest) -> str:
    """HMAC_SHA1, or what a Webhooks Rule names in X-Twilio-Webhooks-Signature-Settings."""
    settings = request.header("x-twilio-webhooks-signature-settings") or ""
    for part in settings.split(","):
        key, _, value = part.strip().partition("=")
        if key == "algorithm" and value.upper() in ("HMAC_SHA1", "HMAC_SHA256"):
            return value.upper()
    return "HMAC_SHA1"


@lru_cache(maxsize=64)
def _url_forms(url: str) -> tuple[str, ...]:
    """*url* as given, without the default port and with it: Twilio signs whichever it was given."""
    parts = urlsplit(url)
    userinfo = parts.netloc.rpartition("@")[0]
    host = (f"{userinfo}@" if userinfo else "") + (parts.hostname or "")
    default = 443 if parts.scheme == "https" else 80
    bare = urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))
    with_port = urlunsplit((parts.scheme, f"{host}:{parts.port or default}", parts.path, parts.query,
                            parts.fragment))
    return tuple(dict.fromkeys([url, bare, with_port]))


def _url_variants(base: str, query: str) -> list[str]:
    """The URLs Twilio may have signed for a request to *base* with *query*."""
    forms = [f"{form}?{query}" if query else form for form in _url_forms(base)]
    # Twilio percent-encodes an apostrophe before signing; people configure it raw
    forms += [f.replace("'", "%27") for f in forms]
    return list(dict.fromkeys(forms))


class TwilioProvider:
    name: str = "twilio"
    content_types: tuple[str, ...] = ("application/x-www-form-urlencoded", "application/json")

    def verify(self, request: RawRequest, source: SourceConfig) -> None:
        given = require(request.header("x-twilio-signature"), "X-Twilio-Signature header")
        if request.media_type == "application/json":
            body_hash = dict(parse_qsl(request.query)).get("bodySHA256")
            if not body_hash or not hmac.compare_digest(body_hash.lower(),
                                                        hashlib.sha256(request.body).hexdigest()):
                raise SignatureError("bodySHA256 is missing or does not match the body")
            params: list[tuple[str, str]] = []
        else:
            params = request.form_pairs
        algorithm = _algorithm(request)
        signed = _signed_params(params)
        base, query = source.public_url or "", request.query
        # The URL as configured first, with every secret (the time does not say which one
        # matched); the other forms of it only when that fails. Which form of a public URL
        # Twilio signed is no secret.
        first = f"{base}?{query}" if query else base
        if any_equal([given], [_sign(token, first, signed, algorithm) for token in source.secrets]):
            return
        others = [url for url in _url_variants(base, query) if url != first]
        if any_equal([given], [_sign(token, url, signed, algorithm) for token in source.secrets for url in others]):
            return
        raise SignatureError("X-Twilio-Signature does not match (check public_url and the auth token)")

    def normalize(self, request: RawRequest, source: SourceConfig) -> list[Incoming]:
        kind = request.require_media_type(*self.content_types)
        if kind == "application/json":
            body = request.json()
            if isinstance(body, list):
                return self._cloud_events(body, source)
            if not isinstance(body, dict):
                raise MalformedError("a Twilio JSON body is an object or a list of CloudEvents")
            form = {str(k): str(v) for k, v in body.items() if v is not None}
        else:
            form = request.form()
        sid = form.get("MessageSid") or form.get("SmsSid") or form.get("SmsMessageSid")
        if not sid:
            raise MalformedError("no MessageSid: not a Twilio messaging webhook")
        word = (form.get("MessageStatus") or form.get("SmsStatus") or "").lower()
        sender, recipient = form.get("From", ""), form.get("To", "")
        channel = "whatsapp" if sender.startswith("whatsapp:") or recipient.startswith("whatsapp:") else "sms"
        ours = dict(parse_qsl(request.query)).get(MESSAGE_ID_PARAM) if MESSAGE_ID_PARAM in request.query else None
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
        found = known_meaning(self.name, word, f"unknown Twilio MessageStatus {word!r}")
        if found.type is None:
            return []
        data: dict[str, object] = {"status": word}
        if found.type == "message.failed":
            code = form.get("ErrorCode") or word
            data.update(reason=code, error_message=form.get("ErrorMessage"),
                        permanent=bool(found.permanent) and code not in TEMPORARY_ERRORS)
        return [Incoming(type=found.type, provider_event_id=f"{sid}:{word}", channel=channel,
                         contact=ContactRef(phone=recipient.removeprefix("whatsapp:") or None),
                         provider_message_id=sid, message_id=ours, status=word, data=MappingProxyType(data))]

    def _cloud_events(self, events: list[object], source: SourceConfig) -> list[Incoming]:
        """Event Streams deliveries (CloudEvents): message status events; others are acknowledged only."""
        if len(events) > source.max_batch:
            raise MalformedError(f"{len(events)} events in one request; the limit is {source.max_batch}")
        out = []
        for event in events:
            if not isinstance(event, dict):
                raise MalformedError("an Event Streams body is a list of objects")
            kind = str(event.get("type", ""))
            data = event.get("data") if isinstance(event.get("data"), dict) else {}
            if not kind.startswith("com.twilio.messaging.message.") or not isinstance(data, dict):
                continue
            word = kind.rsplit(".", 1)[-1].lower()
            found = meaning(self.name, word)
            sid = data.get("messageSid") or data.get("MessageSid")
            if found is None or found.type is None or not isinstance(sid, str):
                continue
            phone = str(data.get("to") or "").removeprefix("whatsapp:") or None
            out.append(Incoming(type=found.type, provider_event_id=f"{sid}:{word}", channel="sms",
                                contact=ContactRef(phone=phone), provider_message_id=sid, status=word,
                                data=MappingProxyType({"status": word})))
        return out

    def reply(self, request: RawRequest, items: list[Incoming]) -> Reply:
        # An empty TwiML answer: no auto-reply from Twilio on our behalf.
        return _TWIML_REPLY


PROVIDER = TwilioProvider()
