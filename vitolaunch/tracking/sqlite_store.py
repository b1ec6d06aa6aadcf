"""The registry on the embedded sqlite store, read AND written with the standard library (no mlflow import).

Importing mlflow and SQLAlchemy costs ~2.5 s, most of what submitting a 1000-trial sweep took. The rows
written here are the ones MLflow's own `SqlAlchemyStore` writes (create_experiment, create_run, log_batch,
update_run_info; checked against mlflow 3.17 by tests/integration/test_registry_stdlib.py): same columns,
same defaults, the run name as the `mlflow.runName` tag, artifacts as files under the run's local
`artifact_uri`. A sweep's trial runs go in in ONE transaction.

The layout is only trusted for the schema revisions in VERIFIED_SCHEMAS (MLflow's `alembic_version`):
any other store, a missing database, or a non-local artifact location is left to MLflow's client.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sqlite3
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from vitolaunch.errors import VitolaunchError
from vitolaunch.tracking.mlflow_store import new_run
from vitolaunch.tracking.records import CONFIG_ARTIFACT, KIND_SWEEP, TAG_KIND, TAG_SWEEP, RunStatus, status_change
from vitolaunch.tracking.sqlite_reader import SchemaMismatch, SqliteRunReader
from vitolaunch.tracking.store import NewTrialRun, RunRecord, sqlite_chunks

# alembic revisions whose tables this module writes, each verified against the MLflow that made it.
VERIFIED_SCHEMAS = frozenset({"dc11669786a5"})  # mlflow 3.17.x

_RUN_NAME = "mlflow.runName"  # MLflow's own tag for a run's name (mlflow.utils.mlflow_tags.MLFLOW_RUN_NAME)
_WORKSPACE = "default"  # MLflow 3.17 scopes experiment names by workspace; a plain store has only this one


def _now_ms() -> int:
    return int(time.time() * 1000)


def _finite(value: float) -> float:
    """What MLflow stores for a metric value: NaN as 0 (flagged is_nan), infinities as the largest floats."""
    if math.isnan(value):
        return 0.0
    if math.isinf(value):
        return math.copysign(1.7976931348623157e308, value)
    return value


def local_path(uri: str) -> Path | None:
    """The folder a file:// (or plain path) artifact URI points at; None for anything remote."""
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if parsed.scheme == "" and uri.startswith("/"):
        return Path(uri)
    return None


