"""Send-time policy: quiet hours and frequency caps for marketing sends.

Checked inside the job, right before the call, in the contact's own time zone. A send
that falls in quiet hours or over the cap is deferred to the next allowed time, never
dropped. Transactional sends obey neither (a payment reminder at 21:05 is still owed);
suppression is checked for every send, elsewhere.
"""

from __future__ import annotations

from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError


def _zone(name: str | None, fallback: str) -> ZoneInfo:
    for candidate in (name, fallback, "UTC"):
        if candidate:
            try:
                return ZoneInfo(candidate)
            except (ZoneInfoNotFoundError, ValueError):
                continue
    return ZoneInfo("UTC")


def _clock(text: str) -> time:
    hours, minutes = text.split(":")
    return time(int(hours), int(minutes))


def quiet_until(now: datetime, quiet: tuple[str, str] | None, timezone: str | None,
                default_timezone: str = "UTC") -> datetime | None:
    """None when *now* is outside quiet hours there; else when they end (in UTC)."""
    if quiet is None:
        return None
    zone = _zone(timezone, default_timezone)
    local = now.astimezone(zone)
    start, end = _clock(quiet[0]), _clock(quiet[1])
    t = local.time()
    if start < end:
        inside = start <= t < end
        end_day = local.date()
    else:  # overnight, like 21:00-08:00
        inside = t >= start or t < end
        end_day = local.date() + timedelta(days=1) if t >= start else local.date()
    if not inside:
        return None
    # A wall-clock time that does not exist (a DST gap) resolves forward, as zoneinfo does.
    ends = datetime.combine(end_day, end, tzinfo=zone)
    return ends.astimezone(now.tzinfo)


def cap_until(now: datetime, sent_at: list[datetime], cap: tuple[int, int] | None) -> datetime | None:
    """None when another send fits in the cap; else when the oldest send in the window leaves it."""
    if cap is None:
        return None
    limit, per_ms = cap
    window = timedelta(milliseconds=per_ms)
    recent = sorted(t for t in sent_at if now - t < window)
    if len(recent) < limit:
        return None
    return recent[len(recent) - limit] + window
