"""The providers journeys understands, by the name used in config.yaml (``provider:``)."""

from __future__ import annotations

from ingest.providers import events, twilio
from ingest.providers.base import Provider

PROVIDERS: dict[str, Provider] = {
    "events": events.PROVIDER,
    "twilio": twilio.PROVIDER,
}


def get(name: str) -> Provider:
    try:
        return PROVIDERS[name]
    except KeyError:
        raise KeyError(f"no provider {name!r}; known: {', '.join(sorted(PROVIDERS))}") from None


__all__ = ["PROVIDERS", "Provider", "get"]
