"""Writing events into the log once each (engine/store.py), on both databases."""

from __future__ import annotations

from datetime import UTC, datetime
from types import MappingProxyType

import pytest
from sqlalchemy import select

from engine.db.database import Database
from engine.db.schema import events
from engine.events import Event
from engine.store import store_events

pytestmark = pytest.mark.anyio

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def event(id: str, key: str) -> Event:
    return Event(id=id, type="timer.fired", occurred_at=T0, source="timer", provider_event_id=key,
                 contact_id="c-1", data=MappingProxyType({"n": 1}))


async def test_a_group_with_repeats_stores_only_what_is_new(db: Database) -> None:
    # Timers and emits reuse their ids when they come again: the id alone cannot say what is new.
    async with db.write.begin() as conn:
        first = await store_events(conn, [event("timer:a", "a"), event("ev-b1", "b")], T0)
    async with db.write.begin() as conn:
        second = await store_events(conn, [event("timer:a", "a"), event("ev-c", "c"), event("ev-b2", "b"),
                                           event("ev-c2", "c")], T0)
    assert sorted(first.inserted) == ["ev-b1", "timer:a"] and first.duplicates == []
    assert second.inserted == ["ev-c"]
    assert sorted(second.duplicates) == [("timer", "a"), ("timer", "b"), ("timer", "c")]
    async with db.read.connect() as conn:
        stored = {r.provider_event_id: (r.id, r.duplicates, r.occurred_at.replace(tzinfo=UTC), r.data)
                  for r in await conn.execute(select(events))}
    assert stored == {"a": ("timer:a", 1, T0, {"n": 1}), "b": ("ev-b1", 1, T0, {"n": 1}),
                      "c": ("ev-c", 1, T0, {"n": 1})}


async def test_a_group_of_new_events_is_stored_whole(db: Database) -> None:
    batch = [event(f"ev-{i}", f"k{i}") for i in range(100)]
    async with db.write.begin() as conn:
        stored = await store_events(conn, batch, T0)
    assert sorted(stored.inserted) == sorted(e.id for e in batch) and stored.duplicates == []
    async with db.read.connect() as conn:
        assert len((await conn.execute(select(events.c.id))).all()) == 100


def test_new_event_ids_grow_with_time_and_do_not_repeat() -> None:
    import time

    from engine.store import new_event_id

    first = [new_event_id() for _ in range(1000)]
    time.sleep(0.002)
    later = new_event_id()
    assert len(set(first)) == 1000
    assert all(len(i) == 35 and i.startswith("ev-") for i in first)
    assert max(first) < later  # a later millisecond sorts after: inserts land at the index's end
