"""What an evaluation waiting for its pretraining run makes of that run's record."""

from __future__ import annotations

import pytest

from vitolaunch.chaining import target_outcome
from vitolaunch.records import TAG_PRUNED_AT_STEP, TAG_STOPPED_AT_STEP


@pytest.mark.parametrize(
    ("status", "tags", "expected"),
    [
        ("SCHEDULED", {}, None),  # queued, or requeued after a preemption: keep waiting
        ("RUNNING", {TAG_PRUNED_AT_STEP: "4"}, None),  # a pruned trial resumed by hand trains again
        ("FINISHED", {}, ""),
        ("FAILED", {}, "failed"),
        ("KILLED", {}, "cancelled"),
        ("KILLED", {TAG_PRUNED_AT_STEP: "4"}, "pruned by early stopping at step 4"),
        ("KILLED", {TAG_STOPPED_AT_STEP: "40"}, "stopped at step 40"),
    ],
)
def test_target_outcome(status, tags, expected):
    assert target_outcome(status, tags) == expected
