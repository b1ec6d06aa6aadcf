"""The `early_stop:` section of a spec: asynchronous successive halving, checked against the sweep's trials.

The model holds only what a spec says; `check_early_stop` checks it against the expanded trials (rungs fall
on logged steps below every trial's end, the metric is one the trainer logs at every log step). The rule
itself (vitolaunch.job.rungs) runs inside each trial's job.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

if TYPE_CHECKING:
    from vitolaunch.spec.expand import Trial
    from vitolaunch.spec.schema import SweepSpec

DEFAULT_REDUCTION_FACTOR = 3.0  # ASHA's usual eta: keep the best third at each rung


class EarlyStop(BaseModel):
    model_config = ConfigDict(extra="forbid")

    metric: str = Field("train/loss", min_length=1, description="a metric the trainer logs at every log step")
    mode: Literal["min", "max"] = "min"
    rungs: list[int] = Field(min_length=1, description="steps at which each trial compares itself with its siblings")
    keep_fraction: float | None = Field(None, gt=0, lt=1, description="share of the trials at a rung that continue")
    reduction_factor: float | None = Field(None, gt=1, description="keep 1/reduction_factor of the trials at a rung")
    min_trials: int = Field(3, ge=1, description="fewer trials reported at a rung (itself included): continue")

    @model_validator(mode="after")
    def _one_fraction(self) -> EarlyStop:
        if self.keep_fraction is not None and self.reduction_factor is not None:
            raise ValueError("give keep_fraction or reduction_factor, not both (keep_fraction = 1 / reduction_factor)")
        if any(r < 1 for r in self.rungs) or sorted(set(self.rungs)) != self.rungs:
            raise ValueError("rungs must be positive steps in increasing order, each once")
        return self

    @property
    def keep(self) -> float:
        """The share of the trials reported at a rung that continue."""
        if self.keep_fraction is not None:
            return self.keep_fraction
        return 1.0 / (self.reduction_factor or DEFAULT_REDUCTION_FACTOR)

    def to_record(self) -> str:
        """The rule as the JSON a trial's run carries (and its job reads back at resume)."""
        return json.dumps({"metric": self.metric, "mode": self.mode, "rungs": self.rungs,
                           "keep_fraction": self.keep, "min_trials": self.min_trials}, sort_keys=True)

    @classmethod
    def from_record(cls, text: str) -> EarlyStop:
        return cls.model_validate(json.loads(text))


def progress_metrics(config: Any) -> list[str]:
    """The metrics the trainer logs at every `train.log_every` step (vito.train.Trainer._log_progress)."""
    losses = ["train/loss", *(f"train/loss_s{scale}" for scale in config.model.scales)]
    return [*losses, "train/lr", "train/ema_momentum"]


def check_early_stop(spec: SweepSpec, trials: Sequence[Trial]) -> None:
    """Refuse, located at the spec's line, an early_stop section that some trial could never honour."""
    rule = spec.early_stop
    if rule is None:
        return
    if spec.task != "pretrain":
        raise spec.error_at(("early_stop",), "applies only to task: pretrain (an evaluation has no steps to stop at)",
                            key="early_stop", hint="Remove the early_stop section.")
    for trial in trials:
        cfg = trial.config
        where = f"trial {trial.index} ({', '.join(f'{k}={v}' for k, v in trial.params.items()) or 'the base config'})"
        logged = progress_metrics(cfg)
        if rule.metric not in logged:
            raise spec.error_at(("early_stop", "metric"), f"'{rule.metric}' is not logged at every log step of {where}",
                                key="early_stop.metric", hint=f"Use one of: {', '.join(logged)}.")
        for k, rung in enumerate(rule.rungs):
            if rung % cfg.train.log_every:
                raise spec.error_at(
                    ("early_stop", "rungs", k), f"rung {rung} is not a multiple of train.log_every ({cfg.train.log_every}) "
                    f"of {where}: the metric has no value there", key="early_stop.rungs",
                    hint=f"Use multiples of {cfg.train.log_every}.")
            if rung >= cfg.train.steps:
                raise spec.error_at(
                    ("early_stop", "rungs", k), f"rung {rung} is not below train.steps ({cfg.train.steps}) of {where}",
                    key="early_stop.rungs", hint="Every rung must come before the last step of every trial.")
