"""The frozen model of a journey: what the engine sees, built only from validated input.

Nothing here parses text or checks rules; :mod:`journeys.build` does that and is the only
way in. Every object can go back to plain data (:meth:`Journey.to_dict`) that loads into
an equal model, so definitions can be stored and compared.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

from journeys.durations import format_ms

Jitter = Literal["full", "equal", "none"]
Priority = Literal["transactional", "marketing"]

DEFAULT_RETRY_ON: tuple[str | int, ...] = ("timeout", "connection", 408, 429, "5xx")


def freeze(value: Any) -> Any:
    """Deep-freeze plain data: mappings become read-only, lists become tuples."""
    if isinstance(value, Mapping):
        return MappingProxyType({k: freeze(v) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return tuple(freeze(v) for v in value)
    return value


def thaw(value: Any) -> Any:
    """The inverse of :func:`freeze`: plain dicts and lists again."""
    if isinstance(value, Mapping):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [thaw(v) for v in value]
    return value


@dataclass(frozen=True)
class RetryPolicy:
    # The name is a label for people; two policies with the same numbers are equal.
    name: str = field(default="default", compare=False)
    max_attempts: int = 5
    initial_ms: int = 1_000
    factor: float = 2.0
    max_ms: int = 300_000
    jitter: Jitter = "full"
    timeout_ms: int = 10_000
    retry_on: tuple[str | int, ...] = DEFAULT_RETRY_ON

    def to_dict(self) -> dict[str, Any]:
        return {
            "max_attempts": self.max_attempts,
            "initial": format_ms(self.initial_ms),
            "factor": self.factor,
            "max": format_ms(self.max_ms),
            "jitter": self.jitter,
            "timeout": format_ms(self.timeout_ms),
            "retry_on": list(self.retry_on),
        }


DEFAULT_RETRY = RetryPolicy()


@dataclass(frozen=True)
class ActionCall:
    """One action in an ``enter`` or ``do`` list; ``inputs`` are templates, not yet rendered."""

    action: str
    inputs: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    retry: RetryPolicy = DEFAULT_RETRY
    # The policy name as written (None when written in place or left to the default).
    retry_name: str | None = None
    description: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"action": self.action}
        if self.inputs:
            out["with"] = thaw(self.inputs)
        if self.retry_name is not None:
            out["retry"] = self.retry_name
        elif self.retry != DEFAULT_RETRY:
            out["retry"] = self.retry.to_dict()
        if self.description:
            out["description"] = self.description
        return out


@dataclass(frozen=True)
class Transition:
    """One way out of a state on an event; ``when`` is a guard expression or None."""

    event: str
    to: str
    when: str | None = None
    do: tuple[ActionCall, ...] = ()
    description: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"to": self.to}
        if self.when is not None:
            out["when"] = self.when
        if self.do:
            out["do"] = [a.to_dict() for a in self.do]
        if self.description:
            out["description"] = self.description
        return out


@dataclass(frozen=True)
class Timer:
    """``after: {24h: target}``: fires once, ``delay_ms`` after the state was entered."""

    delay_ms: int
    text: str
    to: str
    do: tuple[ActionCall, ...] = ()
    description: str | None = None

    def to_dict(self) -> Any:
        if not self.do and not self.description:
            return self.to
        out: dict[str, Any] = {"to": self.to}
        if self.do:
            out["do"] = [a.to_dict() for a in self.do]
        if self.description:
            out["description"] = self.description
        return out


@dataclass(frozen=True)
class State:
    name: str
    enter: tuple[ActionCall, ...] = ()
    # event type -> the transitions tried in order; the first whose guard holds wins
    on: Mapping[str, tuple[Transition, ...]] = field(default_factory=lambda: MappingProxyType({}))
    after: tuple[Timer, ...] = ()
    final: bool = False
    description: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.description:
            out["description"] = self.description
        if self.enter:
            out["enter"] = [a.to_dict() for a in self.enter]
        if self.on:
            out["on"] = {event: [t.to_dict() for t in ts] for event, ts in self.on.items()}
        if self.after:
            out["after"] = {t.text: t.to_dict() for t in self.after}
        if self.final:
            out["final"] = True
        return out


@dataclass(frozen=True)
class Trigger:
    on: str
    when: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"on": self.on} if self.when is None else {"on": self.on, "when": self.when}


@dataclass(frozen=True)
class ExitRule:
    on: str
    when: str | None = None
    to: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"on": self.on}
        if self.when is not None:
            out["when"] = self.when
        if self.to is not None:
            out["to"] = self.to
        return out


@dataclass(frozen=True)
class Goal:
    on: str
    within_ms: int
    when: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"on": self.on, "within": format_ms(self.within_ms)}
        if self.when is not None:
            out["when"] = self.when
        return out


@dataclass(frozen=True)
class Reentry:
    """``never``, ``always``, or again only after ``cooldown_ms`` since the last end."""

    mode: Literal["never", "always", "cooldown"] = "never"
    cooldown_ms: int = 0
    text: str = "never"


@dataclass(frozen=True)
class Journey:
    id: str
    version: int
    triggers: tuple[Trigger, ...]
    initial: str
    states: Mapping[str, State]
    description: str | None = None
    subject: str = "contact"
    priority: Priority = "transactional"
    reentry: Reentry = Reentry()
    vars: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    exit: tuple[ExitRule, ...] = ()
    goal: Goal | None = None
    retry: Mapping[str, RetryPolicy] = field(default_factory=lambda: MappingProxyType({}))
    # Where it came from: the file, and the hash of its data (for version pinning).
    file: str = field(default="", compare=False)
    content_hash: str = field(default="", compare=False)

    @property
    def key(self) -> tuple[str, int]:
        return (self.id, self.version)

    def to_dict(self) -> dict[str, Any]:
        """Plain data that :func:`journeys.build.journey_from_data` turns into an equal model."""
        out: dict[str, Any] = {"journey": self.id, "version": self.version}
        if self.description is not None:
            out["description"] = self.description
        if self.subject != "contact":
            out["subject"] = self.subject
        if self.priority != "transactional":
            out["priority"] = self.priority
        out["trigger"] = [t.to_dict() for t in self.triggers]
        if self.reentry.mode != "never":
            out["reentry"] = self.reentry.text
        if self.vars:
            out["vars"] = thaw(self.vars)
        if self.exit:
            out["exit"] = [e.to_dict() for e in self.exit]
        if self.goal is not None:
            out["goal"] = self.goal.to_dict()
        out["initial"] = self.initial
        out["states"] = {name: s.to_dict() for name, s in self.states.items()}
        if self.retry:
            out["retry"] = {name: p.to_dict() for name, p in self.retry.items()}
        return out
