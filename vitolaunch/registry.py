"""The record of sweeps and trials, kept in MLflow: a sweep is a parent run, each trial a child run.

Everything status and resume need is rebuilt from here (plus the scheduler and the checkpoint store), so
no local state file can drift. mlflow is imported lazily: the CLI must start instantly.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vitolaunch.errors import VitolaunchError

TAG_KIND = "vitolaunch.kind"
TAG_SWEEP = "vitolaunch.sweep"
TAG_SPEC_HASH = "vitolaunch.spec_hash"
TAG_TRIAL_KEY = "vitolaunch.trial_key"
TAG_TRIAL_INDEX = "vitolaunch.trial_index"
TAG_TASK = "vitolaunch.task"
TAG_BACKEND = "vitolaunch.backend"
TAG_JOB_ID = "vitolaunch.job_id"
TAG_LOG_DIR = "vitolaunch.log_dir"
TAG_CHECKPOINT = "vitolaunch.checkpoint_uri"
TAG_RESOURCES = "vitolaunch.resources"
TAG_STORAGE_OPTIONS = "vitolaunch.storage_options"  # non-secret fsspec options, e.g. an S3 endpoint
TAG_SWEPT = "vitolaunch.swept_params"
TAG_TOTAL_STEPS = "vitolaunch.total_steps"
TAG_PRETRAIN_RUN = "vitolaunch.pretrain_run_id"  # on an evaluation trial: the pretraining run it evaluates
TAG_EVALUATED_STEP = "vitolaunch.evaluated_step"  # on an evaluation trial: the checkpoint step it evaluated
TAG_EVALUATED_BY = "vitolaunch.evaluated_by."  # + an evaluation run id, on the pretraining run: "step N"
TAG_GIT_COMMIT = "mlflow.source.git.commit"
TAG_PARENT = "mlflow.parentRunId"
TAG_RUN_NAME = "mlflow.runName"

CONFIG_ARTIFACT = "config.json"
SPEC_ARTIFACT = "sweep_spec.yaml"


@dataclass
class RunRecord:
    run_id: str
    name: str
    status: str  # MLflow's: SCHEDULED, RUNNING, FINISHED, FAILED, KILLED
    start_time: float | None  # seconds since epoch
    end_time: float | None
    tags: dict[str, str]
    params: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    experiment_id: str = ""
    last_metric_time: float | None = None  # seconds since epoch of the newest logged metric value

    @property
    def kind(self) -> str:
        return self.tags.get(TAG_KIND, "")

    @property
    def sweep(self) -> str:
        return self.tags.get(TAG_SWEEP, "")

    @property
    def trial_key(self) -> str:
        return self.tags.get(TAG_TRIAL_KEY, "")

    @property
    def trial_index(self) -> int:
        return int(self.tags.get(TAG_TRIAL_INDEX, "-1"))

    @property
    def swept(self) -> dict[str, Any]:
        return json.loads(self.tags.get(TAG_SWEPT, "{}"))

    @property
    def resources(self) -> dict[str, Any]:
        return json.loads(self.tags.get(TAG_RESOURCES, "{}"))


def _record(run) -> RunRecord:
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
        last_metric_time=max((m.timestamp for m in getattr(data, "_metric_objs", []) or []), default=0) / 1000 or None,
    )


class TrackingUnreachable(VitolaunchError):
    pass


class RunQueries:
    """The read side of the registry, built on two primitives a store implements: `get` and `_find`."""

    tracking_uri: str

    def get(self, run_id: str) -> RunRecord:
        raise NotImplementedError

    def _find(self, tags: dict[str, str], experiment_ids: list[str] | None = None) -> list[RunRecord]:
        """Active runs carrying all these tag values (in the given experiments, or all)."""
        raise NotImplementedError

    def find_sweep(self, experiment_id: str, sweep_name: str) -> RunRecord | None:
        runs = self._find({TAG_KIND: "sweep", TAG_SWEEP: sweep_name}, [experiment_id])
        return runs[0] if runs else None

    def sweeps(self) -> list[RunRecord]:
        return self._find({TAG_KIND: "sweep"})

    def trials(self, sweep: RunRecord) -> list[RunRecord]:
        runs = self._find({TAG_PARENT: sweep.run_id}, [sweep.experiment_id])
        return sorted(runs, key=lambda r: (r.trial_index, r.start_time or 0))

    def resolve(self, run_or_sweep: str) -> RunRecord:
        """A run by full id, by unique id prefix, or a sweep by name."""
        try:
            return self.get(run_or_sweep)
        except Exception:
            pass
        candidates = [s for s in self.sweeps() if s.sweep == run_or_sweep or s.run_id.startswith(run_or_sweep)]
        if not candidates:
            candidates = [r for r in self._find({TAG_KIND: "trial"}) if r.run_id.startswith(run_or_sweep)]
        if len(candidates) == 1:
            return candidates[0]
        if not candidates:
            raise VitolaunchError(f"no sweep or trial '{run_or_sweep}' in {self.tracking_uri}: see `vitolaunch status`")
        raise VitolaunchError(f"'{run_or_sweep}' is ambiguous ({len(candidates)} matches): give more of the run id")

    def all_trials(self) -> list[RunRecord]:
        """Every trial run of every sweep, in all experiments."""
        return self._find({TAG_KIND: "trial"})


class Registry(RunQueries):
    def __init__(self, tracking_uri: str, artifact_root: Path | None = None):
        from mlflow.tracking import MlflowClient

        self.tracking_uri = tracking_uri
        self.client = MlflowClient(tracking_uri=tracking_uri)
        # With a sqlite store MLflow would put artifacts under ./mlartifacts of whatever folder the
        # command runs in: pin them next to the database instead.
        self.artifact_root = artifact_root

    # -- experiments and sweeps ------------------------------------------------------------------
    def experiment_id(self, name: str) -> str:
        try:
            experiment = self.client.get_experiment_by_name(name)
            if experiment is not None:
                return experiment.experiment_id
            location = None
            if self.artifact_root is not None and self.tracking_uri.startswith("sqlite:"):
                location = (self.artifact_root / name).as_uri()
            return self.client.create_experiment(name, artifact_location=location)
        except Exception as problem:
            raise TrackingUnreachable(f"MLflow at {self.tracking_uri} failed: {_first_line(problem)}") from problem

    def create_sweep(self, experiment_id: str, sweep_name: str, tags: dict[str, str]) -> RunRecord:
        run = self.client.create_run(
            experiment_id, run_name=sweep_name, tags={TAG_KIND: "sweep", TAG_SWEEP: sweep_name, **tags}
        )
        return _record(run)

    def create_trial(
        self, sweep: RunRecord, name: str, params: dict[str, Any], tags: dict[str, str], config: dict[str, Any]
    ) -> str:
        from mlflow.entities import Param

        run = self.client.create_run(
            sweep.experiment_id, run_name=name, tags={TAG_KIND: "trial", TAG_PARENT: sweep.run_id, **tags}
        )
        run_id = run.info.run_id
        self.client.log_batch(run_id, params=[Param(k, _param_value(v)) for k, v in params.items()])
        self.client.log_dict(run_id, config, CONFIG_ARTIFACT)
        # Queued until a job picks it up; the job moves it to RUNNING.
        self.client.update_run(run_id, status="SCHEDULED")
        return run_id

    def create_trials(self, sweep: RunRecord, trials: list[tuple[str, dict[str, Any], dict[str, str], dict[str, Any]]]) -> list[str]:
        """Many `create_trial`s (name, params, tags, config) at once: one transaction on a SQL store."""
        from vitolaunch.tracking_bulk import NewRun, create_runs

        runs = [
            NewRun(
                name=name,
                tags={TAG_KIND: "trial", TAG_PARENT: sweep.run_id, **tags},
                params={k: _param_value(v) for k, v in params.items()},
                artifacts={CONFIG_ARTIFACT: config},
            )
            for name, params, tags, config in trials
        ]
        return create_runs(self.client, sweep.experiment_id, runs, status="SCHEDULED")

    def set_tags_many(self, tags_by_run: dict[str, dict[str, str]], status: str | None = None) -> None:
        """Tags (and optionally SCHEDULED/RUNNING status) on many runs at once."""
        from vitolaunch.tracking_bulk import tag_runs

        tag_runs(self.client, tags_by_run, status)

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])

    def set_status(self, run_id: str, status: str) -> None:
        if status in ("SCHEDULED", "RUNNING"):
            self.client.update_run(run_id, status=status)
        else:
            self.client.set_terminated(run_id, status=status)

    def get(self, run_id: str) -> RunRecord:
        return _record(self.client.get_run(run_id))

    def config_of(self, trial: RunRecord) -> dict[str, Any]:
        """The full resolved vito config a trial was submitted with."""
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            path = self.client.download_artifacts(trial.run_id, CONFIG_ARTIFACT, tmp)
            return json.loads(Path(path).read_text())

    def _find(self, tags: dict[str, str], experiment_ids: list[str] | None = None) -> list[RunRecord]:
        if experiment_ids is None:
            experiment_ids = [e.experiment_id for e in self.client.search_experiments()]
        if not experiment_ids:
            return []
        return self._search(experiment_ids, " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items()))

    def _search(self, experiment_ids: list[str], filter_string: str) -> list[RunRecord]:
        runs, token = [], None
        while True:
            page = self.client.search_runs(experiment_ids, filter_string, max_results=1000, page_token=token)
            runs.extend(_record(r) for r in page)
            token = page.token
            if not token:
                return runs

    def experiment_name(self, experiment_id: str) -> str:
        return self.client.get_experiment(experiment_id).name


def _param_value(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def _first_line(problem: Exception) -> str:
    lines = str(problem).strip().splitlines()
    return lines[0][:300] if lines else type(problem).__name__

