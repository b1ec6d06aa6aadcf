"""`vitolaunch sweep` as steps: load and expand the spec, plan an evaluation's targets, submit, then queue the
evaluation its `then:` names. The CLI prints; this decides.

One Launcher serves the whole command: the evaluation's targets are looked up, the sweep and its `then:`
evaluation are recorded, in the same tracking store.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from vitolaunch.errors import VitolaunchError
from vitolaunch.launch.chained import load_then
from vitolaunch.launch.evaluate_targets import expand_evaluate
from vitolaunch.launch.launcher import Launcher, SweepReport
from vitolaunch.spec import SweepSpec, Trial, check_trials_fit_resources, expand, load_spec
from vitolaunch.tracking.store import RunRecord, RunStore
from vitolaunch.workspace import Workspace


@dataclass
class PlannedSweep:
    spec: SweepSpec  # as submitted: an evaluation's experiment is the one of the runs it evaluates
    trials: list[Trial]
    tracking_uri: str | None  # as given: the Launcher resolves the default
    waits_for: dict[str, RunRecord] = field(default_factory=dict)  # trial key -> the pretraining run it waits for
    then: SweepSpec | None = None  # the evaluation queued after this sweep, checked already

    @functools.cached_property
    def launcher(self) -> Launcher:
        """Made on first use: a dry run of a pretraining sweep must not create $VITOLAUNCH_HOME."""
        return Launcher(Workspace.from_env(), self.tracking_uri)


def plan_sweep(spec_file: str, overrides: Sequence[str], tracking_uri: str | None) -> PlannedSweep:
    """Everything `sweep` checks before anything is queued (a `then:` spec included); nothing is written."""
    spec = load_spec(spec_file, overrides)
    then = load_then(spec) if spec.then is not None else None
    trials = expand(spec)  # every trial validated before anything is submitted
    planned = PlannedSweep(spec, trials, tracking_uri or spec.tracking.uri, then=then)
    if spec.task == "evaluate":  # (checkpoint x grid): the targets are looked up in MLflow and storage
        planned.spec, planned.trials, planned.waits_for = evaluate_plan(spec, trials, planned.launcher.registry)
    return planned


def evaluate_plan(spec: SweepSpec, trials: list[Trial], registry: RunStore
                  ) -> tuple[SweepSpec, list[Trial], dict[str, RunRecord]]:
    """An evaluate spec's trials (checkpoint x grid), the experiment it belongs in, and what its trials wait for."""
    plan = expand_evaluate(spec, trials, registry)
    if plan.experiment is not None:  # recorded next to the runs it evaluates
        spec = spec.model_copy(update={"tracking": spec.tracking.model_copy(update={"experiment": plan.experiment})})
    return spec, plan.trials, plan.waits_for


def submit_planned(planned: PlannedSweep, retry_failed: bool = False) -> Iterator[tuple[SweepSpec, SweepReport]]:
    """Submit the sweep, then its `then:` evaluation; each report is yielded as soon as it is queued."""
    launcher = planned.launcher
    report = launcher.submit_sweep(planned.spec, planned.trials, retry_failed=retry_failed, waits_for=planned.waits_for)
    yield planned.spec, report
    then = planned.then
    if then is None:
        return
    try:
        then, then_trials, then_waits = evaluate_plan(then, expand(then), launcher.registry)
        check_trials_fit_resources(then, then_trials)
        then_report = launcher.submit_sweep(then, then_trials, waits_for=then_waits)
    except VitolaunchError as problem:
        raise VitolaunchError(f"sweep {planned.spec.name} is queued, but its evaluation {then.source_file} is not: "
                              f"{problem}. Fix it, then run `vitolaunch sweep {then.source_file}`") from problem
    yield then, then_report
