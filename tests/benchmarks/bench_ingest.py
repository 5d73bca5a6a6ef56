"""Benchmark: durable ingest requests per second, next to a bare Litestar endpoint.

Run by hand (not collected by pytest):  python tests/benchmarks/bench_ingest.py [--duration 10]

The same load generator (``journeys loadtest``, in its own process on the same 2 cores)
sends new, signed events and Twilio status callbacks from 64 connections as fast as they
are answered, to:

- a bare Litestar endpoint that only reads the body and answers 202 (the yardstick), and a
  raw ASGI endpoint doing the same without Litestar (for information: /ingest is a plain
  ASGI app mounted in Litestar, so it skips Litestar's per-request work too);
- ``journeys serve`` as the README runs it (SQLite; its engine process at a lower priority),
  where every ``events`` request starts a journey that sends an SMS (console channel): the
  headline. Target: at least 0.70 of the bare endpoint's rate, with p99 under 50 ms, judged
  on the median of the rounds' ratios (bare and journeys run back to back in each round).
  After each of its runs the engine process works off the backlog (timed, printed) before
  the next round starts;
- ``journeys serve --no-engine``: the ingest path alone (verify, normalize, resolve contacts,
  store with group commit in its writer process), the same target;
- for information: both at a paced rate, and ``serve --no-engine`` beside ``journeys engine``.
"""

from __future__ import annotations

import argparse
import base64
import os
import platform
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SECRET = "whsec_" + base64.b64encode(b"benchmark-secret-0123456789abcdef").decode()
TOKEN = "benchmark-twilio-auth-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_up(base: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"the server at {base} exited")
        try:
            httpx.post(f"{base}/ingest/probe", content=b"", timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.2)
    sys.exit(f"the server at {base} did not start")


def deployment(folder: Path, port: int) -> None:
    shutil.copytree(ROOT / "examples" / "journeys", folder / "journeys")
    shutil.copytree(ROOT / "examples" / "templates", folder / "templates")
    (folder / "config.yaml").write_text(f"""
sources:
  app: {{provider: events, secret: env:BENCH_SECRET}}
  twilio: {{provider: twilio, secret: env:BENCH_TWILIO, public_url: "http://127.0.0.1:{port}/ingest/twilio"}}
channels:
  sms: {{provider: console}}
  email: {{provider: console}}
""")


def load(url: str, provider: str, duration: float, concurrency: int, rate: float = 0) -> tuple[float, float, float]:
    cmd = [str(BIN / "journeys"), "loadtest", url, "--provider", provider, "--duration", str(duration),
           "--concurrency", str(concurrency), "--secret", SECRET if provider == "events" else TOKEN,
           "--rate", str(rate)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False).stdout
    rate = float(re.search(r"throughput: ([\d,]+)", out).group(1).replace(",", ""))  # type: ignore[union-attr]
    p50, p99 = (float(x) for x in re.search(r"p50 ([\d.]+) ms.*p99 ([\d.]+) ms", out).groups())  # type: ignore[union-attr]
    if "202:" not in out and "200:" not in out:
        sys.exit(f"no request was accepted:\n{out}")
    return rate, p50, p99


RAW_APP = "tests.benchmarks.bare_app:raw"


