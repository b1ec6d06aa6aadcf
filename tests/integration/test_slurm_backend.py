"""vitolaunch on the real loopback SLURM cluster (scripts/slurm-up.sh): arrays of 2-node DeepSpeed trials,
preemption and crash retries with exact resume, status/cancel/logs, dry runs checked by the controller.

Each trial is the tiny CPU model of local_sweeps.TINY_BASE over gloo, 2 nodes x 1 rank (specs, trial runs and
waits: tests/integration/slurm_trials.py). Without a cluster these tests skip, except under CI, where they fail.
"""

from __future__ import annotations

import functools
import json
import operator
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.checkpoints import committed_steps, final_weights
from tests.integration.local_sweeps import logged_loss_steps, mlflow_client, vitolaunch
from tests.integration.slurm_trials import (
    LONG_TRAIN,
    TERMINAL_STATUSES,
    rank_pid,
    run_ended,
    trial_runs,
    wait_for_run,
    wait_for_sacct_state,
    write_long_spec,
    write_slurm_spec,
)

# slurm_cluster (tests/integration/conftest.py) skips, or fails under CI, without a cluster; job_environment
# (there too) is what the jobs inherit.
pytestmark = pytest.mark.usefixtures("slurm_cluster", "job_environment")


def _rows(home: Path, sweep: str, *extra: str, env_path: str | None = None) -> list[dict]:
    env = None if env_path is None else {"PATH": env_path}
    return json.loads(vitolaunch(home, "status", sweep, "--json", *extra, env=env).stdout)


def _weights(home: Path, scratch: Path):
    (trial,) = trial_runs(home)
    return final_weights(trial.data.tags["vitolaunch.checkpoint_uri"], scratch)


def _assert_same_weights(reference: dict, other: dict) -> None:
    import torch

    assert reference.keys() == other.keys()
    different = [name for name in reference if not torch.equal(reference[name], other[name])]
    assert not different, f"weights differ: {different[:5]}"


# ---------------------------------------------------------------- dry run and array mechanics


@pytest.mark.timeout(120)
def test_dry_run_prints_the_script_and_the_controller_refuses_bad_resources_before_queueing(tmp_path, cancel_on_exit):
    home = tmp_path / "home"
    cancel_on_exit("it-dry")
    ok = vitolaunch(home, "sweep", str(write_slurm_spec(tmp_path, "it-dry", {"loss.temperature": [0.1, 0.2, 0.3]})),
                    "--dry-run").stdout
    for line in ("#SBATCH --array=0-2%2", "#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=1", "#SBATCH --signal=USR2@"):
        assert line in ok, ok
    assert "sbatch --test-only:" in ok and "to start at" in ok, ok

    bad = {
        "resources.partition": {"partition": "nope"},
        "resources.nodes": {"nodes": 3},
        "resources.timeout_min": {"partition": "short", "timeout_min": 20},
    }
    for key, resources in bad.items():
        spec = write_slurm_spec(tmp_path / key, "it-dry", {"loss.temperature": [0.1]}, **resources)
        for extra in (("--dry-run",), ()):
            result = vitolaunch(home, "sweep", str(spec), *extra, check=False)
            assert result.returncode == 2, (key, extra, result.stdout, result.stderr)
            assert key in result.stderr and "Traceback" not in result.stderr, result.stderr
    queued = subprocess.run(["squeue", "-h", "--name", "it-dry"], capture_output=True, text=True, timeout=30).stdout
    assert queued.strip() == "", f"a refused sweep queued jobs: {queued}"
    assert not mlflow_client(home).search_runs(
        [e.experiment_id for e in mlflow_client(home).search_experiments()], "tags.`vitolaunch.kind` = 'trial'"
    ), "a refused sweep created trial runs"


