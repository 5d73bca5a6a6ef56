"""Console: the channel of local runs. Prints one line per message to stdout and records it.

Nothing leaves the machine; the message's provider id is our own id, so statuses posted by
hand (or by tests) can refer to it.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from actions.base import Sent

if TYPE_CHECKING:
    from actions.base import ActionContext
    from actions.channels import Draft
    from journeys.config import ChannelConfig


def _one_line(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n").replace("\n", "\\n")


def console_line(draft: Draft) -> str:
    """``[console] sms to +4915112345678: body`` (email: ``... : [subject] body``), on one line."""
    body = _one_line(draft.body)
    if draft.subject is not None:
        body = f"[{_one_line(draft.subject)}] {body}"
    return f"[console] {draft.channel} to {draft.to}: {body}"


class ConsoleProvider:
    name: str = "console"

    async def send(self, ctx: ActionContext, channel: ChannelConfig, draft: Draft) -> Sent:
        sys.stdout.write(console_line(draft) + "\n")
        sys.stdout.flush()
        return Sent(channel=draft.channel, provider=self.name, provider_message_id=ctx.message_id,
                    to=draft.to, body=draft.body)


__all__ = ["ConsoleProvider", "console_line"]
