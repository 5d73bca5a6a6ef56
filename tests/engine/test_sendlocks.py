"""engine.db.sendlocks: an opt-out in one process waits for a send in flight in another (SQLite)."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine.db.sendlocks import SendLocks, lock_order

pytestmark = pytest.mark.anyio

HOLDER = """
import asyncio, sys
from engine.db.sendlocks import SendLocks

async def main() -> None:
    locks = SendLocks.for_sqlite_file(sys.argv[1])
    async with locks.sending(sys.argv[2]):
        print("held", flush=True)
        await asyncio.sleep(float(sys.argv[3]))
    print("released", flush=True)

asyncio.run(main())
"""


def holder(database: Path, contact: str, seconds: float) -> subprocess.Popen[str]:
    """Another process that sends to *contact* for *seconds*; returns once it holds the lock."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(database), contact, str(seconds)],
                            stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[2])
    assert proc.stdout is not None
    assert proc.stdout.readline() == "held\n"
    return proc


def finish(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(10)
    if proc.stdout is not None:
        proc.stdout.close()


async def test_an_opt_out_waits_for_another_process_send_to_end(tmp_path: Path) -> None:
    database = tmp_path / "journeys.db"
    proc = holder(database, "c-1", 1.0)
    locks = SendLocks.for_sqlite_file(str(database))
    try:
        began = time.monotonic()
        async with locks.opting_out(["c-1"]):
            waited = time.monotonic() - began
            assert proc.stdout is not None and proc.stdout.readline() == "released\n"
        assert waited >= 0.5
        # another contact's opt-out does not wait for it
        other = holder(database, "c-1", 1.0)
        began = time.monotonic()
        async with locks.opting_out(["c-2"]):
            assert time.monotonic() - began < 0.5
        finish(other)
    finally:
        finish(proc)
        locks.close()


async def test_a_killed_sender_holds_nothing(tmp_path: Path) -> None:
    database = tmp_path / "journeys.db"
    proc = holder(database, "c-1", 60)
    locks = SendLocks.for_sqlite_file(str(database))
    try:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        began = time.monotonic()
        async with locks.opting_out(["c-1"]):
            assert time.monotonic() - began < 1
    finally:
        finish(proc)
        locks.close()


async def test_sends_in_one_process_share_the_byte_and_an_opt_out_waits_for_the_last(tmp_path: Path) -> None:
    locks = SendLocks.for_sqlite_file(str(tmp_path / "journeys.db"))
    order: list[str] = []

    async def send(name: str, seconds: float) -> None:
        async with locks.sending("c-1"):
            await asyncio.sleep(seconds)
            order.append(name)

    first = asyncio.create_task(send("short", 0.1))
    second = asyncio.create_task(send("long", 0.4))
    await asyncio.sleep(0.05)
    # the same process: fcntl does not keep it out, its own counting does
    async with locks.opting_out(["c-1"]):
        order.append("opt-out")
    await asyncio.gather(first, second)
    assert order == ["short", "long", "opt-out"]
    locks.close()


def test_every_holder_takes_several_contacts_in_one_order() -> None:
    contacts = [f"c-{n}" for n in range(50)]
    assert lock_order(contacts) == lock_order(reversed(contacts)) == lock_order(contacts + contacts)
