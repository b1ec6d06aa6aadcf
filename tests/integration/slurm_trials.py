"""Helpers for integration tests that run VITO trials on the real loopback SLURM cluster (scripts/slurm-up.sh).

Each trial is the tiny CPU model of local_sweeps.TINY_BASE over gloo, 2 nodes x 1 rank. What the jobs inherit
(gloo over loopback, a short collective timeout) is the `job_environment` fixture, and the cluster check is
`slurm_cluster`, both in tests/integration/conftest.py: a module that runs trials uses both, e.g.
`pytestmark = pytest.mark.usefixtures("slurm_cluster", "job_environment")`.

mlflow and psutil are imported only when a helper needs them.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import yaml

from tests.integration.local_sweeps import TINY_BASE, mlflow_client

# MLflow statuses a trial run does not leave by itself.
TERMINAL_STATUSES = ("FINISHED", "FAILED", "KILLED")

# One trial long enough to be interrupted mid-run (preempted, crashed, its node failed), with checkpoints to
# resume from: see write_long_spec.
LONG_TRAIN = {"steps": 200, "log_every": 5}
LONG_CHECKPOINTS = {"every_steps": 25, "keep_last": 3}


def write_slurm_spec(folder: Path, name: str, parameters: dict, train: dict | None = None, **resources) -> Path:
    """`folder/name.yaml`: a pretraining sweep of TINY_BASE (its `train` section updated with `train`) over
    `parameters`, as 2-node x 1-rank trials on the slurm cluster, 2 at a time; `resources` override those."""
    base = json.loads(json.dumps(TINY_BASE))
    base["train"].update(train or {})
    spec = {
        "name": name,
        "task": "pretrain",
        "base": base,
        "parameters": parameters,
        "resources": {
            "cluster": "slurm", "nodes": 2, "tasks_per_node": 1, "cpus_per_task": 1, "mem_gb": 1,
            "timeout_min": 20, "array_parallelism": 2, **resources,
        },
        "tracking": {"experiment": "tests"},
    }
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def write_long_spec(folder: Path, name: str, **resources) -> Path:
    """A sweep of one trial (loss.temperature 0.2) of LONG_TRAIN steps, checkpointed as LONG_CHECKPOINTS says."""
    path = write_slurm_spec(folder, name, {"loss.temperature": [0.2]}, train=LONG_TRAIN, **resources)
    spec = yaml.safe_load(path.read_text())
    spec["base"]["checkpoint"].update(LONG_CHECKPOINTS)
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def trial_runs(home: Path) -> list:
    """Every trial run (MLflow `Run`) of experiment "tests" in the home's store, in trial-index order."""
    client = mlflow_client(home)
    experiment = client.get_experiment_by_name("tests")
    runs = client.search_runs([experiment.experiment_id], "tags.`vitolaunch.kind` = 'trial'")
    return sorted(runs, key=lambda r: int(r.data.tags["vitolaunch.trial_index"]))


def run_ended(run) -> bool:
    """Whether an MLflow `Run` is in one of the TERMINAL_STATUSES."""
    return run.info.status in TERMINAL_STATUSES


def wait_for_run(home: Path, run_id: str, until, timeout: float, what: str):
    """Poll MLflow in-process (the CLI's start-up would miss fast steps) until `until(run)`; return that run.

    On timeout the assertion names `what` and the run's state, with the tail of every rank's stderr log.
    """
    client = mlflow_client(home)
    deadline = time.monotonic() + timeout
    run = None
    while time.monotonic() < deadline:
        run = client.get_run(run_id)
        if until(run):
            return run
        time.sleep(0.3)
    logs = "\n".join(f"--- {p}\n{p.read_text()[-2500:]}" for p in sorted((home / "logs").rglob("*_log.err")))
    state = f"{run.info.status} step={run.data.metrics.get('train/step')}" if run else "-"
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (run {run_id}: {state})\n{logs}")


def sacct_rows(job: str, fields: str = "JobID,State,NodeList,Start,End") -> list[dict]:
    """What SLURM accounting holds for `job` (an array id answers for all its tasks): one dict per row."""
    out = subprocess.run(["sacct", "-n", "-X", "-P", "-o", fields, "-j", job], capture_output=True, text=True,
                         timeout=30).stdout
    names = fields.split(",")
    return [dict(zip(names, line.split("|"))) for line in out.splitlines() if line.strip()]


def wait_for_sacct_state(job: str, state: str, timeout: float = 40) -> dict:
    """Poll sacct until the array task `job` ("ARRAY_TASK") shows `state`; return its row (sacct_rows' fields)."""
    deadline = time.monotonic() + timeout
    rows: list[dict] = []
    while time.monotonic() < deadline:
        rows = [r for r in sacct_rows(job.split("_")[0]) if r["JobID"] == job]
        if rows and rows[0]["State"].split()[0] == state:
            return rows[0]
        time.sleep(0.5)
    raise AssertionError(f"sacct shows {job} as {rows}, not {state}")


def rank_pid(job: str, rank: int) -> int | None:
    """The pid of one rank of an array task: the process whose SLURM environment says so."""
    import psutil

    array, task = job.split("_")
    for process in psutil.process_iter(["cmdline"]):
        try:
            if "submitit.core._submit" not in " ".join(process.info["cmdline"] or []):
                continue
            env = process.environ()
        except (psutil.Error, OSError):
            continue
        ids = (env.get("SLURM_ARRAY_JOB_ID"), env.get("SLURM_ARRAY_TASK_ID"), env.get("SLURM_PROCID"))
        if ids == (array, task, str(rank)):
            return process.pid
    return None
