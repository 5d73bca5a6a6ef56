"""Retry schedules (deterministic with a seeded random source), classification, quiet hours, caps."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from actions.base import ActionError
from actions.policy import cap_until, quiet_until
from actions.retry import backoff, is_transient
from journeys.model import RetryPolicy

PATIENT = RetryPolicy(max_attempts=6, initial_ms=2_000, factor=2, max_ms=15 * 60_000, jitter="none")


def test_exponential_backoff_without_jitter() -> None:
    rng = random.Random(1)
    waits = [backoff(PATIENT, n, rng).total_seconds() for n in range(1, 12)]
    assert waits[:6] == [2, 4, 8, 16, 32, 64]
    assert waits[-1] == 900  # capped at max


def test_jitter_is_seeded_and_bounded() -> None:
    full = RetryPolicy(initial_ms=1_000, factor=3, max_ms=60_000, jitter="full")
    equal = RetryPolicy(initial_ms=1_000, factor=3, max_ms=60_000, jitter="equal")
    a = [backoff(full, n, random.Random(7)).total_seconds() for n in range(1, 6)]
    b = [backoff(full, n, random.Random(7)).total_seconds() for n in range(1, 6)]
    assert a == b
    for n in range(1, 6):
        cap = min(60, 3 ** (n - 1))
        assert 0 <= backoff(full, n, random.Random(n)).total_seconds() <= cap
        assert cap / 2 <= backoff(equal, n, random.Random(n)).total_seconds() <= cap


def test_retry_after_wins_when_longer() -> None:
    assert backoff(PATIENT, 1, random.Random(0), retry_after=30).total_seconds() == 30
    assert backoff(PATIENT, 5, random.Random(0), retry_after=1).total_seconds() == 32


@pytest.mark.parametrize(("error", "transient"), [
    (ActionError("timeout after 10 s", transient=True), True),
    (ActionError("connection: refused", transient=True), True),
    (ActionError("busy", transient=True, status=503), True),
    (ActionError("slow down", transient=True, status=429), True),
    (ActionError("request timeout", transient=True, status=408), True),
    (ActionError("bad request", transient=False, status=400), False),
    (ActionError("gone", transient=True, status=410), False),  # not in retry_on: permanent
])
def test_classification_by_default_retry_on(error: ActionError, transient: bool) -> None:
    assert is_transient(error, RetryPolicy()) is transient


def test_a_narrower_retry_on() -> None:
    only_5xx = RetryPolicy(retry_on=("5xx",))
    assert is_transient(ActionError("x", transient=True, status=502), only_5xx)
    assert not is_transient(ActionError("x", transient=True, status=429), only_5xx)
    assert not is_transient(ActionError("timeout", transient=True), only_5xx)


QUIET = ("21:00", "08:00")


@pytest.mark.parametrize(("utc", "zone", "until"), [
    # Berlin is UTC+1 in January: 21:30 local is quiet until 08:00 local = 07:00 UTC
    ("2026-01-05T20:30:00", "Europe/Berlin", "2026-01-06T07:00:00"),
    ("2026-01-05T10:00:00", "Europe/Berlin", None),
    # just after midnight local: quiet until 08:00 the same day
    ("2026-01-05T23:30:00", "Europe/Berlin", "2026-01-06T07:00:00"),
    # New York (UTC-5): 06:00 UTC is 01:00 local
    ("2026-01-05T06:00:00", "America/New_York", "2026-01-05T13:00:00"),
    # the night the clocks go forward in Berlin (29 March 2026): 08:00 is then UTC+2
    ("2026-03-28T22:00:00", "Europe/Berlin", "2026-03-29T06:00:00"),
    # and back (25 October 2026): 08:00 is UTC+1 again
    ("2026-10-24T21:00:00", "Europe/Berlin", "2026-10-25T07:00:00"),
    # an unknown zone falls back to the default (UTC)
    ("2026-01-05T22:00:00", "Mars/Olympus", "2026-01-06T08:00:00"),
])
def test_quiet_hours_in_the_contacts_zone(utc: str, zone: str, until: str | None) -> None:
    now = datetime.fromisoformat(utc).replace(tzinfo=UTC)
    found = quiet_until(now, QUIET, zone)
    expected = None if until is None else datetime.fromisoformat(until).replace(tzinfo=UTC)
    assert found == expected


def test_daytime_quiet_hours_and_none() -> None:
    now = datetime(2026, 1, 5, 12, 30, tzinfo=UTC)
    assert quiet_until(now, ("12:00", "13:00"), "UTC") == datetime(2026, 1, 5, 13, 0, tzinfo=UTC)
    assert quiet_until(now, None, "UTC") is None


def test_frequency_cap() -> None:
    now = datetime(2026, 1, 5, 12, tzinfo=UTC)
    sent = [now - timedelta(hours=h) for h in (1, 5, 20, 30)]
    # 3 per day: three sends in the last 24 h, so the next waits until the oldest of them is a day old
    assert cap_until(now, sent, (3, 86_400_000)) == now - timedelta(hours=20) + timedelta(days=1)
    assert cap_until(now, sent, (4, 86_400_000)) is None
    assert cap_until(now, sent, None) is None
