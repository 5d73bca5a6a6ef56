"""Recognise credentials pasted into files that live in git."""

from __future__ import annotations

import re

# Shapes of well-known credentials; each must stand as a whole word.
_SHAPES = [
    (re.compile(r"SG\.[\w-]{16,}\.[\w-]{16,}"), "a SendGrid API key"),
    (re.compile(r"whsec_[A-Za-z0-9+/=]{16,}"), "a Standard Webhooks secret"),
    (re.compile(r"(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{16,}"), "an API secret key"),
    (re.compile(r"key-[0-9a-f]{32}"), "a Mailgun key"),
    (re.compile(r"xox[abprs]-[A-Za-z0-9-]{10,}"), "a Slack token"),
    (re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"), "a private key"),
    (re.compile(r"KEY[0-9A-F]{20,}_[A-Za-z0-9]{16,}"), "a Telnyx API key"),
    (re.compile(r"gh[pousr]_[A-Za-z0-9]{30,}"), "a GitHub token"),
    (re.compile(r"AKIA[0-9A-Z]{16}"), "an AWS access key"),
]
_BOUNDARY = r"(?<![A-Za-z0-9_])(?:{})(?![A-Za-z0-9_])"
SHAPES = [(re.compile(_BOUNDARY.format(p.pattern)), what) for p, what in _SHAPES]


def looks_like_secret(value: str) -> str | None:
    """What kind of credential *value* contains, or None."""
    for pattern, what in SHAPES:
        if pattern.search(value):
            return what
    return None
