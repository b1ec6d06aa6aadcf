"""Runs written without mlflow (sqlite with the standard library, a server through REST) are the runs MLflow
writes: read back through MlflowClient, a trial made either way has the same tags, params, status,
experiment, config artifact and a start time; and a schema MLflow has not been verified against falls back
to MLflow's client."""

from __future__ import annotations

import json
import sqlite3
import tempfile
import uuid
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.integration import services
from vitolaunch.tracking.chooser import open_registry
from vitolaunch.tracking.mlflow_store import Registry
from vitolaunch.tracking.records import CONFIG_ARTIFACT
from vitolaunch.tracking.rest_store import RestRegistry
from vitolaunch.tracking.sqlite_store import SqliteRegistry
from vitolaunch.tracking.store import NewTrialRun

PARAMS = {"loss.temperature": 0.1, "model.scales": [4, 5], "optim.lr": 0.001}
TAGS = {"vitolaunch.sweep": "eq", "vitolaunch.trial_key": "k0", "vitolaunch.trial_index": "0"}
CONFIG = {"data": {"batch_size": 8}, "loss": {"temperature": 0.1}}


def _view(client: MlflowClient, run_id: str) -> dict:
    run = client.get_run(run_id)
    with tempfile.TemporaryDirectory() as tmp:
        config = json.loads(Path(client.download_artifacts(run_id, CONFIG_ARTIFACT, tmp)).read_text())
    tags = {k: v for k, v in run.data.tags.items() if k != "mlflow.runName"}  # the names differ by construction
    assert run.info.start_time > 0 and run.info.end_time is None
    assert run.data.tags["mlflow.runName"] == run.info.run_name
    return {
        "status": run.info.status, "tags": tags, "params": run.data.params, "experiment": run.info.experiment_id,
        "config": config, "user": run.info.user_id, "stage": run.info.lifecycle_stage,
        "artifacts": sorted(f.path for f in client.list_artifacts(run_id)),
    }


def _same_records(registry, mlflow: Registry, stdlib_run: str, mlflow_run: str) -> None:
    a, b = registry.get(stdlib_run), mlflow.get(mlflow_run)
    assert (a.status, a.params, a.kind, a.experiment_id, a.sweep) == (b.status, b.params, b.kind, b.experiment_id, b.sweep)
    assert registry.config_of(a) == mlflow.config_of(b) == CONFIG


def _sweep_life(registry, client: MlflowClient, trial_id: str) -> None:
    """What a sweep does after creating runs: job ids and SCHEDULED, then cancel (KILLED stamps the end)."""
    registry.set_tags_many({trial_id: {"vitolaunch.job_id": "7_0"}}, status="SCHEDULED")
    registry.set_tags_many({trial_id: {"vitolaunch.job_id": "8_0"}})
    run = client.get_run(trial_id)
    assert (run.data.tags["vitolaunch.job_id"], run.info.status, run.info.end_time) == ("8_0", "SCHEDULED", None)
    registry.set_tags_many({trial_id: {}}, status="KILLED")
    run = client.get_run(trial_id)
    assert run.info.status == "KILLED" and run.info.end_time >= run.info.start_time


