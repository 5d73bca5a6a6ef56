"""What every provider module offers, and helpers they share (constant-time compare, clocks)."""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from ingest.errors import MalformedError, SignatureError
from ingest.incoming import Incoming
from ingest.request import RawRequest
from journeys.config import SourceConfig


@dataclass(frozen=True)
class Reply:
    status: int = 200
    body: bytes = b'{"ok":true}'
    media_type: str = "application/json"


class Provider(Protocol):
    """One provider's dialect. ``verify`` raises SignatureError; ``normalize`` MalformedError."""

    name: str
    content_types: tuple[str, ...]

    def verify(self, request: RawRequest, source: SourceConfig) -> None: ...

    def normalize(self, request: RawRequest, source: SourceConfig) -> list[Incoming]: ...

    def reply(self, request: RawRequest, items: list[Incoming]) -> Reply: ...


def equal(a: str | bytes, b: str | bytes) -> bool:
    """Constant-time comparison: a signature check must not leak how much of it matched."""
    left = a.encode() if isinstance(a, str) else a
    right = b.encode() if isinstance(b, str) else b
    return hmac.compare_digest(left, right)


def any_equal(given: Iterable[str | bytes], expected: Iterable[str | bytes]) -> bool:
    wanted = list(expected)
    # every pair is compared, so the time does not say which secret matched
    return sum(equal(g, e) for g in given for e in wanted) > 0


def require(value: str | None, what: str) -> str:
    if not value:
        raise SignatureError(f"missing {what}")
    return value


def decode_signature(given: str, what: str) -> bytes:
    """The bytes of a base64 signature header; anything else is a forged or mangled request."""
    try:
        return base64.b64decode(given, validate=True)
    except (ValueError, binascii.Error) as exc:
        raise SignatureError(f"the {what} is not base64") from exc


def check_timestamp(raw: str, now: datetime, tolerance_ms: int, what: str = "timestamp") -> int:
    """Seconds since the epoch from *raw*; refused when too old or too far in the future."""
    try:
        seconds = int(raw.strip())
    except ValueError as exc:
        raise SignatureError(f"the {what} {raw!r} is not a number of seconds") from exc
    drift = abs(now.timestamp() - seconds) * 1000
    if drift > tolerance_ms:
        raise SignatureError(f"the {what} is {drift / 1000:.0f} s away from now (tolerance "
                             f"{tolerance_ms / 1000:.0f} s): a stale or replayed request")
    return seconds


def as_object(value: Any) -> dict[str, Any]:
    """*value* when it is a JSON object, else an empty one: payloads leave out what they like."""
    return value if isinstance(value, dict) else {}


def objects(value: Any) -> list[dict[str, Any]]:
    """The JSON objects in *value* when it is a list, else none."""
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def parse_time(value: object, what: str) -> datetime | None:
    """A provider's time: ISO 8601 text or epoch seconds; None when absent."""
    if value is None or value == "":
        return None
    try:
        if isinstance(value, (int, float)) or (isinstance(value, str) and value.replace(".", "", 1).isdigit()):
            return datetime.fromtimestamp(float(value), tz=UTC)
        if isinstance(value, str):
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
            return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    except (ValueError, OverflowError, OSError) as exc:
        raise MalformedError(f"{what} {value!r} is not a time") from exc
    raise MalformedError(f"{what} {value!r} is not a time")