@pytest.mark.timeout(120)
def test_more_trials_than_max_array_size_split_into_arrays_and_one_sacct_call_reads_them(tmp_path, cancel_on_exit):
    from vitolaunch.backends import Resources, SchedulerState
    from vitolaunch.backends.slurm import SlurmBackend

    cancel_on_exit("it-split")
    backend = SlurmBackend(max_array_size=2)
    jobs = [functools.partial(operator.mul, 3, k) for k in range(5)]
    names = [f"it-split.{k:03d}.abcdef12" for k in range(5)]
    handles = backend.submit(jobs, names, Resources(mem_gb=1, timeout_min=5, array_parallelism=4), tmp_path)
    arrays = [h.job_id.split("_")[0] for h in handles]
    # plan_arrays(5, 4, 2): lanes of %2, %1, %1 holding 3, 1 and 1 trials; the %2 lane's 3 are 2 arrays (0-1, 0-0)
    assert len(set(arrays)) == 4 and [h.job_id.split("_")[1] for h in handles] == ["0", "1", "0", "0", "0"]
    script = (tmp_path / f"array_{arrays[0]}.sbatch.sh").read_text()
    assert "#SBATCH --array=0-1%2" in script, script  # parallelism 4 shared by 3 lanes: 2 + 1 + 1
    deadline = time.monotonic() + 90
    while True:
        backend.queries.clear()
        states = backend.states(handles)
        sacct_calls = [q for q in backend.queries if q[0] == "sacct"]
        assert len(sacct_calls) == 1 and sacct_calls[0][-1] == ",".join(sorted(set(arrays))), backend.queries
        if all(s is SchedulerState.COMPLETED for s in states.values()):
            break
        assert time.monotonic() < deadline, states
        time.sleep(1)
    from submitit.core.utils import JobPaths, pickle_load

    results = [pickle_load(JobPaths(h.log_dir, h.job_id, 0).result_pickle) for h in handles]
    assert [r[1] for r in results] == [0, 3, 6, 9, 12]


def _max_array_size_shim(folder: Path, size: int) -> str:
    """A PATH whose `scontrol show config` says MaxArraySize=<size> (the shared cluster keeps its 1001); every
    other scontrol call, and every other command, is the real one."""
    import shutil

    real = shutil.which("scontrol")
    folder.mkdir(parents=True, exist_ok=True)
    shim = folder / "scontrol"
    shim.write_text(f'#!/bin/sh\nif [ "$1 $2" = "show config" ]; then\n  {real} "$@" | '
                    f"sed 's/^MaxArraySize *=.*/MaxArraySize = {size}/'\nelse\n  exec {real} \"$@\"\nfi\n")
    shim.chmod(0o755)
    return f"{folder}:{os.environ['PATH']}"


@pytest.mark.timeout(240)
def test_the_dry_run_of_a_split_sweep_shows_the_arrays_that_are_queued(tmp_path, cancel_on_exit):
    """MaxArraySize 5, 12 trials, array_parallelism 2: the dry run printed `first of 3 arrays` with
    `--array=0-4%2`, while 0-4%1, 0-4%1 and 0-1%1 (afterany) were queued. Now it lists every array, and they
    are the ones sbatch gets: same ranges, %N, lanes and dependencies."""
    import re

    from vitolaunch.backends import Resources, SchedulerState
    from vitolaunch.backends.slurm import SlurmBackend

    home = tmp_path / "home"
    path = _max_array_size_shim(tmp_path / "bin", 5)
    spec = write_slurm_spec(tmp_path, "it-plan", {"loss.temperature": [round(0.1 * k, 1) for k in range(1, 13)]}, nodes=1)
    dry = vitolaunch(home, "sweep", str(spec), "--dry-run", env={"PATH": path}).stdout
    assert "first of" not in dry and "12 trials in 4 arrays (the cluster's MaxArraySize is 5)" in dry, dry
    listed = re.findall(r"^  array (\d+)  lane (\d+)  trials? (\d+)(?:-(\d+))? +--array=(\S+)"
                        r"(?:  --dependency=afterany:<array (\d+)>)?$", dry, re.M)
    assert [(r, d) for _, _, _, _, r, d in listed] == [("0-4%1", ""), ("0-0%1", "1"), ("0-4%1", ""), ("0-0%1", "3")], dry
    assert "sbatch script of array 1" in dry and "#SBATCH --array=0-4%1" in dry, dry

    # What is queued for the same 12 trials (trivial tasks here: the arrays are the point, not training).
    cancel_on_exit("it-plan")
    backend = SlurmBackend(max_array_size=5)
    jobs = [functools.partial(operator.mul, 3, k) for k in range(12)]
    names = [f"it-plan.{k:03d}.abcdef12" for k in range(12)]
    handles = backend.submit(jobs, names, Resources(mem_gb=1, timeout_min=5, array_parallelism=2), tmp_path / "logs")
    arrays = sorted({h.job_id.split("_")[0] for h in handles}, key=int)  # submitted in plan order
    assert len(arrays) == len(listed), (arrays, dry)
    for array_id, (number, _, first, last, array_range, after) in zip(arrays, listed):
        script = (tmp_path / "logs" / f"array_{array_id}.sbatch.sh").read_text()
        assert f"#SBATCH --array={array_range}\n" in script, (number, script)
        dependency = re.findall(r"^#SBATCH --dependency=(\S+)$", script, re.M)
        assert dependency == ([f"afterany:{arrays[int(after) - 1]}"] if after else []), (number, script)
        tasks = (tmp_path / "logs" / f"array_{array_id}.tsv").read_text().split()[1::2]
        assert [int(name.split(".")[1]) for name in tasks] == list(range(int(first), int(last or first) + 1))
    deadline = time.monotonic() + 180
    while not all(s is SchedulerState.COMPLETED for s in backend.states(handles).values()):
        assert time.monotonic() < deadline, backend.states(handles)
        time.sleep(1)
    from submitit.core.utils import JobPaths, pickle_load

    assert [pickle_load(JobPaths(h.log_dir, h.job_id, 0).result_pickle)[1] for h in handles] == [3 * k for k in range(12)]


