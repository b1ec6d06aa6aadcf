"""Submitting sweeps and resuming trials: spec -> registry runs -> scheduler jobs.

`submit_sweep` never waits on training. It records every trial as an MLflow run first, hands each job
its run id, and returns once the scheduler has the jobs. Trials already running or finished are left
alone, so sweeping the same spec twice submits only what is missing.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import json
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from vitolaunch.backends import Backend, JobHandle, make_backend
from vitolaunch.errors import VitolaunchError
from vitolaunch.job import TrialJob
from vitolaunch.records import (
    KIND_SWEEP,
    KIND_TRIAL,
    TAG_BACKEND,
    TAG_CHECKPOINT,
    TAG_GIT_COMMIT,
    TAG_JOB_ID,
    TAG_LOG_DIR,
    TAG_NOTE,
    TAG_PRETRAIN_RUN,
    TAG_RESOURCES,
    TAG_SPEC_HASH,
    TAG_STORAGE_OPTIONS,
    TAG_SUBMIT_ERROR,
    TAG_SWEEP,
    TAG_SWEPT,
    TAG_TASK,
    TAG_TOTAL_STEPS,
    TAG_TRIAL_INDEX,
    TAG_TRIAL_KEY,
    RunStatus,
    trial_job_name,
    trial_run_name,
)
from vitolaunch.registry import NewTrialRun, RunRecord
from vitolaunch.registry_open import open_registry
from vitolaunch.resource_check import check_resources
from vitolaunch.resources import Resources, resolve_cluster
from vitolaunch.spec import SweepSpec, Trial, check_trials_fit_resources
from vitolaunch.states import TrialState, trial_states
from vitolaunch.sweep_lock import sweep_lock
from vitolaunch.workspace import Workspace, quiet_mlflow_environment

# A few key hyperparameters are logged as params for every trial, swept or not, so the MLflow compare
# view is useful without opening artifacts. The full config is the config.json artifact.
KEY_PARAMS = ("model.arch", "model.pooling", "data.batch_size", "train.steps", "optim.name", "optim.lr", "loss.temperature")


class Action(str, enum.Enum):
    """What a sweep does with one of its trials."""

    SUBMITTED = "submitted"  # new: a run is created and a job queued
    RESUBMITTED = "resubmitted"  # failed or stopped earlier, retried: resumes from its checkpoint
    RUNNING = "running"  # already queued or running: skipped
    FINISHED = "finished"  # already finished: skipped
    FAILED = "failed"  # failed earlier, not retried: skipped

    @property
    def queues_a_job(self) -> bool:
        return self in (Action.SUBMITTED, Action.RESUBMITTED)


@dataclass
class TrialOutcome:
    trial: Trial
    action: Action
    run_id: str  # empty for a new trial until its run is created
    checkpoint_uri: str
    job_id: str | None = None


@dataclass
class SweepReport:
    sweep_name: str
    sweep_run_id: str
    tracking_uri: str
    experiment_id: str
    backend: str
    outcomes: list[TrialOutcome]


@dataclass(frozen=True)
class _QueuedJob:
    run_id: str
    name: str  # records.trial_job_name
    job: TrialJob


@dataclass(frozen=True)
class _SweepTarget:
    """Where a sweep's trials run and keep their checkpoints: checked before anything is recorded."""

    backend: Backend
    resources: Resources
    checkpoint_root: str
    storage_options: dict[str, str]


def _get(config: dict, dotted: str):
    node = config
    for part in dotted.split("."):
        node = node[part]
    return node


def _git_commit(folder: Path) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _check_storage(root: str, storage_options: dict) -> None:
    """A sweep whose checkpoints cannot be written is refused before anything is queued."""
    from vito.checkpoint import CheckpointStore, StorageUnavailable

    try:
        CheckpointStore(root, storage_options).check_writable()
    except StorageUnavailable as problem:
        raise VitolaunchError(f"storage.checkpoint_root: {problem}") from problem


def _check_data(trials: Sequence[Trial]) -> None:
    for trial in trials:
        source = trial.config.data.source
        if source != "synthetic" and "://" not in source and not Path(source).exists():
            raise VitolaunchError(f"data.source {source} (trial {trial.index}) does not exist: give a manifest path")


