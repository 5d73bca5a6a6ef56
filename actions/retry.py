"""Retry policies: when to try again, and whether a failure is worth it.

Backoff is ``initial * factor**(attempt-1)``, capped at ``max``, with jitter: ``full``
(uniform in [0, delay]), ``equal`` (delay/2 + uniform in [0, delay/2]) or ``none``. A
Retry-After from the other side is honoured when it is longer. The random source is
passed in, so tests (and replays) get the same schedule from the same seed.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime

from actions.base import ActionError
from journeys.model import RetryPolicy


def backoff(policy: RetryPolicy, attempt: int, rng: random.Random, retry_after: float | None = None) -> timedelta:
    """The wait before attempt *attempt* + 1 (attempts count from 1)."""
    delay_ms = min(policy.max_ms, policy.initial_ms * policy.factor ** max(0, attempt - 1))
    if policy.jitter == "full":
        delay_ms = rng.uniform(0, delay_ms)
    elif policy.jitter == "equal":
        delay_ms = delay_ms / 2 + rng.uniform(0, delay_ms / 2)
    if retry_after is not None:
        delay_ms = max(delay_ms, retry_after * 1000)
    return timedelta(milliseconds=delay_ms)


def is_transient(error: ActionError, policy: RetryPolicy) -> bool:
    """Whether *error* is one the policy's ``retry_on`` retries; anything else is permanent."""
    if not error.transient:
        return False
    kinds = set(policy.retry_on)
    if error.status is None:
        kind = "timeout" if error.reason.startswith("timeout") else "connection"
        return kind in kinds
    return error.status in kinds or f"{error.status // 100}xx" in kinds


def retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delay-seconds or an HTTP date), or None."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if seconds == seconds and seconds != float("inf") else None
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    current = now or datetime.now(UTC)
    if current.tzinfo is None:
        current = current.replace(tzinfo=UTC)
    return max(0.0, (when - current).total_seconds())
