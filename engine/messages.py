"""The order of one message's statuses.

``sent`` < ``delivered`` < ``read``; ``failed`` ends the message. A status that does not
move the message forward (a late ``sent`` after ``delivered``, anything after ``failed``)
is kept in the log but reaches no journey. Engagement (``opened``, ``clicked``) and
replies are outside the order and always pass.
"""

from __future__ import annotations

from typing import NamedTuple

from engine.events import STATUS_OF_TYPE

# queued: we created it, the provider has not reported yet
_RANK = {None: 0, "queued": 0, "deferred": 1, "sent": 2, "delivered": 3, "read": 4}


class Progress(NamedTuple):
    """A NamedTuple: made for every status event the interpreter sees (a frozen dataclass is
    several times slower to build)."""

    forward: bool
    status: str | None  # the message's status after this event
    reason: str = ""


def advance(current: str | None, event_type: str) -> Progress:
    """Whether *event_type* moves a message whose status is *current* forward."""
    new = STATUS_OF_TYPE.get(event_type)
    if new is None:
        return Progress(True, current)  # not a status: engagement, replies, anything else
    if current == "failed":
        return Progress(False, current, f"{event_type} after the message failed")
    if new == "failed":
        return Progress(True, "failed")
    if _RANK[new] <= _RANK.get(current, 0):
        return Progress(False, current, f"{event_type} does not move the message past {current!r}")
    return Progress(True, new)
