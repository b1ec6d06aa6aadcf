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
import logging
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import get_args

from vitolaunch.backends import Backend, JobHandle, make_backend
from vitolaunch.errors import VitolaunchError
from vitolaunch.job.trial import Task, TrialJob
from vitolaunch.launch.benchmark_check import check_benchmark_roots
from vitolaunch.launch.resource_check import check_resources
from vitolaunch.launch.sweep_lock import sweep_lock
from vitolaunch.results.states import TrialState, trial_states
from vitolaunch.spec import SweepSpec, Trial, check_early_stop, check_trials_fit_resources, trial_resources
from vitolaunch.spec.resources import Resources, resolve_cluster
from vitolaunch.tracking.chooser import open_registry
from vitolaunch.tracking.records import (
    KIND_SWEEP,
    KIND_TRIAL,
    TAG_BACKEND,
    TAG_CHECKPOINT,
    TAG_EARLY_STOP,
    TAG_GIT_COMMIT,
    TAG_JOB_ID,
    TAG_LOG_DIR,
    TAG_NOTE,
    TAG_OBJECTIVE_METRIC,
    TAG_OBJECTIVE_MODE,
    TAG_PRETRAIN_RUN,
    TAG_PRUNE_OVERRIDDEN,
    TAG_PRUNED_AT_STEP,
    TAG_RESOURCES,
    TAG_SCRATCH,
    TAG_SPEC_HASH,
    TAG_STORAGE_OPTIONS,
    TAG_SUBMIT_ERROR,
    TAG_SWEEP,
    TAG_SWEPT,
    TAG_TASK,
    TAG_TOTAL_STEPS,
    TAG_TRIAL_INDEX,
    TAG_TRIAL_KEY,
    TAG_WAITS_FOR_RUN,
    RunStatus,
    trial_job_name,
    trial_run_name,
)
from vitolaunch.tracking.store import NewTrialRun, RunRecord, RunStore
from vitolaunch.workspace import Workspace, quiet_mlflow_environment

log = logging.getLogger(__name__)

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
    PRUNED = "pruned"  # stopped by early stopping: skipped (`vitolaunch resume RUN_ID` continues it)

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
    after: str | None = None  # a job id of the same scheduler this one may start only once it succeeded


@dataclass(frozen=True)
class _SweepTarget:
    """Where a sweep's trials run and keep their checkpoints: checked before anything is recorded."""

    backend: Backend
    resources: Resources
    checkpoint_root: str
    storage_options: dict[str, str]
    scratch: str | None  # node-local staging folder; None: resolved inside the job (job.node_scratch)


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
    if state is TrialState.PRUNED:  # stopped on purpose: a re-sweep must not undo early stopping
        return Action.PRUNED
    return Action.RESUBMITTED if retry_failed else Action.FAILED


def _task_of(trial: RunRecord) -> Task:
    """What a recorded trial does, from the task tag its sweep gave it at submit time."""
    task = trial.tags.get(TAG_TASK, "pretrain")
    if task not in get_args(Task):
        raise VitolaunchError(f"trial {trial.run_id} has an unknown {TAG_TASK} tag '{task}': expected pretrain or evaluate")
    return task


