"""The loopback SLURM cluster of scripts/slurm-up.sh answers as the rest of the integration tests expect.

Real daemons (slurmctld, slurmd n1/n2, slurmdbd + MariaDB): start them with `sudo scripts/slurm-up.sh`.
Without a cluster these tests skip, except under CI: there they fail (the `slurm_cluster` fixture).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest


def _run(args: list[str], timeout: float = 20, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {proc.returncode}: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc


def _sacct_state(job_id: str) -> str:
    """The job's state in accounting; for an array, the tasks' common state (or all of them, joined)."""
    states = sorted(set(_run(["sacct", "-n", "-X", "-P", "-j", job_id, "-o", "State"], check=False).stdout.split()))
    return ",".join(states)


def _wait_sacct_state(job_id: str, expected: str, deadline_s: float = 30) -> str:
    """sacct lags behind the controller by a few seconds: poll, never trust one snapshot."""
    deadline = time.monotonic() + deadline_s
    state = ""
    while time.monotonic() < deadline:
        state = _sacct_state(job_id)
        if state == expected:
            return state
        time.sleep(0.5)
    raise AssertionError(f"sacct shows job {job_id} as {state!r}, not {expected!r}, after {deadline_s} s")


@pytest.mark.timeout(30)
def test_cluster_configuration(slurm_cluster: None) -> None:
    config = _run(["scontrol", "show", "config"]).stdout
    assert "ClusterName             = vitolaunch" in config
    assert "MaxArraySize            = 1001" in config
    parts = _run(["sinfo", "-h", "-o", "%R %l %D"]).stdout.split("\n")
    limits = {p.split()[0]: p.split()[1] for p in parts if p.strip()}
    assert limits.get("short") == "10:00", limits
    assert "debug" in limits, limits


@pytest.mark.timeout(60)
def test_two_node_job_sees_both_nodes_and_is_accounted(slurm_cluster: None, tmp_path: Path) -> None:
    out = tmp_path / "job.out"
    script = 'echo "NODELIST=$SLURM_JOB_NODELIST"; srun bash -c \'echo "RANK $SLURM_PROCID $SLURMD_NODENAME"\''
    proc = _run(
        ["sbatch", "--wait", "--parsable", "--nodes=2", "--ntasks-per-node=1", "--time=00:02:00",
         "--job-name=vitolaunch-it-2node", f"--output={out}", "--wrap", script],
        timeout=50,
    )
    job_id = proc.stdout.strip().split(";")[0]
    assert job_id.isdigit(), proc.stdout
    lines = out.read_text().splitlines()
    assert "NODELIST=n[1-2]" in lines, lines
    assert sorted(line for line in lines if line.startswith("RANK")) == ["RANK 0 n1", "RANK 1 n2"], lines
    _wait_sacct_state(job_id, "COMPLETED")


@pytest.mark.timeout(30)
def test_time_over_partition_limit_is_refused_at_submit(slurm_cluster: None) -> None:
    proc = _run(["sbatch", "--parsable", "--partition=short", "--time=00:20:00", "--wrap", "true"], check=False)
    assert proc.returncode != 0, f"job accepted over the 10 min limit of partition short: {proc.stdout}"
    assert "time limit" in proc.stderr.lower(), proc.stderr


def _array_task(x: int) -> dict[str, object]:
    return {
        "square": x * x,
        "array_task": os.environ.get("SLURM_ARRAY_TASK_ID"),
        "node": os.environ.get("SLURMD_NODENAME"),
        "host": socket.gethostname(),
    }


@pytest.mark.timeout(90)
def test_submitit_map_array_with_parallelism(slurm_cluster: None, tmp_path: Path) -> None:
    cloudpickle = pytest.importorskip("cloudpickle")
    submitit = pytest.importorskip("submitit")
    # The jobs cannot import this test module: ship _array_task by value.
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    try:
        executor = submitit.AutoExecutor(folder=tmp_path / "submitit", cluster="slurm")
        executor.update_parameters(
            timeout_min=5, nodes=1, tasks_per_node=1, cpus_per_task=1, mem_gb=1,
            slurm_partition="debug", slurm_array_parallelism=2, name="vitolaunch-it-array",
        )
        jobs = executor.map_array(_array_task, [1, 2, 3])
    finally:
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    assert len(jobs) == 3
    array_ids = {job.job_id.split("_")[0] for job in jobs}
    assert len(array_ids) == 1, [job.job_id for job in jobs]
    sbatch_text = jobs[0].paths.submission_file.read_text()
    assert "#SBATCH --array=0-2%2" in sbatch_text, sbatch_text
    results = [job.result() for job in jobs]
    assert [r["square"] for r in results] == [1, 4, 9]
    assert [r["array_task"] for r in results] == ["0", "1", "2"]
    assert all(r["node"] in {"n1", "n2"} for r in results), results
    _wait_sacct_state(array_ids.pop(), "COMPLETED")
