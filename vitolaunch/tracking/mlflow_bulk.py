"""Creating and tagging many trial runs at once: the cost of submitting a large sweep is MLflow's.

MLflow has no bulk API. Through MlflowClient a trial costs four round trips (create_run, log_batch,
log_dict, update_run), ~30 ms each on a sqlite store, so a 1000-trial sweep spent two minutes in MLflow
before the first sbatch. Here:

- SQL stores (the embedded sqlite default, or a database URI): every run, tag and param of the sweep is
  inserted in ONE transaction through MLflow's own ORM models, exactly as `SqlAlchemyStore.create_run`
  would (same columns, same artifact location layout), and the config artifacts are written straight
  into the local artifact folders;
- any other store (an MLflow server over HTTP): the same public calls per trial, run from a thread pool.

If MLflow's internals ever move (the SQL path is checked against mlflow 3.17), the SQL path falls back
to the public API rather than fail: slower, never wrong.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vitolaunch.tracking.mlflow_compat import sql_models, sql_store
from vitolaunch.tracking.records import RunStatus, set_run_status

log = logging.getLogger(__name__)
_THREADS = 8


@dataclass
class NewRun:
    name: str
    tags: dict[str, str]  # complete: kind, parent and the trial's own
    params: dict[str, str]
    artifacts: dict[str, Any]  # artifact file name -> JSON-able payload


def _local_artifact_dir(artifact_uri: str) -> Path | None:
    from mlflow.utils.uri import is_local_uri

    if not is_local_uri(artifact_uri):
        return None
    from mlflow.utils.file_utils import local_file_uri_to_path

    return Path(local_file_uri_to_path(artifact_uri))


def _write_artifacts(client, run_id: str, artifact_uri: str, artifacts: dict[str, Any]) -> None:
    local = _local_artifact_dir(artifact_uri)
    for name, payload in artifacts.items():
        if local is not None:
            local.mkdir(parents=True, exist_ok=True)
            (local / name).write_text(json.dumps(payload, indent=2))
        else:
            client.log_dict(run_id, payload, name)


def create_runs(client, experiment_id: str, runs: Sequence[NewRun], status: RunStatus = RunStatus.SCHEDULED) -> list[str]:
    """Create `runs` (in order) in one experiment, each with its tags, params and JSON artifacts."""
    if not runs:
        return []
    store = sql_store(client)
    if store is not None:
        try:
            return _create_sql(client, store, experiment_id, runs, status)
        except (ImportError, AttributeError, TypeError) as problem:
            log.warning("bulk run creation unavailable (%s): creating runs one by one", problem)
    with ThreadPoolExecutor(_THREADS) as pool:
        return list(pool.map(lambda run: create_run_one_by_one(client, experiment_id, run, status), runs))


def create_run_one_by_one(client, experiment_id: str, run: NewRun, status: RunStatus) -> str:
    """One run through MLflow's public API: four round trips, and what the bulk path must be equal to."""
    from mlflow.entities import Param

    created = client.create_run(experiment_id, run_name=run.name, tags=run.tags)
    run_id = created.info.run_id
    if run.params:
        client.log_batch(run_id, params=[Param(k, v) for k, v in run.params.items()])
    for name, payload in run.artifacts.items():
        client.log_dict(run_id, payload, name)
    set_run_status(client, run_id, status)
    return run_id


