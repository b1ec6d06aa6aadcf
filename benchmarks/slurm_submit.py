"""Submitting a 1000-trial sweep to SLURM, end to end, next to submitit's bare `map_array` of 1000 trivial
tasks on the same cluster; then `vitolaunch status` of that sweep. Prints a markdown table.

Usage (a cluster from `sudo scripts/slurm-up.sh`; every job it queues is cancelled before it exits):

    .venv/bin/python benchmarks/slurm_submit.py [--trials 1000] [--repeats 3]

Both sides run as fresh processes (interpreter start and imports included), alternately, `--repeats`
times; the table shows medians. The sweep side is the real command (`vitolaunch sweep SPEC`): spec
expansion and validation, 1000 MLflow child runs (sqlite, the embedded default, in an existing workspace),
1000 pickled trial jobs, one held array, release. `vitolaunch status` runs with `sacct`/`squeue` wrapped by a
shim that counts calls. Jobs are submitted held where the benchmark controls it and cancelled at once, so
nothing trains.
"""

from __future__ import annotations

import argparse
import json
import os
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
import operator, sys, time
started = time.perf_counter()
import submitit
executor = submitit.AutoExecutor(folder=sys.argv[1], cluster="slurm")
executor.update_parameters(timeout_min=5, nodes=2, tasks_per_node=1, cpus_per_task=1, mem_gb=1,
                           slurm_array_parallelism=1, name="bench-bare")
jobs = executor.map_array(operator.mul, range({n}), range({n}))
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


def _timed(args: list[str], env: dict[str, str]) -> tuple[float, subprocess.CompletedProcess]:
    started = time.perf_counter()
    proc = subprocess.run(args, capture_output=True, text=True, env=env, timeout=900)
    elapsed = time.perf_counter() - started
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


IMPORTS = "import vitolaunch.cli, vitolaunch.launch, vitolaunch.spec, vitolaunch.backends.slurm, mlflow.tracking, " \
          "mlflow.store.tracking.sqlalchemy_store, submitit, rich"

