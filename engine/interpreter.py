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

from collections.abc import Mapping
from datetime import datetime, timedelta
from hashlib import sha256 as _sha256
from types import MappingProxyType
from typing import Any

from engine.compiled import CompiledAction, CompiledJourney, CompiledTransition, Guarded
from engine.decision import Decision, ScheduledAction, Step, TimerSet
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


_NO_CONTACT: Mapping[str, Any] = MappingProxyType({})

# A NamedTuple's own constructor is a Python function around this; the hot paths call it directly
# with every field in order.
_tuple = tuple.__new__


def _base_scope(cj: CompiledJourney, event: Event, contact: Contact | None, now: datetime) -> dict[str, Any]:
    """What every expression sees: ``event``, ``contact``, ``journey`` and ``now``."""
    return {"event": event.view, "contact": _NO_CONTACT if contact is None else contact.view, "journey": cj.view,
            "now": now}


def subject_of(cj: CompiledJourney, event: Event, contact: Contact | None) -> str | None:
    """Whose journey this event starts or moves: raises ExpressionError from a subject expression."""
    mode = cj.journey.subject
    if mode == "contact":
        return contact.id if contact is not None else event.contact_id
    if mode == "conversation":
        return event.conversation_id
    assert cj.subject is not None
    value = cj.subject.run(_base_scope(cj, event, contact, event.occurred_at))
    return None if value is None or value == "" else str(value)


class _Run:
    """The work of one decision on one instance; collects steps, actions and timers."""

    __slots__ = ("_scope", "actions", "cancelled", "cj", "contact", "event", "now", "recent", "steps", "timers")

    def __init__(self, cj: CompiledJourney, event: Event, now: datetime, contact: Contact | None,
                 recent: tuple[str, ...]) -> None:
        self.cj = cj
        self.event = event
        self.now = now
        self.contact = contact
        # The ids of the events the instance remembers once this one is applied, whatever the outcome.
        self.recent = recent
        # Tuples the Decision takes as they are. Only steps grow (a goal, then an entry); the
        # others are set once, by the one entry or exit a run makes.
        self.steps: tuple[Step, ...] = ()
        self.actions: tuple[ScheduledAction, ...] = ()
        self.timers: tuple[TimerSet, ...] = ()
        self.cancelled: tuple[str, ...] = ()
        self._scope: dict[str, Any] | None = None

    def scope(self, instance: Instance, entering: str | None = None,
              base: dict[str, Any] | None = None) -> dict[str, Any]:
        """What expressions see: *base* (or a new base scope) with the instance's vars and the
        instance, as it is once it enters *entering* when given."""
        scope = base if base is not None else _base_scope(self.cj, self.event, self.contact, self.now)
        scope["vars"] = instance.vars
        scope["instance"] = instance.scope(entering, self.now if entering else None)
        return scope

    def lazy_scope(self, instance: Instance) -> dict[str, Any]:
        """The scope of the instance as it was when the event arrived, built on first use."""
        if self._scope is None:
            self._scope = self.scope(instance)
        return self._scope

    def step(self, kind: Any, from_state: str | None = None, to_state: str | None = None,
             detail: str | None = None) -> None:
        self.steps = (*self.steps, _tuple(Step, (kind, self.now, self.event.id, self.event.type, from_state,
                                                 to_state, detail)))

    def cancel_timers(self, instance: Instance) -> None:
        """The timers of the state *instance* leaves (a run leaves one state at most)."""
        timers = self.cj.states[instance.state].timers
        if timers:
            prefix = f"{instance.id}:{instance.seq}:t"  # timer_id() of each
            self.cancelled = tuple([f"{prefix}{t.index}" for t in timers])

    def enter(self, instance: Instance, target: str, do: tuple[CompiledAction, ...], kind: Any) -> Instance:
        """Leave the current state (cancelling its timers) unless *kind* is "started", and enter
        *target*: do, enter, timers. The instance returned remembers this event.

        Written out in one function, tuples built without their NamedTuple constructors and
        the instance copied by hand: this is the interpreter's inner loop."""
        now = self.now
        event = self.event
        seq = instance.seq + 1
        instance_id = instance.id
        source = None
        if kind != "started":
            source = instance.state
            self.cancel_timers(instance)
        step = _tuple(Step, (kind, now, event.id, event.type, source, target, None))
        compiled = self.cj.states[target]
        actions = do + compiled.enter if do else compiled.enter  # do first; keys count on across both
        if actions:
            scope: dict[str, Any] | None = None
            priority = self.cj.journey.priority
            prefix = f"{instance_id}:{seq}:"  # action_key() of each
            scheduled: list[ScheduledAction] = []
            append = scheduled.append
            for index, action in enumerate(actions):
                inputs = action.constant
                if inputs is None:
                    if scope is None:
                        scope = self.scope(instance, target)
                    assert action.render is not None
                    inputs = action.render(scope)
                append(_tuple(ScheduledAction, (f"{prefix}{index}", action.call.action, instance_id, target, seq,
                                                index, inputs, action.call.retry, priority)))
            self.actions = tuple(scheduled)
        # the new instance, field by field in Instance's order
        (_, journey, version, subject, _, status, started_at, _, _, contact_id, vars_, ended_at, goal_reached_at,
         error, _) = instance
        if compiled.state.final:
            self.steps = (*self.steps, step, _tuple(Step, ("completed", now, event.id, event.type, None, target,
                                                           None)))
            status, ended_at = "completed", now
        else:
            self.steps = (*self.steps, step)
            if compiled.timers:
                prefix = f"{instance_id}:{seq}:t"  # timer_id() of each
                self.timers = tuple([_tuple(TimerSet, (f"{prefix}{t.index}", instance_id, now + t.delay, target, seq,
                                                       t.index, t.timer.text)) for t in compiled.timers])
        return _tuple(Instance, (instance_id, journey, version, subject, target, status, started_at, now, seq,
                                 contact_id, vars_, ended_at, goal_reached_at, error, self.recent))

    def fail(self, instance: Instance, error: ExpressionError, where: str) -> Decision:
        # Nothing of this run is kept but the failure: no half-applied transition.
        self.actions, self.timers, self.steps, self.cancelled = (), (), (), ()
        if instance.active and instance.seq > 0 and instance.state in self.cj.states:
            self.cancel_timers(instance)  # an instance that never entered a state set no timers
        message = f"{where}: {error}"
        self.step("failed", from_state=instance.state, detail=message)
        failed = instance.evolve(status="failed", ended_at=self.now, error=message, recent_events=self.recent)
        return self.decision("failed", message, failed)

    def decision(self, outcome: Any, reason: str, instance: Instance) -> Decision:
        """The Decision; *instance* already remembers the event (see enter and recent)."""
        return _tuple(Decision, (outcome, reason, instance, self.steps, self.actions, self.timers, self.cancelled))


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
                scope = _base_scope(cj, event, contact, now)
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
    run = _Run(cj, event, now, contact, (event.id,))
    try:
        if cj.vars:
            # the triggers' scope, when there is one, is done with: grow it rather than build another
            scope = run.scope(instance, base=scope)
            # each var sees the ones above it, through the view
            for name, value in cj.vars:
                captured[name] = value.run(scope) if isinstance(value, Value) else value
        started = run.enter(instance, cj.journey.initial, (), "started")
    except ExpressionError as exc:
        return run.fail(instance.evolve(vars=MappingProxyType(dict(captured))), exc, "starting")
    return run.decision("started", f"started by {event.type}", started)


