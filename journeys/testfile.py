"""Journey test files (``*.test.yaml``): their model and the checks against the journey.

Running the cases is the engine's job (``journeys test``); this module only reads them
and makes sure they speak of a journey, states and actions that exist.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

from actions.registry import is_known
from journeys import schema
from journeys.durations import parse_ms
from journeys.errors import Diagnostic
from journeys.events import unknown_reserved
from journeys.model import Journey, freeze
from journeys.yamlsrc import Document

DEFAULT_START = datetime(2026, 1, 5, 10, 0, 0, tzinfo=UTC)


@dataclass(frozen=True)
class Step:
    """An event to deliver, or (``wait_ms`` set) a pause on the virtual clock."""

    type: str | None = None
    wait_ms: int | None = None
    message: int | None = None
    channel: str | None = None
    text: str | None = None
    data: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    line: int = 0


@dataclass(frozen=True)
class Expect:
    state: str | None = None
    status: str | None = None
    actions: tuple[str, ...] | None = None
    sent: tuple[Mapping[str, Any], ...] | None = None
    suppressed: tuple[str, ...] | None = None
    vars: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class Case:
    name: str
    steps: tuple[Step, ...]
    expect: Expect
    contact: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    start: datetime = DEFAULT_START
    line: int = 0


@dataclass(frozen=True)
class Suite:
    journey: str
    cases: tuple[Case, ...]
    version: int | None = None
    file: str = ""


def _start(text: str | None) -> datetime:
    if text is None:
        return DEFAULT_START
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def suite_from_document(doc: Document) -> Suite:
    """Build the suite model from a schema-valid document."""
    data = doc.data
    cases = []
    for i, case in enumerate(data["cases"]):
        steps = []
        for j, step in enumerate(case["events"]):
            line = doc.locate(("cases", i, "events", j)).line
            if "wait" in step:
                steps.append(Step(wait_ms=parse_ms(step["wait"]), line=line))
            else:
                steps.append(Step(
                    type=step["type"],
                    message=step.get("message"),
                    channel=step.get("channel"),
                    text=step.get("text"),
                    data=freeze(step.get("data", {})),
                    line=line,
                ))
        exp = case["expect"]
        expect = Expect(
            state=exp.get("state"),
            status=exp.get("status"),
            actions=None if "actions" not in exp else tuple(exp["actions"]),
            sent=None if "sent" not in exp else tuple(freeze(s) for s in exp["sent"]),
            suppressed=None if "suppressed" not in exp else tuple(exp["suppressed"]),
            vars=None if "vars" not in exp else freeze(exp["vars"]),
        )
        cases.append(Case(
            name=case["name"],
            steps=tuple(steps),
            expect=expect,
            contact=freeze(case.get("contact", {})),
            start=_start(case.get("start")),
            line=doc.locate(("cases", i)).line,
        ))
    return Suite(data["journey"], tuple(cases), data.get("version"), doc.file)


def check_against(doc: Document, journeys: Mapping[tuple[str, int], Journey]) -> list[Diagnostic]:
    """Problems of a test file against the journeys it names (states, actions, versions)."""
    data = doc.data
    versions = sorted(v for (jid, v) in journeys if jid == data["journey"])
    if not versions:
        known = ", ".join(sorted({jid for jid, _ in journeys})) or "none found"
        return [doc.diagnostic(("journey",), f"no journey {data['journey']!r} to test (journeys: {known})",
                               code="unknown-journey")]
    version = data.get("version", versions[-1])
    if version not in versions:
        return [doc.diagnostic(("version",), f"journey {data['journey']!r} has no version {version} "
                               f"(versions: {', '.join(map(str, versions))})")]
    journey = journeys[(data["journey"], version)]
    out = []
    for i, case in enumerate(data["cases"]):
        for j, step in enumerate(case["events"]):
            reason = unknown_reserved(step.get("type", ""))
            if reason:
                out.append(doc.diagnostic(("cases", i, "events", j, "type"), reason, code="unknown-event"))
        exp = case["expect"]
        if "state" in exp and exp["state"] not in journey.states:
            out.append(doc.diagnostic(("cases", i, "expect", "state"), f"journey {journey.id!r} has no state "
                                      f"{exp['state']!r} (states: {', '.join(journey.states)})"))
        for j, name in enumerate(exp.get("actions", [])):
            if not is_known(name):
                out.append(doc.diagnostic(("cases", i, "expect", "actions", j), f"unknown action {name!r}"))
    return out


def read_suite(doc: Document) -> tuple[Suite | None, list[Diagnostic]]:
    found = schema.check(doc, "test")
    if found:
        return None, found
    return suite_from_document(doc), []
