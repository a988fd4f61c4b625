"""Measure how fast `lmforge --help`, `lmforge version` and `lmforge train --help` start.

Run: .venv/bin/python benchmarks/cli_startup.py [--runs 20]
Prints a markdown table of wall-clock times (median and best of N runs), next to a bare
`python -c pass` so the number that is lmforge's own is visible.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

LMFORGE = str(Path(sys.executable).with_name("lmforge"))
CASES = {
    "python -c pass (baseline)": [sys.executable, "-c", "pass"],
    "lmforge --help": [LMFORGE, "--help"],
    "lmforge version": [LMFORGE, "version"],
    "lmforge train --help": [LMFORGE, "train", "--help"],
    "lmforge templates": [LMFORGE, "templates"],
}


def time_command(cmd: list[str], runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    print(f"Machine: {platform.processor() or platform.machine()}, Python {platform.python_version()}, {args.runs} runs\n")
    print("| command | median (ms) | best (ms) |")
    print("|---|---:|---:|")
    for name, cmd in CASES.items():
        times = time_command(cmd, args.runs)
        print(f"| `{name}` | {statistics.median(times) * 1000:.0f} | {min(times) * 1000:.0f} |")


if __name__ == "__main__":
    main()
