"""Early stopping end to end on the local backend: the real CLI, 2-rank trials, MLflow in sqlite.

Trials with a learning rate far too high are pruned at the first rung by their own rank 0, from the values
their siblings logged there; the good ones run to the end. A pruned trial keeps a committed checkpoint, its job
exits (freeing its run slot), and `vitolaunch resume` continues it to the same weights as an uninterrupted run.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml

from tests.integration.local_sweeps import all_ended, status_rows, vitolaunch, wait_until, write_spec

GOOD, BAD = [0.01, 0.005], [20.0, 50.0]
# Trials start in spec order, two at a time: the good ones reach the rungs first (fewer than min_trials
# reports: they continue), then each bad one is compared with three or four values and is worse than half.
EARLY_STOP = {"metric": "train/loss", "mode": "min", "rungs": [4, 8], "keep_fraction": 0.5, "min_trials": 3}


def _spec(folder: Path, name: str, lrs: list[float], early_stop: dict | None) -> Path:
    path = write_spec(folder, name, {"optim.lr": lrs}, tasks_per_node=2)
    spec = yaml.safe_load(path.read_text())
    spec["resources"]["array_parallelism"] = 2
    if early_stop:
        spec["early_stop"] = early_stop
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _runs(home: Path) -> dict[float, object]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{home / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tests")
    runs = client.search_runs([experiment.experiment_id], "tags.`vitolaunch.kind` = 'trial'")
    return {float(r.data.params["optim.lr"]): r for r in runs}


def _wait_job_gone(run) -> None:
    """The pruned trial's job exits by itself (that is what frees its run slot)."""
    from vitolaunch.backends import JobHandle, SchedulerState
    from vitolaunch.backends.local import LocalBackend

    handle = JobHandle(run.data.tags["vitolaunch.job_id"], run.data.tags["vitolaunch.log_dir"])
    deadline = time.monotonic() + 60
    while LocalBackend().states([handle])[handle.job_id] in (SchedulerState.RUNNING, SchedulerState.PENDING):
        assert time.monotonic() < deadline, "the pruned trial's job did not exit"
        time.sleep(0.5)
    assert LocalBackend().states([handle])[handle.job_id] is SchedulerState.COMPLETED


@pytest.mark.timeout(900)
def test_bad_learning_rates_are_pruned_at_the_first_rung_and_a_resumed_one_ends_exactly(tmp_path):
    import torch

    from tests.checkpoints import final_weights
    from vito.checkpoint import CheckpointStore

    home, reference_home = tmp_path / "home", tmp_path / "reference"
    spec = _spec(tmp_path, "es", GOOD + BAD, EARLY_STOP)
    vitolaunch(home, "sweep", str(spec))
    vitolaunch(reference_home, "sweep", str(_spec(tmp_path / "ref", "es", BAD[:1], None)))

    rows = wait_until(home, "es", all_ended, timeout=600, what="the sweep to end")
    states = {float(r["params"]["optim.lr"]): (r["state"], r["step"]) for r in rows}
    assert states == {GOOD[0]: ("COMPLETED", 12), GOOD[1]: ("COMPLETED", 12), BAD[0]: ("PRUNED", 4), BAD[1]: ("PRUNED", 4)}

    runs = _runs(home)
    for lr in GOOD:
        tags = runs[lr].data.tags
        assert tags["vitolaunch.rung.4"].startswith("continue") and tags["vitolaunch.rung.8"].startswith("continue")
        assert "vitolaunch.pruned_at_step" not in tags
    for lr in BAD:
        run = runs[lr]
        tags = run.data.tags
        assert run.info.status == "KILLED" and tags["vitolaunch.pruned_at_step"] == "4"
        decision = json.loads(tags["vitolaunch.prune_decision"])
        assert decision["rung"] == 4 and decision["metric"] == "train/loss" and decision["prune"]
        assert decision["compared_with"] >= 2 and decision["reported"] >= 3
        assert decision["value"] > decision["threshold"], decision
        assert tags["vitolaunch.rung.4"].startswith("prune") and "vitolaunch.rung.8" not in tags
        # Its committed checkpoint is the rung's step, and its value there is what siblings compare with.
        assert CheckpointStore(tags["vitolaunch.checkpoint_uri"]).committed_steps()[-1] == 4
        assert run.data.metrics["early_stop/rung_4/train/loss"] == decision["value"]
        _wait_job_gone(run)

    again = vitolaunch(home, "sweep", str(spec)).stdout
    assert "2 finished, 2 pruned" in again and "pruned by early stopping: skipped" in again
    assert "nothing to resume" in vitolaunch(home, "resume", "es").stdout, "resuming a sweep must not undo pruning"

    pruned = runs[BAD[0]]
    assert pruned.info.run_id in vitolaunch(home, "resume", pruned.info.run_id).stdout
    rows = wait_until(home, "es", lambda rs: all_ended(rs) and all(r["state"] != "QUEUED" for r in rs), 400, "resume")
    (resumed,) = [r for r in rows if r["run_id"] == pruned.info.run_id]
    assert (resumed["state"], resumed["step"]) == ("COMPLETED", 12), resumed
    tags = _runs(home)[BAD[0]].data.tags
    assert tags["vito.resumed_from_step"] == "4" and tags["vitolaunch.prune_overridden"] == "resumed at step 4"
    assert "vitolaunch.rung.8" not in tags, "a pruned trial resumed by hand is not judged again"

    (reference,) = wait_until(reference_home, "es", all_ended, timeout=300, what="the reference trial")
    assert reference["state"] == "COMPLETED"
    expected = final_weights(_runs(reference_home)[BAD[0]].data.tags["vitolaunch.checkpoint_uri"], tmp_path / "scratch_a")
    got = final_weights(tags["vitolaunch.checkpoint_uri"], tmp_path / "scratch_b")
    assert expected.keys() == got.keys()
    different = [name for name in expected if not torch.equal(expected[name], got[name])]
    assert not different, f"weights differ after resuming the pruned trial: {different[:5]}"
    assert status_rows(home, "es")  # status still reads the sweep with a resumed pruned trial in it
