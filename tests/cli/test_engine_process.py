"""``journeys serve`` runs journey work in a child process: lower priority, woken by commits,
restarted when it dies, gone when the server goes."""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import httpx
import pytest

from cli.engine_process import NICE
from tests.cli.test_serve import _env, _post_overdue, _serving

T = TypeVar("T")
SECRET = "whsec_" + base64.b64encode(b"engine-process-secret-0123456789").decode()


def _children(pid: int, pattern: str) -> list[int]:
    found = subprocess.run(["pgrep", "-P", str(pid), "-f", pattern], capture_output=True, text=True).stdout.split()
    return [int(p) for p in found]


def _wait_for(what: str, check: Callable[[], T], timeout: float = 20) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"{what}: not within {timeout} s")


def _nice(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[16])  # field 19; the split starts at field 3


@pytest.fixture
def served(deployment: Path, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    env = {**_env(), "APP_WEBHOOK_SECRET": SECRET}
    proc, base = _serving(["serve", str(deployment), "--dev"], tmp_path / "serve.log", env, new_session=True)
    yield proc, base
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _instances(base: str, contact: str) -> list[tuple[str, str]]:
    items = httpx.get(f"{base}/api/instances", params={"contact_id": contact}).json()["items"]
    return [(i["journey"], i["state"]) for i in items]


def test_journey_work_runs_in_a_child_at_a_lower_priority(served: tuple[subprocess.Popen[bytes], str]) -> None:
    proc, base = served
    answer = _post_overdue(base, SECRET, "p1", {"id": "c-p1", "phone": "+4915112345601"})
    assert answer.status_code == 202, answer.text
    _wait_for("the journey started", lambda: _instances(base, "c-p1") == [("payment-reminder", "remind")])
    [child] = _children(proc.pid, "cli.engine_process")
    assert _nice(child) - _nice(proc.pid) == NICE
    if hasattr(os, "SCHED_IDLE"):
        assert os.sched_getscheduler(child) == os.SCHED_IDLE  # only CPU time nobody else wants
    assert _nice(_children(proc.pid, "ingest.writer")[0]) == _nice(proc.pid)  # webhooks keep their priority


def test_a_killed_engine_process_is_started_again(served: tuple[subprocess.Popen[bytes], str]) -> None:
    proc, base = served
    [first] = _wait_for("the engine process", lambda: _children(proc.pid, "cli.engine_process"))
    os.kill(first, signal.SIGKILL)
    # webhooks are still taken while it is down
    answer = _post_overdue(base, SECRET, "k1", {"id": "c-k1", "phone": "+4915112345602"})
    assert answer.status_code == 202, answer.text
    [second] = _wait_for("a new engine process",
                         lambda: [p for p in _children(proc.pid, "cli.engine_process") if p != first])
    assert second != first
    _wait_for("the journey started", lambda: _instances(base, "c-k1") == [("payment-reminder", "remind")])


def test_ctrl_c_stops_the_server_and_both_children(served: tuple[subprocess.Popen[bytes], str]) -> None:
    proc, base = served
    _wait_for("the engine process", lambda: _children(proc.pid, "cli.engine_process"))
    assert _post_overdue(base, SECRET, "c1", {"id": "c-c1", "phone": "+4915112345603"}).status_code == 202
    os.killpg(proc.pid, signal.SIGINT)
    proc.wait(timeout=40)

    def nobody_left() -> bool:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return True
        return False

    _wait_for("every process of the group ended", nobody_left, timeout=30)


def test_the_engine_process_ends_when_the_server_is_killed(served: tuple[subprocess.Popen[bytes], str]) -> None:
    proc, _ = served
    [child] = _wait_for("the engine process", lambda: _children(proc.pid, "cli.engine_process"))
    proc.kill()
    proc.wait()

    def gone() -> bool:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            return True
        return False

    _wait_for("the engine process ended by itself", gone, timeout=30)