def _action_for_existing(state: TrialState, retry_failed: bool) -> Action:
    """What a re-sweep does with a trial that already has a run: skip it, or resubmit it (resumes)."""
    if state.is_active or state is TrialState.UNKNOWN:  # could not ask: assume it still runs
        return Action.RUNNING
    if state is TrialState.COMPLETED:
        return Action.FINISHED
    return Action.RESUBMITTED if retry_failed else Action.FAILED


class Launcher:
    def __init__(self, workspace: Workspace, tracking_uri: str | None = None):
        quiet_mlflow_environment()
        self.workspace = workspace
        self.tracking_uri = workspace.tracking_uri_or_default(tracking_uri)
        workspace.root.mkdir(parents=True, exist_ok=True)

    @functools.cached_property
    def registry(self):
        """Opened on first use: a sweep refused in preflight must not create a tracking store."""
        return open_registry(self.tracking_uri, self.workspace.artifact_root)

    # -- sweep -----------------------------------------------------------------------------------
    def submit_sweep(self, spec: SweepSpec, trials: Sequence[Trial], retry_failed: bool = False) -> SweepReport:
        """Record every trial of the sweep in MLflow, then queue the ones that need a job; returns at once."""
        target = self._preflight(spec, trials)
        # Held from reading what the sweep has to recording the new job ids: a concurrent sweep of the same
        # spec then finds these trials queued instead of submitting them again.
        with sweep_lock(self.tracking_uri, self.workspace.root, spec.tracking.experiment, spec.name):
            sweep = self._find_or_create_sweep(spec, target)
            outcomes = self._classify(spec, sweep, trials, target, retry_failed)
            self._create_runs(spec, sweep, target, [o for o in outcomes if o.action is Action.SUBMITTED])
            self._queue(spec, target, [o for o in outcomes if o.action.queues_a_job])
        return SweepReport(spec.name, sweep.run_id, self.tracking_uri, sweep.experiment_id, target.backend.name, outcomes)

    def _preflight(self, spec: SweepSpec, trials: Sequence[Trial]) -> _SweepTarget:
        """The scheduler can run these resources, the checkpoints can be written, the data exists."""
        backend = make_backend(resolve_cluster(spec.resources))
        resources = spec.resources
        check_resources(spec, backend)  # the cluster's facts first: they decide what else is worth saying
        check_trials_fit_resources(spec, trials)
        target = _SweepTarget(
            backend=backend,
            resources=resources,
            checkpoint_root=spec.resolved_checkpoint_root(self.workspace),
            storage_options=spec.storage.storage_options(),
        )
        _check_storage(target.checkpoint_root, target.storage_options)
        _check_data(trials)
        return target

    def _find_or_create_sweep(self, spec: SweepSpec, target: _SweepTarget) -> RunRecord:
        experiment = self.registry.experiment_id(spec.tracking.experiment)
        sweep = self.registry.find_sweep(experiment, spec.name)
        tags = {TAG_SPEC_HASH: spec.spec_hash(), TAG_TASK: spec.task, TAG_BACKEND: target.backend.name}
        if spec.description:
            tags[TAG_NOTE] = spec.description
        if sweep is None:
            sweep = self.registry.create_sweep(experiment, spec.name, tags)
        else:
            self.registry.set_tags(sweep.run_id, tags)
            sweep.tags.update(tags)
        if spec.source_file:
            self.registry.log_artifact(sweep.run_id, spec.source_file)
        return sweep

    def _classify(
        self, spec: SweepSpec, sweep: RunRecord, trials: Sequence[Trial], target: _SweepTarget, retry_failed: bool
    ) -> list[TrialOutcome]:
        """New trials, and what becomes of those the sweep already has (running, finished, failed)."""
        known = {record.trial_key: record for record in self.registry.trials(sweep)}
        states = trial_states(list(known.values()))
        taken = {record.trial_index for record in known.values()}
        next_free = max(taken, default=-1) + 1
        outcomes = []
        for trial in trials:
            prior = known.get(trial.key)
            if prior is None:
                if trial.index in taken:  # an edited spec: its position belongs to a trial of an earlier sweep
                    trial, next_free = dataclasses.replace(trial, index=next_free), next_free + 1
                taken.add(trial.index)
                uri = f"{target.checkpoint_root.rstrip('/')}/{spec.name}/{trial.key}"
                outcomes.append(TrialOutcome(trial, Action.SUBMITTED, run_id="", checkpoint_uri=uri))
            else:
                action = _action_for_existing(states[prior.run_id], retry_failed)
                outcomes.append(TrialOutcome(trial, action, prior.run_id, prior.tags[TAG_CHECKPOINT]))
        return outcomes

    def _create_runs(self, spec: SweepSpec, sweep: RunRecord, target: _SweepTarget, new: list[TrialOutcome]) -> None:
        """One MLflow run per new trial, created in one batch (see tracking_bulk); fills in their run ids."""
        if not new:
            return
        common_tags = {
            TAG_SWEEP: spec.name,
            TAG_SPEC_HASH: sweep.tags[TAG_SPEC_HASH],  # hashing the spec costs ~0.2 ms: once, not per trial
            TAG_TASK: spec.task,
            TAG_BACKEND: target.backend.name,
            TAG_RESOURCES: json.dumps(target.resources.to_record()),
            TAG_STORAGE_OPTIONS: json.dumps(target.storage_options),
        }
        commit = _git_commit(spec.folder)
        if commit:
            common_tags[TAG_GIT_COMMIT] = commit
        runs = [self._new_trial_run(spec, outcome, common_tags) for outcome in new]
        for outcome, run_id in zip(new, self.registry.create_trials(sweep, runs)):
            outcome.run_id = run_id

    @staticmethod
    def _new_trial_run(spec: SweepSpec, outcome: TrialOutcome, common_tags: dict[str, str]) -> NewTrialRun:
        trial = outcome.trial
        config = trial.config.to_dict()
        tags = {
            **common_tags,
            TAG_TRIAL_KEY: trial.key,
            TAG_TRIAL_INDEX: str(trial.index),
            TAG_CHECKPOINT: outcome.checkpoint_uri,
            TAG_SWEPT: json.dumps(trial.params),
            TAG_TOTAL_STEPS: str(trial.config.train.steps),
        }
        if trial.config.eval.pretrain_run_id:  # an evaluation trial: link it to what it evaluates
            tags[TAG_PRETRAIN_RUN] = trial.config.eval.pretrain_run_id
        params = {**{k: _get(config, k) for k in KEY_PARAMS}, **trial.params}
        return NewTrialRun(trial_run_name(spec.name, trial.index, trial.key), params, tags, config)

    def _queue(self, spec: SweepSpec, target: _SweepTarget, outcomes: list[TrialOutcome]) -> None:
        if not outcomes:
            return
        queued = [
            _QueuedJob(
                run_id=o.run_id,
                name=trial_job_name(spec.name, o.trial.index, o.trial.key),
                job=self._job(o.run_id, o.trial.config.to_dict(), o.checkpoint_uri, target.resources, target.storage_options),
            )
            for o in outcomes
        ]
        handles = self._submit(target.backend, target.resources, spec.name, queued)
        for outcome, handle in zip(outcomes, handles):
            outcome.job_id = handle.job_id

    def _job(
        self, run_id: str, config: dict, checkpoint_uri: str, resources: Resources, storage_options: dict
    ) -> TrialJob:
        return TrialJob(
            run_id=run_id,
            tracking_uri=self.tracking_uri,
            config=config,
            checkpoint_uri=checkpoint_uri,
            data_root=str(self.workspace.data_root),
            scratch_root=str(self.workspace.scratch_root),
            cpus_per_task=resources.cpus_per_task,
            max_timeouts=resources.retries.timeout,
            max_crashes=resources.retries.crash,
            storage_options=storage_options,
        )

    def _submit(
        self, backend: Backend, resources: Resources, sweep_name: str, queued: list[_QueuedJob]
    ) -> list[JobHandle]:
        """Queue the jobs with the scheduler and record their job ids on their runs."""
        try:
            handles = backend.submit(
                [q.job for q in queued], [q.name for q in queued], resources, self.workspace.log_dir(sweep_name)
            )
        except Exception as problem:
            # Nothing half-submitted: runs we just queued are marked failed, with the reason.
            for q in queued:
                self.registry.set_tags(q.run_id, {TAG_SUBMIT_ERROR: str(problem)[:500]})
                self.registry.set_status(q.run_id, RunStatus.FAILED)
            raise VitolaunchError(f"submission to {backend.name} failed: {problem}") from problem
        self.registry.set_tags_many(
            {q.run_id: {TAG_JOB_ID: h.job_id, TAG_LOG_DIR: h.log_dir} for q, h in zip(queued, handles)},
            status=RunStatus.SCHEDULED,
        )
        return handles

    # -- resume ----------------------------------------------------------------------------------
    def resume(self, run_or_sweep: str) -> list[TrialOutcome | RunRecord]:
        """Continue a trial (or every unfinished trial of a sweep) from its newest committed checkpoint."""
        target = self.registry.resolve(run_or_sweep)
        trials = self.registry.trials(target) if target.kind == KIND_SWEEP else [target]
        states = trial_states(trials)
        runnable = [t for t in trials if not states[t.run_id].is_active and states[t.run_id] is not TrialState.COMPLETED]
        if target.kind == KIND_TRIAL and not runnable:
            state = states[target.run_id]
            raise VitolaunchError(
                f"trial {target.run_id} is {state.value}: nothing to resume"
                + (" (cancel it first to restart it)" if state.is_active else "")
            )
        resubmitted = []
        # One submission per (backend, resources): trials of a sweep normally share both.
        groups: dict[tuple[str, str], list[RunRecord]] = {}
        for trial in runnable:
            groups.setdefault((trial.tags.get(TAG_BACKEND, "local"), trial.tags.get(TAG_RESOURCES, "{}")), []).append(trial)
        for (backend_name, _), group in groups.items():
            backend = make_backend(backend_name)
            resources = Resources.from_record(group[0].resources)
            backend.check(resources)
            queued = [
                _QueuedJob(
                    run_id=t.run_id,
                    name=trial_job_name(t.sweep, t.trial_index, t.trial_key),
                    job=self._job(t.run_id, self.registry.config_of(t), t.tags[TAG_CHECKPOINT], resources,
                                  json.loads(t.tags.get(TAG_STORAGE_OPTIONS, "{}"))),
                )
                for t in group
            ]
            self._submit(backend, resources, group[0].sweep, queued)
            resubmitted.extend(self.registry.get(t.run_id) for t in group)
        return resubmitted

    # -- cancel and logs -------------------------------------------------------------------------
    def _trials_of(self, run_or_sweep: str) -> list[RunRecord]:
        target = self.registry.resolve(run_or_sweep)
        return self.registry.trials(target) if target.kind == KIND_SWEEP else [target]

    def cancel(self, run_or_sweep: str) -> list[RunRecord]:
        trials = self._trials_of(run_or_sweep)
        states = trial_states(trials)
        active = [t for t in trials if states[t.run_id].is_active and TAG_JOB_ID in t.tags]
        by_backend: dict[str, list[RunRecord]] = {}
        for trial in active:
            by_backend.setdefault(trial.tags.get(TAG_BACKEND, "local"), []).append(trial)
        for backend_name, group in by_backend.items():  # one scancel for a whole sweep, not one per trial
            make_backend(backend_name).cancel([JobHandle(t.tags[TAG_JOB_ID], t.tags.get(TAG_LOG_DIR, "")) for t in group])
            self.registry.set_tags_many({t.run_id: {} for t in group}, status=RunStatus.KILLED)
        return active

    def log_file(self, run_id: str, rank: int, stderr: bool = False) -> Path:
        trial = self.registry.resolve(run_id)
        if trial.kind != KIND_TRIAL:
            raise VitolaunchError(f"{run_id} is a sweep: give one of its trials' run ids (see `vitolaunch status`)")
        if TAG_JOB_ID not in trial.tags:
            raise VitolaunchError(f"trial {trial.run_id} has no job yet")
        resources = Resources.from_record(trial.resources)
        ranks = resources.nodes * resources.tasks_per_node
        if not 0 <= rank < ranks:
            raise VitolaunchError(f"--rank {rank} is out of range: trial {trial.run_id} has ranks 0..{ranks - 1}")
        backend = make_backend(trial.tags.get(TAG_BACKEND, "local"))
        stdout_path, stderr_path = backend.log_files(
            JobHandle(trial.tags[TAG_JOB_ID], trial.tags.get(TAG_LOG_DIR, "")), rank
        )
        return stderr_path if stderr else stdout_path

    def trial_has_ended(self, run_id: str) -> bool:
        trial = self.registry.resolve(run_id)
        return trial_states([trial])[trial.run_id].is_terminal
