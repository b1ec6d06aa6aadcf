"""Early stopping: the rung rule, the spec section's located errors, and the PRUNED state."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tests.unit.run_records import run_record
from vitolaunch.errors import SpecError
from vitolaunch.job.rungs import decide
from vitolaunch.results.states import TrialState, merge_state
from vitolaunch.spec import EarlyStop, check_early_stop, expand, load_spec
from vitolaunch.tracking.records import TAG_PRUNE_OVERRIDDEN, TAG_PRUNED_AT_STEP


def rule(**changes) -> EarlyStop:
    return EarlyStop.model_validate({"metric": "train/loss", "rungs": [4], "keep_fraction": 0.5, "min_trials": 3, **changes})


# ---------------------------------------------------------------- the rule


def test_fewer_reports_than_min_trials_continue_whatever_the_value():
    decision = decide(rule(min_trials=3), 4, 100.0, [1.0])
    assert not decision.prune and decision.threshold is None and decision.reported == 2


def test_the_worse_half_is_pruned_and_the_threshold_is_the_last_kept_value():
    siblings = [1.0, 2.0, 3.0]  # with 4.0 itself: keep floor(4 x 0.5) = 2, threshold 2.0
    worst = decide(rule(), 4, 4.0, siblings)
    assert worst.prune and worst.keep == 2 and worst.threshold == 2.0 and worst.compared_with == 3
    assert not decide(rule(), 4, 1.5, siblings).prune


def test_a_tie_with_the_threshold_continues():
    assert not decide(rule(), 4, 2.0, [1.0, 2.0, 3.0]).prune


def test_max_mode_keeps_the_largest():
    accuracy = rule(metric="eval/acc", mode="max")
    assert decide(accuracy, 4, 0.1, [0.9, 0.8, 0.7]).prune
    kept = decide(accuracy, 4, 0.85, [0.9, 0.2, 0.3])
    assert not kept.prune and kept.threshold == 0.85


def test_nan_ranks_worst_and_a_diverged_trial_is_pruned():
    assert decide(rule(), 4, math.nan, [1.0, 2.0, 3.0]).prune
    # Siblings that diverged do not protect a finite value, nor make it look bad.
    assert not decide(rule(), 4, 5.0, [math.nan, math.nan, 1.0]).prune
    assert decide(rule(min_trials=3), 4, math.nan, [math.nan, math.nan]).prune


def test_reduction_factor_is_keep_one_in_factor_and_at_least_one_is_kept():
    third = rule(keep_fraction=None, reduction_factor=3)
    assert third.keep == pytest.approx(1 / 3)
    # 3 reported: keep exactly one (3 x 1/3 is 1 despite float rounding).
    assert decide(third, 4, 1.0, [2.0, 3.0]).keep == 1
    assert decide(third, 4, 2.0, [1.0, 3.0]).prune
    assert decide(rule(keep_fraction=0.1), 4, 1.0, [2.0, 3.0]).keep == 1


def test_the_rule_round_trips_through_its_run_record():
    original = rule(keep_fraction=None, reduction_factor=4, rungs=[2, 6])
    again = EarlyStop.from_record(original.to_record())
    assert again.rungs == [2, 6] and again.keep == 0.25 and json.loads(original.to_record())["min_trials"] == 3


# ---------------------------------------------------------------- the spec section


def _spec(tmp_path: Path, early_stop: str, steps: str = "[8, 12]", log_every: int = 2) -> Path:
    path = tmp_path / "spec.yaml"
    section = "".join(f"  {line}\n" for line in early_stop.splitlines())
    path.write_text(
        "name: es\n"
        "base:\n"
        "  model: {width: 8}\n"
        f"  train: {{log_every: {log_every}}}\n"
        "parameters:\n"
        f"  train.steps: {steps}\n"
        "early_stop:\n" + section
    )
    return path


def _error(path: Path) -> SpecError:
    with pytest.raises(SpecError) as caught:
        spec = load_spec(path)
        check_early_stop(spec, expand(spec))
    return caught.value


def test_a_valid_section_is_accepted(tmp_path):
    spec = load_spec(_spec(tmp_path, "rungs: [2, 6]\nreduction_factor: 2\nmin_trials: 2\n"))
    check_early_stop(spec, expand(spec))
    assert spec.early_stop.keep == 0.5


def test_a_rung_not_below_every_trials_steps_is_located(tmp_path):
    path = _spec(tmp_path, "rungs: [4, 8]\n")
    error = _error(path)
    assert error.line == 8 and error.key == "early_stop.rungs", str(error)
    assert "rung 8 is not below train.steps (8)" in str(error) and "train.steps=8" in str(error)


def test_a_rung_between_log_steps_is_located(tmp_path):
    error = _error(_spec(tmp_path, "rungs: [3]\n", log_every=2))
    assert error.line == 8 and "not a multiple of train.log_every (2)" in str(error)


def test_a_metric_not_logged_every_log_step_is_refused_with_the_choices(tmp_path):
    error = _error(_spec(tmp_path, "metric: eval/linear_probe_acc\nrungs: [4]\n"))
    assert error.key == "early_stop.metric" and error.line == 8
    assert "train/loss_s4" in str(error) and "train/loss" in str(error)


@pytest.mark.parametrize(
    ("section", "words"),
    [
        ("rungs: [4]\nkeep_fraction: 0.5\nreduction_factor: 2\n", "not both"),
        ("rungs: [6, 4]\n", "increasing order"),
        ("rungs: []\n", "at least 1"),
        ("rungs: [4]\nkeep_fraction: 1.5\n", "less than 1"),
        ("rungs: [4]\npatience: 3\n", "patience"),
    ],
)
def test_malformed_sections_are_one_located_error(tmp_path, section, words):
    error = _error(_spec(tmp_path, section))
    assert words in str(error) and "spec.yaml" in str(error), str(error)


# ---------------------------------------------------------------- the state


def test_a_pruned_trial_is_pruned_terminal_and_not_cancelled():
    state = merge_state(run_record("KILLED", {TAG_PRUNED_AT_STEP: "4"}), None)
    assert state is TrialState.PRUNED and state.is_terminal and not state.is_active


def test_a_pruned_trial_resumed_by_hand_is_no_longer_pruned():
    tags = {TAG_PRUNED_AT_STEP: "4", TAG_PRUNE_OVERRIDDEN: "resumed at step 4"}
    assert merge_state(run_record("KILLED", tags), None) is TrialState.CANCELLED
    assert merge_state(run_record("FINISHED", tags), None) is TrialState.COMPLETED
