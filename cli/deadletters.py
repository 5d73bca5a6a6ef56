"""``journeys dead-letters list|retry|discard``: jobs that ran out of attempts or failed for good."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from actions.executor import dead_letters, discard_dead, retry_dead
from engine.db.database import connect, database_url
from journeys.errors import UsageError


def run(command: str, folder: str, job_id: str | None, as_json: bool) -> int:
    if not Path(folder).is_dir():
        raise UsageError(f"{folder}: not a deployment folder")
    if command in ("retry", "discard") and not job_id:
        raise UsageError(f"dead-letters {command} needs the job id (the idempotency key)")

    async def go() -> int:
        db = connect(database_url(folder))
        try:
            if command == "list":
                rows = await dead_letters(db)
                if as_json:
                    print(json.dumps([{"id": r.id, "action": r.action, "instance_id": r.instance_id,
                                       "journey": r.journey, "attempts": r.attempts, "last_error": r.last_error,
                                       "inputs": r.inputs} for r in rows], default=str, indent=2))
                else:
                    for r in rows:
                        print(f"{r.id}  {r.action}  {r.journey}  attempts {r.attempts}  {r.last_error or ''}")
                    print(f"{len(rows)} dead letters")
                return 0
            done = await (retry_dead(db, str(job_id)) if command == "retry" else discard_dead(db, str(job_id)))
            if not done:
                print(f"journeys: no dead letter {job_id}")
                return 1
            print(f"{'retrying' if command == 'retry' else 'discarded'} {job_id}")
            return 0
        finally:
            await db.dispose()

    return asyncio.run(go())