class Launcher:
    def __init__(self, workspace: Workspace, tracking_uri: str | None = None):
        quiet_mlflow_environment()
        self.workspace = workspace
        self.tracking_uri = workspace.tracking_uri_or_default(tracking_uri)
        workspace.root.mkdir(parents=True, exist_ok=True)
        self._waits_for: dict[str, RunRecord] = {}  # of the sweep being submitted (submit_sweep)

    @functools.cached_property
    def registry(self) -> RunStore:
        """Opened on first use: a sweep refused in preflight must not create a tracking store."""
        return open_registry(self.tracking_uri, self.workspace.artifact_root)

    # -- sweep -----------------------------------------------------------------------------------
    def submit_sweep(
        self, spec: SweepSpec, trials: Sequence[Trial], retry_failed: bool = False, waits_for: dict[str, RunRecord] | None = None
    ) -> SweepReport:
        """Record every trial of the sweep in MLflow, then queue the ones that need a job; returns at once.

        `waits_for`: trial key -> the pretraining trial an evaluation trial waits for (evaluate_targets.EvaluatePlan).
        """
        self._waits_for = waits_for or {}
        target = self._preflight(spec, trials)
        # Held from reading what the sweep has to recording the new job ids: a concurrent sweep of the same
        # spec then finds these trials queued instead of submitting them again.
        with sweep_lock(self.tracking_uri, self.workspace.root, spec.tracking.experiment, spec.name):
            sweep = self._find_or_create_sweep(spec, target)
            outcomes = self._classify(spec, sweep, trials, target, retry_failed)
            self._create_runs(spec, sweep, target, [o for o in outcomes if o.action is Action.SUBMITTED])
            self._queue(spec, target, [o for o in outcomes if o.action.queues_a_job])
        self._show_results(spec, sweep, trials, [o for o in outcomes if o.action.queues_a_job])
        return SweepReport(spec.name, sweep.run_id, self.tracking_uri, sweep.experiment_id, target.backend.name, outcomes)

    def _preflight(self, spec: SweepSpec, trials: Sequence[Trial]) -> _SweepTarget:
        """The scheduler can run these resources, the checkpoints can be written, the data exists."""
        backend = make_backend(resolve_cluster(spec.resources))
        resources = trial_resources(spec, trials)
        check_resources(spec, backend, resources)  # the cluster's facts first: they decide what else is worth saying
        check_trials_fit_resources(spec, trials)
        target = _SweepTarget(
            backend=backend,
            resources=resources,
            checkpoint_root=spec.resolved_checkpoint_root(self.workspace),
            storage_options=spec.storage.storage_options(),
            scratch=self._scratch_for(backend.name, spec.storage.scratch),
        )
        _check_storage(target.checkpoint_root, target.storage_options)
        _check_data(trials)
        check_benchmark_roots(spec, trials)
        check_early_stop(spec, trials)
        return target

    def _find_or_create_sweep(self, spec: SweepSpec, target: _SweepTarget) -> RunRecord:
        experiment = self.registry.experiment_id(spec.tracking.experiment)
        sweep = self.registry.find_sweep(experiment, spec.name)
        objective = spec.resolved_objective()
        tags = {TAG_SPEC_HASH: spec.spec_hash(), TAG_TASK: spec.task, TAG_BACKEND: target.backend.name,
                TAG_OBJECTIVE_METRIC: objective.metric, TAG_OBJECTIVE_MODE: objective.mode}
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

    def _show_results(
        self, spec: SweepSpec, sweep: RunRecord, trials: Sequence[Trial], queued: list[TrialOutcome]
    ) -> None:
        """The MLflow UI opens on this sweep's trials (mlflow_ui.py); a sweep with jobs queued again is RUNNING."""
        from vitolaunch.results.mlflow_ui import experiment_tags
        from vitolaunch.results.ranking import ranking_of

        swept = list(dict.fromkeys(k for trial in trials for k in trial.params))
        self.registry.set_experiment_tags(sweep.experiment_id, experiment_tags(spec.name, swept, ranking_of(sweep)))
        if queued and sweep.status != RunStatus.RUNNING.value:
            self.registry.set_status(sweep.run_id, RunStatus.RUNNING)

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
        if target.scratch:
            common_tags[TAG_SCRATCH] = target.scratch
        if spec.early_stop is not None:
            common_tags[TAG_EARLY_STOP] = spec.early_stop.to_record()
        commit = _git_commit(spec.folder)
        if commit:
            common_tags[TAG_GIT_COMMIT] = commit
        runs = [self._new_trial_run(spec, outcome, common_tags) for outcome in new]
        for outcome, run in zip(new, runs):
            if outcome.trial.key in self._waits_for:
                run.tags[TAG_WAITS_FOR_RUN] = self._waits_for[outcome.trial.key].run_id
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
        early_stop = spec.early_stop.to_record() if spec.early_stop is not None else None
        queued = []
        for o in outcomes:
            job = self._job(o.run_id, spec.task, o.trial.config.to_dict(), o.checkpoint_uri, target, early_stop)
            pretraining = self._waits_for.get(o.trial.key)
            after = None
            if pretraining is not None:
                job.wait_for_run = pretraining.run_id
                if target.backend.name == "slurm" and pretraining.tags.get(TAG_BACKEND) == "slurm":
                    after = pretraining.tags.get(TAG_JOB_ID)
            queued.append(_QueuedJob(o.run_id, trial_job_name(spec.name, o.trial.index, o.trial.key), job, after))
        handles = self._submit(target.backend, target.resources, spec.name, queued)
        for outcome, handle in zip(outcomes, handles):
            outcome.job_id = handle.job_id

    def _scratch_for(self, backend_name: str, configured: str | None) -> str | None:
        """On this machine the workspace is node-local; on a cluster the job finds its node's scratch itself."""
        if configured or backend_name != "local":
            return configured
        return str(self.workspace.scratch_root)

    def _job(
        self, run_id: str, task: Task, config: dict, checkpoint_uri: str, target: _SweepTarget,
        early_stop: str | None = None, wait_for_run: str | None = None,
    ) -> TrialJob:
        resources = target.resources
        return TrialJob(
            run_id=run_id,
            tracking_uri=self.tracking_uri,
            task=task,
            config=config,
            checkpoint_uri=checkpoint_uri,
            data_root=str(self.workspace.data_root),
            scratch_root=target.scratch,
            cpus_per_task=resources.cpus_per_task,
            max_timeouts=resources.retries.timeout,
            max_crashes=resources.retries.crash,
            storage_options=target.storage_options,
            early_stop=early_stop,
            wait_for_run=wait_for_run,
        )

    def _submit(
        self, backend: Backend, resources: Resources, sweep_name: str, queued: list[_QueuedJob]
    ) -> list[JobHandle]:
        """Queue the jobs with the scheduler and record their job ids on their runs."""
        try:
            kwargs = {"dependencies": [q.after for q in queued]} if any(q.after for q in queued) else {}
            handles = backend.submit(
                [q.job for q in queued], [q.name for q in queued], resources, self.workspace.log_dir(sweep_name), **kwargs
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
        # A sweep's pruned trials were stopped on purpose: only naming one resumes it (see _resumed_early_stop).
        skipped = (TrialState.COMPLETED, TrialState.PRUNED) if target.kind == KIND_SWEEP else (TrialState.COMPLETED,)
        runnable = [t for t in trials if not states[t.run_id].is_active and states[t.run_id] not in skipped]
        if target.kind == KIND_TRIAL and not runnable:
            state = states[target.run_id]
            raise VitolaunchError(
                f"trial {target.run_id} is {state.value}: nothing to resume"
                + (" (cancel it first to restart it)" if state.is_active else "")
            )
        resubmitted = []
        # One submission per place the trials were submitted to: trials of a sweep normally share it.
        groups: dict[tuple[str, ...], list[RunRecord]] = {}
        for trial in runnable:
            where = tuple(trial.tags.get(tag, "") for tag in (TAG_BACKEND, TAG_RESOURCES, TAG_STORAGE_OPTIONS, TAG_SCRATCH))
            groups.setdefault(where, []).append(trial)
        early_stop = {t.run_id: self._resumed_early_stop(t, states[t.run_id]) for t in runnable}
        for group in groups.values():
            target = self._recorded_target(group[0])
            target.backend.check(target.resources)
            queued = [
                _QueuedJob(
                    run_id=t.run_id,
                    name=trial_job_name(t.sweep, t.trial_index, t.trial_key),
                    job=self._job(t.run_id, _task_of(t), self.registry.config_of(t), t.tags[TAG_CHECKPOINT], target,
                                  early_stop[t.run_id], t.tags.get(TAG_WAITS_FOR_RUN)),
                )
                for t in group
            ]
            self._submit(target.backend, target.resources, group[0].sweep, queued)
            resubmitted.extend(self.registry.get(t.run_id) for t in group)
        self._sweeps_running(resubmitted)
        return resubmitted

    def _resumed_early_stop(self, trial: RunRecord, state: TrialState) -> str | None:
        """The early-stopping rule a resumed trial applies: its sweep's, unless it is a pruned trial resumed by
        name. That overrides the rule for it (tagged, so later resumes and `status` know): it runs to the end."""
        if state is TrialState.PRUNED:
            self.registry.set_tags(trial.run_id, {TAG_PRUNE_OVERRIDDEN: f"resumed at step {trial.tags.get(TAG_PRUNED_AT_STEP)}"})
            return None
        if TAG_PRUNE_OVERRIDDEN in trial.tags:
            return None
        return trial.tags.get(TAG_EARLY_STOP)

    @staticmethod
    def _recorded_target(trial: RunRecord) -> _SweepTarget:
        """Where a trial was submitted to, as its run recorded it."""
        return _SweepTarget(
            backend=make_backend(trial.tags.get(TAG_BACKEND, "local")),
            resources=Resources.from_record(trial.resources),
            checkpoint_root=trial.tags[TAG_CHECKPOINT],
            storage_options=json.loads(trial.tags.get(TAG_STORAGE_OPTIONS, "{}")),
            scratch=trial.tags.get(TAG_SCRATCH),
        )

    def _sweeps_running(self, trials: Sequence[RunRecord]) -> None:
        """Trials queued again: their sweeps' parent runs are RUNNING again (sweep_summary: status follows trials)."""
        for parent_id in {t.parent_run_id for t in trials if t.parent_run_id}:
            self.registry.set_status(parent_id, RunStatus.RUNNING)

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
        self._update_sweeps(active)
        return active

    def _update_sweeps(self, trials: Sequence[RunRecord]) -> None:
        """Trials just ended by us: their sweeps' parent runs follow (sweep_summary), best effort."""
        from vitolaunch.results.sweep_summary import update_sweep

        for parent_id in {t.parent_run_id for t in trials if t.parent_run_id}:
            try:
                update_sweep(self.registry, self.registry.get(parent_id))
            except Exception as problem:  # noqa: BLE001 - the cancel happened; `status` redoes the summary
                log.warning("could not update sweep run %s: %s", parent_id, problem)

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
