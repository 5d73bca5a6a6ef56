"""The pure core: given a journey, an instance and an event, decide what happens.

``decide`` does no I/O and reads no clock: time comes in as ``now``, and every id it
makes (instances, action keys, timers) is derived from its inputs, so the same input
always gives the same Decision. ``journeys test``, ``journeys simulate`` and the runtime
all call this one function.

Order of rules for an active instance (SPEC.md section 2): stale timers and stale
message statuses are ignored; the goal is noted; ``exit`` rules are tried before the
state's own transitions; the first transition whose guard holds wins; ``do`` actions
run before the target's ``enter`` actions. An expression that fails puts the instance
in ``failed``; it never raises out of here.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import Any

from engine.compiled import CompiledAction, CompiledJourney, CompiledTransition, Guarded
from engine.decision import Decision, ScheduledAction, Step, TimerSet
from engine.events import STATUS_OF_TYPE, Event
from engine.instance import NO_HISTORY, RECENT_EVENTS, Contact, History, Instance
from engine.messages import advance
from engine.sandbox import Expression, Value, close_budget, open_budget
from journeys.errors import ExpressionError
from journeys.events import TIMER_FIRED


def instance_id_for(journey: str, version: int, subject: str, event_id: str) -> str:
    digest = hashlib.sha256(f"{journey}\x1f{version}\x1f{subject}\x1f{event_id}".encode()).hexdigest()
    return f"i-{digest[:24]}"


def timer_id(instance_id: str, seq: int, index: int) -> str:
    return f"{instance_id}:{seq}:t{index}"


def action_key(instance_id: str, seq: int, index: int) -> str:
    return f"{instance_id}:{seq}:{index}"


_NO_CONTACT: Mapping[str, Any] = MappingProxyType({})


def _contact_scope(contact: Contact | None) -> Mapping[str, Any]:
    return contact.view if contact is not None else _NO_CONTACT


def _holds(guard: Expression | None, scope: Mapping[str, Any]) -> bool:
    return guard is None or bool(guard(scope))


def _render(value: Any, scope: Mapping[str, Any]) -> Any:
    kind = type(value)
    if kind is Value:
        return value(scope)
    if kind is dict:
        return {k: _render(v, scope) for k, v in value.items()}
    if kind is list:
        return [_render(v, scope) for v in value]
    return value


def subject_of(cj: CompiledJourney, event: Event, contact: Contact | None) -> str | None:
    """Whose journey this event starts or moves: raises ExpressionError from a subject expression."""
    mode = cj.journey.subject
    if mode == "contact":
        return contact.id if contact is not None else event.contact_id
    if mode == "conversation":
        return event.conversation_id
    assert cj.subject is not None
    scope = {"event": event.view, "contact": _contact_scope(contact), "journey": cj.view, "now": event.occurred_at}
    value = cj.subject(scope)
    return None if value is None or value == "" else str(value)


class _Run:
    """The work of one decision on one instance; collects steps, actions and timers."""

    def __init__(self, cj: CompiledJourney, event: Event, now: datetime, contact: Contact | None) -> None:
        self.cj = cj
        self.event = event
        self.now = now
        self.contact = contact
        self.steps: list[Step] = []
        self.actions: list[ScheduledAction] = []
        self.timers: list[TimerSet] = []
        self.cancelled: list[str] = []
        self._scope: dict[str, Any] | None = None

    def scope(self, instance: Instance, vars: Mapping[str, Any] | None = None) -> dict[str, Any]:
        return {"event": self.event.view, "contact": _contact_scope(self.contact), "journey": self.cj.view,
                "now": self.now, "vars": instance.vars if vars is None else vars, "instance": instance.scope()}

    def lazy_scope(self, instance: Instance) -> dict[str, Any]:
        """The scope of the instance as it was when the event arrived, built on first use."""
        if self._scope is None:
            self._scope = self.scope(instance)
        return self._scope

    def step(self, kind: Any, from_state: str | None = None, to_state: str | None = None,
             detail: str | None = None) -> None:
        self.steps.append(Step(kind, self.now, self.event.id, self.event.type, from_state, to_state, detail))

    def cancel_timers(self, instance: Instance) -> None:
        state = self.cj.states[instance.state]
        self.cancelled += [timer_id(instance.id, instance.seq, t.index) for t in state.timers]

    def schedule(self, instance: Instance, actions: tuple[CompiledAction, ...], first_index: int) -> int:
        if not actions:
            return first_index
        scope = self.scope(instance)
        index = first_index
        for compiled in actions:
            call = compiled.call
            self.actions.append(ScheduledAction(
                key=action_key(instance.id, instance.seq, index),
                action=call.action,
                instance_id=instance.id,
                state=instance.state,
                seq=instance.seq,
                idx=index,
                inputs=MappingProxyType(_render(compiled.inputs, scope)),
                retry=call.retry,
                priority=self.cj.journey.priority,
            ))
            index += 1
        return index

    def enter(self, instance: Instance, target: str, do: tuple[CompiledAction, ...], kind: Any) -> Instance:
        """Leave the current state (when active) and enter *target*: do, enter, timers."""
        source = None if kind == "started" else instance.state
        entered = instance.evolve(state=target, seq=instance.seq + 1, entered_at=self.now)
        self.step(kind, from_state=source, to_state=target)
        compiled = self.cj.states[target]
        next_index = self.schedule(entered, do, 0)
        self.schedule(entered, compiled.enter, next_index)
        if compiled.state.final:
            self.step("completed", to_state=target)
            return entered.evolve(status="completed", ended_at=self.now)
        for t in compiled.timers:
            self.timers.append(TimerSet(
                id=timer_id(entered.id, entered.seq, t.index),
                instance_id=entered.id,
                due_at=self.now + timedelta(milliseconds=t.timer.delay_ms),
                state=target,
                seq=entered.seq,
                idx=t.index,
                delay=t.timer.text,
            ))
        return entered

    def fail(self, instance: Instance, error: ExpressionError, where: str) -> Decision:
        # Nothing of this run is kept but the failure: no half-applied transition.
        self.actions, self.timers, self.steps = [], [], []
        self.cancelled = []
        if instance.active and instance.seq > 0 and instance.state in self.cj.states:
            self.cancel_timers(instance)  # an instance that never entered a state set no timers
        message = f"{where}: {error}"
        self.step("failed", from_state=instance.state, detail=message)
        failed = instance.evolve(status="failed", ended_at=self.now, error=message)
        return self.decision("failed", message, failed)

    def decision(self, outcome: Any, reason: str, instance: Instance | None) -> Decision:
        if instance is not None:
            recent = (*instance.recent_events, self.event.id)[-RECENT_EVENTS:]
            instance = instance.evolve(recent_events=recent)
        return Decision(outcome, reason, instance, tuple(self.steps), tuple(self.actions), tuple(self.timers),
                        tuple(self.cancelled))


def _ignored(reason: str, instance: Instance | None = None) -> Decision:
    """Nothing to do, and nothing remembered (the event was not this instance's to see)."""
    return Decision("duplicate" if reason.startswith("duplicate") else "ignored", reason, instance)


def _seen(reason: str, instance: Instance, event: Event) -> Decision:
    """Nothing to do, but the instance remembers the event: delivered again later, in another
    state, it must still change nothing."""
    recent = (*instance.recent_events, event.id)[-RECENT_EVENTS:]
    return Decision("ignored", reason, instance.evolve(recent_events=recent))


# Every new instance is a copy of this one with its own fields (cheaper than __init__).
_NEW = Instance(id="", journey="", version=0, subject="", state="", status="active",
                started_at=datetime.min, entered_at=datetime.min, seq=0)


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
    scope = {"event": event.view, "contact": _contact_scope(contact), "journey": cj.view, "now": now}
    try:
        if not any(_holds(t.guard, scope) for t in triggers):
            return Decision("not_started", f"no trigger guard on {event.type} holds")
        subject = subject_of(cj, event, contact)
    except ExpressionError as exc:
        return Decision("not_started", f"trigger or subject failed: {exc}")
    if subject is None:
        return Decision("not_started", f"no subject for {cj.journey.subject!r} in this event")
    instance = _NEW.evolve(
        id=instance_id_for(cj.id, cj.version, subject, event.id),
        journey=cj.id,
        version=cj.version,
        subject=subject,
        state=cj.journey.initial,
        started_at=now,
        entered_at=now,
        contact_id=contact.id if contact is not None else event.contact_id,
    )
    run = _Run(cj, event, now, contact)
    captured: dict[str, Any] = {}
    try:
        if cj.vars:
            # each var sees the ones above it
            scope = run.scope(instance, captured)
            for name, value in cj.vars:
                captured[name] = value(scope) if isinstance(value, Value) else value
        instance = instance.evolve(vars=MappingProxyType(captured))
        started = run.enter(instance, cj.journey.initial, (), "started")
    except ExpressionError as exc:
        return run.fail(instance.evolve(vars=MappingProxyType(dict(captured))), exc, "starting")
    return run.decision("started", f"started by {event.type}", started)


def _first(
    rules: tuple[Guarded, ...] | tuple[CompiledTransition, ...], run: _Run, instance: Instance
) -> Guarded | CompiledTransition | None:
    for rule in rules:
        guard = rule.guard
        if guard is None or guard(run.lazy_scope(instance)):
            return rule
    return None


def _advance(
    cj: CompiledJourney, instance: Instance, event: Event, now: datetime, contact: Contact | None,
    message_status: str | None,
) -> Decision:
    if event.type == TIMER_FIRED:
        return _fire_timer(cj, instance, event, now, contact)
    owner = event.data.get("instance_id") if event.type == "action.failed" else None
    if owner is not None and owner != instance.id:
        return _ignored("action.failed of another instance", instance)
    if event.message_id is not None and event.type in STATUS_OF_TYPE:
        progress = advance(message_status, event.type)
        if not progress.forward:
            return _seen(f"stale status: {progress.reason}", instance, event)
    run = _Run(cj, event, now, contact)
    state = cj.states[instance.state]
    current = instance
    try:
        goal = cj.journey.goal
        if (
            goal is not None
            and goal.on == event.type
            and instance.goal_reached_at is None
            and now - instance.started_at <= timedelta(milliseconds=goal.within_ms)
            and (cj.goal_guard is None or cj.goal_guard(run.lazy_scope(instance)))
        ):
            run.step("goal", from_state=instance.state, detail=f"goal {goal.on} reached")
            current = current.evolve(goal_reached_at=now)
        exit_rule = _first(cj.exits.get(event.type, ()), run, instance)
        if isinstance(exit_rule, Guarded):
            run.cancel_timers(current)
            if exit_rule.to is not None:
                ended = run.enter(current, exit_rule.to, (), "exited")
                return run.decision("ended", f"exit on {event.type} to {exit_rule.to}", ended)
            run.step("exited", from_state=current.state)
            ended = current.evolve(status="exited", ended_at=now)
            return run.decision("ended", f"exit on {event.type}", ended)
        transition = _first(state.on.get(event.type, ()), run, instance)
        if isinstance(transition, CompiledTransition):
            run.cancel_timers(current)
            moved = run.enter(current, transition.to, transition.do, "transition")
            outcome = "ended" if not moved.active else "transitioned"
            return run.decision(outcome, f"{event.type}: {instance.state} -> {transition.to}", moved)
    except ExpressionError as exc:
        return run.fail(instance, exc, f"in state {instance.state} on {event.type}")
    if current is not instance:
        return run.decision("goal", f"goal {event.type} reached", current)
    return _seen(f"state {instance.state} has no transition on {event.type}", instance, event)


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
    timers = [t for t in state.timers if t.index == index]
    if not timers:
        return _seen("stale timer: the state has no such timer", instance, event)
    timer = timers[0]
    run = _Run(cj, event, now, contact)
    try:
        run.cancel_timers(instance)
        moved = run.enter(instance, timer.timer.to, timer.do, "transition")
    except ExpressionError as exc:
        return run.fail(instance, exc, f"in state {instance.state} after {timer.timer.text}")
    outcome = "ended" if not moved.active else "transitioned"
    return run.decision(outcome, f"after {timer.timer.text}: {instance.state} -> {timer.timer.to}", moved)


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
    token = open_budget()
    try:
        return _decide(cj, instance, event, now, contact, history, message_status)
    finally:
        close_budget(token)


def _decide(
    cj: CompiledJourney, instance: Instance | None, event: Event, now: datetime, contact: Contact | None,
    history: History, message_status: str | None,
) -> Decision:
    if instance is not None and event.id in instance.recent_events:
        # also for an ended instance: the event that ended it must not start it again
        return _ignored(f"duplicate: event {event.id} was applied already", instance if instance.active else None)
    if instance is not None and instance.active:
        if instance.journey != cj.id or instance.version != cj.version:
            return _ignored(f"instance is on {instance.journey} v{instance.version}", instance)
        return _advance(cj, instance, event, now, contact, message_status)
    if instance is not None:
        last = instance.ended_at
        if history.last_ended_at is not None and (last is None or history.last_ended_at > last):
            last = history.last_ended_at
        history = History(max(history.count, 1), last)
    return _start(cj, event, now, contact, history)
