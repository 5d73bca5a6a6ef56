"""Event types the language knows: the canonical ones that ingest and the engine produce.

Types in the reserved namespaces (``message.``, ``contact.``, ``action.``, ``timer.``) come
only from providers and the engine, so a journey that names one that does not exist is
waiting for something that can never happen. Business events (``invoice.paid``) are free.
"""

from __future__ import annotations

import difflib

CANONICAL_TYPES: tuple[str, ...] = (
    "message.sent",
    "message.delivered",
    "message.read",
    "message.deferred",
    "message.failed",
    "message.opened",
    "message.clicked",
    "message.received",
    "contact.opted_out",
    "contact.opted_in",
    "contact.complained",
    "action.failed",
)
RESERVED_PREFIXES: tuple[str, ...] = ("message.", "contact.", "action.", "timer.")
TIMER_FIRED = "timer.fired"


def is_reserved(event_type: str) -> bool:
    return event_type.startswith(RESERVED_PREFIXES)


def unknown_reserved(event_type: str) -> str | None:
    """A reason when *event_type* is in a reserved namespace but is not a canonical type."""
    if not is_reserved(event_type) or event_type in CANONICAL_TYPES:
        return None
    if event_type.startswith("timer."):
        return f"{event_type!r} is internal to the engine: use after: for timers"
    close = difflib.get_close_matches(event_type, CANONICAL_TYPES, n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    prefix = event_type.split(".", 1)[0]
    known = ", ".join(t for t in CANONICAL_TYPES if t.startswith(prefix + "."))
    return f"unknown event type {event_type!r}{hint}: {prefix}.* events are produced by journeys itself ({known})"
