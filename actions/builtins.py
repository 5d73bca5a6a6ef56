"""The actions that change journeys' own state: suppress, unsuppress, set_contact, emit.

They return what should change; the executor writes it with the job's status.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

from actions.base import Action, ActionContext, ActionError, Outcome

CHANNELS = ("sms", "email", "whatsapp", "push", "voice")


def _channels(value: Any) -> tuple[str, ...]:
    if value in (None, "all"):
        return CHANNELS
    if isinstance(value, (list, tuple)) and all(c in CHANNELS for c in value):
        return tuple(value)
    raise ActionError(f"channels must be all or a list of {', '.join(CHANNELS)}, not {value!r}", transient=False)


class Suppress:
    name = "suppress"

    async def run(self, ctx: ActionContext) -> Outcome:
        channels = _channels(ctx.inputs.get("channels"))
        return Outcome(detail=f"suppressed {', '.join(channels)}", suppress=channels)


class Unsuppress:
    name = "unsuppress"

    async def run(self, ctx: ActionContext) -> Outcome:
        channels = _channels(ctx.inputs.get("channels"))
        return Outcome(detail=f"unsuppressed {', '.join(channels)}", unsuppress=channels)


class SetContact:
    name = "set_contact"

    async def run(self, ctx: ActionContext) -> Outcome:
        attributes = ctx.inputs.get("attributes")
        if not isinstance(attributes, dict) or not attributes:
            raise ActionError("set_contact needs attributes (a mapping)", transient=False)
        return Outcome(detail=f"set {', '.join(sorted(attributes))}", attributes=MappingProxyType(dict(attributes)))


class Emit:
    name = "emit"

    async def run(self, ctx: ActionContext) -> Outcome:
        kind = ctx.inputs.get("type")
        data = ctx.inputs.get("data", {})
        if not isinstance(kind, str) or not isinstance(data, dict):
            raise ActionError("emit needs a type and a data mapping", transient=False)
        return Outcome(detail=f"emitted {kind}", emit=((kind, MappingProxyType(dict(data))),))


STATE_ACTIONS: list[Action] = [Suppress(), Unsuppress(), SetContact(), Emit()]
