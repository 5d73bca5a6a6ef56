"""A journey compiled for the interpreter: tables by state and event type, compiled
expressions and templates, parsed timers. Built once per journey version, then shared.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from types import MappingProxyType
from typing import Any

from engine.entries import Entry, entry
from engine.sandbox import Expression, Value, compile_expression, compile_value
from journeys.model import ActionCall, Journey, State, Timer

# Action inputs that are names or fixed words, never templates.
_LITERAL_INPUTS = frozenset({"template", "method", "channels"})


def _compile_inputs(value: Any, top: bool = True) -> Any:
    if isinstance(value, Mapping):
        return {
            k: v if top and k in _LITERAL_INPUTS else _compile_inputs(v, top=False) for k, v in value.items()
        }
    if isinstance(value, tuple):
        return [_compile_inputs(v, top=False) for v in value]
    if isinstance(value, str):
        return compile_value(value)
    return value


def _renderer(inputs: Mapping[str, Any]) -> Callable[[Mapping[str, Any]], Mapping[str, Any]] | None:
    """One generated function that renders every template in *inputs* in a scope and returns
    the read-only result: no walk over the structure on every decision. None when *inputs*
    hold no template. The generated code holds only dict and list displays, ``repr`` of keys
    and names bound below."""
    bound: dict[str, Any] = {"__builtins__": {}, "_proxy": MappingProxyType}
    templates = 0

    def display(value: Any) -> str:
        nonlocal templates
        if isinstance(value, Value):
            templates += 1
            name = f"_v{len(bound)}"
            bound[name] = value.run
            return f"{name}(s)"
        if isinstance(value, dict):
            return "{" + ", ".join(f"{str(k)!r}: {display(v)}" for k, v in value.items()) + "}"
        if isinstance(value, list):
            return "[" + ", ".join(display(v) for v in value) + "]"
        name = f"_c{len(bound)}"
        bound[name] = value
        return name

    code = f"def _render(s):\n    return _proxy({display(dict(inputs))})\n"
    if not templates:
        return None
    exec(compile(code, "<action inputs>", "exec"), bound)
    render: Callable[[Mapping[str, Any]], Mapping[str, Any]] = bound["_render"]
    return render


@dataclass(frozen=True)
class CompiledAction:
    call: ActionCall
    inputs: Mapping[str, Any]  # the inputs with every template compiled (Value)
    # The inputs themselves when no template is in them: rendered once, shared by every
    # decision (read-only; the runtime and simulator copy what they keep).
    constant: Mapping[str, Any] | None = None
    # Otherwise: renders them in a scope (see _renderer).
    render: Callable[[Mapping[str, Any]], Mapping[str, Any]] | None = None


@dataclass(frozen=True)
class CompiledTransition:
    to: str
    guard: Expression | None
    do: tuple[CompiledAction, ...]
    enter: Entry  # enters ``to`` from the state this transition belongs to


@dataclass(frozen=True)
class CompiledTimer:
    index: int
    timer: Timer
    do: tuple[CompiledAction, ...]
    enter: Entry  # enters the timer's ``to`` from the state that set it


@dataclass(frozen=True)
class CompiledState:
    state: State
    enter: tuple[CompiledAction, ...]
    on: Mapping[str, tuple[CompiledTransition, ...]]
    timers: tuple[CompiledTimer, ...]


@dataclass(frozen=True)
class Guarded:
    """A trigger or an exit rule: on an event type, when a guard holds."""

    on: str
    guard: Expression | None
    to: str | None = None
    # An exit with ``to``: its entry from each state it can leave (every state but the final ones).
    enter: Mapping[str, Entry] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True)
class CompiledJourney:
    journey: Journey
    triggers: Mapping[str, tuple[Guarded, ...]]
    exits: Mapping[str, tuple[Guarded, ...]]
    states: Mapping[str, CompiledState]
    vars: tuple[tuple[str, Value | Any], ...]
    subject: Expression | None
    goal_guard: Expression | None
    # what expressions see as ``journey``
    view: Mapping[str, Any]
    # the journey's own, copied here: the interpreter reads them on every decision
    id: str
    version: int
    goal_within: timedelta
    # event type of a trigger -> the entry into the initial state that it starts
    starts: Mapping[str, Entry]
    # Whether scopes carry ``instance``: only when some text of the journey names it (see _names)
    instance_in_scope: bool = True

    def listens_to(self, event_type: str) -> bool:
        return event_type in self.triggers


def _guard(source: str | None) -> Expression | None:
    return None if source is None else compile_expression(source)


def _action(call: ActionCall) -> CompiledAction:
    inputs = _compile_inputs(call.inputs)
    render = _renderer(inputs)
    if render is not None:
        return CompiledAction(call, inputs, render=render)
    return CompiledAction(call, inputs, constant=MappingProxyType(inputs))


def _actions(calls: tuple[ActionCall, ...]) -> tuple[CompiledAction, ...]:
    return tuple(_action(c) for c in calls)


def _names(value: Any, word: str) -> bool:
    """Whether *word* appears as a whole word in any text of *value* (a journey's to_dict()).

    Conservative on purpose: a state or a description that says "instance" only costs a
    scope entry nobody reads; a scope entry left out that an expression reads would fail it."""
    if isinstance(value, str):
        return re.search(rf"\b{re.escape(word)}\b", value) is not None
    if isinstance(value, Mapping):
        return any(_names(k, word) or _names(v, word) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(_names(v, word) for v in value)
    return False


def _by_type(items: list[Guarded]) -> dict[str, tuple[Guarded, ...]]:
    table: dict[str, list[Guarded]] = {}
    for item in items:
        table.setdefault(item.on, []).append(item)
    return {k: tuple(v) for k, v in table.items()}


def compile_journey(journey: Journey) -> CompiledJourney:
    view = MappingProxyType({"id": journey.id, "version": journey.version})
    # Building ``instance`` for every scope costs a dict per decision; most journeys never read it.
    instance_in_scope = _names(journey.to_dict(), "instance")
    model = journey.states
    enters = {name: _actions(state.enter) for name, state in model.items()}

    def way_in(source: State | None, to: str, do: tuple[CompiledAction, ...], kind: str, outcome: str | None,
               reason: str) -> Entry:
        target = model[to]
        return entry(journey_view=view, priority=journey.priority, instance_in_scope=instance_in_scope,
                     kind=kind, source=source, target=target, do=do, enter=enters[to],
                     outcome=outcome or ("ended" if target.final else "transitioned"), reason=reason)

    states = {}
    for name, state in model.items():
        on = {}
        for event, transitions in state.on.items():
            on[event] = tuple(
                CompiledTransition(t.to, _guard(t.when), do := _actions(t.do),
                                   way_in(state, t.to, do, "transition", None, f"{event}: {name} -> {t.to}"))
                for t in transitions)
        timers = tuple(
            CompiledTimer(i, t, do := _actions(t.do),
                          way_in(state, t.to, do, "transition", None, f"after {t.text}: {name} -> {t.to}"))
            for i, t in enumerate(state.after))
        states[name] = CompiledState(state=state, enter=enters[name], on=on, timers=timers)
    live = [state for state in model.values() if not state.final]
    exits = [
        Guarded(e.on, _guard(e.when), e.to, MappingProxyType({} if e.to is None else {
            s.name: way_in(s, e.to, (), "exited", "ended", f"exit on {e.on} to {e.to}") for s in live}))
        for e in journey.exit
    ]
    triggers = _by_type([Guarded(t.on, _guard(t.when)) for t in journey.triggers])
    subject = journey.subject
    return CompiledJourney(
        journey=journey,
        triggers=triggers,
        exits=_by_type(exits),
        states=states,
        vars=tuple((k, compile_value(v) if isinstance(v, str) else v) for k, v in journey.vars.items()),
        subject=None if subject in ("contact", "conversation") else compile_expression(subject),
        goal_guard=None if journey.goal is None else _guard(journey.goal.when),
        view=view,
        id=journey.id,
        version=journey.version,
        goal_within=timedelta(milliseconds=journey.goal.within_ms if journey.goal is not None else 0),
        starts=MappingProxyType({
            on: way_in(None, journey.initial, (), "started", "started", f"started by {on}") for on in triggers}),
        instance_in_scope=instance_in_scope,
    )
