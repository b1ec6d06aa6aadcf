"""RunRecords, the registry's view of an MLflow run, built without MLflow for tests of what reads them."""

from __future__ import annotations

from vitolaunch.tracking.store import RunRecord

__all__ = ["RunRecord", "run_record"]


def run_record(
    status: str = "RUNNING",
    tags: dict[str, str] | None = None,
    *,
    run_id: str = "r",
    name: str | None = None,
    start_time: float | None = 0.0,
    end_time: float | None = None,
    metrics: dict[str, float] | None = None,
    experiment_id: str = "",
) -> RunRecord:
    """A run in MLflow status `status` (a RunStatus value) with `tags` (copied); `name` defaults to `run_id`."""
    return RunRecord(
        run_id=run_id,
        name=run_id if name is None else name,
        status=status,
        start_time=start_time,
        end_time=end_time,
        tags=dict(tags or {}),
        metrics=dict(metrics or {}),
        experiment_id=experiment_id,
    )
