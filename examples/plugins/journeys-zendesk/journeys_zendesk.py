"""``zendesk_ticket``: open a Zendesk ticket for the contact (an example of an action plugin).

Inputs (``with:``): ``subdomain``, ``subject``, ``comment``, optional ``priority``. The API token
comes from the environment (ZENDESK_EMAIL, ZENDESK_TOKEN), never from the journey file. The
job's idempotency key goes out as ``Idempotency-Key``, so a retried job opens one ticket.
"""

from __future__ import annotations

import os

import httpx

from actions.base import ActionContext, ActionError, Outcome


class ZendeskTicket:
    name = "zendesk_ticket"

    async def run(self, ctx: ActionContext) -> Outcome:
        subdomain = ctx.inputs.get("subdomain")
        if not isinstance(subdomain, str) or not subdomain.isalnum():
            raise ActionError("zendesk_ticket needs the Zendesk subdomain (letters and digits)", transient=False)
        email, token = os.environ.get("ZENDESK_EMAIL"), os.environ.get("ZENDESK_TOKEN")
        if not email or not token:
            raise ActionError("ZENDESK_EMAIL and ZENDESK_TOKEN must be set", transient=False)
        body = {"ticket": {
            "subject": str(ctx.inputs.get("subject", "journeys")),
            "comment": {"body": str(ctx.inputs.get("comment", ""))},
            "priority": ctx.inputs.get("priority", "normal"),
            "requester": {"email": ctx.contact.email} if ctx.contact and ctx.contact.email else None,
        }}
        try:
            response = await ctx.http.post(
                f"https://{subdomain}.zendesk.com/api/v2/tickets.json", json=body, auth=(f"{email}/token", token),
                headers={"Idempotency-Key": ctx.job_id}, timeout=ctx.timeout)
        except httpx.TimeoutException as exc:
            raise ActionError(f"timeout: {exc}", transient=True) from exc
        except httpx.TransportError as exc:
            raise ActionError(f"connection: {exc}", transient=True) from exc
        if response.status_code in (429,) or response.status_code >= 500:
            retry = response.headers.get("retry-after")
            raise ActionError(f"Zendesk answered {response.status_code}", transient=True, status=response.status_code,
                              retry_after=float(retry) if retry and retry.isdigit() else None)
        if response.status_code >= 300:
            raise ActionError(f"Zendesk refused: {response.status_code} {response.text[:200]}", transient=False,
                              status=response.status_code)
        ticket = response.json().get("ticket", {})
        return Outcome(detail=f"ticket {ticket.get('id')}", result={"ticket_id": ticket.get("id")})
