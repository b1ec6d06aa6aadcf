"""The registry on a real sqlite MLflow store: bulk run creation equals runs made one by one, and a sweep the
CLI refuses leaves no run behind."""

from __future__ import annotations

import json
from pathlib import Path

from mlflow.tracking import MlflowClient

from tests.integration.local_sweeps import vitolaunch
from vitolaunch.tracking.mlflow_store import Registry
from vitolaunch.tracking.records import CONFIG_ARTIFACT
from vitolaunch.tracking.store import NewTrialRun

REPO = Path(__file__).resolve().parents[2]


def test_bulk_trial_runs_match_runs_made_one_by_one(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    registry = Registry(uri, tmp_path / "artifacts")
    experiment = registry.experiment_id("tests")
    sweep = registry.create_sweep(experiment, "bulk", {})
    params, tags = {"loss.temperature": 0.1, "model.scales": [4, 5]}, {"vitolaunch.sweep": "bulk"}
    config = {"a": {"b": 1}}
    one = registry.create_trial(sweep, NewTrialRun("one", params, tags, config))
    (many,) = registry.create_trials(sweep, [NewTrialRun("many", params, tags, config)])
    a, b = registry.get(one), registry.get(many)
    assert (a.status, a.params, a.kind, a.experiment_id) == (b.status, b.params, b.kind, b.experiment_id)

    def own_tags(record):  # the run name differs by construction
        return {k: v for k, v in record.tags.items() if k != "mlflow.runName"}

    assert own_tags(a) == own_tags(b)
    assert registry.config_of(b) == config == registry.config_of(a)
    assert CONFIG_ARTIFACT in {f.path for f in MlflowClient(uri).list_artifacts(many)}
    assert {r.run_id for r in registry.trials(sweep)} == {one, many}

    registry.set_tags_many(
        {one: {"vitolaunch.job_id": "7_0"}, many: {"vitolaunch.job_id": "7_1", "x": "y"}}, status="RUNNING"
    )
    registry.set_tags_many({many: {"vitolaunch.job_id": "8_0"}})
    assert registry.get(one).tags["vitolaunch.job_id"] == "7_0" and registry.get(one).status == "RUNNING"
    assert registry.get(many).tags["vitolaunch.job_id"] == "8_0" and registry.get(many).tags["x"] == "y"
    assert json.loads(json.dumps(registry.get(many).params)) == a.params
    registry.set_tags_many({one: {}, many: {}}, status="KILLED")  # what cancel does
    assert {registry.get(r).status for r in (one, many)} == {"KILLED"}
    assert all(registry.get(r).end_time for r in (one, many))


def test_a_multi_node_sweep_refused_by_the_local_backend_records_no_run(tmp_path):
    home = tmp_path / "home"
    result = vitolaunch(home, "sweep", str(REPO / "sweeps" / "quickstart.yaml"), "-o", "resources.nodes=2", check=False)
    assert result.returncode == 2, result.stderr
    assert "resources.nodes" in result.stderr
    # Opening the store creates it when the refused sweep did not: either way it must hold no run.
    home.mkdir(parents=True, exist_ok=True)
    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    experiments = [e.experiment_id for e in client.search_experiments()]
    assert client.search_runs(experiments) == []
