"""How MLflow's record and the scheduler's view merge into one trial state."""

from __future__ import annotations

import pytest

from tests.unit.run_records import run_record
from vitolaunch.backends import SchedulerState as S
from vitolaunch.results.states import TrialState as T, merge_state
from vitolaunch.tracking.records import TAG_STOPPED_AT_STEP


@pytest.mark.parametrize(
    ("mlflow_status", "scheduler", "expected"),
    [
        ("FINISHED", S.FAILED, T.COMPLETED),  # the job's own record wins over the scheduler
        ("FAILED", None, T.FAILED),
        ("KILLED", None, T.CANCELLED),
        ("SCHEDULED", None, T.QUEUED),
        ("SCHEDULED", S.PENDING, T.QUEUED),
        ("SCHEDULED", S.RUNNING, T.RUNNING),
        ("RUNNING", S.RUNNING, T.RUNNING),
        ("RUNNING", S.INTERRUPTED, T.INTERRUPTED),  # SIGKILLed: MLflow still says RUNNING
        ("RUNNING", S.FAILED, T.FAILED),
        ("RUNNING", S.UNKNOWN, T.UNKNOWN),  # could not ask: never FAILED
        ("RUNNING", S.COMPLETED, T.INTERRUPTED),  # ended without recording an outcome: resumable
    ],
)
def test_merge(mlflow_status, scheduler, expected):
    assert merge_state(run_record(mlflow_status), scheduler) is expected


def test_a_trial_stopped_on_request_is_resumable_not_cancelled():
    assert merge_state(run_record("KILLED", {TAG_STOPPED_AT_STEP: "40"}), None) is T.INTERRUPTED