def _running_tasks(name: str) -> int:
    out = subprocess.run(["squeue", "-h", "-r", "-t", "R", "-n", name, "-o", "%i"], capture_output=True, text=True,
                         timeout=30).stdout
    return len(out.split())


@pytest.mark.timeout(240)
@pytest.mark.parametrize("parallelism", [1, 2])
def test_split_arrays_never_run_more_than_array_parallelism_at_once(tmp_path, cancel_on_exit, parallelism):
    """6 one-CPU tasks in arrays of at most 2: the cluster could run all 6 at once, the sweep asked for at most 1
    or 2 (1: one lane of 3 arrays; 2: two lanes of 3 trials, each 2 arrays)."""
    from vitolaunch.backends import Resources, SchedulerState
    from vitolaunch.backends.slurm import SlurmBackend

    name = f"it-lanes{parallelism}"
    cancel_on_exit(name)
    backend = SlurmBackend(max_array_size=2)
    jobs = [functools.partial(time.sleep, 4) for _ in range(6)]
    names = [f"{name}.{k:03d}.abcdef12" for k in range(6)]
    handles = backend.submit(jobs, names, Resources(mem_gb=1, timeout_min=5, array_parallelism=parallelism), tmp_path)
    assert len({h.job_id.split("_")[0] for h in handles}) == {1: 3, 2: 4}[parallelism]
    most, deadline = 0, time.monotonic() + 200
    while not all(s is SchedulerState.COMPLETED for s in backend.states(handles).values()):
        most = max(most, _running_tasks(name))
        assert most <= parallelism, f"{most} tasks ran at once with array_parallelism {parallelism}"
        assert time.monotonic() < deadline, backend.states(handles)
        time.sleep(0.3)
    assert most == parallelism, f"at most {most} ran at once: the limit of {parallelism} was never used"


# ---------------------------------------------------------------- a sweep, end to end


