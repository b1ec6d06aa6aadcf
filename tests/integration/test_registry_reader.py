"""The mlflow-free sqlite reader that `vitolaunch status` uses sees exactly what MLflow's client sees."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from vitolaunch.tracking.mlflow_store import Registry
from vitolaunch.tracking.sqlite_reader import SqliteRunReader, open_run_reader
from vitolaunch.tracking.store import NewTrialRun
from vitolaunch.workspace import Workspace


def _key(record):
    return (record.run_id, record.status, record.tags, record.metrics, record.experiment_id, record.start_time)


@pytest.mark.timeout(120)
def test_sqlite_reader_matches_the_mlflow_client(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    registry = Registry(uri, tmp_path / "artifacts")
    experiment = registry.experiment_id("reader")
    sweep = registry.create_sweep(experiment, "alpha", {"vitolaunch.spec_hash": "abc"})
    other = registry.create_sweep(registry.experiment_id("other"), "beta", {})
    run_ids = registry.create_trials(
        sweep,
        [NewTrialRun(f"alpha-{i}", {"loss.temperature": 0.1 * (i + 1)},
                     {"vitolaunch.trial_index": str(i), "vitolaunch.trial_key": f"k{i}"}, {"i": i})
         for i in range(3)],
    )
    client = MlflowClient(uri)
    client.log_metric(run_ids[1], "train/loss", 2.5, step=7)
    client.log_metric(run_ids[1], "train/loss", 1.5, step=8)
    registry.set_status(run_ids[2], "FAILED")

    reader = open_run_reader(uri, Workspace(tmp_path))
    assert isinstance(reader, SqliteRunReader)
    assert sorted(map(_key, reader.sweeps())) == sorted(map(_key, registry.sweeps()))
    assert [_key(t) for t in reader.trials(sweep)] == [_key(t) for t in registry.trials(sweep)]
    assert [t.trial_index for t in reader.trials(sweep)] == [0, 1, 2]
    assert reader.get(run_ids[1]).metrics == {"train/loss": 1.5}
    assert reader.get(run_ids[1]).last_metric_time is not None
    assert reader.get(run_ids[2]).status == "FAILED"
    assert reader.resolve("alpha").run_id == sweep.run_id
    assert reader.resolve(run_ids[0][:10]).run_id == run_ids[0]
    assert reader.find_sweep(other.experiment_id, "beta").run_id == other.run_id
    assert reader.find_sweep(experiment, "beta") is None


def test_a_missing_database_falls_back_to_mlflow(tmp_path):
    reader = open_run_reader(f"sqlite:///{tmp_path / 'absent.db'}", Workspace(tmp_path))
    assert isinstance(reader, Registry)
