"""Node n2 fails during a 2-node trial on the loopback cluster: its slurmd and the trial's job step on it are
killed (SIGKILL), then n2 is brought back with scripts/slurm-up.sh. The trial must be retried from its last
committed checkpoint within the crash retry policy, finish, and lose no committed step.

Only n2's slurmd and this trial's own processes on n2 are killed: other users of the shared cluster keep
their jobs (a job step outlives its node's slurmd), and n2 is restarted at once, passed or not.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from tests.checkpoints import committed_steps
from tests.integration.local_sweeps import logged_loss_steps, vitolaunch
from tests.integration.slurm_trials import LONG_TRAIN, rank_pid, run_ended, trial_runs, wait_for_run, write_long_spec

pytestmark = pytest.mark.usefixtures("slurm_cluster", "job_environment")
REPO = Path(__file__).resolve().parents[2]


def _slurmd(node: str) -> psutil.Process | None:
    for process in psutil.process_iter(["cmdline"]):
        cmdline = process.info["cmdline"] or []
        if cmdline[:1] and cmdline[0].endswith("slurmd") and cmdline[-2:] == ["-N", node]:
            return process
    return None


def _bring_back_n2() -> None:
    subprocess.run(["bash", str(REPO / "scripts" / "slurm-up.sh")], capture_output=True, timeout=180)


@pytest.mark.timeout(900)
def test_node_failure_mid_trial_retries_from_the_last_checkpoint(tmp_path, cancel_on_exit):
    home = tmp_path / "home"
    cancel_on_exit("it-node")
    vitolaunch(home, "sweep", str(write_long_spec(tmp_path, "it-node", retries={"crash": 1, "timeout": 0})))
    (trial,) = trial_runs(home)
    run_id, job = trial.info.run_id, trial.data.tags["vitolaunch.job_id"]
    uri = trial.data.tags["vitolaunch.checkpoint_uri"]

    deadline = time.monotonic() + 300
    while not [s for s in committed_steps(uri) if s >= 25]:
        assert time.monotonic() < deadline, "no checkpoint at step >= 25 in time"
        time.sleep(0.2)
    rank_1 = psutil.Process(rank_pid(job, 1))
    assert rank_1.environ().get("SLURMD_NODENAME") == "n2", "rank 1 is expected on n2"
    step_n2 = rank_1.parent()  # n2's slurmstepd of this trial's step
    slurmd_n2 = _slurmd("n2")
    assert slurmd_n2 is not None and "slurmstepd" in step_n2.name(), (slurmd_n2, step_n2.cmdline())
    try:
        for process in (slurmd_n2, step_n2, rank_1):
            os.kill(process.pid, signal.SIGKILL)
        committed = committed_steps(uri)[-1]
        assert committed < LONG_TRAIN["steps"], "the trial finished before the fault: make it longer"
        time.sleep(5)  # the node stays dead a moment, as a real one does
    finally:
        _bring_back_n2()
    assert _slurmd("n2") is not None, "scripts/slurm-up.sh did not bring n2's slurmd back"

    resumed = wait_for_run(home, run_id, lambda r: r.data.tags.get("vito.resumed_from_step") is not None or run_ended(r),
                           400, "the retry after the node fault")
    assert resumed.data.tags.get("vito.resumed_from_step") == str(committed), resumed.data.tags
    done = wait_for_run(home, run_id, run_ended, 400, "the trial to end")
    assert done.info.status == "FINISHED", done.data.tags
    retries = json.loads(done.data.tags.get("vitolaunch.retries", "{}"))
    print("node fault:", {k: v for k, v in done.data.tags.items() if k.startswith(("vitolaunch.retries", "vitolaunch.last",
                                                                                   "vito.resumed", "vitolaunch.slurm"))})
    assert sum(retries.values()) >= 1 and retries.get("crash", 0) <= 1, retries
    # every logged step is there: none committed before the fault was lost, the lost ones were redone
    every, steps = LONG_TRAIN["log_every"], LONG_TRAIN["steps"]
    assert sorted(set(logged_loss_steps(home, run_id))) == list(range(every, steps + 1, every))


@pytest.mark.timeout(180)
def test_a_task_queued_again_by_a_requeue_says_why_and_its_restart_count(tmp_path, cancel_on_exit):
    """A task the cluster requeued read QUEUED with no reason. On the real cluster (sacct -D's record of the
    attempt before): `scontrol requeue` of a running task; a node failure is the same path with NODE_FAIL
    (tests/unit/test_slurm_backend.py), not provoked here, since it would kill other users' jobs on the node."""
    import functools

    from vitolaunch.backends import Resources, SchedulerState
    from vitolaunch.backends.slurm import SlurmBackend

    cancel_on_exit("it-requeue")
    backend = SlurmBackend()
    (handle,) = backend.submit([functools.partial(time.sleep, 60)], ["it-requeue.000.abcdef12"],
                               Resources(mem_gb=0.5, timeout_min=5), tmp_path)
    deadline = time.monotonic() + 60
    while backend.states([handle])[handle.job_id] is not SchedulerState.RUNNING:
        assert time.monotonic() < deadline, "the task did not start"
        time.sleep(0.5)
    assert not backend.observe([handle]).reasons  # never requeued: nothing to say
    subprocess.run(["scontrol", "requeue", handle.job_id], check=True, capture_output=True, timeout=30)
    deadline, view = time.monotonic() + 60, None
    while time.monotonic() < deadline:
        view = backend.observe([handle])
        if handle.job_id in view.reasons:
            break
        time.sleep(0.5)
    assert view is not None and view.states[handle.job_id] is SchedulerState.PENDING, view
    assert view.reasons[handle.job_id].startswith("requeued with `scontrol requeue`"), view.reasons
    assert "(restart 1)" in view.reasons[handle.job_id], view.reasons
