"""The model: built from files, frozen, and back to data that loads into an equal model."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from journeys.build import journey_from_data
from journeys.loader import journey_from_text, load_journey
from tests.conftest import EXAMPLES

JOURNEYS = sorted(p for p in (EXAMPLES / "journeys").glob("*.yaml") if not p.name.endswith(".test.yaml"))


@pytest.mark.parametrize("path", JOURNEYS, ids=[p.name for p in JOURNEYS])
def test_round_trip(path: Path) -> None:
    journey = load_journey(str(path))
    text = yaml.safe_dump(journey.to_dict(), sort_keys=False)
    again = journey_from_text(text, "again.yaml")
    assert again == journey
    assert again.content_hash == journey.content_hash
    # and data -> model -> data is a fixed point
    assert journey_from_data(journey.to_dict()).to_dict() == journey.to_dict()


def test_model_is_frozen() -> None:
    journey = load_journey(str(JOURNEYS[0]))
    with pytest.raises(dataclasses.FrozenInstanceError):
        journey.version = 9  # type: ignore[misc]
    with pytest.raises(TypeError):
        journey.states["x"] = journey.states[journey.initial]  # type: ignore[index]


BASE = """
journey: hashing
version: 1
trigger: {on: a.b}
initial: s
states:
  s: {on: {c.d: t}}
  t: {final: true}
"""


def test_hash_ignores_formatting_but_not_meaning() -> None:
    plain = journey_from_text(BASE)
    respelled = journey_from_text(BASE.replace("{on: {c.d: t}}", "\n    on:\n      c.d: [{to: t}]  # comment"))
    changed = journey_from_text(BASE.replace("c.d", "c.e"))
    assert respelled.content_hash == plain.content_hash
    assert changed.content_hash != plain.content_hash


def test_defaults_and_spellings() -> None:
    journey = load_journey(str(EXAMPLES / "journeys" / "payment-reminder.yaml"))
    remind = journey.states["remind"]
    assert [t.to for t in remind.on["message.received"]] == ["support", "awaiting_payment"]
    assert remind.on["message.received"][0].when is not None
    assert remind.after[0].delay_ms == 24 * 3600 * 1000
    assert remind.enter[0].retry.max_attempts == 6
    assert remind.enter[0].retry_name == "patient"
    support = journey.states["support"]
    assert support.enter[0].retry.max_ms == 10 * 60 * 1000
    assert support.enter[0].retry.factor == 2.0  # the default, for fields left out
    assert journey.reentry.mode == "cooldown"
    assert journey.reentry.cooldown_ms == 7 * 86_400_000
    assert journey.goal is not None and journey.goal.within_ms == 7 * 86_400_000
    assert journey.triggers[0].when == "event.data.amount_due > 0"
    assert journey.subject == "contact" and journey.priority == "transactional"
