"""A real MLflow sqlite store holding one finished sweep with known results, built through the Registry.

temperature in [0.1, 0.3] x seed in [0, 1, 2]; eval/linear_probe_acc = ACC[(temperature, seed)], so the ranking,
the best trial and every mean ± std are known exactly.
"""

from __future__ import annotations

import json
from pathlib import Path

from vitolaunch.tracking.records import (
    TAG_OBJECTIVE_METRIC,
    TAG_OBJECTIVE_MODE,
    TAG_SWEEP,
    TAG_SWEPT,
    TAG_TASK,
    TAG_TRIAL_INDEX,
    TAG_TRIAL_KEY,
    RunStatus,
)

SWEEP = "abl"
ACC = {(0.1, 0): 0.50, (0.1, 1): 0.54, (0.1, 2): 0.52, (0.3, 0): 0.40, (0.3, 1): 0.44, (0.3, 2): 0.60}


def build(home: Path, statuses: dict[int, RunStatus] | None = None):
    """The store under `home` (a VITOLAUNCH_HOME); returns (registry, sweep record, trial run ids in index order)."""
    from vitolaunch.tracking.mlflow_store import Registry
    from vitolaunch.tracking.store import NewTrialRun
    from vitolaunch.workspace import Workspace

    workspace = Workspace(home)
    home.mkdir(parents=True, exist_ok=True)
    registry = Registry(workspace.tracking_uri, workspace.artifact_root)
    experiment = registry.experiment_id("tests")
    objective = {TAG_OBJECTIVE_METRIC: "eval/linear_probe_acc", TAG_OBJECTIVE_MODE: "max"}
    sweep = registry.create_sweep(experiment, SWEEP, {TAG_TASK: "pretrain", **objective})
    new = []
    for index, (temperature, seed) in enumerate(ACC):
        params = {"loss.temperature": temperature, "train.seed": seed}
        tags = {TAG_SWEEP: SWEEP, TAG_TRIAL_KEY: f"key{index:04d}", TAG_TRIAL_INDEX: str(index),
                TAG_SWEPT: json.dumps(params)}
        new.append(NewTrialRun(f"{SWEEP}-{index:03d}", params, tags, {"index": index}))
    run_ids = registry.create_trials(sweep, new)
    statuses = statuses or {}
    for index, ((temperature, seed), run_id) in enumerate(zip(ACC, run_ids)):
        for step, loss in enumerate((4.0, 3.0 + temperature, 2.0 + temperature)):
            registry.log_metric(run_id, "train/loss", loss, step=step * 10, timestamp_ms=1_000 + step)
        registry.log_metric(run_id, "eval/linear_probe_acc", ACC[(temperature, seed)], step=20, timestamp_ms=2_000)
        registry.log_metric(run_id, "eval/linear_probe_acc_random_init", 0.25, step=20, timestamp_ms=2_000)
        registry.set_status(run_id, statuses.get(index, RunStatus.FINISHED))
    return registry, registry.get(sweep.run_id), run_ids
