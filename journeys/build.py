"""Turn schema-valid, checked journey data into the frozen model.

Only :mod:`journeys.loader` should call this with data from a file; tests call it with
``Journey.to_dict()`` output to prove the round trip. It trusts its input's shape.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from typing import Any

from journeys.checks import timer_target, transitions_of
from journeys.durations import parse_ms
from journeys.model import (
    DEFAULT_RETRY,
    DEFAULT_RETRY_ON,
    ActionCall,
    ExitRule,
    Goal,
    Journey,
    Reentry,
    RetryPolicy,
    State,
    Timer,
    Transition,
    Trigger,
    freeze,
)


def content_hash(data: Any) -> str:
    """A hash of the journey's meaning: comments and formatting do not change it."""
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def policy_from_data(name: str, data: dict[str, Any]) -> RetryPolicy:
    """A retry policy from its fields as written (journeys) or stored (jobs)."""
    return RetryPolicy(
        name=name,
        max_attempts=int(data.get("max_attempts", DEFAULT_RETRY.max_attempts)),
        initial_ms=parse_ms(data.get("initial", "1s")),
        factor=float(data.get("factor", DEFAULT_RETRY.factor)),
        max_ms=parse_ms(data.get("max", "5m")),
        jitter=data.get("jitter", DEFAULT_RETRY.jitter),
        timeout_ms=parse_ms(data.get("timeout", "10s")),
        retry_on=tuple(data.get("retry_on", DEFAULT_RETRY_ON)),
    )


class _Builder:
    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data
        self.policies = {name: policy_from_data(name, p) for name, p in data.get("retry", {}).items()}
        self.default = self.policies.get("default", DEFAULT_RETRY)

    def action(self, data: dict[str, Any]) -> ActionCall:
        retry = data.get("retry")
        if isinstance(retry, str):
            policy = self.policies.get(retry, DEFAULT_RETRY if retry == "default" else self.default)
            name: str | None = retry
        elif isinstance(retry, dict):
            policy, name = policy_from_data("inline", retry), None
        else:
            policy, name = self.default, None
        return ActionCall(
            action=data["action"],
            inputs=freeze(data.get("with", {})),
            retry=policy,
            retry_name=name,
            description=data.get("description"),
        )

    def actions(self, items: list[dict[str, Any]]) -> tuple[ActionCall, ...]:
        return tuple(self.action(a) for a in items)

    def state(self, name: str, data: dict[str, Any]) -> State:
        on = {
            event: tuple(
                Transition(
                    event=event,
                    to=entry["to"],
                    when=entry.get("when"),
                    do=self.actions(entry.get("do", [])),
                    description=entry.get("description"),
                )
                for _, entry in transitions_of(spec)
            )
            for event, spec in data.get("on", {}).items()
        }
        timers = []
        for text, spec in data.get("after", {}).items():
            entry = timer_target(spec)
            timers.append(
                Timer(
                    delay_ms=parse_ms(text),
                    text=text,
                    to=entry["to"],
                    do=self.actions(entry.get("do", [])),
                    description=entry.get("description"),
                )
            )
        return State(
            name=name,
            enter=self.actions(data.get("enter", [])),
            on=freeze(on),
            after=tuple(sorted(timers, key=lambda t: t.delay_ms)),
            final=bool(data.get("final", False)),
            description=data.get("description"),
        )

    def journey(self, file: str) -> Journey:
        data = self.data
        triggers = data["trigger"] if isinstance(data["trigger"], list) else [data["trigger"]]
        reentry_text = data.get("reentry", "never")
        if reentry_text in ("never", "always"):
            reentry = Reentry(mode=reentry_text, text=reentry_text)
        else:
            reentry = Reentry(mode="cooldown", cooldown_ms=parse_ms(reentry_text), text=reentry_text)
        goal = data.get("goal")
        return Journey(
            id=data["journey"],
            version=data["version"],
            triggers=tuple(Trigger(on=t["on"], when=t.get("when")) for t in triggers),
            initial=data["initial"],
            states=freeze({name: self.state(name, s) for name, s in data["states"].items()}),
            description=data.get("description"),
            subject=data.get("subject", "contact"),
            priority=data.get("priority", "transactional"),
            reentry=reentry,
            vars=freeze(data.get("vars", {})),
            exit=tuple(ExitRule(on=e["on"], when=e.get("when"), to=e.get("to")) for e in data.get("exit", [])),
            goal=None
            if goal is None
            else Goal(on=goal["on"], within_ms=parse_ms(goal["within"]), when=goal.get("when")),
            retry=freeze(self.policies),
            file=file,
        )


def journey_from_data(data: dict[str, Any], file: str = "") -> Journey:
    """Build the model from data that passed the schema and :mod:`journeys.checks`."""
    journey = _Builder(data).journey(file)
    # Hash the canonical form, so only a change of meaning changes the hash.
    return replace(journey, content_hash=content_hash(journey.to_dict()))
