"""Run journey test cases (``*.test.yaml``) in the simulated world and judge their expectations."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from types import MappingProxyType
from typing import Any

from actions.templates import TemplateStore
from engine.compiled import CompiledJourney
from engine.instance import Contact
from engine.simulator import World
from journeys.config import Policies
from journeys.testfile import Case, Suite


@dataclass
class CaseResult:
    suite: Suite
    case: Case
    failures: list[str] = field(default_factory=list)
    trace: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def passed(self) -> bool:
        return not self.failures and self.error is None


def _contact(case: Case) -> Contact:
    data = dict(case.contact)
    return Contact(
        id=str(data.get("id", "test-contact")),
        phone=data.get("phone"),
        email=data.get("email"),
        timezone=data.get("timezone"),
        locale=data.get("locale"),
        attributes=MappingProxyType(dict(data.get("attributes", {}))),
    )


def _same(expected: Any, actual: Any) -> bool:
    if expected == actual:
        return True
    # YAML numbers vs rendered text: 40 and "40" are the same to a person reading a test
    return isinstance(expected, (int, float, str)) and str(expected) == str(actual)


def _listing(items: list[str]) -> str:
    return "[" + ", ".join(items) + "]"


def judge(world: World, journey: str, case: Case) -> list[str]:
    """Every unmet expectation of *case*, in words."""
    exp = case.expect
    failures: list[str] = []
    instance = world.instance_of(journey)
    if (exp.state is not None or exp.status is not None) and instance is None:
        failures.append(f"expected an instance of {journey}, but none started")
    if instance is not None:
        if exp.state is not None and instance.state != exp.state:
            failures.append(f"state: expected {exp.state!r}, got {instance.state!r}")
        if exp.status is not None and instance.status != exp.status:
            detail = f" ({instance.error})" if instance.error else ""
            failures.append(f"status: expected {exp.status!r}, got {instance.status!r}{detail}")
    if exp.actions is not None:
        actual = [a.action for a in world.actions]
        if actual != list(exp.actions):
            failures.append(f"actions: expected {_listing(list(exp.actions))}, got {_listing(actual)}")
    if exp.sent is not None:
        sent = world.messages
        if len(sent) != len(exp.sent):
            got = _listing([f"{m.channel}: {m.body[:40]!r}" for m in sent])
            failures.append(f"sent: expected {len(exp.sent)} messages, got {len(sent)}: {got}")
        for n, (want, msg) in enumerate(zip(exp.sent, sent, strict=False), start=1):
            failures += _judge_message(n, want, msg.channel, msg.body, msg.to, msg.template)
    if exp.suppressed is not None:
        if not exp.suppressed and world.suppressed:
            failures.append(f"suppressed: expected none, got {_listing(sorted(world.suppressed))}")
        missing = [c for c in exp.suppressed if c not in world.suppressed]
        if missing:
            failures.append(f"suppressed: expected {_listing(missing)} to be suppressed, "
                            f"suppressed: {_listing(sorted(world.suppressed)) if world.suppressed else 'none'}")
    if exp.vars is not None:
        have = dict(instance.vars) if instance is not None else {}
        for key, value in exp.vars.items():
            if key not in have:
                failures.append(f"vars: expected {key}={value!r}, but {key} is not set")
            elif not _same(value, have[key]):
                failures.append(f"vars: expected {key}={value!r}, got {have[key]!r}")
    return failures


def _judge_message(
    n: int, want: Mapping[str, Any], channel: str, body: str, to: str | None, template: str | None
) -> list[str]:
    out = []
    if "channel" in want and want["channel"] != channel:
        out.append(f"sent[{n}]: expected channel {want['channel']!r}, got {channel!r}")
    if "body_contains" in want and str(want["body_contains"]) not in body:
        out.append(f"sent[{n}]: expected the body to contain {want['body_contains']!r}, got {body!r}")
    if "to" in want and want["to"] != to:
        out.append(f"sent[{n}]: expected to {want['to']!r}, got {to!r}")
    if "template" in want and want["template"] != template:
        out.append(f"sent[{n}]: expected template {want['template']!r}, got {template!r}")
    return out


def run_case(
    suite: Suite,
    case: Case,
    journey: CompiledJourney,
    policies: Policies | None = None,
    templates: TemplateStore | None = None,
) -> CaseResult:
    result = CaseResult(suite, case)
    world = World([journey], _contact(case), case.start, policies, templates)
    try:
        for step in case.steps:
            if step.wait_ms is not None:
                world.wait(timedelta(milliseconds=step.wait_ms))
            else:
                assert step.type is not None
                world.event(step.type, message=step.message, channel=step.channel, text=step.text,
                            data=step.data)
    except (LookupError, RuntimeError) as exc:
        result.error = f"line {step.line}: {exc}"
    result.trace = world.trace(journey.id)
    if result.error is None:
        result.failures = judge(world, journey.id, case)
    return result
