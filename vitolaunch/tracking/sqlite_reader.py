"""A read-only view of an MLflow sqlite store, for `vitolaunch status` without importing mlflow.

Importing mlflow and its SQLAlchemy store costs 2-3 s, most of the time `status` takes on the embedded
default. Reading the few tables status needs (runs, tags, latest_metrics) with the standard library takes
milliseconds. Any surprise in the schema falls back to MLflow (registry.Registry). The write side on the
same tables, for a schema version checked against MLflow, is registry_sqlite_store.SqliteRegistry.
"""

from __future__ import annotations

import sqlite3

from vitolaunch.tracking.store import RunQueries, RunRecord, sqlite_chunks
from vitolaunch.workspace import Workspace, sqlite_path


class SchemaMismatch(Exception):
    pass


class SqliteRunReader(RunQueries):
    def __init__(self, tracking_uri: str):
        self.tracking_uri = tracking_uri
        path = sqlite_path(tracking_uri)
        if path is None or not path.exists():
            raise FileNotFoundError(path)
        self._db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)

    def find_run(self, run_id: str) -> RunRecord | None:
        records = self._records("runs.run_uuid = ?", [run_id])
        return records[0] if records else None

    def find_runs(self, tags: dict[str, str], experiment_ids: list[str] | None = None) -> list[RunRecord]:
        conditions, args = [], []
        for key, value in tags.items():
            conditions.append("runs.run_uuid IN (SELECT run_uuid FROM tags WHERE key = ? AND value = ?)")
            args += [key, value]
        if experiment_ids is not None:
            conditions.append(f"runs.experiment_id IN ({','.join('?' * len(experiment_ids))})")
            args += [int(e) for e in experiment_ids]
        return self._records(" AND ".join(conditions) or "1", args)

    def _records(self, where: str, args: list) -> list[RunRecord]:
        try:
            rows = self._db.execute(
                "SELECT run_uuid, name, status, start_time, end_time, experiment_id FROM runs "
                f"WHERE lifecycle_stage = 'active' AND {where}",
                args,
            ).fetchall()
            records = {
                run_id: RunRecord(
                    run_id=run_id,
                    name=name or "",
                    status=status,
                    start_time=start / 1000 if start else None,
                    end_time=end / 1000 if end else None,
                    tags={},
                    experiment_id=str(experiment),
                )
                for run_id, name, status, start, end, experiment in rows
            }
            if not records:
                return []
            for part, marks in sqlite_chunks(list(records)):
                for run_id, key, value in self._db.execute(f"SELECT run_uuid, key, value FROM tags WHERE run_uuid IN ({marks})", part):
                    records[run_id].tags[key] = value
                for run_id, key, value, timestamp in self._db.execute(
                    f"SELECT run_uuid, key, value, timestamp FROM latest_metrics WHERE run_uuid IN ({marks})", part
                ):
                    record = records[run_id]
                    record.metrics[key] = value
                    seconds = timestamp / 1000
                    record.last_metric_time = max(record.last_metric_time or 0.0, seconds)
            return list(records.values())
        except sqlite3.Error as problem:
            raise SchemaMismatch(str(problem)) from problem


def open_run_reader(tracking_uri: str, workspace: Workspace):
    """The fastest reader for this tracking URI: sqlite read directly, anything else through MLflow."""
    if sqlite_path(tracking_uri) is not None:
        try:
            reader = SqliteRunReader(tracking_uri)
            reader.sweeps()  # probes the schema
            return reader
        except (FileNotFoundError, SchemaMismatch, sqlite3.Error):
            pass
    from vitolaunch.tracking.mlflow_store import Registry

    return Registry(tracking_uri, workspace.artifact_root)