def _first(
    rules: tuple[Guarded, ...] | tuple[CompiledTransition, ...], run: _Run, instance: Instance
) -> Guarded | CompiledTransition | None:
    for rule in rules:
        guard = rule.guard
        if guard is None or guard.run(run.lazy_scope(instance)):
            return rule
    return None



_NO_RULES: tuple[Any, ...] = ()


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
    exits = cj.exits.get(kind, _NO_RULES)
    transitions = cj.states[instance.state].on.get(kind, _NO_RULES)
    goal = cj.journey.goal
    if not exits and not transitions and (goal is None or goal.on != kind):
        return _seen(f"state {instance.state} has no transition on {kind}", instance, event)
    run = _Run(cj, event, now, contact, _remembered(instance, event))
    current = instance
    try:
        if (
            goal is not None
            and goal.on == kind
            and instance.goal_reached_at is None
            and now - instance.started_at <= cj.goal_within
            and (cj.goal_guard is None or cj.goal_guard.run(run.lazy_scope(instance)))
        ):
            run.step("goal", from_state=instance.state, detail=f"goal {goal.on} reached")
            current = current.evolve(goal_reached_at=now, recent_events=run.recent)
        # the first rule without a guard is taken without a call: the common case
        exit_rule = (exits[0] if exits[0].guard is None else _first(exits, run, instance)) if exits else None
        if isinstance(exit_rule, Guarded):
            if exit_rule.to is not None:
                ended = run.enter(current, exit_rule.to, (), "exited")
                return run.decision("ended", f"exit on {kind} to {exit_rule.to}", ended)
            run.cancel_timers(current)
            run.step("exited", from_state=current.state)
            ended = current.evolve(status="exited", ended_at=now, recent_events=run.recent)
            return run.decision("ended", f"exit on {kind}", ended)
        transition = (transitions[0] if transitions[0].guard is None else _first(transitions, run, instance)
                      ) if transitions else None
        if isinstance(transition, CompiledTransition):
            moved = run.enter(current, transition.to, transition.do, "transition")
            outcome = "transitioned" if moved.status == "active" else "ended"
            return run.decision(outcome, f"{kind}: {instance.state} -> {transition.to}", moved)
    except ExpressionError as exc:
        return run.fail(instance, exc, f"in state {instance.state} on {kind}")
    if current is not instance:
        return run.decision("goal", f"goal {kind} reached", current)
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
    run = _Run(cj, event, now, contact, _remembered(instance, event))
    try:
        moved = run.enter(instance, timer.timer.to, timer.do, "transition")
    except ExpressionError as exc:
        return run.fail(instance, exc, f"in state {instance.state} after {timer.timer.text}")
    outcome = "transitioned" if moved.status == "active" else "ended"
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
