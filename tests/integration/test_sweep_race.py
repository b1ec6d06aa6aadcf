"""Two `vitolaunch sweep` of one spec started at the same instant from two shells, on the loopback cluster: each
trial is submitted once, and the second sweep reports the first's trials as queued."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import pytest
import yaml
from mlflow.tracking import MlflowClient

from tests.integration.local_sweeps import write_spec


def _squeue_tasks(name: str) -> list[str]:
    out = subprocess.run(["squeue", "-h", "-r", "-n", name, "-o", "%i"], capture_output=True, text=True, timeout=30)
    return sorted(out.stdout.split())


def _sacct_arrays(name: str) -> set[str]:
    out = subprocess.run(["sacct", "-n", "-X", "-P", "--name", name, "-o", "JobID", "-S", "now-1hour"],
                         capture_output=True, text=True, timeout=30)
    return {line.split("_")[0] for line in out.stdout.split()}


@pytest.mark.timeout(600)
def test_two_sweeps_of_one_spec_at_once_submit_each_trial_once(slurm_cluster, tmp_path):
    name = f"race-{uuid.uuid4().hex[:6]}"
    path = write_spec(tmp_path, name, {"loss.temperature": [0.1, 0.2, 0.3, 0.4]}, tasks_per_node=1)
    spec = yaml.safe_load(path.read_text())
    # one trial at a time on one node, all cancelled at the end: nothing needs to train
    spec["resources"] = {"cluster": "slurm", "nodes": 1, "tasks_per_node": 1, "cpus_per_task": 1, "mem_gb": 1,
                         "timeout_min": 5, "array_parallelism": 1}
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    home = tmp_path / "home"  # fresh: the two also race to create the tracking store
    env = {**os.environ, "VITOLAUNCH_HOME": str(home), "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
    env.pop("MLFLOW_TRACKING_URI", None)
    try:
        shells = [subprocess.Popen([sys.executable, "-m", "vitolaunch.cli", "sweep", str(path)], env=env,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
        outputs = [shell.communicate(timeout=300) for shell in shells]
        for shell, (out, err) in zip(shells, outputs):
            assert shell.returncode == 0, out + err
        summaries = sorted(out.splitlines()[0].split(": ", 1)[1] for out, _ in outputs)
        assert summaries == ["4 running", "4 submitted"], outputs

        client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
        experiments = [e.experiment_id for e in client.search_experiments()]
        sweeps = client.search_runs(experiments, f"tags.`vitolaunch.kind` = 'sweep' and tags.`vitolaunch.sweep` = '{name}'")
        trials = client.search_runs(experiments, f"tags.`vitolaunch.kind` = 'trial' and tags.`vitolaunch.sweep` = '{name}'")
        assert len(sweeps) == 1 and len(trials) == 4
        job_ids = sorted(t.data.tags["vitolaunch.job_id"] for t in trials)
        assert len(set(job_ids)) == 4 and len({j.split("_")[0] for j in job_ids}) == 1
        # the second sweep names the first's runs and jobs
        second = next(out for out, _ in outputs if "4 running" in out)
        assert all(t.info.run_id in second for t in trials)
        # and the scheduler got one array of 4 tasks, once
        assert _sacct_arrays(name) <= {job_ids[0].split("_")[0]}
        assert set(_squeue_tasks(name)) <= set(job_ids)
    finally:
        subprocess.run(["scancel", "--name", name], capture_output=True, timeout=60)
