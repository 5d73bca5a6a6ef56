"""``journeys replay``: real events, a changed journey, a scratch database."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from cli.main import main
from engine.db import migrate
from engine.db.database import Database, connect
from engine.replay import replay
from tests.engine.runtime_helpers import REMINDER, T0, deploy, drain, engine_for, ev, journey, put

pytestmark = pytest.mark.anyio

# the fix: a delivered reminder goes straight to the follow-up
FIXED = REMINDER.replace("message.delivered: delivered", "message.delivered: reminded\n      note.moved: delivered"
                         ).replace("version: 1", "version: 2")


async def _history(db: Database) -> None:
    registry = await deploy(db, journey())
    await put(db, ev("invoice.overdue", "c-1", data={"invoice_id": "INV-7"}),
              ev("invoice.overdue", "c-2", data={"invoice_id": "INV-8"}))
    await drain(engine_for(db, registry))
    await put(db, ev("message.delivered", "c-1", id="d1"))
    await drain(engine_for(db, registry))


async def test_replay_through_a_new_version(db: Database, tmp_path: Path) -> None:
    await _history(db)
    result = await replay(db, journey(FIXED), contact="c-1", scratch=str(tmp_path / "scratch.db"),
                          until=T0 + timedelta_days(2))
    assert result.events == 2
    [inst] = result.instances
    assert (inst.version, inst.state, inst.status) == (2, "reminded", "completed")
    assert [(s.kind, s.to_state) for s in result.steps] == [("started", "waiting"), ("transition", "reminded"),
                                                             ("completed", "reminded")]
    assert [j.action for j in result.jobs] == ["send_sms", "send_email"]


async def test_replay_fires_timers_at_their_time(db: Database, tmp_path: Path) -> None:
    await _history(db)
    result = await replay(db, journey(), contact="c-2", until=T0 + timedelta_days(1))
    [inst] = result.instances
    assert (inst.state, inst.status) == ("reminded", "completed")
    assert [j.action for j in result.jobs] == ["send_sms", "send_email"]


def timedelta_days(n: int) -> object:
    from datetime import timedelta

    return timedelta(days=n)


def test_replay_command(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JOURNEYS_DATABASE_URL", raising=False)
    (tmp_path / "journeys").mkdir()
    (tmp_path / "config.yaml").write_text("{}\n")
    (tmp_path / "journeys" / "reminder.yaml").write_text(REMINDER)

    async def prepare() -> None:
        db = connect(f"sqlite+aiosqlite:///{tmp_path / 'journeys.db'}")
        await migrate.upgrade(db)
        await _history(db)
        await db.dispose()

    asyncio.run(prepare())
    (tmp_path / "journeys" / "reminder.yaml").write_text(FIXED)
    assert main(["replay", str(tmp_path), "--journey", "reminder", "--contact", "c-1"]) == 0
    out = capsys.readouterr().out
    assert "replayed 2 events through reminder v2" in out
    assert "transition message.delivered" in out and "waiting -> reminded" in out
    assert "action send_email" in out
    # the stored version 1 replays as it ran in production
    assert main(["replay", str(tmp_path), "--journey", "reminder", "--version", "1", "--contact", "c-1"]) == 0
    assert "waiting -> delivered" in capsys.readouterr().out
    assert main(["replay", str(tmp_path), "--journey", "reminder"]) == 2
    assert main(["replay", str(tmp_path), "--journey", "nope", "--contact", "c-1"]) == 2
