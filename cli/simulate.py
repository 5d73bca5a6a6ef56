"""``journeys simulate``: one journey, events from a JSON Lines file, the trace step by step."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path
from types import MappingProxyType
from typing import Any

from actions.templates import TemplateStore
from cli.testcmd import deployment_policies
from engine.compiled import compile_journey
from engine.instance import Contact
from engine.simulator import Record, World
from journeys.deployment import find_root, template_index
from journeys.durations import DurationSyntaxError, parse_ms
from journeys.errors import UsageError
from journeys.loader import load_journey
from journeys.testfile import DEFAULT_START


def _time(value: datetime) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S")


def _print_record(record: Record) -> None:
    event = record.event
    extra = f" {event.text!r}" if event.text else ""
    print(f"{_time(record.at)}  {event.type}{extra}")
    for note in record.notes:
        print(f"    world: {note}")
    for journey, decision in record.decisions:
        instance = decision.instance
        where = f" [{instance.state}, {instance.status}]" if instance else ""
        print(f"    {journey}: {decision.outcome}: {decision.reason}{where}")
        for step in decision.steps:
            if step.kind == "failed":
                print(f"      failed: {step.detail}")
        for action in decision.actions:
            inputs = json.dumps(dict(action.inputs), default=str, ensure_ascii=False)
            print(f"      action {action.action} {inputs} (key {action.key})")
        for timer in decision.timers_set:
            print(f"      timer after {timer.delay} at {_time(timer.due_at)}")
        if decision.timers_cancelled:
            print(f"      timers cancelled: {len(decision.timers_cancelled)}")


def _contact(raw: str | None) -> Contact:
    if raw is None:
        return Contact(id="sim-contact", phone="+15005550006", email="sim@example.com")
    try:
        data = json.loads(raw)
        return Contact(id=str(data.get("id", "sim-contact")), phone=data.get("phone"), email=data.get("email"),
                       timezone=data.get("timezone"), locale=data.get("locale"),
                       attributes=MappingProxyType(dict(data.get("attributes", {}))))
    except (ValueError, AttributeError, TypeError) as exc:
        raise UsageError(f"--contact is not a JSON object: {exc}") from exc


def _lines(path: str) -> list[tuple[int, dict[str, Any]]]:
    try:
        text = Path(path).read_text("utf-8")
    except OSError as exc:
        raise UsageError(f"{path}: {exc.strerror}") from exc
    out = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            item = json.loads(line)
        except ValueError as exc:
            raise UsageError(f"{path}:{n}: not JSON: {exc}") from exc
        if not isinstance(item, dict) or not ("type" in item or "wait" in item):
            raise UsageError(f'{path}:{n}: each line is {{"type": ...}} or {{"wait": "2d"}}')
        out.append((n, item))
    return out


def run(file: str, events: str, contact: str | None, start: str | None) -> int:
    root = find_root(Path(file))
    journey = load_journey(file, template_index(root) if root else None)
    begin = DEFAULT_START if start is None else datetime.fromisoformat(start.replace("Z", "+00:00"))
    world = World([compile_journey(journey)], _contact(contact), begin, deployment_policies(root),
                  TemplateStore(root / "templates" if root else None))
    shown = 0
    for n, item in _lines(events):
        try:
            if "wait" in item:
                world.wait(timedelta(milliseconds=parse_ms(item["wait"])))
            else:
                world.event(str(item["type"]), message=item.get("message"), channel=item.get("channel"),
                            text=item.get("text"), data=item.get("data"))
        except (DurationSyntaxError, LookupError, RuntimeError) as exc:
            raise UsageError(f"{events}:{n}: {exc}") from exc
        for record in world.records[shown:]:
            _print_record(record)
        shown = len(world.records)
        if "wait" in item:
            print(f"{_time(world.clock)}  (waited {item['wait']})")
    instance = world.instance_of(journey.id)
    if instance is None:
        print("end: no instance started")
    else:
        print(f"end: {journey.id} is {instance.status} in {instance.state}; "
              f"trace: {' -> '.join(world.trace(journey.id))}")
    print(f"sent: {len(world.messages)} messages, blocked: {len(world.blocked)}, "
          f"suppressed: {', '.join(sorted(world.suppressed)) or 'none'}")
    return 0
