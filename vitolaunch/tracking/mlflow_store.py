"""The record of sweeps and trials, kept in MLflow: a sweep is a parent run, each trial a child run.

Everything status and resume need is rebuilt from here (plus the scheduler and the checkpoint store), so
no local state file can drift. mlflow is imported lazily: the CLI must start instantly.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vitolaunch.tracking.records import (
    CONFIG_ARTIFACT,
    KIND_SWEEP,
    KIND_TRIAL,
    TAG_KIND,
    TAG_PARENT,
    TAG_SWEEP,
    RunStatus,
    set_run_status,
)
from vitolaunch.tracking.store import NewTrialRun, RunQueries, RunRecord, TrackingUnreachable, all_pages
from vitolaunch.workspace import sqlite_path


def _record(run) -> RunRecord:
    from vitolaunch.tracking.mlflow_compat import newest_metric_time_s

    info, data = run.info, run.data
    return RunRecord(
        run_id=info.run_id,
        name=info.run_name or "",
        status=info.status,
        start_time=info.start_time / 1000 if info.start_time else None,
        end_time=info.end_time / 1000 if info.end_time else None,
        tags=dict(data.tags),
        params=dict(data.params),
        metrics=dict(data.metrics),
        experiment_id=info.experiment_id,
        last_metric_time=newest_metric_time_s(run),
    )


class Registry(RunQueries):
    """The read and write side, through MLflow's client: works against any tracking store."""

    def __init__(self, tracking_uri: str, artifact_root: Path | None = None):
        from mlflow.tracking import MlflowClient

        self.tracking_uri = tracking_uri
        self._client = MlflowClient(tracking_uri=tracking_uri)
        # With a sqlite store MLflow would put artifacts under ./mlartifacts of whatever folder the
        # command runs in: pin them next to the database instead.
        self.artifact_root = artifact_root

    # -- experiments and sweeps ------------------------------------------------------------------
    def experiment_id(self, name: str) -> str:
        """The id of the experiment with this name, created if it does not exist yet."""
        try:
            experiment = self._client.get_experiment_by_name(name)
            if experiment is not None:
                return experiment.experiment_id
            location = None
            if self.artifact_root is not None and sqlite_path(self.tracking_uri) is not None:
                location = (self.artifact_root / name).as_uri()
            return self._client.create_experiment(name, artifact_location=location)
        except Exception as problem:
            raise TrackingUnreachable(f"MLflow at {self.tracking_uri} failed: {_first_line(problem)}") from problem

    def experiment_name(self, experiment_id: str) -> str:
        return self._client.get_experiment(experiment_id).name

    def create_sweep(self, experiment_id: str, sweep_name: str, tags: dict[str, str]) -> RunRecord:
        run = self._client.create_run(
            experiment_id, run_name=sweep_name, tags={TAG_KIND: KIND_SWEEP, TAG_SWEEP: sweep_name, **tags}
        )
        return _record(run)

    def create_trials(self, sweep: RunRecord, trials: list[NewTrialRun]) -> list[str]:
        """The trials' runs (SCHEDULED until a job picks them up), in order; one transaction on a SQL store."""
        from vitolaunch.tracking.mlflow_bulk import create_runs

        runs = [new_run(sweep, trial) for trial in trials]
        return create_runs(self._client, sweep.experiment_id, runs, status=RunStatus.SCHEDULED)

    def create_trial(self, sweep: RunRecord, trial: NewTrialRun) -> str:
        """One trial's run through MLflow's public API alone (what `create_trials` must be equivalent to)."""
        from vitolaunch.tracking.mlflow_bulk import create_run_one_by_one

        return create_run_one_by_one(self._client, sweep.experiment_id, new_run(sweep, trial), RunStatus.SCHEDULED)

    def log_artifact(self, run_id: str, local_path: str) -> None:
        self._client.log_artifact(run_id, local_path)

    def set_tags_many(self, tags_by_run: dict[str, dict[str, str]], status: RunStatus | str | None = None) -> None:
        """Tags (and optionally a status) on many runs at once."""
        from vitolaunch.tracking.mlflow_bulk import tag_runs

        tag_runs(self._client, tags_by_run, status)

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        self._client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])

    def set_status(self, run_id: str, status: RunStatus | str, end_time_s: float | None = None) -> None:
        set_run_status(self._client, run_id, status, end_time_s)

    # -- a sweep's results (vitolaunch/results/sweep_summary.py, mlflow_ui.py) --------------------------------
    def set_experiment_tags(self, experiment_id: str, tags: dict[str, str]) -> None:
        for key, value in tags.items():
            self._client.set_experiment_tag(experiment_id, key, value)

    def log_artifacts(self, run_id: str, local_dir: str, artifact_path: str | None = None) -> None:
        self._client.log_artifacts(run_id, local_dir, artifact_path)

    def log_metric(self, run_id: str, key: str, value: float, step: int = 0, timestamp_ms: int | None = None) -> None:
        self._client.log_metric(run_id, key, value, timestamp=timestamp_ms, step=step)

    def metric_history(self, run_id: str, key: str) -> list[tuple[int, float]]:
        """(step, value) of every logged value of a metric, in step order."""
        return sorted((m.step, m.value) for m in self._client.get_metric_history(run_id, key))

    def find_run(self, run_id: str) -> RunRecord | None:
        from vitolaunch.tracking.mlflow_compat import is_missing_run

        try:
            return _record(self._client.get_run(run_id))
        except Exception as problem:
            if is_missing_run(problem):
                return None
            raise

    def config_of(self, trial: RunRecord) -> dict[str, Any]:
        """The full resolved vito config a trial was submitted with."""
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            path = self._client.download_artifacts(trial.run_id, CONFIG_ARTIFACT, tmp)
            return json.loads(Path(path).read_text())

    def find_runs(self, tags: dict[str, str], experiment_ids: list[str] | None = None) -> list[RunRecord]:
        if experiment_ids is None:
            experiment_ids = [e.experiment_id for e in self._client.search_experiments()]
        if not experiment_ids:
            return []
        filter_string = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())

        def page(token: str | None) -> tuple[list[RunRecord], str | None]:
            runs = self._client.search_runs(experiment_ids, filter_string, max_results=1000, page_token=token)
            return [_record(r) for r in runs], runs.token

        return all_pages(page)


def new_run(sweep: RunRecord, trial: NewTrialRun):
    from vitolaunch.tracking.mlflow_bulk import NewRun

    return NewRun(
        name=trial.name,
        tags={TAG_KIND: KIND_TRIAL, TAG_PARENT: sweep.run_id, **trial.tags},
        params={k: _param_value(v) for k, v in trial.params.items()},
        artifacts={CONFIG_ARTIFACT: trial.config},
    )


def _param_value(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def _first_line(problem: Exception) -> str:
    lines = str(problem).strip().splitlines()
    return lines[0][:300] if lines else type(problem).__name__
