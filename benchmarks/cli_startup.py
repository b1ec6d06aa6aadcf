"""CLI start time: `vitolaunch --help` next to `python -c pass`, alternating runs in one script.

    python benchmarks/cli_startup.py [--runs 15] [--status-home ~/.vitolaunch]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time


def wall(cmd: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--status-home", help="a VITOLAUNCH_HOME with sweeps in it, to time `vitolaunch status` too")
    args = parser.parse_args()
    commands = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "vitolaunch --help": [sys.executable, "-m", "vitolaunch.cli", "--help"],
        "vitolaunch sweep --dry-run": [
            sys.executable, "-m", "vitolaunch.cli", "sweep", "sweeps/quickstart.yaml", "--dry-run"
        ],
    }
    if args.status_home:  # status of an existing workspace (sqlite store), e.g. after the quickstart
        commands["vitolaunch status"] = [sys.executable, "-m", "vitolaunch.cli", "status"]
        os.environ["VITOLAUNCH_HOME"] = args.status_home
    times: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(args.runs):
        for name, cmd in commands.items():
            times[name].append(wall(cmd))
    baseline = statistics.median(times["python -c pass"])
    print("| command | median wall s | minus python startup |\n|---|---|---|")
    for name, samples in times.items():
        median = statistics.median(samples)
        print(f"| {name} | {median:.3f} | {median - baseline:+.3f} |")


if __name__ == "__main__":
    main()