@pytest.mark.timeout(420)
def test_three_two_node_trials_run_as_one_array_with_status_logs_and_idempotent_sweeps(tmp_path, cancel_on_exit):
    home = tmp_path / "home"
    cancel_on_exit("it-array")
    spec = write_slurm_spec(tmp_path, "it-array", {"loss.temperature": [0.1, 0.2, 0.3]},
                             train={"steps": 100, "log_every": 10}, array_parallelism=2)
    out = vitolaunch(home, "sweep", str(spec)).stdout
    assert "3 submitted" in out, out
    trials = trial_runs(home)
    jobs = [t.data.tags["vitolaunch.job_id"] for t in trials]
    arrays = {j.split("_")[0] for j in jobs}
    assert len(arrays) == 1 and sorted(j.split("_")[1] for j in jobs) == ["0", "1", "2"], jobs
    (array,) = arrays
    script = (home / "logs" / "it-array" / f"array_{array}.sbatch.sh").read_text()
    assert "#SBATCH --array=0-2%2" in script and "#SBATCH --job-name=it-array" in script, script

    # Sweeping again while they run submits nothing.
    again = vitolaunch(home, "sweep", str(spec)).stdout
    assert "already queued or running: skipped" in again and "submitted" not in again.replace("0 submitted", ""), again
    assert len(trial_runs(home)) == 3

    # Status while running: every trial active, from one sacct query; with --stalled-after 0 a running
    # trial that has been quiet for any time at all is STALLED.
    wait_for_run(home, trials[0].info.run_id, lambda r: r.data.metrics.get("train/step", 0) >= 10, 120, "trial 0 to train")
    rows = _rows(home, "it-array", "--stalled-after", "0")
    states = [r["state"] for r in rows]
    assert set(states) <= {"QUEUED", "RUNNING", "STALLED", "COMPLETED"}, states
    assert "STALLED" in states and "QUEUED" in states, states  # 2 at a time: the third waits
    assert all(r["elapsed_s"] is None for r in rows if r["state"] == "QUEUED"), rows  # nothing ran yet
    rows = _rows(home, "it-array")
    assert set(r["state"] for r in rows) <= {"QUEUED", "RUNNING", "COMPLETED"}, rows
    assert [r["job_id"] for r in rows] == jobs

    for trial in trials:
        wait_for_run(home, trial.info.run_id, run_ended, 300, f"trial {trial.info.run_id} to end")
    rows = _rows(home, "it-array")
    assert [r["state"] for r in rows] == ["COMPLETED"] * 3, rows
    assert all(r["step"] == r["total_steps"] == 100 for r in rows), rows

    # MLflow: one parent, three finished children with metrics on one step axis.
    client = mlflow_client(home)
    parents = {t.data.tags["mlflow.parentRunId"] for t in trial_runs(home)}
    assert len(parents) == 1 and client.get_run(parents.pop()).data.tags["vitolaunch.kind"] == "sweep"
    for trial in trial_runs(home):
        assert trial.info.status == "FINISHED"
        assert logged_loss_steps(home, trial.info.run_id) == list(range(10, 101, 10))
        # ZeRO-2 over both ranks: each rank's optimizer shard is in the committed checkpoint.
        from vito.checkpoint import CheckpointStore

        store = CheckpointStore(trial.data.tags["vitolaunch.checkpoint_uri"])
        files = {f["path"] for f in store.marker(100)["files"]}
        assert {"zero_pp_rank_0_mp_rank_00_optim_states.pt", "zero_pp_rank_1_mp_rank_00_optim_states.pt"} <= files

    # SLURM: every task on both nodes, never more than 2 at once. MLflow says FINISHED as soon as training
    # returns; the batch step ends (and sacct catches up) a little later: poll, do not assert one snapshot.
    accounted = {j: wait_for_sacct_state(j, "COMPLETED") for j in jobs}
    assert all(accounted[j]["NodeList"] == "n[1-2]" for j in jobs), accounted
    spans = sorted((accounted[j]["Start"], accounted[j]["End"]) for j in jobs)
    assert spans[2][0] >= min(spans[0][1], spans[1][1]), f"3 tasks overlapped with array_parallelism 2: {spans}"

    # Checkpoint files were staged on the nodes' local scratch, never in the submitting user's home.
    assert not (home / "scratch").exists(), list((home / "scratch").rglob("*"))[:5]

    # Logs of rank 1, found from the run id alone.
    log = vitolaunch(home, "logs", trials[1].info.run_id, "--rank", "1").stdout
    assert "rank1" in log and "global_rank=1(2)" in log, log[-2000:]
    err = vitolaunch(home, "logs", trials[1].info.run_id, "--rank", "1", "--stderr", check=False)
    assert err.returncode == 0, err.stderr

    final = vitolaunch(home, "sweep", str(spec)).stdout
    assert "3 finished" in final and "already finished: skipped" in final, final

    # One grid value edited: only the new trial is submitted, and it does not take the display index of the
    # trial it replaced in the spec (which stays in the sweep's record).
    edited = vitolaunch(home, "sweep", str(spec), "-o", "parameters.loss.temperature=[0.1,0.2,0.4]").stdout
    assert "2 finished, 1 submitted" in edited or ("1 submitted" in edited and "2 finished" in edited), edited
    rows = _rows(home, "it-array")
    assert sorted(r["index"] for r in rows) == [0, 1, 2, 3], rows
    assert next(r for r in rows if r["params"] == {"loss.temperature": 0.4})["index"] == 3
    cancelled = vitolaunch(home, "cancel", "it-array").stdout
    assert "cancelled 1 trial(s) of it-array" in cancelled, cancelled


# ---------------------------------------------------------------- preemption and crashes