class SqliteRegistry(SqliteRunReader):
    """Registry's read and write side on a sqlite store of a verified MLflow schema."""

    def __init__(self, tracking_uri: str, artifact_root: Path):
        super().__init__(tracking_uri)
        self.artifact_root = artifact_root
        path = self._db.execute("PRAGMA database_list").fetchone()[2]
        self._db.close()
        # isolation_level=None: transactions are opened explicitly (BEGIN IMMEDIATE), so a batch is all or nothing.
        self._db = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
        # A sweep's rows touch every index page of tags and params: with sqlite's default 2 MB page cache
        # a 5000-trial insert spills and costs 9x a 1000-trial one instead of 5x.
        self._db.execute("PRAGMA cache_size = -65536")
        try:
            (version,) = self._db.execute("SELECT version_num FROM alembic_version").fetchone()
        except (sqlite3.Error, TypeError) as problem:
            raise SchemaMismatch(f"no MLflow schema version: {problem}") from problem
        if version not in VERIFIED_SCHEMAS:
            raise SchemaMismatch(f"MLflow schema {version} is not one vitolaunch has verified")
        self.schema_version = version

    # -- transactions --------------------------------------------------------------------------------
    def _write(self, statements: Iterable[tuple[str, Any]]) -> None:
        """(sql, rows) pairs in one IMMEDIATE transaction: other writers wait on sqlite's lock, never interleave."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            for sql, rows in statements:
                if isinstance(rows, list):
                    if rows:
                        db.executemany(sql, rows)
                else:
                    db.execute(sql, rows)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    # -- experiments ---------------------------------------------------------------------------------
    def _experiment(self, where: str, arg: Any) -> tuple[str, str, str, str] | None:
        row = self._db.execute(
            f"SELECT experiment_id, name, artifact_location, lifecycle_stage FROM experiments WHERE {where} AND workspace = ?",
            (arg, _WORKSPACE),
        ).fetchone()
        return (str(row[0]), row[1], row[2], row[3]) if row else None

    def experiment_id(self, name: str) -> str:
        """The id of the experiment with this name, created (as MlflowClient.create_experiment) if missing."""
        found = self._experiment("name = ?", name)
        if found:
            return found[0]
        now = _now_ms()
        location = (self.artifact_root / name).as_uri()  # as Registry.experiment_id pins it for a sqlite store
        try:
            self._write([(
                "INSERT INTO experiments (name, artifact_location, lifecycle_stage, creation_time, last_update_time, "
                "workspace) VALUES (?, ?, 'active', ?, ?, ?)",
                (name, location, now, now, _WORKSPACE),
            )])
        except sqlite3.IntegrityError:  # created by someone else in between
            pass
        return self._experiment("name = ?", name)[0]

    def experiment_name(self, experiment_id: str) -> str:
        found = self._experiment("experiment_id = ?", int(experiment_id))
        if found is None:
            raise VitolaunchError(f"no experiment {experiment_id} in {self.tracking_uri}")
        return found[1]

    def _active_artifact_location(self, experiment_id: str) -> str:
        found = self._experiment("experiment_id = ?", int(experiment_id))
        if found is None:
            raise VitolaunchError(f"no experiment {experiment_id} in {self.tracking_uri}")
        if found[3] != "active":
            raise VitolaunchError(f"MLflow experiment '{found[1]}' is deleted: restore it, or name another in tracking.experiment")
        if local_path(found[2]) is None:
            raise SchemaMismatch(f"artifact location {found[2]} is not local")
        return found[2]

    # -- runs ----------------------------------------------------------------------------------------
    def _run_rows(self, experiment_id: str, location: str, name: str, tags: dict[str, str], status: RunStatus, now: int):
        run_id = uuid.uuid4().hex
        artifact_uri = f"{location.rstrip('/')}/{run_id}/artifacts"
        # The columns SqlAlchemyStore.create_run fills, as it fills them (MlflowClient passes user "unknown").
        run = (run_id, name, "UNKNOWN", "", "", "unknown", status.value, now, None, "", "active", artifact_uri,
               int(experiment_id), None)
        tag_rows = [(k, v, run_id) for k, v in {_RUN_NAME: name, **tags}.items()]
        return run_id, artifact_uri, run, tag_rows

    _INSERT_RUN = (
        "INSERT INTO runs (run_uuid, name, source_type, source_name, entry_point_name, user_id, status, start_time, "
        "end_time, source_version, lifecycle_stage, artifact_uri, experiment_id, deleted_time) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    )
    _UPSERT_TAG = "INSERT INTO tags (key, value, run_uuid) VALUES (?, ?, ?) ON CONFLICT(key, run_uuid) DO UPDATE SET value = excluded.value"
    _INSERT_PARAM = "INSERT INTO params (key, value, run_uuid) VALUES (?, ?, ?)"

    def create_sweep(self, experiment_id: str, sweep_name: str, tags: dict[str, str]) -> RunRecord:
        location = self._active_artifact_location(experiment_id)
        run_tags = {TAG_KIND: KIND_SWEEP, TAG_SWEEP: sweep_name, **tags}
        run_id, _, run, tag_rows = self._run_rows(experiment_id, location, sweep_name, run_tags, RunStatus.RUNNING, _now_ms())
        self._write([(self._INSERT_RUN, run), (self._UPSERT_TAG, tag_rows)])
        return self.get(run_id)

    def create_trials(self, sweep: RunRecord, trials: list[NewTrialRun]) -> list[str]:
        """The trials' runs (SCHEDULED), in order, in one transaction; then their config artifacts."""
        if not trials:
            return []
        location = self._active_artifact_location(sweep.experiment_id)
        now = _now_ms()
        runs, tags, params, created = [], [], [], []
        for trial in trials:
            spec = new_run(sweep, trial)
            run_id, artifact_uri, run, tag_rows = self._run_rows(
                sweep.experiment_id, location, spec.name, spec.tags, RunStatus.SCHEDULED, now
            )
            runs.append(run)
            tags.extend(tag_rows)
            params.extend((k, v, run_id) for k, v in spec.params.items())
            created.append((run_id, artifact_uri, spec.artifacts))
        # In primary-key order (key, run_uuid): the index grows at a few places instead of at random ones.
        tags.sort()
        params.sort()
        self._write([(self._INSERT_RUN, runs), (self._UPSERT_TAG, tags), (self._INSERT_PARAM, params)])
        # Artifacts after the commit: a run exists before anything refers to it. Two plain mkdirs per run
        # (mkdir is the dearest call here, ~0.2 ms on a busy disk): the experiment's folder is made once.
        local_path(location).mkdir(parents=True, exist_ok=True)
        for _, artifact_uri, artifacts in created:
            folder = local_path(artifact_uri)
            os.mkdir(folder.parent)
            os.mkdir(folder)
            for name, payload in artifacts.items():
                with open(folder / name, "w") as handle:
                    handle.write(json.dumps(payload, indent=2))  # as MlflowClient.log_dict writes JSON
        return [run_id for run_id, _, _ in created]

    def log_artifact(self, run_id: str, local_file: str) -> None:
        folder = self._artifact_dir(run_id)
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy2(local_file, folder / Path(local_file).name)

    def config_of(self, trial: RunRecord) -> dict[str, Any]:
        return json.loads((self._artifact_dir(trial.run_id) / CONFIG_ARTIFACT).read_text())

    def _artifact_dir(self, run_id: str) -> Path:
        row = self._db.execute("SELECT artifact_uri FROM runs WHERE run_uuid = ?", (run_id,)).fetchone()
        if row is None:
            raise VitolaunchError(f"no run {run_id} in {self.tracking_uri}")
        folder = local_path(row[0])
        if folder is None:
            raise VitolaunchError(f"run {run_id} keeps its artifacts at {row[0]}, not on this machine")
        return folder

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        self.set_tags_many({run_id: tags})

    def set_status(self, run_id: str, status: RunStatus | str, end_time_s: float | None = None) -> None:
        status, end = status_change(status, end_time_s)
        self._write([("UPDATE runs SET status = ?, end_time = COALESCE(?, end_time) WHERE run_uuid = ?",
                      (status.value, end, run_id))])

    def log_artifacts(self, run_id: str, local_dir: str, artifact_path: str | None = None) -> None:
        folder = self._artifact_dir(run_id) / (artifact_path or "")
        shutil.copytree(local_dir, folder, dirs_exist_ok=True)

    def log_metric(self, run_id: str, key: str, value: float, step: int = 0, timestamp_ms: int | None = None) -> None:
        """As SqlAlchemyStore.log_metric: a new point unless identical, and `latest_metrics` moved to it when
        (step, timestamp, value) is larger than what it holds."""
        is_nan, stored = math.isnan(value), _finite(value)
        row = (key, stored, _now_ms() if timestamp_ms is None else int(timestamp_ms), run_id, int(step), int(is_nan))
        self._write([
            ("INSERT OR IGNORE INTO metrics (key, value, timestamp, run_uuid, step, is_nan) VALUES (?, ?, ?, ?, ?, ?)", row),
            ("INSERT INTO latest_metrics (key, value, timestamp, run_uuid, step, is_nan) VALUES (?, ?, ?, ?, ?, ?) "
             "ON CONFLICT (key, run_uuid) DO UPDATE SET value = excluded.value, timestamp = excluded.timestamp, "
             "step = excluded.step, is_nan = excluded.is_nan "
             "WHERE (excluded.step, excluded.timestamp, excluded.value) > "
             "(latest_metrics.step, latest_metrics.timestamp, latest_metrics.value)", row),
        ])

    def metric_history(self, run_id: str, key: str) -> list[tuple[int, float]]:
        rows = self._db.execute("SELECT step, value, is_nan FROM metrics WHERE run_uuid = ? AND key = ?", (run_id, key))
        return sorted((step, math.nan if is_nan else value) for step, value, is_nan in rows)

    def set_experiment_tags(self, experiment_id: str, tags: dict[str, str]) -> None:
        """Experiment tags (upserted, as MlflowClient.set_experiment_tag): what the MLflow UI reads."""
        self._write([(
            "INSERT INTO experiment_tags (key, value, experiment_id) VALUES (?, ?, ?) "
            "ON CONFLICT (key, experiment_id) DO UPDATE SET value = excluded.value",
            [(key, value, int(experiment_id)) for key, value in tags.items()],
        )])

    def set_tags_many(self, tags_by_run: dict[str, dict[str, str]], status: RunStatus | str | None = None) -> None:
        """Tags (upserted, as log_batch) and optionally a status on many runs, in one transaction. A terminal
        status also stamps the end time, as `records.set_run_status` does through MLflow."""
        if not tags_by_run:
            return
        statements: list[tuple[str, Any]] = [
            (self._UPSERT_TAG, [(k, str(v), run_id) for run_id, tags in tags_by_run.items() for k, v in tags.items()])
        ]
        if status is not None:
            status, end = status_change(status)
            sql = "UPDATE runs SET status = ?, end_time = COALESCE(?, end_time) WHERE run_uuid = ?"
            statements.append((sql, [(status.value, end, run_id) for run_id in tags_by_run]))
        self._write(statements)

    def _records(self, where: str, args: list) -> list[RunRecord]:
        records = super()._records(where, args)
        by_id = {record.run_id: record for record in records}
        for part, marks in sqlite_chunks(list(by_id)):
            for run_id, key, value in self._db.execute(f"SELECT run_uuid, key, value FROM params WHERE run_uuid IN ({marks})", part):
                by_id[run_id].params[key] = value
        return records
