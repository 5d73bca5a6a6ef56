"""The providers journeys understands, by the name used in config.yaml (``provider:``)."""

from __future__ import annotations

from ingest.providers import events, mailgun, sendgrid, telnyx, twilio, vonage, whatsapp
from ingest.providers.base import Provider

PROVIDERS: dict[str, Provider] = {
    "events": events.PROVIDER,
    "twilio": twilio.PROVIDER,
    "sendgrid": sendgrid.PROVIDER,
    "mailgun": mailgun.PROVIDER,
    "telnyx": telnyx.PROVIDER,
    "whatsapp": whatsapp.PROVIDER,
    "vonage": vonage.PROVIDER,
}


def get(name: str) -> Provider:
    try:
        return PROVIDERS[name]
    except KeyError:
        raise KeyError(f"no provider {name!r}; known: {', '.join(sorted(PROVIDERS))}") from None


__all__ = ["PROVIDERS", "Provider", "get"]
