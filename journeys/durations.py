"""Durations as journeys write them: ``500ms``, ``30s``, ``15m``, ``24h``, ``7d``, ``2w``, ``1h30m``.

A duration is always written with units, largest first, each unit at most once, so
that ``1:30`` or ``90`` (which YAML 1.1 would read as numbers) are refused instead of
being guessed at.
"""

from __future__ import annotations

import re
from datetime import timedelta

_UNITS_MS = {"w": 604_800_000, "d": 86_400_000, "h": 3_600_000, "m": 60_000, "s": 1_000, "ms": 1}
_ORDER = ["w", "d", "h", "m", "s", "ms"]
_PART = re.compile(r"(\d+)(ms|w|d|h|m|s)")
PATTERN = r"^(?=\d)(?:\d+w)?(?:\d+d)?(?:\d+h)?(?:\d+m(?!s))?(?:\d+s)?(?:\d+ms)?$"
_FULL = re.compile(PATTERN)


class DurationSyntaxError(ValueError):
    """The text is not a duration; the message says how to write one."""


def parse_ms(text: str) -> int:
    """Milliseconds in *text*; raises :class:`DurationSyntaxError` with a readable reason."""
    if not isinstance(text, str):
        raise DurationSyntaxError(f"{text!r} is not a duration: write it with a unit, like 30s, 15m or 24h")
    value = text.strip()
    if not value or not _FULL.match(value):
        raise DurationSyntaxError(
            f"{text!r} is not a duration: use whole numbers with units w, d, h, m, s, ms, "
            "largest first (500ms, 30s, 15m, 24h, 7d, 2w, 1h30m)"
        )
    return sum(int(n) * _UNITS_MS[unit] for n, unit in _PART.findall(value))


def parse(text: str) -> timedelta:
    return timedelta(milliseconds=parse_ms(text))


def format_ms(ms: int) -> str:
    """The shortest canonical spelling of *ms* (``5400000`` -> ``1h30m``)."""
    if ms == 0:
        return "0s"
    out = []
    for unit in _ORDER:
        n, ms = divmod(ms, _UNITS_MS[unit])
        if n:
            out.append(f"{n}{unit}")
    return "".join(out)