RECORDS = """
import sys, time
from pathlib import Path
from vitolaunch.registry import NewTrialRun, Registry
root, n_one, n_many = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
registry = Registry(f"sqlite:///{root / 'mlflow.db'}", root / "artifacts")
sweep = registry.create_sweep(registry.experiment_id("bench"), "records", {})
config = {"data": {"batch_size": 16, "crop_size": 32}, "model": {"width": 8}, "loss": {"temperature": 0.1}}
tags = {f"vitolaunch.tag{k}": "x" * 40 for k in range(12)}
params = {f"p{k}": 0.1 for k in range(8)}
s = time.perf_counter()
for k in range(n_one):
    registry.create_trial(sweep, NewTrialRun(f"one-{k}", params, tags, config))
one = (time.perf_counter() - s) / n_one
s = time.perf_counter()
registry.create_trials(sweep, [NewTrialRun(f"many-{k}", params, tags, config) for k in range(n_many)])
many = (time.perf_counter() - s) / n_many
print(one * 1000, many * 1000)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    rows: dict[str, list[float]] = {"bare": [], "sweep": [], "status": [], "status_inproc": []}
    sacct_calls: list[int] = []
    squeue_calls: list[int] = []
    arrays_seen: list[int] = []
    with tempfile.TemporaryDirectory(prefix="vl-bench-") as tmp:
        root = Path(tmp)
        base_env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
        base_env.pop("MLFLOW_TRACKING_URI", None)
        try:
            for k in range(args.repeats):
                # submitit alone: pickles + one sbatch of an array (its jobs run trivial multiplications).
                t, proc = _timed([sys.executable, "-c", BARE.format(n=args.trials), str(root / f"bare{k}")], base_env)
                subprocess.run(["scontrol", "hold", proc.stdout.strip()], capture_output=True, timeout=60)
                _scancel("bench-bare")
                rows["bare"].append(t)

                # vitolaunch, the real command.
                home = root / f"home{k}"
                name = f"bench-{k}"
                spec = _spec(root, name, args.trials)
                env = {**base_env, "VITOLAUNCH_HOME": str(home)}
                # An existing workspace, as on a user's second sweep: MLflow's first-use schema setup (~2 s)
                # is not what this measures.
                _timed([sys.executable, "-m", "vitolaunch.cli", "status"], env)
                t, proc = _timed([sys.executable, "-m", "vitolaunch.cli", "sweep", str(spec)], env)
                rows["sweep"].append(t)
                assert f"{args.trials} submitted" in proc.stdout, proc.stdout[-1000:]
                _scancel(name)  # nothing trains; status below reads CANCELLED tasks from sacct

                # vitolaunch status of that sweep, counting scheduler calls.
                calls = root / f"calls{k}"
                calls.mkdir()
                shim = _shim(calls)
                env_status = {**env, "PATH": f"{shim}:{env['PATH']}"}
                t, proc = _timed([sys.executable, "-m", "vitolaunch.cli", "status", name, "--json"], env_status)
                rows["status"].append(t)
                states = json.loads(proc.stdout)
                assert len(states) == args.trials, len(states)
                log = (calls / "calls.log").read_text().splitlines() if (calls / "calls.log").exists() else []
                sacct_calls.append(sum(line.startswith("sacct") for line in log))
                squeue_calls.append(sum(line.startswith("squeue") for line in log))
                arrays_seen.append(len({r["job_id"].split("_")[0] for r in states}))

                # The same, in process: what status costs beyond interpreter start and imports.
                code = (
                    "import time, sys; from vitolaunch.launch import Launcher;"
                    "from vitolaunch.workspace import Workspace;"
                    "from vitolaunch.status import collect_rows; l = Launcher(Workspace.from_env());"
                    f"s = time.perf_counter(); rows = collect_rows(l.registry, {name!r});"
                    "print(time.perf_counter() - s)"
                )
                proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                                      timeout=300)
                rows["status_inproc"].append(float(proc.stdout.strip().splitlines()[-1]))
        finally:
            _scancel("bench-bare", *[f"bench-{k}" for k in range(args.repeats)])

        # Fixed costs and the MLflow record per trial, one by one (the API) against batched.
        imports = [_timed([sys.executable, "-c", IMPORTS], base_env)[0] for _ in range(args.repeats)]
        records = root / "records"
        records.mkdir()
        out = _timed([sys.executable, "-c", RECORDS, str(records), "100", str(args.trials)], base_env)[1].stdout
        per_trial_one, per_trial_many = (float(x) for x in out.split()[-2:])

    med = {key: statistics.median(values) for key, values in rows.items()}
    med["imports"] = statistics.median(imports)
    print(f"\n{args.trials} trials, {args.repeats} repeats (median), one machine: {os.cpu_count()} cores\n")
    print("| what | seconds | ratio | notes |")
    print("|---|---|---|---|")
    print(f"| submitit `map_array` of {args.trials} trivial tasks (bare) | {med['bare']:.2f} | 1.00 | fresh process |")
    print(f"| `vitolaunch sweep` of a {args.trials}-trial spec | {med['sweep']:.2f} | "
          f"{med['sweep'] / med['bare']:.2f} | "
          f"fresh process; {args.trials} MLflow runs + array |")
    print(f"| `vitolaunch status SWEEP --json` | {med['status']:.2f} | - | fresh process; sacct calls: "
          f"{max(sacct_calls)} for {max(arrays_seen)} array(s), squeue calls: {max(squeue_calls)} |")
    print(f"| `collect_rows` (status without start-up) | {med['status_inproc']:.2f} | - | in process |")
    print(f"| start-up: interpreter + imports of the CLI (mlflow, sqlalchemy store, submitit, rich) | "
          f"{med['imports']:.2f} | - | paid by `sweep` and `status` alike |")
    print(f"| `vitolaunch sweep` minus start-up | {med['sweep'] - med['imports']:.2f} | "
          f"{(med['sweep'] - med['imports']) / med['bare']:.2f} | |")
    print(f"| MLflow trial record, one by one (`create_trial`, 4 API calls) | {per_trial_one:.1f} ms/trial | - | "
          f"x{args.trials} = {per_trial_one * args.trials / 1000:.0f} s |")
    print(f"| MLflow trial records, batched (`create_trials`, one transaction) | {per_trial_many:.2f} ms/trial | - | "
          f"x{args.trials} = {per_trial_many * args.trials / 1000:.1f} s |")
    print("\nall runs:", json.dumps({k: [round(v, 2) for v in vs] for k, vs in rows.items()}))


if __name__ == "__main__":
    main()
