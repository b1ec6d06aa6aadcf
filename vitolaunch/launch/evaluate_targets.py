"""`task: evaluate` sweeps: their trials are (pretrained checkpoint x parameter grid) evaluations.

A target is a pretraining trial (by run id, or all trials of a sweep by name) or a checkpoint root. Each is
resolved at submit time, before anything is queued, to its checkpoint root, the committed step to evaluate
(so the trial key names exactly which weights were evaluated) and the config it was trained with. A trial still
queued or running is evaluated at its final step (train.steps, or evaluate.step) once it finishes: the plan's
`waits_for` says which, and its evaluation trial waits for it (vitolaunch.job.chained_wait); the key is the one the
same evaluation gets after the end. An
evaluation trial's config is that pretraining config with

- the `eval` section of the evaluate spec (its `base.eval`, defaults filled in) instead of the pretraining one,
- the swept parameters applied (any key: `eval.severities`, or `data.crop_size` to probe at another size),
- `eval.checkpoint`, `eval.checkpoint_step` and `eval.pretrain_run_id` set,

or, for published weights (`evaluate.checkpoints: [{weights: <file>, kind: ..., name: ...}]`), the default
config with `eval.weights` and `eval.weights_kind` set instead (no checkpoint, step 0) and `pretrain.weights:
<name>` as what the trial shows of its target,

and the job evaluates because the sweep's task is `evaluate` (vitolaunch.job.trial.TrialJob.task). Keys outside
`eval` under `base:` are refused: the network and its data come from the pretraining run. Unless the spec names
`tracking.experiment`, the evaluate sweep belongs in the experiment of the runs it evaluates, next to them: the
plan says which, and the caller records the sweep there. Resolving a target never loads weights, nor torch.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from vito.config import VitoConfig, set_dotted
from vitolaunch.errors import SpecError, VitolaunchError
from vitolaunch.spec import SweepSpec, Trial
from vitolaunch.spec.schema import PublishedWeights
from vitolaunch.tracking.records import KIND_SWEEP, KIND_TRIAL, TAG_CHECKPOINT, TAG_STORAGE_OPTIONS
from vitolaunch.tracking.store import RunRecord, RunStore

CHECKPOINT_KEY = "eval.checkpoint"
# Trial states (vitolaunch.results.states.TrialState values) of a target that may still finish: its evaluation waits.
_STILL_TRAINING = ("QUEUED", "RUNNING", "STALLED", "UNKNOWN")


@dataclass
class Target:
    checkpoint: str
    step: int
    config: dict[str, Any]  # the pretraining config
    run: RunRecord | None = None  # the pretraining trial, when MLflow knows it
    storage_options: dict[str, Any] = field(default_factory=dict)
    waits_for: RunRecord | None = None  # a pretraining trial still queued or running: evaluated once it finishes
    weights: PublishedWeights | None = None  # published weights (checkpoint is then their resolved file)

    def params(self) -> dict[str, Any]:
        """What an evaluation trial shows of its target (MLflow params, status table)."""
        if self.weights is not None:
            return {"pretrain.weights": self.weights.label}
        if self.run is None:
            return {"pretrain.checkpoint": self.checkpoint, "pretrain.step": self.step}
        swept = {f"pretrain.{key}": value for key, value in self.run.swept.items()}
        return {"pretrain.run": self.run.run_id, "pretrain.sweep": self.run.sweep, **swept, "pretrain.step": self.step}


def _raw_base(spec: SweepSpec) -> dict[str, Any]:
    if isinstance(spec.base, dict):
        return spec.base
    path = spec.folder / spec.base
    loaded = yaml.safe_load(path.read_text())
    return loaded if isinstance(loaded, dict) else {}


def _check_base(spec: SweepSpec) -> None:
    extra = sorted(key for key in _raw_base(spec) if key != "eval")
    if extra:
        raise spec.error_at(
            ("base", extra[0]), "an evaluate sweep takes the network and its data from the pretraining run",
            key=f"base.{extra[0]}",
            hint="Set only eval.* under base; to change another key for the evaluation, sweep it under parameters.",
        )


def _newest_step(uri: str, storage_options: dict[str, Any], wanted: int | None, what: str) -> int:
    from vito.checkpoint import CheckpointStore

    try:
        committed = CheckpointStore(uri, storage_options).committed_steps()
    except Exception as problem:
        raise VitolaunchError(f"{what}: cannot list the checkpoints under {uri} ({type(problem).__name__}: {problem})") from problem
    if not committed:
        raise VitolaunchError(f"{what}: no committed checkpoint under {uri}")
    if wanted is None:
        return committed[-1]
    if wanted not in committed:
        raise VitolaunchError(f"{what}: step {wanted} is not a committed checkpoint under {uri} (committed: {committed})")
    return wanted


class TargetResolver:
    def __init__(self, spec: SweepSpec, registry: RunStore):
        self.spec = spec
        self.registry = registry
        self.options = spec.evaluate
        self._by_checkpoint: dict[str, RunRecord] | None = None

    def _from_run(self, run: RunRecord, state: str | None) -> Target:
        what = f"run {run.run_id} ({run.name})"
        if run.kind != KIND_TRIAL:
            raise VitolaunchError(f"{what} is not a vitolaunch trial")
        config = self.registry.config_of(run)
        if (config.get("eval") or {}).get("checkpoint"):
            raise VitolaunchError(f"{what} is itself an evaluation: name a pretraining trial or sweep")
        include_unfinished = self.options.include_unfinished if self.options else False
        if state in _STILL_TRAINING and not include_unfinished:
            return self._chained(run, config, what)
        if state is not None and state != "COMPLETED" and not include_unfinished:
            raise VitolaunchError(
                f"{what} is {state}: only finished pretraining trials are evaluated "
                "(set evaluate.include_unfinished: true to evaluate its newest committed checkpoint)"
            )
        uri = run.tags.get(TAG_CHECKPOINT)
        if not uri:
            raise VitolaunchError(f"{what} has no checkpoint uri tag")
        options = json.loads(run.tags.get(TAG_STORAGE_OPTIONS, "{}"))
        step = _newest_step(uri, options, self.options.step if self.options else None, what)
        return Target(uri, step, config, run, options)

    def _chained(self, run: RunRecord, config: dict[str, Any], what: str) -> Target:
        """A target still training: its final step (the trial key is then the same once it has finished)."""
        uri = run.tags.get(TAG_CHECKPOINT)
        if not uri:
            raise VitolaunchError(f"{what} has no checkpoint uri tag")
        step = (self.options.step if self.options else None) or config["train"]["steps"]
        return Target(uri, step, config, run, json.loads(run.tags.get(TAG_STORAGE_OPTIONS, "{}")), waits_for=run)

    def runs(self, reference: str) -> list[Target]:
        from vitolaunch.results.states import trial_states

        record = self.registry.resolve(reference)
        trials = self.registry.trials(record) if record.kind == KIND_SWEEP else [record]
        if not trials:
            raise VitolaunchError(f"sweep {reference} has no trials")
        states = trial_states(trials)
        return [self._from_run(trial, states[trial.run_id].value) for trial in trials]

    def _runs_by_checkpoint(self) -> dict[str, RunRecord]:
        if self._by_checkpoint is None:
            found: dict[str, RunRecord] = {}
            for record in self.registry.all_trials():
                if record.tags.get(TAG_CHECKPOINT):
                    found.setdefault(record.tags[TAG_CHECKPOINT].rstrip("/"), record)
            self._by_checkpoint = found
        return self._by_checkpoint

    def checkpoint(self, uri: str, step: int | None = None) -> Target:
        run = self._runs_by_checkpoint().get(uri.rstrip("/"))
        if run is not None:
            from vitolaunch.results.states import trial_states

            target = self._from_run(run, trial_states([run])[run.run_id].value)
            if step is not None:
                target.step = _newest_step(target.checkpoint, target.storage_options, step, f"checkpoint {uri}")
            return target
        # A checkpoint MLflow does not know: its config comes from the step's COMMITTED marker.
        from vito.checkpoint import COMMIT_MARKER, CheckpointStore

        options = self.spec.storage.storage_options()
        wanted = step if step is not None else (self.options.step if self.options else None)
        chosen = _newest_step(uri, options, wanted, f"checkpoint {uri}")
        try:
            config = CheckpointStore(uri, options).committed_config(chosen)
        except Exception as problem:
            raise VitolaunchError(f"checkpoint {uri}: cannot read the {COMMIT_MARKER} marker of step {chosen} "
                                  f"({type(problem).__name__}: {problem})") from problem
        if config is None:
            # Steps committed before markers recorded the config have it only inside the model file. Reading it
            # from there would import torch here and download the whole weights at submit time (gigabytes from
            # S3) to learn a few keys, so the CLI refuses, and points at the record that has the config: the
            # MLflow run that trained it (its config.json).
            raise VitolaunchError(
                f"checkpoint {uri} step {chosen}: its {COMMIT_MARKER} marker holds no config (committed by an older "
                "version), and no trial in this MLflow has this checkpoint. Evaluate it through the MLflow run that "
                "trained it: evaluate: {runs: [RUN_ID]}, with --tracking-uri pointing at that run's MLflow"
            )
        return Target(uri, chosen, config, None, options)

    def published(self, entry: PublishedWeights) -> Target:
        """Published weights: the default config (the network is the file's), step 0; nothing is loaded here
        (check_foreign_weights loads the visible files before anything is queued, the job the others)."""
        return Target(resolve_weights_path(self.spec, entry.weights), 0, VitoConfig().to_dict(), None,
                      self.spec.storage.storage_options(), weights=entry)


def resolve_weights_path(spec: SweepSpec, path: str) -> str:
    """A URL as given; `~` expanded; a relative path from the spec's folder."""
    if "://" in path:
        return path
    expanded = Path(path).expanduser()
    return str(expanded if expanded.is_absolute() else (spec.folder / expanded).resolve())


@dataclass(frozen=True)
class EvaluatePlan:
    trials: list[Trial]
    # Where to record the sweep: the experiment of the runs it evaluates when they share one and the spec names
    # none (tracking.experiment); None: the spec's own tracking.experiment.
    experiment: str | None
    # Evaluation trial key -> the pretraining trial it waits for (targets still queued or running).
    waits_for: dict[str, RunRecord] = field(default_factory=dict)


def expand_evaluate(spec: SweepSpec, grid: list[Trial], registry: RunStore) -> EvaluatePlan:
    """The evaluation trials of an evaluate spec (every target crossed with every point of `grid`), and where
    to record them. The spec is left as it was given."""
    if spec.task != "evaluate":
        raise ValueError("expand_evaluate is for task: evaluate specs")
    _check_base(spec)
    base = spec.base_config_dict()
    eval_section = base["eval"]
    resolver = TargetResolver(spec, registry)
    shared: list[Target] = []
    if spec.evaluate is not None:
        for reference in spec.evaluate.runs:
            shared.extend(resolver.runs(reference))
        for entry in spec.evaluate.checkpoints:
            shared.append(resolver.published(entry) if isinstance(entry, PublishedWeights) else resolver.checkpoint(entry))

    # (target, grid point) pairs, target-major: a pretraining run's evaluations are neighbours.
    pairs: list[tuple[int, int, Target, Trial]] = []
    for grid_index, point in enumerate(grid):
        own_checkpoint = point.params.get(CHECKPOINT_KEY) or (eval_section.get("checkpoint") if not shared else None)
        if own_checkpoint:
            target = resolver.checkpoint(str(own_checkpoint), point.config.eval.checkpoint_step)
            pairs.append((len(shared) + grid_index, grid_index, target, point))
        else:
            pairs.extend((target_index, grid_index, target, point) for target_index, target in enumerate(shared))
    pairs.sort(key=lambda item: item[:2])

    trials: list[Trial] = []
    seen: set[str] = set()
    waits_for: dict[str, RunRecord] = {}
    for _, _, target, point in pairs:
        tree = copy.deepcopy(target.config)
        tree["eval"] = copy.deepcopy(eval_section)
        for name, value in point.params.items():
            set_dotted(tree, name, copy.deepcopy(value))
        if target.weights is not None:
            set_dotted(tree, "eval.weights", target.checkpoint)
            set_dotted(tree, "eval.weights_kind", target.weights.kind)
        else:
            set_dotted(tree, "eval.checkpoint", target.checkpoint)
            set_dotted(tree, "eval.checkpoint_step", target.step)
            set_dotted(tree, "eval.pretrain_run_id", target.run.run_id if target.run else None)
        try:
            config = VitoConfig.model_validate(tree)
        except ValidationError as problem:
            raise SpecError(f"the evaluation of {target.checkpoint} with {point.params} is not a valid config: {problem}",
                            file=spec.source_file) from None
        key = config.fingerprint()
        if key in seen:
            continue  # the same checkpoint named twice (a run and its sweep, say): evaluated once
        seen.add(key)
        if target.waits_for is not None:
            waits_for[key] = target.waits_for
        params = {**target.params(), **{k: v for k, v in point.params.items() if k != CHECKPOINT_KEY}}
        trials.append(Trial(index=len(trials), params=params, config=config, key=key))

    experiment = None
    if "experiment" not in spec.tracking.model_fields_set:
        experiments = {t.run.experiment_id for t in shared if t.run is not None}
        if len(experiments) == 1:
            experiment = registry.experiment_name(experiments.pop())
    return EvaluatePlan(trials, experiment, waits_for)