@pytest.fixture(scope="module")
def reference(tmp_path_factory, slurm_cluster, job_environment):
    """An uninterrupted run of the long trial, submitted once and shared: compared against bitwise."""
    folder = tmp_path_factory.mktemp("reference")
    home = folder / "home"
    vitolaunch(home, "sweep", str(write_long_spec(folder, "it-reference")))
    yield home
    subprocess.run(["scancel", "--name", "it-reference"], capture_output=True, timeout=30)


def _reference_weights(reference: Path, scratch: Path):
    (trial,) = trial_runs(reference)
    run = wait_for_run(reference, trial.info.run_id, run_ended, 400, "the reference run")
    assert run.info.status == "FINISHED"
    return _weights(reference, scratch)


@pytest.mark.timeout(600)
def test_preempted_trial_requeues_itself_and_resumes_to_the_same_weights(tmp_path, reference, cancel_on_exit):
    home = tmp_path / "home"
    cancel_on_exit("it-preempt")
    vitolaunch(home, "sweep", str(write_long_spec(tmp_path, "it-preempt")))
    (trial,) = trial_runs(home)
    run_id, job = trial.info.run_id, trial.data.tags["vitolaunch.job_id"]

    at = random.Random().randint(20, 120)
    wait_for_run(home, run_id, lambda r: r.data.metrics.get("train/step", 0) >= at or run_ended(r), 300, f"step {at}")
    # SLURM's warning signal, as --signal=USR2@N sends it: to every rank of the job step.
    subprocess.run(["scancel", "--signal=USR2", job], check=True, timeout=30)
    requeued = wait_for_run(home, run_id, lambda r: "vitolaunch.last_requeue" in r.data.tags or run_ended(r), 120,
                            "the requeue")
    assert requeued.info.status != "FINISHED", "finished before the signal arrived: make the trial longer"
    stopped_at = int(requeued.data.tags["vitolaunch.last_requeue"].split()[-1])
    assert stopped_at >= at

    # While requeued the trial is queued, not failed, not finished.
    row = _rows(home, "it-preempt")[0]
    assert row["state"] in ("QUEUED", "RUNNING"), row

    done = wait_for_run(home, run_id, run_ended, 400, "the requeued trial to finish")
    assert done.info.status == "FINISHED", done.data.tags
    assert done.data.tags["vito.resumed_from_step"] == str(stopped_at)
    assert json.loads(done.data.tags["vitolaunch.retries"]) == {"preemption": 1, "timeout": 0, "crash": 0}
    assert done.data.tags["vitolaunch.slurm_restart_count"] == "1"
    assert done.data.tags["vitolaunch.job_id"] == job, "the same array task, requeued: not a new job"
    # The same MLflow run, and a step axis without gaps or repeats (the stop saved the very step it was at).
    assert logged_loss_steps(home, run_id) == list(range(5, 201, 5))
    wait_for_sacct_state(job, "COMPLETED")

    _assert_same_weights(_reference_weights(reference, tmp_path / "a"), _weights(home, tmp_path / "b"))


