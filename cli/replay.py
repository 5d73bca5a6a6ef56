"""``journeys replay``: stored events through a journey version, in a scratch database."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime
from pathlib import Path

from sqlalchemy import select

from engine.db.database import connect, database_url
from engine.db.schema import journey_versions
from engine.replay import replay
from journeys.build import journey_from_data
from journeys.deployment import Placeholders, load_deployment
from journeys.errors import UsageError
from journeys.model import Journey


def _when(text: str | None, flag: str) -> datetime | None:
    if text is None:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise UsageError(f"{flag} {text!r} is not an ISO 8601 time (2026-01-05T10:00:00Z)") from exc


async def _run(folder: Path, journey_id: str, version: int | None, contact: str | None, since: datetime | None,
               until: datetime | None, scratch: str | None) -> int:
    deployment = load_deployment(str(folder), Placeholders())
    db = connect(database_url(folder))
    try:
        on_disk = sorted((j for (jid, _), j in deployment.journeys.items() if jid == journey_id),
                         key=lambda j: j.version)
        journey: Journey | None = None
        if version is None and on_disk:
            journey = on_disk[-1]
        elif version is not None:
            journey = next((j for j in on_disk if j.version == version), None)
            if journey is None:
                async with db.read.connect() as conn:
                    row = (await conn.execute(select(journey_versions.c.definition, journey_versions.c.file)
                                              .where(journey_versions.c.journey == journey_id,
                                                     journey_versions.c.version == version))).first()
                if row is not None:
                    journey = journey_from_data(row.definition, row.file or "")
        if journey is None:
            raise UsageError(f"no journey {journey_id!r}" + (f" version {version}" if version else "")
                             + f" in {folder} or its database")
        result = await replay(db, journey, contact=contact, since=since, until=until, scratch=scratch)
    finally:
        await db.dispose()
    print(f"replayed {result.events} events through {journey.id} v{journey.version} (scratch: {result.scratch})")
    for step in result.steps:
        move = f"{step.from_state or ''} -> {step.to_state or ''}".strip()
        detail = f" ({step.detail})" if step.detail else ""
        print(f"{step.at:%Y-%m-%d %H:%M:%S}  {step.instance_id}  {step.kind:<10} {step.event_type or '':<22} "
              f"{move}{detail}")
    for job in result.jobs:
        print(f"  action {job.action} {json.dumps(job.inputs, ensure_ascii=False, default=str)} (key {job.id})")
    for inst in result.instances:
        print(f"instance {inst.id} ({inst.subject}): {inst.status} in {inst.state}")
    return 0


def run(path: str, journey: str, version: int | None, contact: str | None, since: str | None,
        until: str | None, scratch: str | None) -> int:
    folder = Path(path)
    if not folder.is_dir():
        raise UsageError(f"{path}: not a deployment folder")
    if contact is None and since is None:
        raise UsageError("say which events to replay: --contact ID, or --since TIME [--until TIME]")
    return asyncio.run(_run(folder, journey, version, contact, _when(since, "--since"), _when(until, "--until"),
                            scratch))
