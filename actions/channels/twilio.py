"""Twilio Programmable Messaging: SMS and WhatsApp through the Messages API.

``POST {api_base}/2010-04-01/Accounts/{account_sid}/Messages.json`` with HTTP basic auth
(account SID, auth token) and form fields ``To``, ``From`` (or ``MessagingServiceSid``),
``Body`` and ``StatusCallback``. WhatsApp numbers carry the ``whatsapp:`` prefix on ``To``
and ``From``. The StatusCallback is the status source's ``public_url`` plus our message id
(``?message_id=...``), which is how the ingest side ties Twilio's callbacks to our message.

Twilio answers 201 with the message resource (``sid`` is its id); a refusal is JSON with
``code`` (21610: unsubscribed recipient, 21211: invalid ``To``, 21408: region not enabled
...) and ``message``, which go into the error's reason.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import urlencode

import httpx

from actions.base import Sent
from actions.channels import (
    api_base,
    headers_for,
    http_failure,
    json_body,
    only_channels,
    optional_setting,
    setting,
    text_snippet,
    timeout_of,
    transport_failure,
)
from ingest.providers.twilio import MESSAGE_ID_PARAM

if TYPE_CHECKING:
    from actions.base import ActionContext
    from actions.channels import Draft
    from journeys.config import ChannelConfig

DEFAULT_API_BASE = "https://api.twilio.com"
WHATSAPP_PREFIX = "whatsapp:"


def _address(channel: str, value: str) -> str:
    if channel == "whatsapp" and not value.startswith(WHATSAPP_PREFIX):
        return WHATSAPP_PREFIX + value
    return value


def status_callback(ctx: ActionContext, channel: ChannelConfig) -> str | None:
    """The StatusCallback URL: the status source's public URL with our message id, if there is one."""
    source_name = optional_setting(channel, "status_source")
    if source_name is None:
        return None
    source = ctx.config.sources.get(source_name)
    base = (source.public_url if source is not None else None) or ctx.public_urls.get(source_name)
    if not base:
        return None
    separator = "&" if "?" in base else "?"
    return f"{base}{separator}{urlencode({MESSAGE_ID_PARAM: ctx.message_id})}"


def _error_detail(response: httpx.Response) -> str:
    data = json_body(response)
    if isinstance(data, dict) and ("code" in data or "message" in data):
        parts = []
        if data.get("code") is not None:
            parts.append(f"error {data['code']}")
        if data.get("message"):
            parts.append(str(data["message"]))
        detail = ": ".join(parts)
        if data.get("more_info"):
            detail += f" ({data['more_info']})"
        return detail
    return text_snippet(response)


class TwilioProvider:
    name: str = "twilio"

    async def send(self, ctx: ActionContext, channel: ChannelConfig, draft: Draft) -> Sent:
        only_channels(self.name, channel, draft, ("sms", "whatsapp"))
        account_sid = setting(channel, "account_sid")
        auth_token = setting(channel, "auth_token")
        form: dict[str, str] = {"To": _address(draft.channel, draft.to)}
        service = optional_setting(channel, "messaging_service_sid")
        if service is not None:
            form["MessagingServiceSid"] = service
        else:
            form["From"] = _address(draft.channel, setting(channel, "from"))
        form["Body"] = draft.body
        callback = status_callback(ctx, channel)
        if callback is not None:
            form["StatusCallback"] = callback
        url = f"{api_base(channel, DEFAULT_API_BASE)}/2010-04-01/Accounts/{account_sid}/Messages.json"
        try:
            response = await ctx.http.post(
                url,
                data=form,
                auth=httpx.BasicAuth(account_sid, auth_token),
                headers=headers_for(ctx, {"Accept": "application/json"}),
                timeout=timeout_of(ctx, channel),
            )
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise transport_failure(self.name, url, exc) from exc
        if not response.is_success:
            raise http_failure(self.name, response, _error_detail(response))
        # Accepted: never raise from here on, or a retry would send the message twice.
        data = json_body(response)
        sid = data.get("sid") if isinstance(data, dict) else None
        return Sent(channel=draft.channel, provider=self.name,
                    provider_message_id=sid if isinstance(sid, str) and sid else None,
                    to=draft.to, body=draft.body)


__all__ = ["TwilioProvider", "status_callback"]
