"""End to end on the embedded default: the real CLI, submitit's local executor, 2 DeepSpeed ranks over gloo
per trial, MLflow in sqlite, checkpoints in a local folder."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from tests.checkpoints import committed_steps
from tests.integration.local_sweeps import (
    all_ended,
    logged_loss_steps,
    mlflow_client,
    status_rows,
    vitolaunch,
    wait_until,
    write_spec,
)


def _runs(home: Path, kind: str):
    client = mlflow_client(home)
    experiment = client.get_experiment_by_name("tests")
    return client.search_runs([experiment.experiment_id], f"tags.`vitolaunch.kind` = '{kind}'")


@pytest.mark.timeout(600)
def test_sweep_trains_two_rank_trials_and_records_them_in_mlflow(tmp_path):
    home = tmp_path / "home"
    spec = write_spec(tmp_path, "e2e", {"loss.temperature": [0.1, 0.2]})

    started = time.monotonic()
    out = vitolaunch(home, "sweep", str(spec)).stdout
    assert "2 submitted" in out
    assert time.monotonic() - started < 60, "sweep must return once jobs are queued, not wait for training"

    rows = wait_until(home, "e2e", all_ended, timeout=480, what="both trials to end")
    assert [r["state"] for r in rows] == ["COMPLETED", "COMPLETED"], rows
    assert all(r["step"] == r["total_steps"] == 12 for r in rows)

    client = mlflow_client(home)
    (parent,) = _runs(home, "sweep")
    children = _runs(home, "trial")
    assert len(children) == 2
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    assert sorted(float(c.data.params["loss.temperature"]) for c in children) == [0.1, 0.2]
    for child in children:
        assert child.info.status == "FINISHED"
        history = client.get_metric_history(child.info.run_id, "train/loss")
        steps = [m.step for m in history]
        assert steps == sorted(steps) and set(steps) == {2, 4, 6, 8, 10, 12}
        assert 0.0 <= child.data.metrics["eval/linear_probe_acc"] <= 1.0
        assert "eval/linear_probe_acc_random_init" in child.data.metrics
        artifacts = {a.path for a in client.list_artifacts(child.info.run_id)}
        assert "config.json" in artifacts
        assert child.data.tags["vitolaunch.trial_key"] and child.data.tags["vitolaunch.job_id"]
    # Both ranks of each trial ran and logged.
    rank_logs = sorted(p.name for p in (home / "logs" / "e2e").rglob("*_log.out"))
    assert any(name.endswith("_1_log.out") for name in rank_logs), rank_logs

    again = vitolaunch(home, "sweep", str(spec)).stdout
    assert "2 finished" in again and "already finished: skipped" in again
    assert len(_runs(home, "trial")) == 2, "a second sweep of the same spec must not create trials"


def _checkpoint_uri(home: Path) -> str:
    (trial,) = _runs(home, "trial")
    return trial.data.tags["vitolaunch.checkpoint_uri"]


def _wait_for_committed_step(uri: str, at_least: int, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not [s for s in committed_steps(uri) if s >= at_least]:
        assert time.monotonic() < deadline, "no checkpoint committed in time"
        time.sleep(0.2)


@pytest.mark.timeout(900)
def test_killed_trial_resumes_to_the_same_final_weights(tmp_path):
    import torch

    from tests.checkpoints import final_weights

    steps = {"steps": 80, "log_every": 2}
    reference_home, interrupted_home = tmp_path / "reference", tmp_path / "interrupted"
    for home in (reference_home, interrupted_home):
        spec = write_spec(tmp_path / home.name, "resume", {"loss.temperature": [0.2]}, train=steps)
        vitolaunch(home, "sweep", str(spec))
    (row,) = status_rows(interrupted_home, "resume")

    # Kill every process of the trial (SIGKILL: no chance to save) once a checkpoint is committed mid-run.
    uri = _checkpoint_uri(interrupted_home)
    _wait_for_committed_step(uri, 8)
    os.killpg(int(row["job_id"]), signal.SIGKILL)
    killed_at = committed_steps(uri)[-1]
    assert killed_at < 80, "the trial finished before it could be killed: make it longer"

    (row,) = wait_until(interrupted_home, "resume", lambda rows: rows[0]["state"] == "INTERRUPTED", 60, "INTERRUPTED")
    out = vitolaunch(interrupted_home, "resume", row["run_id"]).stdout
    assert row["run_id"] in out

    for home in (reference_home, interrupted_home):
        (done,) = wait_until(home, "resume", all_ended, timeout=600, what="the trial to end")
        assert done["state"] == "COMPLETED", done

    reference = final_weights(_checkpoint_uri(reference_home), tmp_path / "scratch_a")
    resumed = final_weights(_checkpoint_uri(interrupted_home), tmp_path / "scratch_b")
    assert reference.keys() == resumed.keys()
    different = [name for name in reference if not torch.equal(reference[name], resumed[name])]
    assert not different, f"weights differ after resume: {different[:5]}"

    # Same MLflow run, and the step axis has no gap.
    (trial,) = _runs(interrupted_home, "trial")
    assert trial.info.run_id == row["run_id"] and trial.info.status == "FINISHED"
    assert trial.data.tags["vito.resumed_from_step"] == str(killed_at)
    assert set(logged_loss_steps(interrupted_home, trial.info.run_id)) == set(range(2, 81, 2))


@pytest.mark.timeout(600)
def test_cancelled_trial_saves_the_step_it_stopped_at_and_resumes_from_it(tmp_path):
    home = tmp_path / "home"
    # No periodic checkpoint before the end: whatever is committed mid-run was saved on SIGTERM.
    spec = write_spec(tmp_path, "term", {"loss.temperature": [0.2]}, train={"steps": 160, "log_every": 2},
                      checkpoint={"every_steps": 1000, "keep_last": 2})
    vitolaunch(home, "sweep", str(spec))
    (row,) = wait_until(home, "term", lambda rows: (rows[0].get("step") or 0) >= 6, 300, "step 6")

    cancelled = vitolaunch(home, "cancel", row["run_id"])
    # cancel itself brings the parent up to date on the embedded store (it once failed there, lacking
    # metric_history on the stdlib sqlite writer, and left the parent stale until the next status)
    assert "could not update sweep run" not in cancelled.stdout + cancelled.stderr
    (sweep,) = _runs(home, "sweep")  # its only trial was cancelled: the parent follows (sweep_summary.py)
    assert sweep.info.status == "KILLED"
    uri = _checkpoint_uri(home)
    (stopped_at,) = committed_steps(uri)
    assert 6 <= stopped_at < 160
    (trial,) = _runs(home, "trial")
    assert trial.info.status == "KILLED"
    assert trial.data.tags["vitolaunch.terminated_at_step"] == str(stopped_at)
    assert status_rows(home, "term")[0]["state"] == "CANCELLED"
    rank0_log = next((home / "logs" / "term").rglob("*_0_log.out")).read_text()
    assert f"terminated: saved step {stopped_at}" in rank0_log

    vitolaunch(home, "resume", row["run_id"])
    (sweep,) = _runs(home, "sweep")
    assert sweep.info.status == "RUNNING"  # resumed: the parent runs again
    (done,) = wait_until(home, "term", all_ended, timeout=400, what="the resumed trial to end")
    assert done["state"] == "COMPLETED", done
    (trial,) = _runs(home, "trial")
    assert trial.data.tags["vito.resumed_from_step"] == str(stopped_at)
    (sweep,) = _runs(home, "sweep")
    assert sweep.info.status == "FINISHED" and sweep.data.tags["vitolaunch.best.run_id"] == trial.info.run_id
    assert set(logged_loss_steps(home, trial.info.run_id)) == set(range(2, 161, 2))


def _rank_process(controller_pid: int, rank: int):
    import psutil

    for child in psutil.Process(controller_pid).children():
        if child.environ().get("SUBMITIT_LOCAL_GLOBALID") == str(rank):
            return child
    return None


@pytest.mark.timeout(600)
def test_a_dead_rank_fails_the_trial_fast_and_resume_finishes_it(tmp_path):
    home = tmp_path / "home"
    spec = write_spec(tmp_path, "dead", {"loss.temperature": [0.2]}, train={"steps": 120, "log_every": 2},
                      checkpoint={"every_steps": 10, "keep_last": 2})
    vitolaunch(home, "sweep", str(spec))
    (row,) = status_rows(home, "dead")
    uri = _checkpoint_uri(home)
    _wait_for_committed_step(uri, 10)
    _rank_process(int(row["job_id"]), 1).kill()
    killed_at = committed_steps(uri)[-1]

    # Rank 0 must notice its peer is gone (gloo), not wait out the 10-minute collective timeout.
    (row,) = wait_until(home, "dead", all_ended, timeout=120, what="the trial to fail")
    assert row["state"] == "FAILED", row
    assert committed_steps(uri)[-1] >= killed_at  # nothing committed was lost

    vitolaunch(home, "resume", row["run_id"])
    (done,) = wait_until(home, "dead", all_ended, timeout=400, what="the resumed trial to end")
    assert done["state"] == "COMPLETED", done
    (trial,) = _runs(home, "trial")
    assert int(trial.data.tags["vito.resumed_from_step"]) >= killed_at
    assert set(logged_loss_steps(home, trial.info.run_id)) == set(range(2, 121, 2))
