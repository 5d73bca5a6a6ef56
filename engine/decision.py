"""What the interpreter decides for one event: the steps, the work to do, the new instance.

A Decision is plain data. The runtime writes it in one transaction; ``journeys test``
applies it to a virtual world. Nothing in it has been done yet.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Any, Literal

from engine.instance import Instance
from journeys.model import DEFAULT_RETRY, RetryPolicy

Outcome = Literal["started", "transitioned", "ended", "goal", "ignored", "not_started", "failed"]
StepKind = Literal["started", "transition", "completed", "exited", "goal", "failed", "ignored"]


@dataclass(frozen=True)
class Step:
    """One line of an instance's timeline."""

    kind: StepKind
    at: datetime
    event_id: str | None = None
    event_type: str | None = None
    from_state: str | None = None
    to_state: str | None = None
    detail: str | None = None


@dataclass(frozen=True)
class ScheduledAction:
    """An action to run as a job. ``key`` is its idempotency key, passed to outside systems."""

    key: str
    action: str
    instance_id: str
    state: str
    seq: int
    index: int
    inputs: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    retry: RetryPolicy = DEFAULT_RETRY
    priority: str = "transactional"


@dataclass(frozen=True)
class TimerSet:
    """``after:`` of the entered state: fires as an event ``timer.fired`` at ``due_at``."""

    id: str
    instance_id: str
    due_at: datetime
    state: str
    seq: int
    index: int
    delay: str


@dataclass(frozen=True)
class Decision:
    outcome: Outcome
    reason: str
    instance: Instance | None = None
    steps: tuple[Step, ...] = ()
    actions: tuple[ScheduledAction, ...] = ()
    timers_set: tuple[TimerSet, ...] = ()
    timers_cancelled: tuple[str, ...] = ()

    @property
    def changed(self) -> bool:
        """Whether anything must be written besides the event's own status."""
        return self.outcome not in ("ignored", "not_started")
