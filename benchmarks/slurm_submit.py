"""Submitting 1000- and 5000-trial sweeps to SLURM, end to end, next to submitit's bare `map_array` of as many
trivial tasks on the same cluster; then `vitolaunch status` of each sweep. Prints a markdown table.

Usage (a cluster from `sudo scripts/slurm-up.sh`; every job it queues is cancelled before it exits):

    .venv/bin/python benchmarks/slurm_submit.py [--trials 1000 5000] [--repeats 3]

Both sides run as fresh processes (interpreter start and imports included), alternately, `--repeats`
times per size; the table shows medians and the spread (min-max). The sweep side is the real command
(`vitolaunch sweep SPEC`): spec expansion and validation, N MLflow child runs (sqlite, the embedded default,
in an existing workspace: written with the standard library, see registry_sqlite_store), N pickled trial
jobs, held arrays, release. Per-trial cost is the slope between the smallest and the largest size, which
leaves out what a sweep pays once (start-up, preflight). `vitolaunch status` runs with `sacct`/`squeue`
wrapped by a shim that counts calls. Jobs are submitted held where the benchmark controls it and cancelled
at once, so nothing trains.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

BARE = """
import operator, sys
import submitit
executor = submitit.AutoExecutor(folder=sys.argv[1], cluster="slurm")
executor.update_parameters(timeout_min=5, nodes=2, tasks_per_node=1, cpus_per_task=1, mem_gb=1,
                           slurm_array_parallelism=1, name="bench-bare")
# submitit does not split at MaxArraySize: a user (and vitolaunch) sends one array per MaxArraySize tasks.
size = int(sys.argv[2])
for start in range(0, {n}, size):
    stop = min(start + size, {n})
    jobs = executor.map_array(operator.mul, range(start, stop), range(start, stop))
    print(jobs[0].job_id.split("_")[0])
"""


def _spec(folder: Path, name: str, trials: int) -> Path:
    from tests.integration.local_sweeps import TINY_BASE

    spec = {
        "name": name,
        "task": "pretrain",
        "base": TINY_BASE,
        "method": "random",
        "count": trials,
        "seed": 0,
        "parameters": {"loss.temperature": {"distribution": "uniform", "low": 0.05, "high": 0.5}},
        "resources": {"cluster": "slurm", "nodes": 2, "tasks_per_node": 1, "cpus_per_task": 1, "mem_gb": 1,
                      "timeout_min": 5, "array_parallelism": 1},
        "tracking": {"experiment": "bench"},
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _timed(args: list[str], env: dict[str, str], cpu: list[float] | None = None) -> tuple[float, subprocess.CompletedProcess]:
    """Wall seconds of a fresh process; its CPU seconds (user + sys) appended to `cpu`: on a shared, loaded
    machine the wall clock mostly measures the neighbours, CPU time much less so."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.run(args, capture_output=True, text=True, env=env, timeout=900)
    elapsed = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if cpu is not None:
        cpu.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args[:4])} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return elapsed, proc


def _scancel(*names: str) -> None:
    for name in names:
        subprocess.run(["scancel", "--name", name], capture_output=True, timeout=60)


def _shim(folder: Path) -> Path:
    """sacct and squeue that log each call, then run the real ones."""
    shim = folder / "shim"
    shim.mkdir()
    for tool in ("sacct", "squeue"):
        real = subprocess.run(["which", tool], capture_output=True, text=True).stdout.strip()
        (shim / tool).write_text(f'#!/bin/sh\necho "{tool} $*" >> {folder}/calls.log\nexec {real} "$@"\n')
        (shim / tool).chmod(0o755)
    return shim


IMPORTS = ("import vitolaunch.cli, vitolaunch.launch.launcher, vitolaunch.spec, vitolaunch.backends.slurm, "
           "vitolaunch.tracking.sqlite_store, submitit, rich.console")

def _max_array_size() -> int:
    from vitolaunch.backends.slurm import SlurmBackend

    return SlurmBackend().max_array_size()