def _create_sql(client, store, experiment_id: str, runs: Sequence[NewRun], status: RunStatus) -> list[str]:
    from mlflow.entities import LifecycleStage, SourceType
    from mlflow.utils.mlflow_tags import MLFLOW_RUN_NAME, MLFLOW_USER
    from mlflow.utils.uri import append_to_uri_path

    experiment = store.get_experiment(experiment_id)
    if experiment.lifecycle_stage != LifecycleStage.ACTIVE:
        raise ValueError(f"experiment {experiment_id} is not active")
    SqlRun, SqlTag, SqlParam = sql_models()
    now = int(time.time() * 1000)
    run_rows, tag_rows, param_rows = [], [], []
    created: list[tuple[str, str, NewRun]] = []
    for run in runs:
        run_id = uuid.uuid4().hex
        artifact_uri = append_to_uri_path(experiment.artifact_location, run_id, store.ARTIFACTS_FOLDER_NAME)
        tags = {MLFLOW_RUN_NAME: run.name, **run.tags}
        # The columns SqlAlchemyStore.create_run fills, as it fills them.
        run_rows.append({
            "run_uuid": run_id,
            "name": run.name,
            "artifact_uri": artifact_uri,
            "experiment_id": int(experiment_id),
            "source_type": SourceType.to_string(SourceType.UNKNOWN),
            "source_name": "",
            "entry_point_name": "",
            "user_id": tags.get(MLFLOW_USER, "unknown"),
            "status": RunStatus(status).value,
            "start_time": now,
            "end_time": None,
            "deleted_time": None,
            "source_version": "",
            "lifecycle_stage": LifecycleStage.ACTIVE,
        })
        tag_rows.extend({"run_uuid": run_id, "key": k, "value": v} for k, v in tags.items())
        param_rows.extend({"run_uuid": run_id, "key": k, "value": v} for k, v in run.params.items())
        created.append((run_id, artifact_uri, run))
    # Core executemany inserts in one transaction: the ORM's unit of work costs ~2 ms per run here.
    with store.ManagedSessionMaker(read_only=False) as session:
        for model, rows in ((SqlRun, run_rows), (SqlTag, tag_rows), (SqlParam, param_rows)):
            if rows:
                session.execute(model.__table__.insert(), rows)
    # Artifacts after the commit: a run exists before anything refers to it.
    local = all(_local_artifact_dir(uri) is not None for _, uri, _ in created[:1])
    if local:
        for run_id, uri, run in created:
            _write_artifacts(client, run_id, uri, run.artifacts)
    else:
        with ThreadPoolExecutor(_THREADS) as pool:
            list(pool.map(lambda c: _write_artifacts(client, c[0], c[1], c[2].artifacts), created))
    return [run_id for run_id, _, _ in created]


def tag_runs(client, tags_by_run: dict[str, dict[str, str]], status: RunStatus | None = None) -> None:
    """Set tags on many runs, and optionally their status, in one transaction. A terminal status (FINISHED,
    FAILED, KILLED) also sets the end time, as `set_terminated` does."""
    if not tags_by_run:
        return
    store = sql_store(client)
    if store is not None:
        try:
            _tag_sql(store, tags_by_run, status)
            return
        except (ImportError, AttributeError, TypeError) as problem:
            log.warning("bulk tagging unavailable (%s): tagging runs one by one", problem)

    def one(item: tuple[str, dict[str, str]]) -> None:
        from mlflow.entities import RunTag

        run_id, tags = item
        if tags:
            client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
        if status:
            set_run_status(client, run_id, status)

    with ThreadPoolExecutor(_THREADS) as pool:
        list(pool.map(one, tags_by_run.items()))


def _tag_sql(store, tags_by_run: dict[str, dict[str, str]], status: RunStatus | None) -> None:
    SqlRun, SqlTag, _ = sql_models()
    status = RunStatus(status) if status else None
    run_ids = list(tags_by_run)
    keys = sorted({k for tags in tags_by_run.values() for k in tags})
    batches = [run_ids[i : i + 500] for i in range(0, len(run_ids), 500)]  # SQL variable limits
    with store.ManagedSessionMaker(read_only=False) as session:
        existing = {
            (tag.run_uuid, tag.key): tag
            for batch in batches
            for tag in session.query(SqlTag).filter(SqlTag.run_uuid.in_(batch), SqlTag.key.in_(keys))
        } if keys else {}
        for run_id, tags in tags_by_run.items():
            for key, value in tags.items():
                row = existing.get((run_id, key))
                if row is not None:
                    row.value = value
                else:
                    session.add(SqlTag(run_uuid=run_id, key=key, value=value))
        if status:
            values = {SqlRun.status: status.value}
            if status.is_terminal:  # as set_run_status: a terminal status stamps the end time
                values[SqlRun.end_time] = int(time.time() * 1000)
            for batch in batches:
                session.query(SqlRun).filter(SqlRun.run_uuid.in_(batch)).update(values, synchronize_session=False)
