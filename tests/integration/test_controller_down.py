"""`vitolaunch status` while the SLURM controller or its accounting daemon does not answer.

Each daemon is frozen with SIGSTOP (a hung or partitioned daemon: connections open, no reply, the case that
made every status call wait ~18 s) and thawed with SIGCONT, so the shared cluster and the trial survive.
Status must answer promptly, say which daemon is silent, and never call the running trial FAILED.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from contextlib import contextmanager

import psutil
import pytest

from tests.integration.local_sweeps import vitolaunch
from tests.integration.slurm_trials import trial_runs, wait_for_run, write_slurm_spec

pytestmark = pytest.mark.usefixtures("slurm_cluster", "job_environment")


def _daemon(name: str) -> psutil.Process:
    found = [p for p in psutil.process_iter(["name"]) if p.info["name"] == name]
    assert found, f"{name} is not running"
    return found[0]


@contextmanager
def _frozen(name: str):
    process = _daemon(name)
    os.kill(process.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(process.pid, signal.SIGCONT)


def _status(home, *extra: str) -> subprocess.CompletedProcess:
    """`vitolaunch status`, bounded well below the 18 s a status call took while the controller was silent."""
    env = {**os.environ, "VITOLAUNCH_HOME": str(home), "MLFLOW_DISABLE_TELEMETRY": "true"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run([sys.executable, "-m", "vitolaunch.cli", "status", "it-down", *extra], env=env,
                          capture_output=True, text=True, timeout=12)


@pytest.mark.timeout(600)
def test_status_with_a_silent_controller_or_accounting_daemon(tmp_path, cancel_on_exit):
    home = tmp_path / "home"
    cancel_on_exit("it-down")
    vitolaunch(home, "sweep", str(write_slurm_spec(tmp_path, "it-down", {"loss.temperature": [0.2]},
                                                   train={"steps": 5000, "log_every": 10})))
    (trial,) = trial_runs(home)
    wait_for_run(home, trial.info.run_id, lambda r: r.data.metrics.get("train/step", 0) >= 10, 300, "the trial to train")

    with _frozen("slurmctld"):
        table = _status(home)
        as_json = _status(home, "--json")
    assert table.returncode == 0, table.stderr
    assert "controller did not answer" in table.stdout and "UNKNOWN" in table.stdout, table.stdout
    assert "FAILED" not in table.stdout
    (row,) = json.loads(as_json.stdout)  # stdout stays JSON; the warning goes to stderr
    assert row["state"] == "UNKNOWN" and "controller did not answer" in as_json.stderr, (row, as_json.stderr)

    with _frozen("slurmdbd"):
        without_accounting = _status(home, "--json")
    (row,) = json.loads(without_accounting.stdout)
    assert row["state"] == "RUNNING", row  # the controller still knows the task: its live answer stands
    assert "accounting" in without_accounting.stderr, without_accounting.stderr

    (row,) = json.loads(_status(home, "--json").stdout)  # both answer again: nothing was marked for good
    assert row["state"] == "RUNNING" and row["run_id"] == trial.info.run_id, row


@pytest.mark.timeout(60)
def test_a_frozen_slurmdbd_is_named_with_the_real_bound():
    """The real slurmdbd frozen: the message named slurmctld and said "2 s" for the 1.5 s bound."""
    from vitolaunch.backends import JobHandle
    from vitolaunch.backends.slurm import SlurmBackend

    with _frozen("slurmdbd"):
        view = SlurmBackend().observe([JobHandle("999999_0", "")])
    (problem,) = view.problems  # the controller answered (an unknown job is not a fault)
    assert "`sacct --parsable2 -n` got no answer from slurmdbd within 1.5 s" in problem, problem
    assert "slurmctld" not in problem and "sacctmgr show cluster" in problem, problem
