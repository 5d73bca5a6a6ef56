"""Benchmark: durable ingest requests per second, next to a bare Litestar endpoint.

Run by hand (not collected by pytest):  python tests/benchmarks/bench_ingest.py [--duration 10]

Two servers on this machine: ``journeys serve`` (SQLite, the example journeys running, group
commit) and a bare Litestar endpoint that only reads the body and answers 202. The same
load generator (``journeys loadtest``, in its own process) sends new, signed events and
Twilio status callbacks from 64 connections as fast as they are answered. Target (issue 5):
journeys at least 0.70 of the bare endpoint's rate, with p99 under 50 ms.
"""

from __future__ import annotations

import argparse
import base64
import os
import platform
import re
import shutil
import socket
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--paced", type=float, default=1000, help="a second run at this offered rate (latency)")
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"{platform.platform()}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "deployment"
        folder.mkdir()
        port, bare_port = free_port(), free_port()
        deployment(folder, port)
        env = {**os.environ, "BENCH_SECRET": SECRET, "BENCH_TWILIO": TOKEN}
        env.pop("JOURNEYS_DATABASE_URL", None)
        serve = subprocess.Popen([str(BIN / "journeys"), "serve", str(folder), "--port", str(port)], env=env,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        bare = subprocess.Popen([sys.executable, "-m", "uvicorn", "tests.benchmarks.bare_app:app", "--port",
                                 str(bare_port), "--no-access-log", "--log-level", "warning"], cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_up(f"http://127.0.0.1:{port}", serve)
            wait_up(f"http://127.0.0.1:{bare_port}", bare)
            print(f"{args.concurrency} connections, {args.duration:.0f} s per run, SQLite, load generator in its "
                  "own process on the same 2 cores")
            print(f"{'':24}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'of bare':>10}")
            for provider, path in (("events", "app"), ("twilio", "twilio")):
                b = load(f"http://127.0.0.1:{bare_port}/ingest/{path}", provider, args.duration, args.concurrency)
                j = load(f"http://127.0.0.1:{port}/ingest/{path}", provider, args.duration, args.concurrency)
                print(f"{'bare Litestar, ' + provider:24}{b[0]:>10,.0f}{b[1]:>10.1f}{b[2]:>10.1f}{'':>10}")
                verdict = "ok" if j[0] / b[0] >= 0.70 and j[2] < 50 else "target missed"
                print(f"{'journeys, ' + provider:24}{j[0]:>10,.0f}{j[1]:>10.1f}{j[2]:>10.1f}{j[0] / b[0]:>10.2f}  "
                      f"(target >= 0.70 and p99 < 50 ms: {verdict})")
                paced = load(f"http://127.0.0.1:{port}/ingest/{path}", provider, args.duration, args.concurrency,
                             rate=args.paced)
                print(f"{'journeys, ' + provider + f' at {args.paced:,.0f}/s':24}{paced[0]:>10,.0f}{paced[1]:>10.1f}"
                      f"{paced[2]:>10.1f}")
        finally:
            for proc in (serve, bare):
                proc.terminate()
                proc.wait(timeout=30)


if __name__ == "__main__":
    main()
