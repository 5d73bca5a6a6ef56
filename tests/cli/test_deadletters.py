"""``journeys dead-letters list|retry|discard`` on a deployment's database."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from cli.main import main
from engine.db import migrate
from engine.db.database import connect
from engine.db.schema import jobs


def _dead(folder: Path) -> None:
    async def go() -> None:
        db = connect(f"sqlite+aiosqlite:///{folder / 'journeys.db'}")
        await migrate.upgrade(db)
        now = datetime.now(UTC)
        async with db.write.begin() as conn:
            await conn.execute(jobs.insert(), [{
                "id": f"i-1:1:{n}", "instance_id": "i-1", "journey": "j", "action": "http", "inputs": {"n": n},
                "retry": {}, "priority": "transactional", "status": "dead", "attempts": 5,
                "next_attempt_at": now, "last_error": "HTTP 500", "created_at": now, "updated_at": now}
                for n in range(2)])
        await db.dispose()

    asyncio.run(go())


def test_list_retry_discard(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JOURNEYS_DATABASE_URL", raising=False)
    _dead(tmp_path)
    assert main(["dead-letters", "list", "--dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "i-1:1:0  http  j  attempts 5  HTTP 500" in out and "2 dead letters" in out
    assert main(["dead-letters", "retry", "i-1:1:0", "--dir", str(tmp_path)]) == 0
    assert main(["dead-letters", "discard", "i-1:1:1", "--dir", str(tmp_path)]) == 0
    assert main(["dead-letters", "retry", "i-1:1:1", "--dir", str(tmp_path)]) == 1  # discarded: not dead anymore
    capsys.readouterr()
    assert main(["dead-letters", "list", "--json", "--dir", str(tmp_path)]) == 0
    assert json.loads(capsys.readouterr().out) == []
    assert main(["dead-letters", "retry", "--dir", str(tmp_path)]) == 2  # which one?
