"""The few places vitolaunch relies on MLflow internals, each behind one function.

MLflow has no bulk API and no public accessor for a client's store or a run's metric timestamps, and both
matter at sweep scale (creating 1000 runs in one transaction; telling a stalled trial from a busy one). Each
reach into a private name lives here and nowhere else, and tests/integration/test_compat_adapters.py fails
loudly when an MLflow upgrade moves one of them. Everything here degrades: a caller that gets None falls
back to the public API.
"""

from __future__ import annotations

from typing import Any


def sql_store(client: Any) -> Any | None:
    """The SqlAlchemyStore behind an MlflowClient (sqlite or a database URI), or None for any other store."""
    try:
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

        store = client._tracking_client.store
    except (ImportError, AttributeError):
        return None
    return store if isinstance(store, SqlAlchemyStore) else None


def sql_models() -> tuple[Any, Any, Any]:
    """MLflow's ORM models for runs, tags and params (SqlRun, SqlTag, SqlParam)."""
    from mlflow.store.tracking.dbmodels.models import SqlParam, SqlRun, SqlTag

    return SqlRun, SqlTag, SqlParam


def newest_metric_time_s(run: Any) -> float | None:
    """Epoch seconds of the newest logged value among a run's latest metrics (None if it logged none).

    `Run.data.metrics` holds only values; the timestamps are on the private `_metric_objs`.
    """
    objs = getattr(run.data, "_metric_objs", None) or []
    newest = max((metric.timestamp for metric in objs), default=0)
    return newest / 1000 if newest else None


def is_missing_run(problem: Exception) -> bool:
    """True when an MlflowClient call failed because the run id does not exist (not because the store is down)."""
    from mlflow.exceptions import MlflowException

    if not isinstance(problem, MlflowException):
        return False
    # A sqlite store says RESOURCE_DOES_NOT_EXIST; a server answers 404 the same way, and some stores
    # reject an id that is not a run id at all (a sweep name) as INVALID_PARAMETER_VALUE.
    return problem.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")
