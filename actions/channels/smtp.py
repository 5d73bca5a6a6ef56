"""SMTP: email through any mail server, with the standard library in a worker thread.

Settings: ``host``, ``port`` (default 587 with STARTTLS, 25 without; 465 is implicit TLS),
``starttls`` (default: true on port 587), ``username`` / ``password`` (AUTH after TLS),
``from`` (``"Billing <billing@example.com>"`` gives a display name), ``timeout``.

The message carries our id in its ``Message-ID`` (``<message_id@from-domain>``) and in
``X-Journeys-Message-Id``, so bounces and replies can be tied to it. SMTP reply codes
decide what happens next: 4xx and connection problems are transient, 5xx permanent.
The code goes into the reason, not into ``ActionError.status``, which holds HTTP statuses.
"""

from __future__ import annotations

import asyncio
import contextlib
import smtplib
import ssl
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate, parseaddr
from typing import TYPE_CHECKING

from actions.base import ActionError, Sent
from actions.channels import only_channels, optional_setting, setting, timeout_of

if TYPE_CHECKING:
    from actions.base import ActionContext
    from actions.channels import Draft
    from journeys.config import ChannelConfig


@dataclass(frozen=True)
class Server:
    host: str
    port: int
    tls: str  # "starttls" | "ssl" | "none"
    username: str | None
    password: str | None
    timeout: float


def server_of(ctx: ActionContext, channel: ChannelConfig) -> Server:
    host = setting(channel, "host")
    starttls_setting = channel.settings.get("starttls")
    raw_port = channel.settings.get("port")
    if raw_port is None:
        port = 25 if starttls_setting is False else 587
    else:
        try:
            port = int(raw_port)
        except (TypeError, ValueError):
            raise ActionError(f"channel {channel.name}: port {raw_port!r} is not a number", transient=False) from None
    if port == 465:
        tls = "ssl"
    elif starttls_setting is None:
        tls = "starttls" if port == 587 else "none"
    else:
        tls = "starttls" if starttls_setting else "none"
    return Server(host, port, tls, optional_setting(channel, "username"), optional_setting(channel, "password"),
                  timeout_of(ctx, channel))


def build_message(ctx: ActionContext, channel: ChannelConfig, draft: Draft) -> tuple[EmailMessage, str]:
    """The message and its envelope sender."""
    sender = setting(channel, "from")
    envelope_from = parseaddr(sender)[1]
    if "@" not in envelope_from:
        raise ActionError(f"channels.{channel.name}.from {sender!r} is not an email address", transient=False)
    if "@" not in parseaddr(draft.to)[1]:
        raise ActionError(f"recipient {draft.to!r} is not an email address", transient=False)
    domain = envelope_from.rpartition("@")[2]
    message = EmailMessage()
    try:
        message["From"] = sender
        message["To"] = draft.to
        message["Subject"] = draft.subject or ""
        if draft.reply_to:
            message["Reply-To"] = draft.reply_to
        message["Date"] = formatdate(usegmt=True)
        message["Message-ID"] = f"<{ctx.message_id}@{domain}>"
        message["X-Journeys-Message-Id"] = ctx.message_id
        message.set_content(draft.body, subtype="html" if draft.html else "plain")
    except ValueError as exc:  # a header with a line break, an undecodable address...
        raise ActionError(f"cannot build the email: {exc}", transient=False) from exc
    return message, envelope_from


def _classify(code: int, text: str) -> ActionError:
    if 400 <= code < 500:
        return ActionError(f"smtp: the server deferred the message ({code} {text})", transient=True)
    if 500 <= code < 600:
        return ActionError(f"smtp: the server refused the message ({code} {text})", transient=False)
    return ActionError(f"connection: smtp server answered {code} {text}", transient=True)


def _decode(value: bytes | str) -> str:
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    return " ".join(text.split())


def failure(exc: Exception, server: Server) -> ActionError:
    """The ActionError for what smtplib raised: 4xx and connection problems are transient, 5xx permanent."""
    where = f"{server.host}:{server.port}"
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        for code, text in exc.recipients.values():
            return _classify(code, _decode(text))
        return ActionError("smtp: every recipient was refused", transient=False)
    if isinstance(exc, smtplib.SMTPResponseException):
        return _classify(exc.smtp_code, _decode(exc.smtp_error))
    if isinstance(exc, smtplib.SMTPServerDisconnected):
        if isinstance(exc.__context__, TimeoutError):  # smtplib wraps a read timeout in "disconnected"
            return ActionError(f"timeout: smtp server {where} did not answer within {server.timeout:g}s",
                               transient=True)
        return ActionError(f"connection: smtp server {where} closed the connection ({exc})", transient=True)
    if isinstance(exc, smtplib.SMTPException):  # STARTTLS or AUTH not offered, no usable AUTH method...
        return ActionError(f"smtp: {exc} (server {where}; check the channel's settings)", transient=False)
    if isinstance(exc, TimeoutError):
        return ActionError(f"timeout: smtp server {where} did not answer within {server.timeout:g}s",
                           transient=True)
    if isinstance(exc, OSError):
        return ActionError(f"connection: smtp server {where} could not be reached ({exc})", transient=True)
    raise exc


def deliver(server: Server, message: EmailMessage, envelope_from: str, recipient: str) -> None:
    """Send one message (blocking). Raises what smtplib raises."""
    smtp: smtplib.SMTP
    if server.tls == "ssl":
        smtp = smtplib.SMTP_SSL(server.host, server.port, timeout=server.timeout,
                                context=ssl.create_default_context())
    else:
        smtp = smtplib.SMTP(server.host, server.port, timeout=server.timeout)
    try:
        smtp.ehlo()
        if server.tls == "starttls":
            smtp.starttls(context=ssl.create_default_context())
            smtp.ehlo()
        if server.username:
            smtp.login(server.username, server.password or "")
        smtp.send_message(message, from_addr=envelope_from, to_addrs=[recipient])
        # Accepted: a failing QUIT must not turn into a retry (and a second copy).
        with contextlib.suppress(smtplib.SMTPException, OSError):
            smtp.quit()
    finally:
        smtp.close()


class SmtpProvider:
    name: str = "smtp"

    async def send(self, ctx: ActionContext, channel: ChannelConfig, draft: Draft) -> Sent:
        only_channels(self.name, channel, draft, ("email",))
        server = server_of(ctx, channel)
        message, envelope_from = build_message(ctx, channel, draft)
        recipient = parseaddr(draft.to)[1]
        try:
            await asyncio.to_thread(deliver, server, message, envelope_from, recipient)
        except (smtplib.SMTPException, OSError) as exc:
            raise failure(exc, server) from exc
        return Sent(channel=draft.channel, provider=self.name, provider_message_id=str(message["Message-ID"]),
                    to=draft.to, body=draft.body)


__all__ = ["SmtpProvider", "build_message", "deliver", "failure", "server_of"]
