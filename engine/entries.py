"""Entering a state, as one generated function per way in.

A journey is a fixed graph. For each way into a state (a start, a transition, a timer, an
exit with ``to``) the compiler knows the source and target, the actions and their inputs,
the timers and whether the target is final. :func:`entry` writes that one entry out as
straight-line Python, with the names, reasons and policies as constants. A decision that
moves an instance then makes one call, instead of walking the compiled tables and
building its tuples field by field in a loop.

The interpreter still decides *whether* and *where* to go (guards, exits, stale events);
an entry only builds what going there produces, as the journey language orders it:

- the source's timers are cancelled (none for a start);
- ``do`` actions come first, then the target's ``enter`` actions, with idempotency keys
  counting on across both;
- the target's timers are set, unless it is final;
- a final target completes the instance.

Ids have the shapes of :func:`engine.interpreter.action_key` and ``timer_id``; the
property tests compare them.

The generated source holds ``repr()`` of names and texts from the journey and names
bound in its namespace; what an event or a contact carries is only ever a value at run
time, never code.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from engine.decision import Decision, ScheduledAction, Step, TimerSet
from engine.events import Event
from engine.instance import Contact, Instance
from journeys.model import State

if TYPE_CHECKING:
    from engine.compiled import CompiledAction

# (instance before entering, event, now, contact, the event ids it remembers after this one,
#  the steps taken before entering) -> the Decision
Entry = Callable[[Instance, Event, datetime, Contact | None, tuple[str, ...], tuple[Step, ...]], Decision]

NO_CONTACT: Mapping[str, Any] = MappingProxyType({})


def base_scope(journey_view: Mapping[str, Any], event: Event, contact: Contact | None,
               now: datetime) -> dict[str, Any]:
    """What every expression sees: ``event``, ``contact``, ``journey`` and ``now`` (the
    interpreter adds ``vars`` and ``instance``, and so does an entry for its actions' inputs)."""
    return {"event": event.view, "contact": NO_CONTACT if contact is None else contact.view,
            "journey": journey_view, "now": now}

# The instance's fields are read by position; the positions come from Instance itself.
_AT = {name: index for index, name in enumerate(Instance._fields)}


def _field(name: str) -> str:
    return f"instance[{_AT[name]}]"


def entry(
    *,
    journey_view: Mapping[str, Any],
    priority: str,
    instance_in_scope: bool,
    kind: str,
    source: State | None,
    target: State,
    do: tuple[CompiledAction, ...],
    enter: tuple[CompiledAction, ...],
    outcome: str,
    reason: str,
) -> Entry:
    """The function that enters *target* from *source* (None: a start) with *do* then *enter*.

    *kind* is the Step kind of the entry (started, transition, exited); *outcome* and
    *reason* are the Decision's. The scope of the inputs' templates has ``instance`` when
    *instance_in_scope*."""
    bound: dict[str, Any] = {
        "__builtins__": {}, "_new": tuple.__new__, "_Step": Step, "_Action": ScheduledAction, "_Timer": TimerSet,
        "_Instance": Instance, "_Decision": Decision, "_base_scope": base_scope, "_journey": journey_view,
    }

    def bind(value: Any) -> str:
        name = f"_k{len(bound)}"
        bound[name] = value
        return name

    name = repr(target.name)
    lines = [
        "def _enter(instance, event, now, contact, recent, steps):",
        f"    iid = {_field('id')}",
        f"    seq = {_field('seq')} + 1",
    ]
    if source is not None and source.after:
        # timer_id() of each timer the source set on its own entry (seq - 1)
        ids = ", ".join(f'f"{{iid}}:{{seq - 1}}:t{index}"' for index in range(len(source.after)))
        lines.append(f"    cancelled = ({ids},)")
    else:
        lines.append("    cancelled = ()")

    actions = do + enter
    if any(action.render is not None for action in actions):
        lines.append("    scope = _base_scope(_journey, event, contact, now)")
        lines.append(f"    scope['vars'] = {_field('vars')}")
        if instance_in_scope:
            # what the inputs' templates see: the instance as it is once it has entered the target
            lines.append(f"    scope['instance'] = instance.scope({name}, now)")
    scheduled = []
    for index, action in enumerate(actions):
        inputs = bind(action.constant) if action.render is None else f"{bind(action.render)}(scope)"
        scheduled.append(
            f'_new(_Action, (f"{{iid}}:{{seq}}:{index}", {action.call.action!r}, iid, {name}, seq, {index}, '
            f"{inputs}, {bind(action.call.retry)}, {priority!r}))"
        )
    lines.append(f"    actions = ({''.join(s + ', ' for s in scheduled)})")

    if target.after and not target.final:
        timers = [
            f'_new(_Timer, (f"{{iid}}:{{seq}}:t{index}", iid, now + {bind(timedelta(milliseconds=t.delay_ms))}, '
            f"{name}, seq, {index}, {t.text!r}))"
            for index, t in enumerate(target.after)
        ]
        lines.append(f"    timers = ({''.join(t + ', ' for t in timers)})")
    else:
        lines.append("    timers = ()")

    from_state = repr(source.name) if source is not None else "None"
    step = f"_new(_Step, ({kind!r}, now, event.id, event.type, {from_state}, {name}, None))"
    if target.final:
        completed = f"_new(_Step, ('completed', now, event.id, event.type, None, {name}, None))"
        lines.append(f"    steps = (*steps, {step}, {completed})")
        status, ended_at = "'completed'", "now"
    else:
        lines.append(f"    steps = (*steps, {step})")
        status, ended_at = _field("status"), _field("ended_at")
    # the new instance, field by field in Instance's order
    fields = {name_: _field(name_) for name_ in Instance._fields}
    fields.update(id="iid", state=name, status=status, entered_at="now", seq="seq", ended_at=ended_at,
                  recent_events="recent")
    lines.append(f"    entered = _new(_Instance, ({', '.join(fields[f] for f in Instance._fields)}))")
    lines.append(f"    return _new(_Decision, ({outcome!r}, {reason!r}, entered, steps, actions, timers, cancelled))")
    exec(compile("\n".join(lines) + "\n", f"<entry into {target.name}>", "exec"), bound)
    function: Entry = bound["_enter"]
    return function
