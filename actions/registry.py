"""Which actions exist: the built-ins and the plugins of the ``journeys.actions`` entry point group.

The journey language asks this module whether an action name is known; it must stay cheap
to import (no HTTP clients, no provider SDKs) because ``journeys validate`` runs it on
every file. Plugins are listed from package metadata without importing their code.
"""

from __future__ import annotations

from functools import cache
from importlib.metadata import EntryPoint, entry_points
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from actions.base import Action

ENTRY_POINT_GROUP = "journeys.actions"

# The actions of the journey language. Their inputs are described in
# the journey schema's $defs (with_<name>); tests keep the two lists equal.
BUILTIN_ACTIONS: tuple[str, ...] = (
    "send_sms",
    "send_email",
    "send_whatsapp",
    "http",
    "suppress",
    "unsuppress",
    "set_contact",
    "emit",
)

# Actions that send a message on a channel, and which channel.
SEND_CHANNELS: dict[str, str] = {"send_sms": "sms", "send_email": "email", "send_whatsapp": "whatsapp"}


@cache
def plugin_entry_points() -> dict[str, EntryPoint]:
    """Installed plugin actions by name; a plugin may not take a built-in's name."""
    found: dict[str, EntryPoint] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name not in BUILTIN_ACTIONS:
            found.setdefault(ep.name, ep)
    return found


def known_action_names() -> list[str]:
    """Every action a journey may name, built-ins first."""
    return [*BUILTIN_ACTIONS, *sorted(plugin_entry_points())]


def is_known(name: str) -> bool:
    return name in BUILTIN_ACTIONS or name in plugin_entry_points()


@cache
def _builtins() -> dict[str, Action]:
    # Imported here: validating journeys must not pay for HTTP clients and channel code.
    from actions.builtins import STATE_ACTIONS
    from actions.http import HTTP_ACTION
    from actions.send import SEND_ACTIONS

    members: list[Action] = [*SEND_ACTIONS, HTTP_ACTION, *STATE_ACTIONS]
    return {a.name: a for a in members}


def implementation(name: str) -> Action:
    """The action to run for *name*: a built-in, or the plugin's object (loaded on first use)."""
    found = _builtins().get(name)
    if found is not None:
        return found
    entry = plugin_entry_points().get(name)
    if entry is None:
        known = ", ".join(known_action_names())
        raise KeyError(f"no action {name!r}; known: {known}")
    plugin = entry.load()
    obj: Action = plugin() if isinstance(plugin, type) else plugin
    return obj