def start(cmd: list[str], env: dict[str, str], cwd: Path | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop(*procs: subprocess.Popen[bytes]) -> None:
    for proc in procs:
        proc.send_signal(signal.SIGINT)
    for proc in procs:
        proc.wait(timeout=60)


def pending(folder: Path) -> tuple[int, int]:
    """(events stored, events still waiting for the engine) in the deployment's SQLite file."""
    with sqlite3.connect(folder / "journeys.db") as conn:
        total, waiting = conn.execute("SELECT count(*), sum(status = 'pending') FROM events").fetchone()
    return int(total), int(waiting or 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per run")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--paced", type=float, default=1000, help="a run at this offered rate (latency)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds of bare and journeys (medians)")
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"{platform.platform()}")
    env = {**os.environ, "BENCH_SECRET": SECRET, "BENCH_TWILIO": TOKEN}
    env.pop("JOURNEYS_DATABASE_URL", None)
    env.pop("JOURNEYS_REDIS_URL", None)
    journeys = str(BIN / "journeys")
    print(f"{args.concurrency} connections, {args.duration:.0f} s per run, SQLite, load generator in its own "
          "process on the same 2 cores")
    print(f"{'':44}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'of bare':>9}")

    def row(name: str, figures: tuple[float, float, float], bare: float | None = None, note: str = "") -> None:
        ratio = f"{figures[0] / bare:>9.2f}" if bare else f"{'':>9}"
        print(f"{name:44}{figures[0]:>9,.0f}{figures[1]:>9.1f}{figures[2]:>9.1f}{ratio}{note}", flush=True)

    for provider, path in (("events", "app"), ("twilio", "twilio")):
        def run(base: str, rate: float = 0, path: str = path, provider: str = provider) -> tuple[float, float, float]:
            return load(f"{base}/ingest/{path}", provider, args.duration, args.concurrency, rate)

        port, bare_port, raw_port, whole_port = free_port(), free_port(), free_port(), free_port()
        with tempfile.TemporaryDirectory() as tmp:
            folder, whole_folder = Path(tmp) / "deployment", Path(tmp) / "whole"
            folder.mkdir()
            whole_folder.mkdir()
            deployment(folder, port)
            deployment(whole_folder, whole_port)
            base, bare_base = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{bare_port}"
            whole_base = f"http://127.0.0.1:{whole_port}"
            bare_server = start([sys.executable, "-m", "uvicorn", "tests.benchmarks.bare_app:app", "--port",
                                 str(bare_port), "--no-access-log", "--log-level", "warning"], env, cwd=ROOT)
            ingest = start([journeys, "serve", str(folder), "--port", str(port), "--no-engine"], env)
            whole = start([journeys, "serve", str(whole_folder), "--port", str(whole_port)], env)
            wait_up(bare_base, bare_server)
            wait_up(base, ingest)
            wait_up(whole_base, whole)
            # Interleaved rounds, medians: this machine's speed drifts from one run to the next.
            # `serve` (everything, as the README runs it) is the headline: its journeys start and
            # send on every `events` request. After its run, the next round waits until its engine
            # process has worked off the backlog (timed), so no bare run shares the cores with it.
            bares, alones, wholes, drains = [], [], [], []
            for _ in range(args.rounds):
                bares.append(run(bare_base))
                alones.append(run(base))
                wholes.append(run(whole_base))
                began = time.monotonic()
                while pending(whole_folder)[1] and time.monotonic() - began < 120:
                    time.sleep(0.1)
                drains.append(time.monotonic() - began)
            row(f"bare Litestar endpoint, {provider}", median(bares))
            for name, runs in ((f"journeys serve, {provider} (as the README runs it)", wholes),
                               (f"journeys serve --no-engine, {provider}", alones)):
                # Each round's ratio is of two runs seconds apart: the machine's drift between rounds
                # (often 30 % and more here) cancels out of it, and the verdict is their median.
                ratios = sorted(a[0] / b[0] for a, b in zip(runs, bares, strict=True))
                ratio = ratios[len(ratios) // 2]
                p99 = sorted(a[2] for a in runs)[len(runs) // 2]
                row(name, median(runs), median(bares)[0])
                verdict = "met" if ratio >= 0.70 and p99 < 50 else "NOT MET"
                print(f"{'':4}median of the rounds' ratios {ratio:.2f}, median p99 {p99:.0f} ms; target >= 0.70, "
                      f"p99 < 50 ms: {verdict}")
                print(f"{'':4}rounds (bare / journeys): "
                      + ", ".join(f"{b[0]:,.0f} / {a[0]:,.0f} = {a[0] / b[0]:.2f} (p99 {a[2]:.0f} ms)"
                                  for a, b in zip(runs, bares, strict=True)))
            print(f"{'':4}serve's engine process worked off each run's backlog in "
                  + ", ".join(f"{d:.1f}" for d in drains) + " s; stored {:,}, {:,} not processed".format(
                      *pending(whole_folder)))
            row(f"  serve --no-engine at {args.paced:,.0f}/s offered", run(base, args.paced))
            row(f"  serve at {args.paced:,.0f}/s offered", run(whole_base, args.paced))
            stop(bare_server, whole)
            engine = start([journeys, "engine", str(folder)], env)
            row("  serve --no-engine with `journeys engine` beside it", run(base), median(bares)[0],
                "  (stored {:,}, {:,} not yet processed)".format(*pending(folder)))
            stop(ingest, engine)

        raw = start([sys.executable, "-m", "uvicorn", RAW_APP, "--port", str(raw_port), "--no-access-log",
                     "--log-level", "warning"], env, cwd=ROOT)
        wait_up(f"http://127.0.0.1:{raw_port}", raw)
        row(f"raw ASGI endpoint, {provider} (information)", run(f"http://127.0.0.1:{raw_port}"))
        stop(raw)


def median(runs: list[tuple[float, float, float]]) -> tuple[float, float, float]:
    """The run with the median rate (its latencies with it)."""
    return sorted(runs)[len(runs) // 2]


if __name__ == "__main__":
    main()
