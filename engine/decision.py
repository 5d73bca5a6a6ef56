"""What the interpreter decides for one event: the steps, the work to do, the new instance.

A Decision is plain data. The runtime writes it in one transaction; ``journeys test``
applies it to a virtual world. Nothing in it has been done yet.

These are NamedTuples rather than frozen dataclasses: a decision makes several of them,
and a frozen dataclass's ``__init__`` costs about five times as much to run.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from types import MappingProxyType
from typing import Any, Literal, NamedTuple

from engine.instance import Instance
from journeys.model import DEFAULT_RETRY, RetryPolicy

Outcome = Literal["started", "transitioned", "ended", "goal", "ignored", "duplicate", "not_started", "failed"]
StepKind = Literal["started", "transition", "completed", "exited", "goal", "failed", "ignored"]


class Step(NamedTuple):
    """One line of an instance's timeline."""

    kind: StepKind
    at: datetime
    event_id: str | None = None
    event_type: str | None = None
    from_state: str | None = None
    to_state: str | None = None
    detail: str | None = None


class ScheduledAction(NamedTuple):
    """An action to run as a job. ``key`` is its idempotency key, passed to outside systems."""

    key: str
    action: str
    instance_id: str
    state: str
    seq: int
    idx: int
    inputs: Mapping[str, Any] = MappingProxyType({})
    retry: RetryPolicy = DEFAULT_RETRY
    priority: str = "transactional"


class TimerSet(NamedTuple):
    """``after:`` of the entered state: fires as an event ``timer.fired`` at ``due_at``."""

    id: str
    instance_id: str
    due_at: datetime
    state: str
    seq: int
    idx: int
    delay: str


class Decision(NamedTuple):
    outcome: Outcome
    reason: str
    instance: Instance | None = None
    steps: tuple[Step, ...] = ()
    actions: tuple[ScheduledAction, ...] = ()
    timers_set: tuple[TimerSet, ...] = ()
    timers_cancelled: tuple[str, ...] = ()

    @property
    def changed(self) -> bool:
        """Whether the instance must be written (an ignored event is still remembered by it)."""
        return self.instance is not None and self.outcome not in ("duplicate", "not_started")
