"""MLflow internals that vitolaunch relies on (vitolaunch/tracking/mlflow_compat.py) are still there and mean what
they meant. A failure here means an MLflow upgrade moved one: fix the adapter, not its callers."""

from __future__ import annotations

import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from vitolaunch.tracking import mlflow_compat

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def client(tmp_path) -> MlflowClient:
    return MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")


def test_sql_store_is_found_behind_a_sqlite_client(client):
    store = mlflow_compat.sql_store(client)
    assert store is not None, "MlflowClient no longer exposes its SqlAlchemyStore"
    # What tracking_bulk uses on it.
    assert callable(store.ManagedSessionMaker) and store.ARTIFACTS_FOLDER_NAME and callable(store.get_experiment)


def test_sql_models_have_the_columns_bulk_creation_fills():
    run, tag, param = mlflow_compat.sql_models()
    assert {"run_uuid", "name", "artifact_uri", "experiment_id", "source_type", "source_name", "entry_point_name",
            "user_id", "status", "start_time", "end_time", "deleted_time", "source_version",
            "lifecycle_stage"} <= set(run.__table__.columns.keys())
    assert {"run_uuid", "key", "value"} <= set(tag.__table__.columns.keys())
    assert {"run_uuid", "key", "value"} <= set(param.__table__.columns.keys())


def test_newest_metric_time_is_read_from_the_run(client):
    experiment = client.create_experiment("compat")
    run_id = client.create_run(experiment).info.run_id
    assert mlflow_compat.newest_metric_time_s(client.get_run(run_id)) is None
    client.log_metric(run_id, "a", 1.0, timestamp=1_700_000_000_000, step=1)
    client.log_metric(run_id, "b", 2.0, timestamp=1_700_000_005_000, step=1)
    assert mlflow_compat.newest_metric_time_s(client.get_run(run_id)) == 1_700_000_005.0


def test_a_missing_run_is_told_apart_from_other_failures(client):
    with pytest.raises(MlflowException) as missing:
        client.get_run("0123456789abcdef0123456789abcdef")
    assert mlflow_compat.is_missing_run(missing.value)
    assert not mlflow_compat.is_missing_run(ConnectionError("down"))
