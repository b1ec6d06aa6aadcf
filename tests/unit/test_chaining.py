"""What an evaluation waiting for its pretraining run makes of that run's record."""

from __future__ import annotations

import pytest

from tests.unit.run_records import run_record
from vitolaunch.backends import SchedulerState
from vitolaunch.job.chained_wait import target_outcome
from vitolaunch.results.states import TrialState, merge_state
from vitolaunch.tracking.records import TAG_PRUNED_AT_STEP, TAG_STOPPED_AT_STEP, TAG_WAITS_FOR_RUN


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


def test_an_evaluation_whose_job_waits_for_its_target_shows_queued_until_it_starts_evaluating():
    waiting = {TAG_WAITS_FOR_RUN: "pretraining"}
    assert merge_state(run_record("SCHEDULED", waiting), SchedulerState.RUNNING) is TrialState.QUEUED
    assert merge_state(run_record("RUNNING", waiting), SchedulerState.RUNNING) is TrialState.RUNNING
    assert merge_state(run_record("SCHEDULED"), SchedulerState.RUNNING) is TrialState.RUNNING