@pytest.mark.timeout(600)
def test_sigkilled_rank_is_retried_from_the_last_checkpoint_then_resume_continues_after_retries_ran_out(
    tmp_path, reference, cancel_on_exit
):
    home = tmp_path / "home"
    cancel_on_exit("it-crash")
    vitolaunch(home, "sweep", str(write_long_spec(tmp_path, "it-crash", retries={"crash": 1, "timeout": 0})))
    (trial,) = trial_runs(home)
    run_id, job = trial.info.run_id, trial.data.tags["vitolaunch.job_id"]
    uri = trial.data.tags["vitolaunch.checkpoint_uri"]

    def kill_rank_1_after(step: int) -> int:
        deadline = time.monotonic() + 300
        while not [s for s in committed_steps(uri) if s >= step]:
            assert time.monotonic() < deadline, f"no checkpoint at step >= {step} in time"
            time.sleep(0.2)
        pid = rank_pid(job, 1)
        assert pid is not None, "rank 1 is not running"
        os.kill(pid, signal.SIGKILL)
        committed = committed_steps(uri)[-1]
        assert committed < LONG_TRAIN["steps"], "the trial finished before it could be killed: make it longer"
        return committed

    first = kill_rank_1_after(25)
    retried = wait_for_run(
        home, run_id, lambda r: "crash" in r.data.tags.get("vitolaunch.last_requeue", "") or run_ended(r),
        120, "the crash retry",
    )
    assert json.loads(retried.data.tags["vitolaunch.retries"])["crash"] == 1, retried.data.tags
    wait_for_run(home, run_id, lambda r: r.data.tags.get("vito.resumed_from_step") == str(first) or run_ended(r), 180,
                 f"the retry to resume from step {first}")

    # A second crash: the one crash retry is spent, so the trial fails (it never hangs)...
    second = kill_rank_1_after(first + 25)
    failed = wait_for_run(home, run_id, run_ended, 180, "the trial to fail")
    assert failed.info.status == "FAILED", failed.data.tags
    rows = _rows(home, "it-crash")
    assert rows[0]["state"] == "FAILED", rows
    wait_for_sacct_state(job, "FAILED")

    # ...and `vitolaunch resume` continues it from its last committed checkpoint in the same MLflow run.
    out = vitolaunch(home, "resume", run_id).stdout
    assert run_id in out, out
    done = wait_for_run(home, run_id, lambda r: r.info.status == "FINISHED" or (
        r.info.status in TERMINAL_STATUSES and r.data.tags.get("vito.resumed_from_step") == str(second)),
        400, "the resumed trial")
    assert done.info.status == "FINISHED", done.data.tags
    assert done.data.tags["vito.resumed_from_step"] == str(second)
    assert done.data.tags["vitolaunch.job_id"] != job, "resume submits a new job"
    # No gaps: steps redone after a crash (logged, then lost with the process) are logged again.
    assert sorted(set(logged_loss_steps(home, run_id))) == list(range(5, 201, 5))

    _assert_same_weights(_reference_weights(reference, tmp_path / "a"), _weights(home, tmp_path / "b"))


# ---------------------------------------------------------------- cancel, logs, unreachable scheduler


@pytest.mark.timeout(300)
def test_cancel_logs_and_unknown_when_sacct_is_unreachable(tmp_path, cancel_on_exit):
    home = tmp_path / "home"
    cancel_on_exit("it-cancel")
    spec = write_slurm_spec(tmp_path, "it-cancel", {"loss.temperature": [0.2]}, train={"steps": 100000, "log_every": 5})
    vitolaunch(home, "sweep", str(spec))
    (trial,) = trial_runs(home)
    run_id, job = trial.info.run_id, trial.data.tags["vitolaunch.job_id"]
    wait_for_run(home, run_id, lambda r: r.data.metrics.get("train/step", 0) >= 5, 180, "training to start")

    assert _rows(home, "it-cancel")[0]["state"] == "RUNNING"
    # No sacct, no squeue on PATH: the scheduler cannot be asked, which is UNKNOWN, never FAILED.
    empty = tmp_path / "no-slurm-here"
    empty.mkdir()
    assert _rows(home, "it-cancel", env_path=str(empty))[0]["state"] == "UNKNOWN"

    log = vitolaunch(home, "logs", run_id, "--rank", "1").stdout
    assert "global_rank=1(2)" in log, log[-2000:]
    follow = subprocess.Popen(
        [sys.executable, "-m", "vitolaunch.cli", "logs", run_id, "--rank", "1", "--follow"],
        env={**os.environ, "VITOLAUNCH_HOME": str(home)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    out = vitolaunch(home, "cancel", "it-cancel").stdout
    assert "cancelled 1 trial(s)" in out and run_id in out, out
    followed, _ = follow.communicate(timeout=60)  # --follow ends when the trial does
    assert "global_rank=1(2)" in followed

    rows = _rows(home, "it-cancel")
    assert rows[0]["state"] == "CANCELLED", rows
    wait_for_sacct_state(job, "CANCELLED")
    deadline = time.monotonic() + 30
    while rank_pid(job, 0) or rank_pid(job, 1):
        assert time.monotonic() < deadline, "ranks still alive after cancel"
        time.sleep(0.5)
    # The ranks saved where they stopped on scancel's SIGTERM (within KillWait), and that step is committed.
    run = wait_for_run(home, run_id, lambda r: "vitolaunch.terminated_at_step" in r.data.tags, 30, "the SIGTERM save")
    stopped_at = int(run.data.tags["vitolaunch.terminated_at_step"])
    assert stopped_at >= 5 and committed_steps(trial.data.tags["vitolaunch.checkpoint_uri"])[-1] == stopped_at
    assert _rows(home, "it-cancel")[0]["state"] == "CANCELLED"
