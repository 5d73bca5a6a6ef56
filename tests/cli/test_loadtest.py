"""``journeys loadtest`` against a real ``journeys serve --no-engine``: every request it sends is
correctly signed and stored, and ``--rate`` spreads the requests out instead of sending bursts."""

from __future__ import annotations

import asyncio
import base64
import itertools
import signal
import sqlite3
import time
from pathlib import Path

import pytest

from cli.loadtest import Result, run_load
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
    # evenly paced: no two requests within a couple of ms of each other
    assert min(gaps[:10]) > 0.004, gaps[:10]