@pytest.mark.timeout(180)
def test_sqlite_runs_written_with_the_standard_library_equal_mlflows(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow = Registry(uri, tmp_path / "artifacts")  # creates the schema, as the first sweep in a workspace does
    registry = open_registry(uri, tmp_path / "artifacts")
    assert isinstance(registry, SqliteRegistry)
    client = MlflowClient(uri)

    # the experiment, created on each side under its own name
    by_mlflow = client.get_experiment(mlflow.experiment_id("by-mlflow"))
    by_stdlib = client.get_experiment(registry.experiment_id("by-stdlib"))
    assert by_stdlib.artifact_location == (tmp_path / "artifacts" / "by-stdlib").as_uri()
    assert (by_stdlib.lifecycle_stage, by_stdlib.tags) == (by_mlflow.lifecycle_stage, by_mlflow.tags)
    assert by_stdlib.creation_time > 0 and client.get_experiment_by_name("by-stdlib").experiment_id == by_stdlib.experiment_id
    assert registry.experiment_id("by-mlflow") == by_mlflow.experiment_id  # found, not created again

    # the sweep run and one trial, each side
    experiment = by_mlflow.experiment_id
    sweep_m = mlflow.create_sweep(experiment, "eq", {"vitolaunch.spec_hash": "h"})
    sweep_s = registry.create_sweep(experiment, "eq2", {"vitolaunch.spec_hash": "h"})
    sm, ss = client.get_run(sweep_m.run_id), client.get_run(sweep_s.run_id)
    assert (ss.info.status, ss.info.user_id, ss.info.run_name, ss.info.artifact_uri.replace(ss.info.run_id, "R")) == (
        sm.info.status, sm.info.user_id, "eq2", sm.info.artifact_uri.replace(sm.info.run_id, "R"))
    assert {k: v for k, v in ss.data.tags.items() if k not in ("mlflow.runName", "vitolaunch.sweep")} == {
        k: v for k, v in sm.data.tags.items() if k not in ("mlflow.runName", "vitolaunch.sweep")}

    one = mlflow.create_trial(sweep_m, NewTrialRun("one", PARAMS, TAGS, CONFIG))
    stdlib_runs = registry.create_trials(sweep_m, [NewTrialRun(f"many-{i}", PARAMS, TAGS, CONFIG) for i in range(3)])
    assert _view(client, stdlib_runs[0]) == _view(client, one)
    assert [client.get_run(r).info.run_name for r in stdlib_runs] == ["many-0", "many-1", "many-2"]
    _same_records(registry, mlflow, stdlib_runs[0], one)
    assert {r.run_id for r in registry.trials(sweep_m)} == {one, *stdlib_runs}

    spec = tmp_path / "eq.yaml"
    spec.write_text("name: eq\n")
    registry.log_artifact(sweep_s.run_id, str(spec))
    assert [f.path for f in client.list_artifacts(sweep_s.run_id)] == ["eq.yaml"]
    _sweep_life(registry, client, stdlib_runs[0])
    registry.set_status(stdlib_runs[1], "FAILED")
    assert client.get_run(stdlib_runs[1]).info.status == "FAILED" and client.get_run(stdlib_runs[1]).info.end_time

    # MLflow's own search sees the stdlib runs like its own
    found = client.search_runs([experiment], "tags.`vitolaunch.trial_key` = 'k0'")
    assert {r.info.run_id for r in found} == {one, *stdlib_runs}


@pytest.mark.timeout(60)
def test_a_schema_not_verified_falls_back_to_mlflow(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    Registry(uri, tmp_path / "artifacts").experiment_id("x")
    assert isinstance(open_registry(uri, tmp_path / "artifacts"), SqliteRegistry)
    with sqlite3.connect(tmp_path / "mlflow.db") as db:
        db.execute("UPDATE alembic_version SET version_num = 'ffffffffffff'")
    assert isinstance(open_registry(uri, tmp_path / "artifacts"), Registry)
    assert isinstance(open_registry(f"sqlite:///{tmp_path / 'absent.db'}", tmp_path / "artifacts"), Registry)


@pytest.mark.timeout(300)
def test_runs_written_through_the_rest_api_equal_mlflows_on_the_real_server(tmp_path):
    env = services.services_env(s3=False, mlflow=True)
    uri = env["VITOLAUNCH_TEST_MLFLOW_URI"]
    registry, mlflow, client = open_registry(uri, tmp_path), Registry(uri), MlflowClient(uri)
    assert isinstance(registry, RestRegistry)
    name = f"integration-rest-{uuid.uuid4().hex[:10]}"
    experiment = registry.experiment_id(name)
    assert registry.experiment_id(name) == experiment == mlflow.experiment_id(name)
    assert client.get_experiment(experiment).name == name == registry.experiment_name(experiment)

    sweep_m = mlflow.create_sweep(experiment, "eq", {"vitolaunch.spec_hash": "h"})
    sweep_s = registry.create_sweep(experiment, "eq2", {"vitolaunch.spec_hash": "h"})
    sm, ss = client.get_run(sweep_m.run_id), client.get_run(sweep_s.run_id)
    assert (ss.info.status, ss.info.user_id, ss.info.run_name) == (sm.info.status, sm.info.user_id, "eq2")

    one = mlflow.create_trial(sweep_m, NewTrialRun("one", PARAMS, TAGS, CONFIG))
    rest_runs = registry.create_trials(sweep_m, [NewTrialRun(f"many-{i}", PARAMS, TAGS, CONFIG) for i in range(12)])
    assert _view(client, rest_runs[0]) == _view(client, one)
    assert [client.get_run(r).info.run_name for r in rest_runs] == [f"many-{i}" for i in range(12)]
    _same_records(registry, mlflow, rest_runs[0], one)
    assert {r.run_id for r in registry.trials(sweep_m)} == {one, *rest_runs}
    assert registry.find_sweep(experiment, "eq2").run_id == sweep_s.run_id
    assert registry.find_run(uuid.uuid4().hex) is None

    spec = tmp_path / "eq.yaml"
    spec.write_text("name: eq\n")
    registry.log_artifact(sweep_s.run_id, str(spec))
    assert [f.path for f in client.list_artifacts(sweep_s.run_id)] == ["eq.yaml"]
    _sweep_life(registry, client, rest_runs[0])


@pytest.mark.timeout(300)
def test_a_sweep_into_an_existing_sqlite_store_imports_neither_mlflow_nor_sqlalchemy(slurm_cluster, tmp_path):
    import subprocess

    import yaml

    from tests.integration.local_sweeps import vitolaunch, write_spec

    home, name = tmp_path / "home", f"noimport-{uuid.uuid4().hex[:6]}"
    path = write_spec(tmp_path, name, {"loss.temperature": [0.1, 0.2]}, tasks_per_node=1)
    spec = yaml.safe_load(path.read_text())
    spec["resources"] = {"cluster": "slurm", "nodes": 1, "tasks_per_node": 1, "cpus_per_task": 1, "mem_gb": 1, "timeout_min": 5}
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    vitolaunch(home, "status")  # the store exists, as for any sweep but a workspace's first
    try:
        result = vitolaunch(home, "sweep", str(path), env={"PYTHONPROFILEIMPORTTIME": "1"})
    finally:
        subprocess.run(["scancel", "--name", name], capture_output=True, timeout=60)
    assert "2 submitted" in result.stdout
    imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}
    assert "vitolaunch.tracking.sqlite_store" in imported
    assert not {m for m in imported if m.split(".")[0] in ("mlflow", "sqlalchemy", "alembic")}, sorted(imported)
