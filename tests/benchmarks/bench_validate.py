"""Benchmark: `journeys validate` on 1,000 generated journey files, and CLI start-up.

Run by hand (not collected by pytest):  python tests/benchmarks/bench_validate.py [--files N]
Targets (issue 2): validate 1,000 files in under 3 s in total; `journeys --help` under 0.3 s.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[2] / "examples"


def generate(folder: Path, count: int) -> None:
    """Copy the example deployment and add *count* journeys varied from the example ones."""
    shutil.copytree(EXAMPLE, folder, dirs_exist_ok=True)
    sources = sorted((EXAMPLE / "journeys").glob("*.yaml"))
    sources = [s for s in sources if not s.name.endswith(".test.yaml")]
    texts = [s.read_text() for s in sources]
    out = folder / "journeys"
    for i in range(count):
        text = texts[i % len(texts)]
        first = text.splitlines()[1] if text.startswith("#") else text.splitlines()[0]
        journey_id = first.split(":", 1)[1].strip()
        text = text.replace(f"journey: {journey_id}", f"journey: {journey_id}-{i}", 1)
        # Make every quoted template unique, so no cache can make repeats look cheap.
        text = text.replace('}}"', "}} #" + str(i) + '"')
        (out / f"gen-{i:04d}.yaml").write_text(text)


def timed(cmd: list[str], runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        times.append(time.perf_counter() - start)
        if proc.returncode not in (0,):
            head = "\n".join((proc.stdout + proc.stderr).splitlines()[:20])
            sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{head}")
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    exe = shutil.which("journeys") or sys.exit("install the project first: pip install -e .")
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"{platform.platform()}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "deployment"
        generate(folder, args.files)
        files = len(list((folder / "journeys").glob("*.yaml")))
        times = timed([exe, "validate", str(folder)], args.runs)
        print(f"validate {files} journey files: median {statistics.median(times):.2f} s, "
              f"best {min(times):.2f} s over {args.runs} runs (target < 3 s)")
    times = timed([exe, "--help"], 10)
    print(f"journeys --help: median {statistics.median(times) * 1000:.0f} ms, best {min(times) * 1000:.0f} ms "
          "over 10 runs (target < 300 ms)")


if __name__ == "__main__":
    main()
