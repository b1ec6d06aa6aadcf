"""Early stopping across a sweep: asynchronous successive halving, decided by each trial at its rungs.

No controller outlives the user's shell: rank 0 of each trial, when its training reaches a rung step, reads
the values its siblings (the other trials of the same sweep) logged at that rung in MLflow and applies the
rule below to itself. A True stops the trial through the trainer's stop agreement (all ranks save a
committed checkpoint); the job then records it as PRUNED and exits, which frees its array slot or run slot.

The rule at rung r, for a trial whose value of `metric` at step r is v:
- The values compared are v and every sibling's value at r (`records.rung_metric`, logged by each trial as it
  reaches r, pruned or not). n = how many there are, v included.
- n < min_trials: continue (too few reports to judge; the first trials of a sweep always continue).
- NaN ranks worst; a trial whose own value is NaN (diverged) is pruned once n >= min_trials.
- keep = max(1, floor(n x keep_fraction)) (keep_fraction = 1 / reduction_factor). The threshold is the
  keep-th best value; the trial continues when v is as good as the threshold or better (ties continue).
- A value that cannot be read (MLflow unreachable, no metric at r) never prunes: the trial continues.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

from vitolaunch.spec.early_stop import EarlyStop
from vitolaunch.tracking.chooser import store_in_job
from vitolaunch.tracking.records import (
    TAG_PARENT,
    TAG_PRUNE_DECISION,
    TAG_PRUNED_AT_STEP,
    TAG_RUNG_PREFIX,
    rung_metric,
)
from vitolaunch.tracking.store import RunRecord, RunStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RungDecision:
    rung: int
    metric: str
    mode: str
    value: float
    reported: int  # trials with a value at this rung, this one included
    compared_with: int  # siblings among them
    keep: int  # how many of the `reported` continue (0: too few reports to judge)
    threshold: float | None  # the keep-th best value; None when too few reports
    prune: bool

    def summary(self) -> str:
        """The decision in words, for the rung's tag."""
        verdict = "prune" if self.prune else "continue"
        if self.threshold is None:
            return f"{verdict}: {self.metric}={self.value:.6g}, only {self.reported} trial(s) reported (min_trials not met)"
        better = "<=" if self.mode == "min" else ">="
        return (f"{verdict}: {self.metric}={self.value:.6g}, threshold {self.threshold:.6g} ({better} continues), "
                f"best {self.keep} of {self.reported} continue, compared with {self.compared_with} sibling(s)")

    def pruned_tags(self) -> dict[str, str]:
        return {TAG_PRUNED_AT_STEP: str(self.rung), TAG_PRUNE_DECISION: json.dumps(asdict(self))}


def _score(value: float, mode: str) -> float:
    """Lower is better; NaN is the worst of all."""
    if math.isnan(value):
        return math.inf
    return value if mode == "min" else -value


def decide(rule: EarlyStop, rung: int, value: float, siblings: Sequence[float]) -> RungDecision:
    """The rule of this module's docstring, for one trial at one rung."""
    reported = 1 + len(siblings)
    common = dict(rung=rung, metric=rule.metric, mode=rule.mode, value=value, reported=reported,
                  compared_with=len(siblings))
    if reported < rule.min_trials:
        return RungDecision(**common, keep=0, threshold=None, prune=False)
    keep = max(1, math.floor(reported * rule.keep + 1e-9))
    scores = sorted(_score(v, rule.mode) for v in [value, *siblings])
    cut = scores[keep - 1]
    threshold = math.nan if math.isinf(cut) else (cut if rule.mode == "min" else -cut)
    prune = math.isnan(value) or _score(value, rule.mode) > cut
    return RungDecision(**common, keep=keep, threshold=threshold, prune=prune)


class RungJudge:
    """Rank 0's early-stopping decision at a rung: what `vito.train.RunContext.consult` calls.

    `drain` waits until the trial's queued metrics reached MLflow (its value at the rung among them);
    `set_tags` queues tags on the trial's run. `decision` is the one that pruned the trial, if any.
    """

    def __init__(self, rule: EarlyStop, tracking_uri: str, run_id: str, drain: Callable[[], bool],
                 set_tags: Callable[[dict[str, str]], None]):
        self.rule = rule
        self.tracking_uri = tracking_uri
        self.run_id = run_id
        self._drain = drain
        self._set_tags = set_tags
        self._store: RunStore | None = None
        self._sweep: tuple[str, str] | None = None  # (experiment id, parent run id)
        self.decision: RungDecision | None = None

    @property
    def rungs(self) -> frozenset[int]:
        return frozenset(self.rule.rungs)

    def __call__(self, step: int) -> bool:
        try:
            decision = self._decide(step)
        except Exception as problem:  # noqa: BLE001 - early stopping must never fail or stop a trial by itself
            log.warning("early stopping at step %d: could not decide (%s: %s); continuing", step, type(problem).__name__, problem)
            self._set_tags({TAG_RUNG_PREFIX + str(step): f"continue: could not decide ({type(problem).__name__})"})
            return False
        if decision is None:
            self._set_tags({TAG_RUNG_PREFIX + str(step): f"continue: no {self.rule.metric} logged at step {step}"})
            return False
        log.info("early stopping at rung %d: %s", step, decision.summary())
        self._set_tags({TAG_RUNG_PREFIX + str(step): decision.summary()})
        if decision.prune:
            self.decision = decision
        return decision.prune

    @property
    def store(self) -> RunStore:
        if self._store is None:
            self._store = store_in_job(self.tracking_uri)
        return self._store

    def _decide(self, step: int) -> RungDecision | None:
        if not self._drain():
            raise TimeoutError("this trial's metrics did not reach MLflow")
        mine = [value for at, value in self.store.metric_history(self.run_id, self.rule.metric) if at == step]
        if not mine:
            return None
        value = mine[-1]
        key = rung_metric(self.rule.metric, step)
        # Logged before reading the siblings: two trials at the same rung at once then see each other.
        self.store.log_metric(self.run_id, key, value, step=step)
        siblings = [run.metrics[key] for run in self._siblings() if key in run.metrics]
        return decide(self.rule, step, value, siblings)

    def _siblings(self) -> list[RunRecord]:
        if self._sweep is None:
            run = self.store.get(self.run_id)
            if not run.parent_run_id:
                raise LookupError(f"run {self.run_id} belongs to no sweep (no {TAG_PARENT} tag)")
            self._sweep = (run.experiment_id, run.parent_run_id)
        experiment, parent = self._sweep
        return [r for r in self.store.find_runs({TAG_PARENT: parent}, [experiment]) if r.run_id != self.run_id]
