"""Actions: what journeys do in the outside world (send, call, suppress, emit).

Import-light on purpose: the registry of names is all the journey language needs.
"""

from actions.registry import BUILTIN_ACTIONS, ENTRY_POINT_GROUP, is_known, known_action_names

__all__ = ["BUILTIN_ACTIONS", "ENTRY_POINT_GROUP", "is_known", "known_action_names"]
