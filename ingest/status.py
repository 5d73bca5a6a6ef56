"""The one status taxonomy: every provider's delivery and engagement words, in canonical types.

Providers name the same things differently (Twilio ``undelivered``, SendGrid ``bounce``,
Vonage ``undeliverable``). This table is the only place that knows; normalizers look
words up here and nowhere else. A word that maps to None is progress inside the
provider (``queued``, ``sending``): acknowledged, counted, not stored as an event.
"""

from __future__ import annotations

from dataclasses import dataclass

from ingest.errors import MalformedError


@dataclass(frozen=True)
class Meaning:
    type: str | None  # the canonical event type, or None for provider-internal progress
    permanent: bool | None = None  # for message.failed: will retrying the same message help?


SENT = Meaning("message.sent")
DELIVERED = Meaning("message.delivered")
READ = Meaning("message.read")
DEFERRED = Meaning("message.deferred")
FAILED = Meaning("message.failed", permanent=True)
FAILED_TEMPORARY = Meaning("message.failed", permanent=False)
OPENED = Meaning("message.opened")
CLICKED = Meaning("message.clicked")
RECEIVED = Meaning("message.received")
OPTED_OUT = Meaning("contact.opted_out")
OPTED_IN = Meaning("contact.opted_in")
COMPLAINED = Meaning("contact.complained")
PROGRESS = Meaning(None)

TAXONOMY: dict[str, dict[str, Meaning]] = {
    "twilio": {
        "accepted": PROGRESS, "scheduled": PROGRESS, "queued": PROGRESS, "sending": PROGRESS,
        "receiving": PROGRESS, "sent": SENT, "delivered": DELIVERED, "read": READ,
        "partially_delivered": DELIVERED, "undelivered": FAILED, "failed": FAILED, "canceled": FAILED,
        "received": RECEIVED,
    },
    "sendgrid": {
        "processed": SENT, "delivered": DELIVERED, "deferred": DEFERRED, "bounce": FAILED,
        "blocked": FAILED_TEMPORARY,
        "dropped": FAILED, "open": OPENED, "click": CLICKED, "spamreport": COMPLAINED,
        "unsubscribe": OPTED_OUT, "group_unsubscribe": OPTED_OUT, "group_resubscribe": OPTED_IN,
    },
    "mailgun": {
        "accepted": SENT, "delivered": DELIVERED, "failed:permanent": FAILED,
        # Mailgun retries a temporary failure itself: the message is deferred, not failed
        "failed:temporary": DEFERRED, "rejected": FAILED, "opened": OPENED, "clicked": CLICKED,
        "unsubscribed": OPTED_OUT, "complained": COMPLAINED, "stored": PROGRESS, "list_member_uploaded": PROGRESS,
    },
    "telnyx": {
        "queued": PROGRESS, "sending": PROGRESS, "sent": SENT, "delivered": DELIVERED,
        "delivery_failed": FAILED, "sending_failed": FAILED, "delivery_unconfirmed": PROGRESS,
        "expired": FAILED, "received": RECEIVED,
    },
    "whatsapp": {
        "sent": SENT, "delivered": DELIVERED, "read": READ, "failed": FAILED, "deleted": PROGRESS,
        "warning": PROGRESS,
    },
    "vonage": {
        "submitted": SENT, "delivered": DELIVERED, "read": READ, "rejected": FAILED_TEMPORARY,
        "undeliverable": FAILED_TEMPORARY, "failed": FAILED, "expired": FAILED,
    },
}


def meaning(provider: str, word: str) -> Meaning | None:
    """The canonical meaning of *word* from *provider*; None when the word is unknown."""
    return TAXONOMY.get(provider, {}).get(word.strip().lower())


def known_meaning(provider: str, word: str, unknown: str) -> Meaning:
    """:func:`meaning`, for a payload that must use a known word: an unknown one is a
    MalformedError saying *unknown*."""
    found = meaning(provider, word)
    if found is None:
        raise MalformedError(unknown)
    return found
