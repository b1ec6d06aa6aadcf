"""Which registry writes to a tracking store: the standard-library ones where they are verified, else MLflow's.

`vitolaunch sweep` spends most of its time importing mlflow and SQLAlchemy (~2.5 s) unless the store is
written without them: a sqlite store of a verified MLflow schema directly (registry_sqlite_store), a
tracking server through its REST API (registry_rest). Everything else (other databases, a new sqlite file
whose schema MLflow must create, TLS settings only MLflow's client understands) goes through MlflowClient.
VITOLAUNCH_TRACKING_CLIENT=mlflow forces MLflow's client everywhere, should a store ever disagree.
"""

from __future__ import annotations

import functools
import os
import sqlite3
from pathlib import Path

from vitolaunch.tracking.store import RunStore
from vitolaunch.workspace import sqlite_path

_MLFLOW_ONLY_SETTINGS = ("MLFLOW_TRACKING_INSECURE_TLS", "MLFLOW_TRACKING_SERVER_CERT_PATH",
                         "MLFLOW_TRACKING_CLIENT_CERT_PATH", "MLFLOW_TRACKING_AUTH")


def open_registry(tracking_uri: str, artifact_root: Path) -> RunStore:
    if os.environ.get("VITOLAUNCH_TRACKING_CLIENT", "").lower() != "mlflow":
        database = sqlite_path(tracking_uri)
        if database is not None and database.exists():
            from vitolaunch.tracking.sqlite_reader import SchemaMismatch
            from vitolaunch.tracking.sqlite_store import SqliteRegistry

            try:
                return SqliteRegistry(tracking_uri, artifact_root)
            except (SchemaMismatch, sqlite3.Error):
                pass
        if tracking_uri.startswith(("http://", "https://")) and not any(os.environ.get(k) for k in _MLFLOW_ONLY_SETTINGS):
            from vitolaunch.tracking.rest_store import RestRegistry

            return RestRegistry(tracking_uri)
    from vitolaunch.tracking.mlflow_store import Registry

    return Registry(tracking_uri, artifact_root)


@functools.lru_cache(maxsize=4)
def store_in_job(tracking_uri: str) -> RunStore:
    """The run store of code running inside a task (the trial job, its rungs, the requeue hook): MLflow's client,
    which works on any store and is imported there anyway for the metrics; one per process and tracking URI."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("DO_NOT_TRACK", "true")
    from vitolaunch.tracking.mlflow_store import Registry

    return Registry(tracking_uri)
