"""SendGrid Mail Send v3: email.

``POST {api_base}/v3/mail/send`` with ``Authorization: Bearer <api_key>`` and a JSON body:
one personalization to the recipient, our message id in ``custom_args``
(``journeys_message_id``, which SendGrid repeats on every event webhook of the message),
``from`` (``"Billing <billing@example.com>"`` gives a name), ``subject`` and one content
part, ``text/html`` or ``text/plain``. SendGrid answers 202 with the message's id in the
``X-Message-Id`` header; a refusal is ``{"errors": [{"message", "field", "help"}]}``.
"""

from __future__ import annotations

from email.utils import parseaddr
from typing import TYPE_CHECKING, Any

import httpx

from actions.base import ActionError, Sent
from actions.channels import (
    api_base,
    headers_for,
    http_failure,
    json_body,
    only_channels,
    setting,
    text_snippet,
    timeout_of,
    transport_failure,
)
from ingest.providers.sendgrid import MESSAGE_ID_ARG

if TYPE_CHECKING:
    from actions.base import ActionContext
    from actions.channels import Draft
    from journeys.config import ChannelConfig

DEFAULT_API_BASE = "https://api.sendgrid.com"


def address(value: str, what: str) -> dict[str, str]:
    """``{"email": ..., "name": ...}`` from ``a@b.c`` or ``Name <a@b.c>``."""
    name, email = parseaddr(value)
    if not email or "@" not in email:
        raise ActionError(f"{what} {value!r} is not an email address", transient=False)
    return {"email": email, "name": name} if name else {"email": email}


def _error_detail(response: httpx.Response) -> str:
    data = json_body(response)
    errors = data.get("errors") if isinstance(data, dict) else None
    if isinstance(errors, list) and errors:
        parts = []
        for error in errors:
            if not isinstance(error, dict):
                continue
            text = str(error.get("message") or "")
            if error.get("field"):
                text = f"{error['field']}: {text}"
            parts.append(text)
        if parts:
            return "; ".join(parts)
    return text_snippet(response)


class SendGridProvider:
    name: str = "sendgrid"

    async def send(self, ctx: ActionContext, channel: ChannelConfig, draft: Draft) -> Sent:
        only_channels(self.name, channel, draft, ("email",))
        api_key = setting(channel, "api_key")
        payload: dict[str, Any] = {
            "personalizations": [{"to": [address(draft.to, "recipient")]}],
            "from": address(setting(channel, "from"), f"channels.{channel.name}.from"),
            "subject": draft.subject or "",
            "content": [{"type": "text/html" if draft.html else "text/plain", "value": draft.body}],
            "custom_args": {MESSAGE_ID_ARG: ctx.message_id},
        }
        if draft.reply_to:
            payload["reply_to"] = address(draft.reply_to, "reply_to")
        url = f"{api_base(channel, DEFAULT_API_BASE)}/v3/mail/send"
        try:
            response = await ctx.http.post(
                url,
                json=payload,
                headers=headers_for(ctx, {"Authorization": f"Bearer {api_key}", "Accept": "application/json"}),
                timeout=timeout_of(ctx, channel),
            )
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise transport_failure(self.name, url, exc) from exc
        if not response.is_success:
            raise http_failure(self.name, response, _error_detail(response))
        # Accepted: never raise from here on, or a retry would send the message twice.
        message_id = response.headers.get("x-message-id") or None
        return Sent(channel=draft.channel, provider=self.name, provider_message_id=message_id,
                    to=draft.to, body=draft.body)


__all__ = ["SendGridProvider", "address"]
