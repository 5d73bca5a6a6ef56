"""The pure core: given a journey, an instance and an event, decide what happens.

``decide`` does no I/O and reads no clock: time comes in as ``now``, and every id it
makes (instances, action keys, timers) is derived from its inputs, so the same input
always gives the same Decision. ``journeys test``, ``journeys simulate`` and the runtime
all call this one function.

Order of rules for an active instance: stale timers and stale
message statuses are ignored; the goal is noted; ``exit`` rules are tried before the
state's own transitions; the first transition whose guard holds wins; ``do`` actions
run before the target's ``enter`` actions. An expression that fails puts the instance
in ``failed``; it never raises out of here.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from hashlib import sha256 as _sha256
from types import MappingProxyType
from typing import Any, TypeVar

from engine.compiled import CompiledJourney, CompiledTransition, Guarded
from engine.decision import Decision, Step
from engine.entries import base_scope
from engine.events import STATUS_OF_TYPE, Event
from engine.instance import NO_HISTORY, RECENT_EVENTS, Contact, History, Instance
from engine.messages import advance
from engine.sandbox import Value
from journeys.errors import ExpressionError
from journeys.events import TIMER_FIRED


def instance_id_for(journey: str, version: int, subject: str, event_id: str) -> str:
    return "i-" + _sha256(f"{journey}\x1f{version}\x1f{subject}\x1f{event_id}".encode()).hexdigest()[:24]


def timer_id(instance_id: str, seq: int, index: int) -> str:
    return f"{instance_id}:{seq}:t{index}"


def action_key(instance_id: str, seq: int, index: int) -> str:
    return f"{instance_id}:{seq}:{index}"


# A NamedTuple's own constructor is a Python function around this; the hot paths call it directly
# with every field in order.
_tuple = tuple.__new__

Rule = TypeVar("Rule", Guarded, CompiledTransition)


def _scope(cj: CompiledJourney, instance: Instance, event: Event, contact: Contact | None, now: datetime,
           base: dict[str, Any] | None = None) -> dict[str, Any]:
    """What guards and vars see: *base* (or a new base scope) with the instance's vars and the
    instance as it is, when the journey reads it (CompiledJourney.instance_in_scope). Action
    inputs see it as it is once it has entered: engine.entries."""
    scope = base if base is not None else base_scope(cj.view, event, contact, now)
    scope["vars"] = instance.vars
    if cj.instance_in_scope:
        scope["instance"] = instance.scope()
    return scope


def subject_of(cj: CompiledJourney, event: Event, contact: Contact | None) -> str | None:
    """Whose journey this event starts or moves: raises ExpressionError from a subject expression."""
    mode = cj.journey.subject
    if mode == "contact":
        return contact.id if contact is not None else event.contact_id
    if mode == "conversation":
        return event.conversation_id
    assert cj.subject is not None
    value = cj.subject.run(base_scope(cj.view, event, contact, event.occurred_at))
    return None if value is None or value == "" else str(value)


def _cancelled(cj: CompiledJourney, instance: Instance) -> tuple[str, ...]:
    """The ids of the timers *instance* set on entering its state."""
    return tuple([timer_id(instance.id, instance.seq, t.index) for t in cj.states[instance.state].timers])


def _failed(cj: CompiledJourney, instance: Instance, event: Event, now: datetime, recent: tuple[str, ...],
            error: ExpressionError, where: str) -> Decision:
    """The instance fails; nothing of the decision is kept but the failure: no half-applied transition."""
    cancelled: tuple[str, ...] = ()
    if instance.active and instance.seq > 0 and instance.state in cj.states:
        cancelled = _cancelled(cj, instance)  # an instance that never entered a state set no timers
    message = f"{where}: {error}"
    step = Step("failed", now, event.id, event.type, from_state=instance.state, detail=message)
    failed = instance.evolve(status="failed", ended_at=now, error=message, recent_events=recent)
    return Decision("failed", message, failed, (step,), (), (), cancelled)


def _ignored(reason: str, instance: Instance | None = None) -> Decision:
    """Nothing to do, and nothing remembered (the event was not this instance's to see)."""
    return Decision("duplicate" if reason.startswith("duplicate") else "ignored", reason, instance)


def _remembered(instance: Instance, event: Event) -> tuple[str, ...]:
    return (*instance.recent_events, event.id)[-RECENT_EVENTS:]


def _seen(reason: str, instance: Instance, event: Event) -> Decision:
    """Nothing to do, but the instance remembers the event: delivered again later, in another
    state, it must still change nothing."""
    seen = _tuple(Instance, (*instance[:-1], _remembered(instance, event)))  # recent_events is the last field
    return _tuple(Decision, ("ignored", reason, seen, (), (), (), ()))


def _start(
    cj: CompiledJourney, event: Event, now: datetime, contact: Contact | None, history: History
) -> Decision:
    triggers = cj.triggers.get(event.type)
    if not triggers:
        return Decision("not_started", f"{cj.id} has no trigger on {event.type}")
    reentry = cj.journey.reentry
    if history.count:
        if reentry.mode == "never":
            return Decision("not_started", "already ran for this subject (reentry: never)")
        if reentry.mode == "cooldown" and history.last_ended_at is not None:
            ready = history.last_ended_at + timedelta(milliseconds=reentry.cooldown_ms)
            if now < ready:
                return Decision("not_started", f"in cooldown until {ready.isoformat()} (reentry: {reentry.text})")
    scope: dict[str, Any] | None = None
    try:
        for trigger in triggers:
            guard = trigger.guard
            if guard is None:
                break
            if scope is None:
                scope = base_scope(cj.view, event, contact, now)
            if guard.run(scope):
                break
        else:
            return Decision("not_started", f"no trigger guard on {event.type} holds")
        if cj.journey.subject == "contact":  # the common case, without a call
            subject = contact.id if contact is not None else event.contact_id
        else:
            subject = subject_of(cj, event, contact)
    except ExpressionError as exc:
        return Decision("not_started", f"trigger or subject failed: {exc}")
    if subject is None:
        return Decision("not_started", f"no subject for {cj.journey.subject!r} in this event")
    captured: dict[str, Any] = {}
    instance = _tuple(Instance, (
        instance_id_for(cj.id, cj.version, subject, event.id), cj.id, cj.version, subject, cj.journey.initial,
        "active", now, now, 0, contact.id if contact is not None else event.contact_id,
        MappingProxyType(captured),  # a view: filled below, never changed after
        None, None, None, ()))
    recent = (event.id,)
    try:
        if cj.vars:
            # the triggers' scope, when there is one, is done with: grow it rather than build another
            scope = _scope(cj, instance, event, contact, now, base=scope)
            # each var sees the ones above it, through the view
            for name, value in cj.vars:
                captured[name] = value.run(scope) if isinstance(value, Value) else value
        return cj.starts[event.type](instance, event, now, contact, recent, ())
    except ExpressionError as exc:
        return _failed(cj, instance.evolve(vars=MappingProxyType(dict(captured))), event, now, recent, exc,
                       "starting")


def _first(rules: tuple[Rule, ...], scope: dict[str, Any]) -> tuple[Rule | None, dict[str, Any]]:
    """The first of *rules* whose guard holds in *scope*, and the scope (for the next guards)."""
    for rule in rules:
        guard = rule.guard
        if guard is None or guard.run(scope):
            return rule, scope
    return None, scope


def _advance(
    cj: CompiledJourney, instance: Instance, event: Event, now: datetime, contact: Contact | None,
    message_status: str | None,
) -> Decision:
    kind = event.type
    if kind == TIMER_FIRED:
        return _fire_timer(cj, instance, event, now, contact)
    if kind == "action.failed":
        owner = event.data.get("instance_id")
        if owner is not None and owner != instance.id:
            return _ignored("action.failed of another instance", instance)
    if event.message_id is not None and kind in STATUS_OF_TYPE:
        progress = advance(message_status, kind)
        if not progress.forward:
            return _seen(f"stale status: {progress.reason}", instance, event)
    exits = cj.exits.get(kind, ())
    transitions = cj.states[instance.state].on.get(kind, ())
    goal = cj.journey.goal
    if not exits and not transitions and (goal is None or goal.on != kind):
        return _seen(f"state {instance.state} has no transition on {kind}", instance, event)
    recent = _remembered(instance, event)
    # What guards see: the instance as the event found it, built once, on first use.
    scope: dict[str, Any] | None = None
    steps: tuple[Step, ...] = ()
    current = instance
    try:
        if goal is not None and goal.on == kind and instance.goal_reached_at is None \
                and now - instance.started_at <= cj.goal_within:
            goal_guard = cj.goal_guard
            if goal_guard is None or goal_guard.run(scope := _scope(cj, instance, event, contact, now)):
                reached = f"goal {goal.on} reached"
                steps = (Step("goal", now, event.id, kind, from_state=instance.state, detail=reached),)
                current = instance.evolve(goal_reached_at=now, recent_events=recent)
        if exits:
            # the first rule without a guard is taken without a call: the common case
            exit_rule: Guarded | None = exits[0]
            if exits[0].guard is not None:
                exit_rule, scope = _first(exits, scope or _scope(cj, instance, event, contact, now))
            if exit_rule is not None:
                if exit_rule.to is not None:
                    return exit_rule.enter[instance.state](current, event, now, contact, recent, steps)
                step = Step("exited", now, event.id, kind, from_state=instance.state)
                ended = current.evolve(status="exited", ended_at=now, recent_events=recent)
                return Decision("ended", f"exit on {kind}", ended, (*steps, step), (), (), _cancelled(cj, instance))
        if transitions:
            transition: CompiledTransition | None = transitions[0]
            if transitions[0].guard is not None:
                transition, scope = _first(transitions, scope or _scope(cj, instance, event, contact, now))
            if transition is not None:
                return transition.enter(current, event, now, contact, recent, steps)
    except ExpressionError as exc:
        return _failed(cj, instance, event, now, recent, exc, f"in state {instance.state} on {kind}")
    if steps:
        return Decision("goal", f"goal {kind} reached", current, steps)
    return _seen(f"state {instance.state} has no transition on {kind}", instance, event)


def _fire_timer(
    cj: CompiledJourney, instance: Instance, event: Event, now: datetime, contact: Contact | None
) -> Decision:
    data = event.data
    if data.get("instance_id") != instance.id or data.get("seq") != instance.seq:
        return _seen("stale timer: the instance has left the state that set it", instance, event)
    state = cj.states.get(instance.state)
    index = data.get("index")
    if state is None or data.get("state") != instance.state or not isinstance(index, int):
        return _seen("stale timer: unknown state or index", instance, event)
    if not 0 <= index < len(state.timers):  # timers are numbered by their place in the state
        return _seen("stale timer: the state has no such timer", instance, event)
    timer = state.timers[index]
    recent = _remembered(instance, event)
    try:
        return timer.enter(instance, event, now, contact, recent, ())
    except ExpressionError as exc:
        return _failed(cj, instance, event, now, recent, exc, f"in state {instance.state} after {timer.timer.text}")


def decide(
    cj: CompiledJourney,
    instance: Instance | None,
    event: Event,
    now: datetime,
    contact: Contact | None = None,
    *,
    history: History = NO_HISTORY,
    message_status: str | None = None,
) -> Decision:
    """What *event* does to *instance* of *cj* (or whether it starts one) at *now*.

    *instance* is the subject's instance of this journey, active or ended, or None.
    *history* says whether earlier instances of it ended, for ``reentry``.
    *message_status* is the status of the message the event is about, before it.
    """
    if instance is not None and event.id in instance.recent_events:
        # also for an ended instance: the event that ended it must not start it again
        return _ignored(f"duplicate: event {event.id} was applied already", instance if instance.active else None)
    if instance is not None and instance.status == "active":
        if instance.journey != cj.id or instance.version != cj.version:
            return _ignored(f"instance is on {instance.journey} v{instance.version}", instance)
        return _advance(cj, instance, event, now, contact, message_status)
    if instance is not None:
        last = instance.ended_at
        if history.last_ended_at is not None and (last is None or history.last_ended_at > last):
            last = history.last_ended_at
        history = History(max(history.count, 1), last)
    return _start(cj, event, now, contact, history)
