"""A journey compiled for the interpreter: tables by state and event type, compiled
expressions and templates, parsed timers. Built once per journey version, then shared.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from types import MappingProxyType
from typing import Any

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


@dataclass(frozen=True)
class CompiledTimer:
    index: int
    timer: Timer
    do: tuple[CompiledAction, ...]
    delay: timedelta


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


def _by_type(items: list[Guarded]) -> dict[str, tuple[Guarded, ...]]:
    table: dict[str, list[Guarded]] = {}
    for item in items:
        table.setdefault(item.on, []).append(item)
    return {k: tuple(v) for k, v in table.items()}


def compile_journey(journey: Journey) -> CompiledJourney:
    states = {}
    for name, state in journey.states.items():
        states[name] = CompiledState(
            state=state,
            enter=_actions(state.enter),
            on={
                event: tuple(CompiledTransition(t.to, _guard(t.when), _actions(t.do)) for t in transitions)
                for event, transitions in state.on.items()
            },
            timers=tuple(CompiledTimer(i, t, _actions(t.do), timedelta(milliseconds=t.delay_ms))
                         for i, t in enumerate(state.after)),
        )
    subject = journey.subject
    return CompiledJourney(
        journey=journey,
        triggers=_by_type([Guarded(t.on, _guard(t.when)) for t in journey.triggers]),
        exits=_by_type([Guarded(e.on, _guard(e.when), e.to) for e in journey.exit]),
        states=states,
        vars=tuple((k, compile_value(v) if isinstance(v, str) else v) for k, v in journey.vars.items()),
        subject=None if subject in ("contact", "conversation") else compile_expression(subject),
        goal_guard=None if journey.goal is None else _guard(journey.goal.when),
        view=MappingProxyType({"id": journey.id, "version": journey.version}),
        id=journey.id,
        version=journey.version,
        goal_within=timedelta(milliseconds=journey.goal.within_ms if journey.goal is not None else 0),
    )
