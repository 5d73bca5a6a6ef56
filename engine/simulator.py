"""A virtual world for ``journeys test`` and ``journeys simulate``: one contact, a virtual
clock, the pure interpreter, and actions that succeed at once without leaving the machine.

Production rules apply: an inbound opt-out keyword suppresses the channels of
``policies.opt_out_scope`` and yields a ``contact.opted_out`` event; sends on a suppressed
channel are blocked (they count in ``actions``, not in ``sent``); message statuses follow
the status order. Nothing happens by itself: statuses and replies come only from the
events given. Timers fire at their own due time while the clock is advanced.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import Any

from actions.registry import SEND_CHANNELS
from actions.templates import TemplateStore
from engine.compiled import CompiledJourney
from engine.decision import Decision, ScheduledAction, TimerSet
from engine.events import ABOUT_A_MESSAGE, Event
from engine.instance import Contact, History, Instance
from engine.interpreter import decide, subject_of
from engine.messages import advance
from journeys.config import CHANNELS, Policies
from journeys.errors import ExpressionError
from journeys.events import TIMER_FIRED

# Emitted events that keep emitting: a journey loop, not a simulation.
MAX_CASCADE = 1_000


@dataclass
class SentMessage:
    id: str
    channel: str
    instance_id: str
    action_key: str
    to: str | None
    body: str
    subject: str | None = None
    template: str | None = None
    status: str | None = "queued"


@dataclass
class Record:
    """What happened for one input: the decisions of every journey, and what the world did."""

    at: datetime
    event: Event
    decisions: list[tuple[str, Decision]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


class World:
    def __init__(
        self,
        journeys: Iterable[CompiledJourney],
        contact: Contact,
        start: datetime,
        policies: Policies | None = None,
        templates: TemplateStore | None = None,
    ) -> None:
        self.journeys = list(journeys)
        self.contact = contact
        self.clock = start
        self.policies = policies or Policies()
        self.templates = templates or TemplateStore(None)
        self.instances: dict[str, Instance] = {}
        self.by_subject: dict[tuple[str, str], str] = {}
        self.history: dict[tuple[str, str], History] = {}
        self.timers: list[tuple[datetime, int, TimerSet]] = []
        self.cancelled: set[str] = set()
        self.messages: list[SentMessage] = []
        self.actions: list[ScheduledAction] = []
        self.blocked: list[ScheduledAction] = []
        self.suppressed: set[str] = set()
        self.records: list[Record] = []
        self._counter = 0
        self._queue: list[Event] = []

    # -- inputs ------------------------------------------------------------------

    def next_id(self, prefix: str) -> str:
        self._counter += 1
        return f"{prefix}-{self._counter}"

    def message(self, n: int) -> SentMessage:
        if not 1 <= n <= len(self.messages):
            raise LookupError(f"message {n} was never sent (sent so far: {len(self.messages)})")
        return self.messages[n - 1]

    def event(
        self,
        type: str,
        *,
        message: int | None = None,
        channel: str | None = None,
        text: str | None = None,
        data: Mapping[str, Any] | None = None,
    ) -> None:
        """Deliver an event now, as ingest would have stored it."""
        msg = self.message(message) if message is not None else None
        if type == "action.failed" and not (data or {}).get("instance_id"):
            data = {**self._failed_action(), **dict(data or {})}
        channel = channel or (msg.channel if msg else ("sms" if type == "message.received" else None))
        handle = self.contact.phone if channel in ("sms", "whatsapp") else self.contact.email
        event = Event(
            id=self.next_id("e"),
            type=type,
            occurred_at=self.clock,
            source="test",
            channel=channel,
            contact_id=self.contact.id,
            conversation_id=f"{channel}:{handle or self.contact.id}" if channel else None,
            message_id=msg.id if msg else None,
            text=text,
            data=MappingProxyType(dict(data or {})),
        )
        self._queue.append(event)
        if type == "message.received" and text is not None:
            word = text.strip().upper()
            if word in self.policies.opt_out_keywords:
                self._queue.append(replace(event, id=self.next_id("e"), type="contact.opted_out",
                                           data=MappingProxyType({"keyword": word})))
            elif word in self.policies.opt_in_keywords:
                self._queue.append(replace(event, id=self.next_id("e"), type="contact.opted_in",
                                           data=MappingProxyType({"keyword": word})))
        self._drain()

    def _failed_action(self) -> dict[str, Any]:
        """A test's bare ``{type: action.failed}`` is about the last action of the newest active instance."""
        active = [i for i in self.instances.values() if i.active]
        if not active:
            return {}
        instance = max(active, key=lambda i: (i.started_at, i.entered_at))
        last = [a for a in self.actions if a.instance_id == instance.id]
        out: dict[str, Any] = {"instance_id": instance.id, "error": "failed in the test"}
        if last:
            out.update(action=last[-1].action, key=last[-1].key)
        return out

    def wait(self, delta: timedelta) -> None:
        """Advance the clock; every timer due inside fires at its own time, in order."""
        target = self.clock + delta
        while self.timers and self.timers[0][0] <= target:
            due, _, timer = heapq.heappop(self.timers)
            if timer.id in self.cancelled:
                continue
            self.clock = max(self.clock, due)
            self._queue.append(Event(
                id=f"timer:{timer.id}",
                type=TIMER_FIRED,
                occurred_at=due,
                source="timer",
                contact_id=self.contact.id,
                data=MappingProxyType({"instance_id": timer.instance_id, "state": timer.state, "seq": timer.seq,
                                       "index": timer.idx, "timer_id": timer.id}),
            ))
            self._drain()
        self.clock = target

    # -- processing --------------------------------------------------------------

    def _drain(self) -> None:
        steps = 0
        while self._queue:
            steps += 1
            if steps > MAX_CASCADE:
                raise RuntimeError(f"more than {MAX_CASCADE} events from one input: do journeys emit in a loop?")
            self._process(self._queue.pop(0))

    def _process(self, event: Event) -> None:
        record = Record(self.clock, event)
        self.records.append(record)
        if event.type in ("contact.opted_out", "contact.complained"):
            self.suppressed |= set(self.policies.opt_out_scope)
            record.notes.append(f"suppressed {', '.join(self.policies.opt_out_scope)}")
        elif event.type == "contact.opted_in" and event.channel:
            self.suppressed.discard(event.channel)
            record.notes.append(f"unsuppressed {event.channel}")
        message_status = None
        if event.message_id is not None:
            msg = next(m for m in self.messages if m.id == event.message_id)
            message_status = msg.status
            progress = advance(msg.status, event.type)
            msg.status = progress.status
        for cj in self.journeys:
            routed: list[Instance | None] = [*self._route(cj, event)] or [None]
            for instance in routed:
                key = (cj.id, instance.subject) if instance else None
                decision = decide(cj, instance, event, self.clock, self.contact,
                                  history=self.history.get(key, History()) if key else History(),
                                  message_status=message_status)
                if decision.outcome == "not_started" and not cj.listens_to(event.type):
                    continue
                record.decisions.append((cj.id, decision))
                self._apply(cj, decision, record)

    def _route(self, cj: CompiledJourney, event: Event) -> list[Instance]:
        """The instances of *cj* this event is about: by instance id, message, subject, then contact."""
        owner = event.data.get("instance_id") if event.type in (TIMER_FIRED, "action.failed") else None
        if isinstance(owner, str):
            found = self.instances.get(owner)
            return [found] if found is not None and found.journey == cj.id else []
        if event.message_id is not None and event.type in ABOUT_A_MESSAGE:
            # news about a message belongs to the instance that sent it, and to no other
            msg = next(m for m in self.messages if m.id == event.message_id)
            found = self.instances.get(msg.instance_id)
            return [found] if found is not None and found.journey == cj.id and found.active else []
        try:
            subject = subject_of(cj, event, self.contact)
        except ExpressionError:
            subject = None
        if subject is not None:
            instance_id = self.by_subject.get((cj.id, subject))
            return [self.instances[instance_id]] if instance_id else []
        # No subject in the event (a business event for a conversation journey): every
        # active instance of the contact hears it; their guards decide.
        return [i for i in self.instances.values()
                if i.journey == cj.id and i.active and i.contact_id == event.contact_id]

    def _apply(self, cj: CompiledJourney, decision: Decision, record: Record) -> None:
        instance = decision.instance
        if instance is None or not decision.changed:
            return
        previous = self.instances.get(instance.id)
        self.instances[instance.id] = instance
        self.by_subject[(cj.id, instance.subject)] = instance.id
        if not instance.active and (previous is None or previous.active):
            old = self.history.get((cj.id, instance.subject), History())
            self.history[(cj.id, instance.subject)] = History(old.count + 1, instance.ended_at)
        self.cancelled |= set(decision.timers_cancelled)
        for timer in decision.timers_set:
            heapq.heappush(self.timers, (timer.due_at, self._next_seq(), timer))
        for action in decision.actions:
            self._run_action(instance, action, record)

    def _next_seq(self) -> int:
        self._counter += 1
        return self._counter

    def _channels(self, value: Any) -> set[str]:
        return set(CHANNELS) if value in (None, "all") else set(value)

    def _run_action(self, instance: Instance, action: ScheduledAction, record: Record) -> None:
        self.actions.append(action)
        inputs = action.inputs
        channel = SEND_CHANNELS.get(action.action)
        if channel is not None:
            if channel in self.suppressed:
                self.blocked.append(action)
                record.notes.append(f"{action.action} blocked: {channel} is suppressed")
                return
            self._send(instance, action, channel)
        elif action.action == "suppress":
            self.suppressed |= self._channels(inputs.get("channels"))
        elif action.action == "unsuppress":
            self.suppressed -= self._channels(inputs.get("channels"))
        elif action.action == "set_contact":
            attributes = {**self.contact.attributes, **dict(inputs.get("attributes", {}))}
            self.contact = replace(self.contact, attributes=MappingProxyType(attributes))
        elif action.action == "emit":
            self._queue.append(Event(
                id=f"emit:{action.key}", type=str(inputs["type"]), occurred_at=self.clock, source="emit",
                contact_id=self.contact.id, data=MappingProxyType(dict(inputs.get("data", {}))),
            ))
        # http and plugin actions: not called in a simulation, and they count as succeeded

    def _send(self, instance: Instance, action: ScheduledAction, channel: str) -> None:
        inputs = action.inputs
        template = inputs.get("template")
        body = str(inputs.get("body", ""))
        if template is not None:
            scope = {"contact": self.contact.scope(), "vars": instance.vars, "instance": instance.scope(),
                     "journey": {"id": instance.journey, "version": instance.version}, "now": self.clock}
            if self.templates.root is None:
                body = f"[template {template}]"
            else:
                body = self.templates.render(channel, str(template), scope, self.contact.locale)
        default_to = self.contact.email if channel == "email" else self.contact.phone
        self.messages.append(SentMessage(
            id=f"m{len(self.messages) + 1}",
            channel=channel,
            instance_id=instance.id,
            action_key=action.key,
            to=str(inputs.get("to") or default_to or ""),
            body=body,
            subject=str(inputs["subject"]) if "subject" in inputs else None,
            template=str(template) if template is not None else None,
        ))

    # -- views -------------------------------------------------------------------

    def instance_of(self, journey: str) -> Instance | None:
        """The newest instance of *journey* in this world."""
        found = [i for i in self.instances.values() if i.journey == journey]
        return max(found, key=lambda i: i.started_at) if found else None

    def trace(self, journey: str) -> list[str]:
        """The states an instance of *journey* went through, in order."""
        states: list[str] = []
        for record in self.records:
            for jid, decision in record.decisions:
                if jid != journey:
                    continue
                for step in decision.steps:
                    if step.kind in ("started", "transition", "exited") and step.to_state:
                        states.append(step.to_state)
                    elif step.kind in ("exited", "failed"):
                        states.append(f"({step.kind})")
        return states
