"""Journey versions in the database: register a deployment's journeys, load every version.

Each (journey, version) is stored once with its content hash and its definition, so an
instance started on version 2 keeps running on version 2 after the file says 3, even if
version 2's file is gone. A file whose content changed under the same version number is
refused: people must bump the version, or running instances would silently change.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from engine.compiled import CompiledJourney, compile_journey
from engine.db.schema import journey_versions
from journeys.build import journey_from_data
from journeys.errors import JourneysError
from journeys.events import TIMER_FIRED
from journeys.model import Journey


class VersionConflictError(JourneysError):
    """A journey file changed but kept its version number."""


async def register(conn: AsyncConnection, journeys: Iterable[Journey], now: datetime) -> list[tuple[str, int]]:
    """Store new versions; refuse changed content under a known version. Returns the new ones."""
    rows = (await conn.execute(select(journey_versions.c.journey, journey_versions.c.version,
                                      journey_versions.c.content_hash, journey_versions.c.file))).all()
    known = {(r.journey, r.version): r for r in rows}
    added, conflicts = [], []
    for journey in journeys:
        found = known.get(journey.key)
        if found is None:
            await conn.execute(journey_versions.insert().values(
                journey=journey.id, version=journey.version, content_hash=journey.content_hash,
                definition=journey.to_dict(), file=journey.file, registered_at=now,
            ))
            added.append(journey.key)
        elif found.content_hash != journey.content_hash:
            conflicts.append(f"{journey.file}: journey {journey.id!r} version {journey.version} changed since it "
                             f"was deployed (from {found.file}); bump `version:` to {journey.version + 1} so that "
                             "running instances keep the version they started on")
    if conflicts:
        raise VersionConflictError("\n".join(conflicts))
    return added


def _event_types(journey: Journey) -> frozenset[str]:
    types = {t.on for t in journey.triggers} | {e.on for e in journey.exit}
    if journey.goal is not None:
        types.add(journey.goal.on)
    for state in journey.states.values():
        types |= set(state.on)
    return frozenset(types | {TIMER_FIRED, "action.failed"})


@dataclass
class Registry:
    """Every compiled version; new instances start on the newest version of each journey."""

    compiled: dict[tuple[str, int], CompiledJourney] = field(default_factory=dict)
    newest: dict[str, CompiledJourney] = field(default_factory=dict)
    # event types any version of a journey reacts to: other events skip it entirely
    types: dict[str, frozenset[str]] = field(default_factory=dict)

    def add(self, journey: Journey) -> None:
        cj = compile_journey(journey)
        self.compiled[journey.key] = cj
        if journey.id not in self.newest or self.newest[journey.id].version < journey.version:
            self.newest[journey.id] = cj
        self.types[journey.id] = self.types.get(journey.id, frozenset()) | _event_types(journey)

    def get(self, journey: str, version: int) -> CompiledJourney | None:
        return self.compiled.get((journey, version))

    def interested(self, event_type: str) -> list[str]:
        return [jid for jid, types in self.types.items() if event_type in types]


async def load_registry(conn: AsyncConnection, deployed: Mapping[tuple[str, int], Journey] | None = None) -> Registry:
    """All stored versions (the deployment's own objects where they are the same version)."""
    registry = Registry()
    rows = (await conn.execute(select(journey_versions.c.journey, journey_versions.c.version,
                                      journey_versions.c.definition, journey_versions.c.file))).all()
    for row in rows:
        journey = (deployed or {}).get((row.journey, row.version))
        registry.add(journey if journey is not None else journey_from_data(row.definition, row.file or ""))
    return registry
