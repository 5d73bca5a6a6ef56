"""How ``send_*`` actions leave: one provider per ``channels.<name>.provider`` of config.yaml.

A provider gets a :class:`Draft` (the recipient, the rendered body, for email a subject)
and the channel's settings (secrets already resolved), sends it once, and returns the
:class:`~actions.base.Sent` record with the provider's message id; or raises
:class:`~actions.base.ActionError`, transient (timeouts, connection errors, 408, 429
honouring Retry-After, 5xx) or permanent (anything else the provider refused).

A provider never retries by itself: the executor owns retries, so that every attempt is
one job attempt on the timeline.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import httpx

from actions.base import ActionContext, ActionError, Sent
from actions.retry import retry_after
from journeys.config import ChannelConfig
from journeys.durations import parse_ms


@dataclass(frozen=True)
class Draft:
    """One message ready to go: *to* is an E.164 phone (sms, whatsapp) or an email address."""

    channel: str
    to: str
    body: str
    subject: str | None = None
    html: bool = False
    reply_to: str | None = None


class ChannelProvider(Protocol):
    name: str

    async def send(self, ctx: ActionContext, channel: ChannelConfig, draft: Draft) -> Sent: ...


# --- helpers shared by the providers -------------------------------------------------------------


def setting(channel: ChannelConfig, key: str) -> str:
    """A required string setting of *channel*; its absence is a permanent configuration error."""
    value = channel.settings.get(key)
    if value is None or value == "":
        raise ActionError(f"channel {channel.name} ({channel.provider}) has no {key} in config.yaml",
                          transient=False)
    return str(value)


def optional_setting(channel: ChannelConfig, key: str) -> str | None:
    value = channel.settings.get(key)
    return None if value is None or value == "" else str(value)


def timeout_of(ctx: ActionContext, channel: ChannelConfig) -> float:
    """Seconds this attempt may take: the job's timeout, shortened by the channel's ``timeout``."""
    limit = ctx.timeout
    configured = channel.settings.get("timeout")
    if isinstance(configured, str) and configured:
        with contextlib.suppress(ValueError):  # the loader already refused a bad duration
            limit = min(limit, parse_ms(configured) / 1000)
    elif isinstance(configured, (int, float)) and not isinstance(configured, bool) and configured > 0:
        limit = min(limit, float(configured))
    return limit


def api_base(channel: ChannelConfig, default: str) -> str:
    return (optional_setting(channel, "api_base") or default).rstrip("/")


def only_channels(provider: str, channel: ChannelConfig, draft: Draft, allowed: tuple[str, ...]) -> None:
    if draft.channel not in allowed:
        raise ActionError(f"channel {channel.name} uses provider {provider}, which cannot send "
                          f"{draft.channel} (it sends {', '.join(allowed)})", transient=False)


def is_transient_status(status: int) -> bool:
    return status in (408, 429) or status >= 500


def http_failure(provider: str, response: httpx.Response, detail: str) -> ActionError:
    """The ActionError for a refused request: 408, 429 (with Retry-After) and 5xx are transient."""
    status = response.status_code
    transient = is_transient_status(status)
    wait = retry_after(response.headers.get("retry-after")) if status in (429, 503) else None
    what = "temporarily refused" if transient else "refused"
    reason = f"{provider} {what} the message (HTTP {status})"
    if detail:
        reason += f": {detail}"
    return ActionError(reason, transient=transient, retry_after=wait, status=status)


def transport_failure(provider: str, url: str, exc: httpx.HTTPError | httpx.InvalidURL) -> ActionError:
    """The ActionError for a request that got no answer: timeouts and connection errors are transient."""
    if isinstance(exc, httpx.TimeoutException):
        return ActionError(f"timeout: {provider} did not answer in time ({type(exc).__name__} on {url})",
                           transient=True)
    if isinstance(exc, (httpx.UnsupportedProtocol, httpx.LocalProtocolError, httpx.InvalidURL)):
        return ActionError(f"{provider}: cannot call {url}: {exc} (check api_base)", transient=False)
    return ActionError(f"connection: {provider} at {url} could not be reached ({type(exc).__name__}: {exc})",
                       transient=True)


def json_body(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def text_snippet(response: httpx.Response, limit: int = 200) -> str:
    text = " ".join(response.text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def headers_for(ctx: ActionContext, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Headers of every provider call: the job's idempotency key travels along."""
    headers = {"Idempotency-Key": ctx.job_id, "User-Agent": "journeys"}
    if extra:
        headers.update(extra)
    return headers


# --- the registry --------------------------------------------------------------------------------
# Imported last: the providers use the helpers above.

from actions.channels.console import ConsoleProvider  # noqa: E402
from actions.channels.sendgrid import SendGridProvider  # noqa: E402
from actions.channels.smtp import SmtpProvider  # noqa: E402
from actions.channels.twilio import TwilioProvider  # noqa: E402

CHANNEL_PROVIDERS: dict[str, ChannelProvider] = {
    "twilio": TwilioProvider(),
    "sendgrid": SendGridProvider(),
    "smtp": SmtpProvider(),
    "console": ConsoleProvider(),
}

__all__ = ["CHANNEL_PROVIDERS", "ChannelProvider", "Draft"]