def _one_size(root: Path, n: int, repeats: int, base_env: dict[str, str]) -> dict:
    rows: dict[str, list[float]] = {"bare": [], "sweep": [], "status": [], "bare_cpu": [], "sweep_cpu": []}
    calls: dict[str, list[int]] = {"sacct": [], "squeue": [], "arrays": []}
    names = []
    try:
        for k in range(repeats):
            # submitit alone: pickles + one sbatch of an array (its jobs run trivial multiplications).
            t, proc = _timed([sys.executable, "-c", BARE.format(n=n), str(root / f"bare{n}-{k}"), str(_max_array_size())],
                             base_env, rows["bare_cpu"])
            for array in proc.stdout.split():
                subprocess.run(["scontrol", "hold", array], capture_output=True, timeout=60)
            _scancel("bench-bare")
            rows["bare"].append(t)

            # vitolaunch, the real command, in an existing workspace (as on a user's second sweep: MLflow's
            # first-use schema setup, ~2 s, is not what this measures).
            home = root / f"home{n}-{k}"
            name = f"bench-{n}-{k}"
            names.append(name)
            spec = _spec(root, name, n)
            env = {**base_env, "VITOLAUNCH_HOME": str(home)}
            _timed([sys.executable, "-m", "vitolaunch.cli", "status"], env)
            t, proc = _timed([sys.executable, "-m", "vitolaunch.cli", "sweep", str(spec)], env, rows["sweep_cpu"])
            rows["sweep"].append(t)
            assert f"{n} submitted" in proc.stdout, proc.stdout[-1000:]
            _scancel(name)  # nothing trains; status below reads CANCELLED tasks from sacct

            # vitolaunch status of that sweep, counting scheduler calls.
            folder = root / f"calls{n}-{k}"
            folder.mkdir()
            shim = _shim(folder)
            t, proc = _timed([sys.executable, "-m", "vitolaunch.cli", "status", name, "--json"],
                             {**env, "PATH": f"{shim}:{env['PATH']}"})
            rows["status"].append(t)
            states = json.loads(proc.stdout)
            assert len(states) == n, len(states)
            log = (folder / "calls.log").read_text().splitlines() if (folder / "calls.log").exists() else []
            calls["sacct"].append(sum(line.startswith("sacct") for line in log))
            calls["squeue"].append(sum(line.startswith("squeue") for line in log))
            calls["arrays"].append(len({r["job_id"].split("_")[0] for r in states}))
    finally:
        _scancel("bench-bare", *names)
    return {"rows": rows, "calls": calls}


def _cell(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, nargs="+", default=[1000, 5000])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    sizes = sorted(args.trials)

    with tempfile.TemporaryDirectory(prefix="vl-bench-", ignore_cleanup_errors=True) as tmp:  # cancelled tasks may still write logs
        root = Path(tmp)
        base_env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
        base_env.pop("MLFLOW_TRACKING_URI", None)
        results = {n: _one_size(root, n, args.repeats, base_env) for n in sizes}
        imports = [_timed([sys.executable, "-c", IMPORTS], base_env)[0] for _ in range(args.repeats)]

    med = {n: {k: statistics.median(v) for k, v in r["rows"].items()} for n, r in results.items()}
    print(f"\n{args.repeats} repeats per size, alternating, fresh processes; median (min-max); "
          f"one machine: {os.cpu_count()} cores\n")
    print("| trials | bare submitit `map_array` s | `vitolaunch sweep` s | ratio (medians) | CPU s: bare / sweep (ratio) "
          "| `vitolaunch status --json` s | scheduler calls by status |")
    print("|---|---|---|---|---|---|---|")
    for n in sizes:
        r, c = results[n]["rows"], results[n]["calls"]
        ratios = [s / b for s, b in zip(r["sweep"], r["bare"])]
        print(f"| {n} | {_cell(r['bare'])} | {_cell(r['sweep'])} | {med[n]['sweep'] / med[n]['bare']:.2f} "
              f"(per repeat {min(ratios):.2f}-{max(ratios):.2f}) | {_cell(r['bare_cpu'])} / {_cell(r['sweep_cpu'])} "
              f"({med[n]['sweep_cpu'] / med[n]['bare_cpu']:.2f}) | {_cell(r['status'])} | "
              f"sacct {max(c['sacct'])}, squeue {max(c['squeue'])} for {max(c['arrays'])} array(s) |")
    if len(sizes) > 1:
        lo, hi = sizes[0], sizes[-1]
        per = {side: (med[hi][side] - med[lo][side]) / (hi - lo) * 1000 for side in med[lo]}
        fixed = med[lo]["sweep"] - per["sweep"] * lo / 1000
        print(f"\nper trial (slope {lo} -> {hi}): bare {per['bare']:.3f} ms, sweep {per['sweep']:.3f} ms "
              f"({per['sweep'] / per['bare']:.2f}x), status {per['status']:.3f} ms; CPU per trial: bare {per['bare_cpu']:.3f} ms, "
              f"sweep {per['sweep_cpu']:.3f} ms; sweep fixed cost {fixed:.2f} s")
        print(f"linearity: sweep {hi}/{lo} = {med[hi]['sweep'] / med[lo]['sweep']:.2f} "
              f"(bare {med[hi]['bare'] / med[lo]['bare']:.2f}) for {hi / lo:.0f}x the trials")
    print(f"start-up, interpreter + the CLI's imports: {_cell(imports)} s")
    print("\nall runs:", json.dumps({n: {k: [round(v, 2) for v in vs] for k, vs in r["rows"].items()} for n, r in results.items()}))


if __name__ == "__main__":
    main()
