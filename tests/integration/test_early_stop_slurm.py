"""Early stopping on the loopback SLURM cluster: 2-node trials in one array, two at a time.

A pruned array task saves, records PRUNED and exits 0: SLURM accounts it COMPLETED, never requeued, and the
next trial takes its place in the array's %N.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.integration.local_sweeps import all_ended, vitolaunch, wait_until
from tests.integration.slurm_trials import trial_runs, wait_for_sacct_state, write_slurm_spec

pytestmark = pytest.mark.usefixtures("slurm_cluster", "job_environment")

GOOD, BAD = [0.01, 0.005], [20.0, 50.0]


@pytest.mark.timeout(600)
def test_bad_learning_rates_are_pruned_at_the_first_rung_and_their_array_tasks_end(tmp_path: Path, cancel_on_exit) -> None:
    home = tmp_path / "home"
    path = write_slurm_spec(tmp_path, "it-prune", {"optim.lr": GOOD + BAD})
    spec = yaml.safe_load(path.read_text())
    spec["early_stop"] = {"metric": "train/loss", "rungs": [4], "keep_fraction": 0.5, "min_trials": 3}
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    cancel_on_exit("it-prune")

    vitolaunch(home, "sweep", str(path))
    rows = wait_until(home, "it-prune", all_ended, timeout=480, what="the sweep to end")
    states = {float(r["params"]["optim.lr"]): (r["state"], r["step"]) for r in rows}
    assert states == {GOOD[0]: ("COMPLETED", 12), GOOD[1]: ("COMPLETED", 12), BAD[0]: ("PRUNED", 4), BAD[1]: ("PRUNED", 4)}

    for trial in trial_runs(home):
        tags = trial.data.tags
        if float(trial.data.params["optim.lr"]) in BAD:
            decision = json.loads(tags["vitolaunch.prune_decision"])
            assert decision["rung"] == 4 and decision["value"] > decision["threshold"] and decision["compared_with"] >= 2
            # The task ended by itself, successfully and without a requeue: its array slot is free.
            row = wait_for_sacct_state(tags["vitolaunch.job_id"], "COMPLETED")
            assert row["State"] == "COMPLETED"
            assert tags.get("vitolaunch.slurm_restart_count", "0") == "0" and "vitolaunch.last_requeue" not in tags
        else:
            assert tags["vitolaunch.rung.4"].startswith("continue")
