"""``journeys loadtest`` against a real ``journeys serve --no-engine``: every request it sends is
correctly signed and stored, ``--rate`` spreads the requests out instead of sending bursts, and a
``--burst`` follows the steady phase on the same connections and is reported on its own."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import re
import signal
import sqlite3
import time
from pathlib import Path

import pytest

from cli.loadtest import Phase, Result, run_load, run_phases
from cli.main import main
from tests.cli.test_serve import _env, _serving

SECRET = "whsec_" + base64.b64encode(b"loadtest-secret-0123456789abcdef").decode()
TOKEN = "loadtest-twilio-token"


def _stored(folder: Path, source: str) -> int:
    with sqlite3.connect(folder / "journeys.db") as conn:
        return int(conn.execute("SELECT count(*) FROM events WHERE source = ?", (source,)).fetchone()[0])


def test_every_request_is_signed_and_stored(deployment: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    env = {**_env(), "APP_WEBHOOK_SECRET": SECRET, "TWILIO_AUTH_TOKEN": TOKEN}
    proc, base = _serving(["serve", str(deployment), "--dev", "--no-engine"], tmp_path / "serve.log", env)
    try:
        assert main(["loadtest", f"{base}/ingest/app", "--secret", SECRET, "--requests", "150",
                     "--concurrency", "8", "--duration", "30"]) == 0
        assert main(["loadtest", f"{base}/ingest/twilio", "--provider", "twilio", "--secret", TOKEN,
                     "--public-url", "https://hooks.example.com/ingest/twilio", "--requests", "60",
                     "--concurrency", "4", "--duration", "30", "--contacts", "20"]) == 0
        out = capsys.readouterr().out
        assert "150 requests" in out and "202: 150" in out
        assert "60 requests" in out and "200: 60" in out
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
    assert _stored(deployment, "app") == 150
    assert _stored(deployment, "twilio") == 60


def test_a_wrong_secret_is_reported_not_counted(deployment: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    env = {**_env(), "APP_WEBHOOK_SECRET": SECRET}
    proc, base = _serving(["serve", str(deployment), "--dev", "--no-engine"], tmp_path / "serve.log", env)
    try:
        wrong = "whsec_" + base64.b64encode(b"not-the-secret-0123456789abcdefg").decode()
        assert main(["loadtest", f"{base}/ingest/app", "--secret", wrong, "--requests", "5",
                     "--concurrency", "1", "--duration", "30"]) == 1
        assert "401: 5" in capsys.readouterr().out
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)


@pytest.mark.anyio
async def test_a_paced_run_spreads_the_connections_out() -> None:
    """At --rate, each connection sends once per interval, the connections in turn: the first
    requests of 10 connections at 100/s leave 10 ms apart, not all at once."""
    sent: list[float] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await reader.readuntil(b"\r\n\r\n"):
                sent.append(time.perf_counter())
                writer.write(b"HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()  # the load generator is done

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        result: Result = await run_load(f"http://127.0.0.1:{port}/x", lambda n: (b"", {}), duration=0.35,
                                        concurrency=10, rate=100)
    assert result.ok >= 25
    gaps = [b - a for a, b in itertools.pairwise(sent)]
    # evenly paced: the first ten take about 90 ms and their typical gap is about 10 ms (sent all
    # at once they would take a millisecond or two). The smallest gap is not the test: the
    # arrival times are the receiving loop's, and a busy machine sometimes hands two at once.
    assert sent[9] - sent[0] > 0.06, gaps[:10]
    assert sorted(gaps[:9])[4] > 0.006, gaps[:10]


def test_a_burst_after_the_steady_phase_sends_the_type_and_data_asked_for(
        deployment: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    env = {**_env(), "APP_WEBHOOK_SECRET": SECRET}
    proc, base = _serving(["serve", str(deployment), "--dev", "--no-engine"], tmp_path / "serve.log", env)
    before = time.time()
    try:
        # the first webhook after a start waits for the writer process to start: not part of the pace
        assert main(["loadtest", f"{base}/ingest/app", "--secret", SECRET, "--requests", "1",
                     "--concurrency", "1"]) == 0
        capsys.readouterr()
        assert main(["loadtest", f"{base}/ingest/app", "--secret", SECRET, "--concurrency", "8",
                     "--rate", "40", "--duration", "1", "--burst", "120", "--type", "order.created",
                     "--data", '{"order_id": "o-{n}", "sent_at": "{time}", "items": [{"sku": "A-{n}"}]}']) == 0
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
    out = capsys.readouterr().out
    steady, burst = out.split("\nsteady:\n")[1].split("\nburst:\n")
    assert "202: 120" in burst and "120 requests" in burst
    assert re.search(r"latency: p50 [\d.]+ ms, p90 [\d.]+ ms, p99 [\d.]+ ms, max [\d.]+ ms", burst)
    steady_n = int(re.search(r"(\d+) requests in", steady).group(1))  # type: ignore[union-attr]
    assert 30 <= steady_n <= 50, steady  # 40/s for 1 s
    with sqlite3.connect(deployment / "journeys.db") as conn:
        rows = conn.execute("SELECT type, data FROM events WHERE source = 'app' AND type != 'invoice.overdue'"
                            ).fetchall()
    assert {kind for kind, _ in rows} == {"order.created"}
    data = [json.loads(raw) for _, raw in rows]
    # {n} numbers the requests of the whole run, steady and burst alike
    assert sorted(int(d["order_id"][2:]) for d in data) == list(range(steady_n + 120))
    assert all(d["items"] == [{"sku": "A" + d["order_id"][1:]}] for d in data)
    assert all(before <= float(d["sent_at"]) <= time.time() for d in data)


def test_type_and_data_are_checked(capsys: pytest.CaptureFixture[str]) -> None:
    url = "http://127.0.0.1:9/ingest/app"  # nothing is sent: the arguments are refused first
    assert main(["loadtest", url, "--secret", SECRET, "--data", "[1, 2]"]) == 2
    assert main(["loadtest", url, "--secret", SECRET, "--data", "{nope"]) == 2
    assert main(["loadtest", url, "--provider", "twilio", "--secret", TOKEN, "--type", "order.created"]) == 2
    assert main(["loadtest", url, "--secret", SECRET, "--duration", "0"]) == 2
    assert main(["loadtest", url, "--secret", SECRET, "--burst-rate", "100"]) == 2
    err = capsys.readouterr().err
    assert "--data must be a JSON object" in err and "--data is not JSON" in err
    assert "--type and --data are for events sources" in err
    assert "nothing to send" in err and "--burst-rate needs" in err


@pytest.mark.anyio
async def test_the_burst_uses_the_same_connections_and_its_own_pace() -> None:
    """Steady at 50/s for 0.4 s, then 60 requests as fast as possible, then (another run) a burst
    at 200/s for 0.3 s: each phase is counted apart, and no new connection is opened for a burst."""
    arrived: list[float] = []
    connections = 0

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        try:
            while await reader.readuntil(b"\r\n\r\n"):
                arrived.append(time.perf_counter())
                writer.write(b"HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    url = f"http://127.0.0.1:{port}/x"
    async with server:
        steady, burst = await run_phases(url, lambda n: (b"", {}), [Phase("steady", 0.4, 50), Phase("burst", 0, 0, 60)],
                                         concurrency=4)
        assert connections == 4
        assert 15 <= steady.ok <= 22 and burst.ok == 60 and sum(burst.statuses.values()) == 60
        # as fast as possible: 60 requests take far less time than 20 paced ones did
        assert burst.elapsed < steady.elapsed / 2, (burst.elapsed, steady.elapsed)
        paced, fast = await run_phases(url, lambda n: (b"", {}), [Phase("steady", 0.3, 20), Phase("burst", 0.3, 200)],
                                       concurrency=4)
        assert connections == 8
    assert 4 <= paced.ok <= 8 and 50 <= fast.ok <= 62, (paced.ok, fast.ok)
