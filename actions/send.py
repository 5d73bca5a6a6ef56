"""``send_sms``, ``send_whatsapp``, ``send_email``: one message to the contact on a channel.

Inputs (already rendered by the executor): ``to`` (default: the contact's phone, or email
for ``send_email``), ``body`` or ``template`` (a file under ``templates/<channel>/``, picked
by ``locale``, else the contact's locale, else the default), ``subject`` and ``reply_to``
for email. The channel's provider comes from ``channels.<channel>`` of config.yaml; a
channel that is not configured prints to the console. The message body is kept in the
outcome only when ``policies.store_message_bodies`` is on.
"""

from __future__ import annotations

import dataclasses
from types import MappingProxyType
from typing import Any

import phonenumbers

from actions.base import ActionContext, ActionError, Outcome
from actions.channels import CHANNEL_PROVIDERS, Draft
from actions.registry import SEND_CHANNELS
from journeys.config import ChannelConfig
from journeys.errors import ExpressionError

_PHONE_CHANNELS = ("sms", "whatsapp")


def _text(value: Any) -> str | None:
    """A rendered input as a string, or None when absent or blank."""
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def phone_number(raw: str) -> str:
    """*raw* in E.164; a value that cannot be a phone number is a permanent error."""
    text = raw.strip().removeprefix("whatsapp:").removeprefix("tel:")
    try:
        number = phonenumbers.parse(text, None)
    except phonenumbers.NumberParseException:
        number = None
    if number is None or not phonenumbers.is_possible_number(number):
        raise ActionError(f"{raw!r} is not a phone number in international format (+4915112345678)",
                          transient=False)
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def email_address(raw: str) -> str:
    text = raw.strip()
    if "@" not in text or any(c in text for c in "\r\n") or len(text) > 320:
        raise ActionError(f"{raw!r} is not an email address", transient=False)
    return text


class SendAction:
    """Sends on one channel; the three send actions differ only in *channel*."""

    name: str
    channel: str

    def __init__(self, name: str, channel: str) -> None:
        self.name = name
        self.channel = channel

    def __repr__(self) -> str:
        return f"SendAction({self.name!r}, {self.channel!r})"

    @property
    def _contact_field(self) -> str:
        return "phone" if self.channel in _PHONE_CHANNELS else "email"

    def recipient(self, ctx: ActionContext) -> str:
        given = _text(ctx.inputs.get("to"))
        if given is None and ctx.contact is not None:
            given = _text(getattr(ctx.contact, self._contact_field))
        if given is None:
            who = ctx.contact.id if ctx.contact is not None else "(none)"
            raise ActionError(f"no {self._contact_field} for contact {who}", transient=False)
        return phone_number(given) if self.channel in _PHONE_CHANNELS else email_address(given)

    def content(self, ctx: ActionContext) -> tuple[str, bool]:
        """The body and whether it is HTML: ``body`` as given, or the rendered ``template``."""
        body = ctx.inputs.get("body")
        if body is not None and str(body) != "":
            return str(body), False
        name = _text(ctx.inputs.get("template"))
        if name is None:
            raise ActionError(f"{self.name} needs a body or a template", transient=False)
        locale = _text(ctx.inputs.get("locale")) or (ctx.contact.locale if ctx.contact is not None else None)
        path = ctx.templates.find(self.channel, name, locale)
        if path is None:
            raise ActionError(f"no template {name!r} for {self.channel} (looked in {ctx.templates.root})",
                              transient=False)
        scope = {
            "contact": ctx.contact.scope() if ctx.contact is not None else None,
            "vars": ctx.vars,
            "journey": {"id": ctx.journey},
            "now": ctx.now,
        }
        try:
            text = ctx.templates.render(self.channel, name, scope, locale)
        except ExpressionError as exc:
            raise ActionError(f"template {path.name}: {exc}", transient=False) from exc
        return text, path.suffix == ".html"

    def draft(self, ctx: ActionContext) -> Draft:
        to = self.recipient(ctx)
        body, html = self.content(ctx)
        if not body.strip():
            raise ActionError(f"{self.name}: the message body is empty", transient=False)
        subject = reply_to = None
        if self.channel == "email":
            subject = " ".join(str(ctx.inputs.get("subject") or "").split())
            if not subject:
                raise ActionError("send_email needs a subject", transient=False)
            reply = _text(ctx.inputs.get("reply_to"))
            reply_to = email_address(reply) if reply else None
        return Draft(channel=self.channel, to=to, body=body, subject=subject, html=html, reply_to=reply_to)

    def channel_config(self, ctx: ActionContext) -> ChannelConfig:
        found = ctx.config.channels.get(self.channel)
        if found is not None:
            return found
        return ChannelConfig(self.channel, "console", MappingProxyType({"provider": "console"}))

    async def run(self, ctx: ActionContext) -> Outcome:
        draft = self.draft(ctx)
        channel = self.channel_config(ctx)
        provider = CHANNEL_PROVIDERS.get(channel.provider)
        if provider is None:
            known = ", ".join(sorted(CHANNEL_PROVIDERS))
            raise ActionError(f"channel {channel.name} has provider {channel.provider!r}, which journeys cannot "
                              f"send with (known: {known})", transient=False)
        sent = await provider.send(ctx, channel, draft)
        body = draft.body if ctx.config.policies.store_message_bodies else None
        sent = dataclasses.replace(sent, body=body)
        return Outcome(detail=f"{self.channel} sent via {sent.provider} ({sent.provider_message_id})", sent=sent)


SEND_ACTIONS: list[SendAction] = [SendAction(name, channel) for name, channel in SEND_CHANNELS.items()]

__all__ = ["SEND_ACTIONS", "SendAction", "email_address", "phone_number"]
