"""A trial's state, merged from what MLflow recorded and what the scheduler says now.

MLflow's terminal statuses are written by the job itself, so they are trusted over the scheduler. While
MLflow says the run is queued or running, the scheduler decides whether that is still true; a scheduler
that cannot be asked gives UNKNOWN, never FAILED.
"""

from __future__ import annotations

import enum
from collections import defaultdict
from collections.abc import Sequence

from vitolaunch.backends import JobHandle, SchedulerState, make_backend
from vitolaunch.registry import TAG_BACKEND, TAG_JOB_ID, TAG_LOG_DIR, RunRecord

STOPPED_TAG = "vitolaunch.stopped_at_step"


class TrialState(str, enum.Enum):
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    INTERRUPTED = "INTERRUPTED"  # stopped without finishing: `vitolaunch resume` continues it
    UNKNOWN = "UNKNOWN"

    @property
    def is_active(self) -> bool:
        return self in (TrialState.QUEUED, TrialState.RUNNING)

    @property
    def is_terminal(self) -> bool:
        return self in (TrialState.COMPLETED, TrialState.FAILED, TrialState.CANCELLED, TrialState.INTERRUPTED)


_FROM_SCHEDULER = {
    SchedulerState.PENDING: TrialState.QUEUED,
    SchedulerState.RUNNING: TrialState.RUNNING,
    # The job ended but never recorded an outcome in MLflow (tracking down at the end): resumable.
    SchedulerState.COMPLETED: TrialState.INTERRUPTED,
    SchedulerState.FAILED: TrialState.FAILED,
    SchedulerState.CANCELLED: TrialState.CANCELLED,
    SchedulerState.INTERRUPTED: TrialState.INTERRUPTED,
    SchedulerState.UNKNOWN: TrialState.UNKNOWN,
}


def merge_state(record: RunRecord, scheduler: SchedulerState | None) -> TrialState:
    if record.status == "FINISHED":
        return TrialState.COMPLETED
    if record.status == "FAILED":
        return TrialState.FAILED
    if record.status == "KILLED":
        return TrialState.INTERRUPTED if STOPPED_TAG in record.tags else TrialState.CANCELLED
    if scheduler is None:  # queued in MLflow, no job id yet: submission in flight
        return TrialState.QUEUED
    if scheduler is SchedulerState.RUNNING and record.status == "SCHEDULED":
        return TrialState.RUNNING
    return _FROM_SCHEDULER[scheduler]


def trial_states(records: Sequence[RunRecord]) -> dict[str, TrialState]:
    """One scheduler query per backend for all the given trials."""
    pending: dict[str, list[tuple[RunRecord, JobHandle]]] = defaultdict(list)
    states: dict[str, TrialState] = {}
    for record in records:
        job_id = record.tags.get(TAG_JOB_ID)
        if record.status in ("FINISHED", "FAILED", "KILLED") or not job_id:
            states[record.run_id] = merge_state(record, None)
        else:
            handle = JobHandle(job_id, record.tags.get(TAG_LOG_DIR, ""))
            pending[record.tags.get(TAG_BACKEND, "local")].append((record, handle))
    for backend_name, items in pending.items():
        try:
            scheduler = make_backend(backend_name).states([h for _, h in items])
        except Exception:
            scheduler = {}
        for record, handle in items:
            states[record.run_id] = merge_state(record, scheduler.get(handle.job_id, SchedulerState.UNKNOWN))
    return states
