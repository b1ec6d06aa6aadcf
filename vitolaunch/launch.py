"""Submitting sweeps and resuming trials: spec -> registry runs -> scheduler jobs.

`submit_sweep` never waits on training. It records every trial as an MLflow run first, hands each job
its run id, and returns once the scheduler has the jobs. Trials already running or finished are left
alone, so sweeping the same spec twice submits only what is missing.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import get_args

from vitolaunch.backends import JobHandle, JobResources, make_backend
from vitolaunch.errors import VitolaunchError
from vitolaunch.job import Task, TrialJob
from vitolaunch.registry import (
    TAG_BACKEND,
    TAG_CHECKPOINT,
    TAG_GIT_COMMIT,
    TAG_JOB_ID,
    TAG_LOG_DIR,
    TAG_PRETRAIN_RUN,
    TAG_RESOURCES,
    TAG_SPEC_HASH,
    TAG_STORAGE_OPTIONS,
    TAG_SWEEP,
    TAG_SWEPT,
    TAG_TASK,
    TAG_TOTAL_STEPS,
    TAG_TRIAL_INDEX,
    TAG_TRIAL_KEY,
    Registry,
    RunRecord,
)
from vitolaunch.spec import SweepSpec, Trial, resolve_cluster
from vitolaunch.states import TrialState, trial_states
from vitolaunch.workspace import Workspace, quiet_mlflow_environment

# A few key hyperparameters are logged as params for every trial, swept or not, so the MLflow compare
# view is useful without opening artifacts. The full config is the config.json artifact.
KEY_PARAMS = ("model.arch", "model.pooling", "data.batch_size", "train.steps", "optim.name", "optim.lr", "loss.temperature")


@dataclass
class TrialOutcome:
    trial: Trial
    run_id: str
    action: str  # submitted | resubmitted | running | finished | failed (skipped)
    job_id: str | None = None


@dataclass
class SweepReport:
    sweep_name: str
    sweep_run_id: str
    tracking_uri: str
    backend: str
    outcomes: list[TrialOutcome]


def job_resources(spec: SweepSpec) -> JobResources:
    r = spec.resources
    return JobResources(
        nodes=r.nodes,
        tasks_per_node=r.tasks_per_node,
        gpus_per_node=r.gpus_per_node,
        cpus_per_task=r.cpus_per_task,
        mem_gb=r.mem_gb,
        timeout_min=r.timeout_min,
        partition=r.partition,
        array_parallelism=r.array_parallelism,
        retries_timeout=r.retries.timeout,
        retries_crash=r.retries.crash,
    )


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


def _action_for_existing(state: TrialState, retry_failed: bool) -> str:
    """What a re-sweep does with a trial that already has a run: skip it, or resubmit it (resumes)."""
    if state.is_active or state is TrialState.UNKNOWN:  # could not ask: assume it still runs
        return "running"
    if state is TrialState.COMPLETED:
        return "finished"
    return "resubmitted" if retry_failed else "failed"


def _trial_tags(trial: Trial, checkpoint_uri: str) -> dict[str, str]:
    tags = {
        TAG_TRIAL_KEY: trial.key,
        TAG_TRIAL_INDEX: str(trial.index),
        TAG_CHECKPOINT: checkpoint_uri,
        TAG_SWEPT: json.dumps(trial.params),
        TAG_TOTAL_STEPS: str(trial.config.train.steps),
    }
    if trial.config.eval.pretrain_run_id:  # an evaluation trial: link it to what it evaluates
        tags[TAG_PRETRAIN_RUN] = trial.config.eval.pretrain_run_id
    return tags


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
        self.registry = Registry(self.tracking_uri, workspace.artifact_root)

    # -- sweep -----------------------------------------------------------------------------------
    def submit_sweep(self, spec: SweepSpec, trials: Sequence[Trial], retry_failed: bool = False) -> SweepReport:
        backend = make_backend(resolve_cluster(spec.resources))
        resources = job_resources(spec)
        backend.check(resources)
        checkpoint_root = spec.resolved_checkpoint_root(self.workspace.root)
        storage_options = spec.storage.storage_options()
        _check_storage(checkpoint_root, storage_options)
        _check_data(trials)

        experiment = self.registry.experiment_id(spec.tracking.experiment)
        sweep = self.registry.find_sweep(experiment, spec.name)
        spec_dir = Path(spec.source_file).parent if spec.source_file else Path.cwd()
        sweep_tags = {TAG_SPEC_HASH: spec.spec_hash(), TAG_TASK: spec.task, TAG_BACKEND: backend.name}
        if spec.description:
            sweep_tags["mlflow.note.content"] = spec.description
        if sweep is None:
            sweep = self.registry.create_sweep(experiment, spec.name, sweep_tags)
        else:
            self.registry.set_tags(sweep.run_id, sweep_tags)
        if spec.source_file:
            self.registry.client.log_artifact(sweep.run_id, spec.source_file)

        known = {record.trial_key: record for record in self.registry.trials(sweep)}
        states = trial_states(list(known.values()))
        outcomes: list[TrialOutcome] = []
        to_run: list[tuple[TrialOutcome, str]] = []  # (outcome, checkpoint uri)
        new_runs: list[tuple[TrialOutcome, tuple]] = []  # created below in one batch (see tracking_bulk)
        configs: dict[str, dict] = {}
        common_tags = {
            TAG_SWEEP: spec.name,
            TAG_SPEC_HASH: sweep_tags[TAG_SPEC_HASH],  # hashing the spec costs ~0.2 ms: once, not per trial
            TAG_TASK: spec.task,
            TAG_BACKEND: backend.name,
            TAG_RESOURCES: json.dumps(resources.__dict__),
            TAG_STORAGE_OPTIONS: json.dumps(storage_options),
        }
        commit = _git_commit(spec_dir)
        if commit:
            common_tags[TAG_GIT_COMMIT] = commit
        for trial in trials:
            prior = known.get(trial.key)
            if prior is not None:
                action = _action_for_existing(states[prior.run_id], retry_failed)
                outcome = TrialOutcome(trial, prior.run_id, action)
                outcomes.append(outcome)
                if action == "resubmitted":
                    to_run.append((outcome, prior.tags[TAG_CHECKPOINT]))
                continue
            checkpoint_uri = f"{checkpoint_root.rstrip('/')}/{spec.name}/{trial.key}"
            config = configs[trial.key] = trial.config.to_dict()
            params = {**{k: _get(config, k) for k in KEY_PARAMS}, **trial.params}
            tags = {**common_tags, **_trial_tags(trial, checkpoint_uri)}
            name = f"{spec.name}-{trial.index:03d}-{trial.key[:6]}"
            outcome = TrialOutcome(trial, "", "submitted")  # run id filled in by the batch below
            new_runs.append((outcome, (name, params, tags, config)))
            to_run.append((outcome, checkpoint_uri))
            outcomes.append(outcome)

        if new_runs:
            run_ids = self.registry.create_trials(sweep, [item for _, item in new_runs])
            for (outcome, _), run_id in zip(new_runs, run_ids):
                outcome.run_id = run_id
        if to_run:
            jobs = [
                self._job(o.run_id, spec.task, configs.get(o.trial.key) or o.trial.config.to_dict(), uri, resources,
                          storage_options)
                for o, uri in to_run
            ]
            names = [f"{spec.name}.{o.trial.index:03d}.{o.trial.key[:8]}" for o, _ in to_run]
            handles = self._submit(backend, jobs, names, resources, spec.name, [o.run_id for o, _ in to_run])
            for (outcome, _), handle in zip(to_run, handles):
                outcome.job_id = handle.job_id
        return SweepReport(spec.name, sweep.run_id, self.tracking_uri, backend.name, outcomes)

    def _job(
        self, run_id: str, task: Task, config: dict, checkpoint_uri: str, resources: JobResources, storage_options: dict
    ) -> TrialJob:
        return TrialJob(
            run_id=run_id,
            tracking_uri=self.tracking_uri,
            task=task,
            config=config,
            checkpoint_uri=checkpoint_uri,
            data_root=str(self.workspace.data_root),
            scratch_root=str(self.workspace.scratch_root),
            cpus_per_task=resources.cpus_per_task,
            max_timeouts=resources.retries_timeout,
            max_crashes=resources.retries_crash,
            storage_options=storage_options,
        )

    def _submit(self, backend, jobs, names, resources, sweep_name, run_ids) -> list[JobHandle]:
        try:
            handles = backend.submit(jobs, names, resources, self.workspace.log_dir(sweep_name))
        except Exception as problem:
            # Nothing half-submitted: runs we just queued are marked failed, with the reason.
            for run_id in run_ids:
                self.registry.set_tags(run_id, {"vitolaunch.submit_error": str(problem)[:500]})
                self.registry.set_status(run_id, "FAILED")
            raise VitolaunchError(f"submission to {backend.name} failed: {problem}") from problem
        self.registry.set_tags_many(
            {run_id: {TAG_JOB_ID: handle.job_id, TAG_LOG_DIR: handle.log_dir} for run_id, handle in zip(run_ids, handles)},
            status="SCHEDULED",
        )
        return handles

    # -- resume ----------------------------------------------------------------------------------
    def resume(self, run_or_sweep: str) -> list[TrialOutcome | RunRecord]:
        """Continue a trial (or every unfinished trial of a sweep) from its newest committed checkpoint."""
        target = self.registry.resolve(run_or_sweep)
        trials = self.registry.trials(target) if target.kind == "sweep" else [target]
        states = trial_states(trials)
        runnable = [t for t in trials if not states[t.run_id].is_active and states[t.run_id] is not TrialState.COMPLETED]
        if target.kind == "trial" and not runnable:
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
            resources = JobResources(**group[0].resources)
            backend.check(resources)
            jobs = [
                self._job(t.run_id, _task_of(t), self.registry.config_of(t), t.tags[TAG_CHECKPOINT], resources,
                          json.loads(t.tags.get(TAG_STORAGE_OPTIONS, "{}")))
                for t in group
            ]
            names = [t.name for t in group]
            self._submit(backend, jobs, names, resources, group[0].sweep, [t.run_id for t in group])
            resubmitted.extend(self.registry.get(t.run_id) for t in group)
        return resubmitted

    # -- cancel and logs -------------------------------------------------------------------------
    def _trials_of(self, run_or_sweep: str) -> list[RunRecord]:
        target = self.registry.resolve(run_or_sweep)
        return self.registry.trials(target) if target.kind == "sweep" else [target]

    def cancel(self, run_or_sweep: str) -> list[RunRecord]:
        trials = self._trials_of(run_or_sweep)
        states = trial_states(trials)
        active = [t for t in trials if states[t.run_id].is_active and TAG_JOB_ID in t.tags]
        by_backend: dict[str, list[RunRecord]] = {}
        for trial in active:
            by_backend.setdefault(trial.tags.get(TAG_BACKEND, "local"), []).append(trial)
        for backend_name, group in by_backend.items():  # one scancel for a whole sweep, not one per trial
            make_backend(backend_name).cancel([JobHandle(t.tags[TAG_JOB_ID], t.tags.get(TAG_LOG_DIR, "")) for t in group])
            self.registry.set_tags_many({t.run_id: {} for t in group}, status="KILLED")
        return active

    def log_file(self, run_id: str, rank: int, stderr: bool = False) -> Path:
        trial = self.registry.resolve(run_id)
        if trial.kind != "trial":
            raise VitolaunchError(f"{run_id} is a sweep: give one of its trials' run ids (see `vitolaunch status`)")
        if TAG_JOB_ID not in trial.tags:
            raise VitolaunchError(f"trial {trial.run_id} has no job yet")
        resources = JobResources(**trial.resources)
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
