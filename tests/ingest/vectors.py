"""Turn the provider vector files into requests and source configs our providers take."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

from ingest.request import RawRequest
from journeys.config import SourceConfig

FOLDER = Path(__file__).resolve().parent / "vectors"
PROVIDERS = ["events", "twilio", "sendgrid", "mailgun", "telnyx", "whatsapp", "vonage"]


def load(provider: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FOLDER / f"{provider}.json").read_text())
    return data


def _lower(headers: dict[str, str] | None) -> dict[str, str]:
    return {k.lower(): v for k, v in (headers or {}).items()}


def signed_at(headers: dict[str, str], body: str, fallback: int | None = None) -> datetime:
    """The time the request was signed at: our clock pretends to be then (tolerance checks)."""
    for name in ("webhook-timestamp", "telnyx-timestamp", "x-twilio-email-event-webhook-timestamp"):
        if name in headers and headers[name].isdigit():
            return datetime.fromtimestamp(int(headers[name]), tz=UTC)
    auth = headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        import jwt

        claims = jwt.decode(auth[7:], options={"verify_signature": False})
        if "iat" in claims:
            return datetime.fromtimestamp(int(claims["iat"]), tz=UTC)
    try:
        stamp = json.loads(body)["signature"]["timestamp"]
        return datetime.fromtimestamp(int(stamp), tz=UTC)
    except (ValueError, KeyError, TypeError):
        pass
    return datetime.fromtimestamp(fallback, tz=UTC) if fallback else datetime.now(UTC)


def request(body: str | bytes, headers: dict[str, str] | None, content_type: str, *, url: str = "",
            at: datetime | None = None) -> RawRequest:
    raw = body.encode() if isinstance(body, str) else body
    hdrs = _lower(headers)
    hdrs.setdefault("content-type", content_type)
    query = urlsplit(url).query if url else ""
    return RawRequest(method="POST", path="/ingest/x", query=query, headers=hdrs, body=raw,
                      received_at=at or signed_at(hdrs, raw.decode("utf-8", "replace")))


def source(provider: str, item: dict[str, Any], url: str = "") -> SourceConfig:
    """A source configured with the item's secret or public key (and its URL for Twilio)."""
    signed = item.get("signed_with", item)
    secrets = tuple(s for s in [signed.get("secret")] if s)
    keys = tuple(k for k in [signed.get("public_key")] if k)
    public_url = url.split("?", 1)[0] if url else None
    return SourceConfig(name=provider, provider=provider, secrets=secrets, public_keys=keys,
                        verify_token=item.get("verify_token"), public_url=public_url, max_batch=1000)


def twilio_vector_request(vector: dict[str, Any]) -> RawRequest:
    if vector.get("content_type") == "application/json":
        body = vector["body"]
    else:
        body = urlencode([tuple(p) for p in vector.get("params", [])])
    return request(body, vector["headers"], vector.get("content_type", "application/x-www-form-urlencoded"),
                   url=vector["url"], at=datetime.now(UTC))
