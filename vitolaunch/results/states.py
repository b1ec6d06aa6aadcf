"""A trial's state, merged from what MLflow recorded and what the scheduler says now.

MLflow's terminal statuses are written by the job itself, so they are trusted over the scheduler. While
MLflow says the run is queued or running, the scheduler decides whether that is still true; a scheduler
that cannot be asked gives UNKNOWN, never FAILED. A trial the scheduler runs but that has logged nothing
(no metric, no (re)start) for `stalled_after` seconds is STALLED: still active, worth a look.
"""

from __future__ import annotations

import enum
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

from vitolaunch.backends import JobHandle, SchedulerState, SchedulerView, make_backend
from vitolaunch.tracking.records import (
    TAG_BACKEND,
    TAG_JOB_ID,
    TAG_JOB_STARTED_AT,
    TAG_LOG_DIR,
    TAG_PRUNE_OVERRIDDEN,
    TAG_PRUNED_AT_STEP,
    TAG_STOPPED_AT_STEP,
    TAG_WAITS_FOR_RUN,
    RunStatus,
)
from vitolaunch.tracking.store import RunRecord
from vitolaunch.workspace import env_float

STALLED_AFTER_ENV = "VITOLAUNCH_STALLED_AFTER_S"
DEFAULT_STALLED_AFTER_S = 600.0


def default_stalled_after() -> float:
    return env_float(STALLED_AFTER_ENV, DEFAULT_STALLED_AFTER_S)


class TrialState(str, enum.Enum):
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    INTERRUPTED = "INTERRUPTED"  # stopped without finishing: `vitolaunch resume` continues it
    UNKNOWN = "UNKNOWN"
    STALLED = "STALLED"  # running in the scheduler, but nothing logged for a while
    PRUNED = "PRUNED"  # stopped by early stopping at a rung, checkpoint kept: `vitolaunch resume` continues it

    @property
    def is_active(self) -> bool:
        return self in (TrialState.QUEUED, TrialState.RUNNING, TrialState.STALLED)

    @property
    def is_terminal(self) -> bool:
        return self in (TrialState.COMPLETED, TrialState.FAILED, TrialState.CANCELLED, TrialState.INTERRUPTED,
                        TrialState.PRUNED)


# The one colour of each state, in every table (status, compare).
STATE_STYLE = {
    TrialState.COMPLETED: "green",
    TrialState.RUNNING: "cyan",
    TrialState.QUEUED: "blue",
    TrialState.FAILED: "red",
    TrialState.CANCELLED: "magenta",
    TrialState.INTERRUPTED: "yellow",
    TrialState.UNKNOWN: "dim",
    TrialState.STALLED: "bold yellow",
    TrialState.PRUNED: "dim yellow",
}


def state_markup(state: str, text: str | None = None) -> str:
    """`text` (default: the state's name) in the state's colour, as rich markup; plain for a word that is no state."""
    style = STATE_STYLE.get(TrialState(state)) if state in TrialState._value2member_map_ else None
    shown = state if text is None else text
    return f"[{style}]{shown}[/]" if style else shown


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
    status = RunStatus(record.status)
    if status is RunStatus.FINISHED:
        return TrialState.COMPLETED
    if status is RunStatus.FAILED:
        return TrialState.FAILED
    if status is RunStatus.KILLED and TAG_PRUNED_AT_STEP in record.tags and TAG_PRUNE_OVERRIDDEN not in record.tags:
        return TrialState.PRUNED
    if status is RunStatus.KILLED:
        return TrialState.INTERRUPTED if TAG_STOPPED_AT_STEP in record.tags else TrialState.CANCELLED
    if scheduler is None:  # queued in MLflow, no job id yet: submission in flight
        return TrialState.QUEUED
    if scheduler is SchedulerState.RUNNING and status is RunStatus.SCHEDULED:
        # An evaluation whose job waits for its pretraining run marks itself RUNNING only once that finished.
        return TrialState.QUEUED if TAG_WAITS_FOR_RUN in record.tags else TrialState.RUNNING
    return _FROM_SCHEDULER[scheduler]


def last_activity(record: RunRecord, job_started: float | None = None) -> float | None:
    """Newest sign of life of a trial (epoch s): a logged metric, the job's (re)start, or None if unknown."""
    try:
        tagged = float(record.tags.get(TAG_JOB_STARTED_AT, "0"))
    except ValueError:
        tagged = 0.0
    newest = max(record.last_metric_time or 0.0, tagged, job_started or 0.0)
    return newest or None


@dataclass
class Observation:
    """Trial states, and what kept the scheduler from vouching for all of them (empty when nothing did)."""

    states: dict[str, TrialState]
    problems: list[str] = field(default_factory=list)
    reasons: dict[str, str] = field(default_factory=dict)  # by run id: SchedulerView.reasons of its job


def trial_states(
    records: Sequence[RunRecord], stalled_after: float | None = None, now: float | None = None
) -> dict[str, TrialState]:
    return observe_trials(records, stalled_after, now).states


def observe_trials(
    records: Sequence[RunRecord], stalled_after: float | None = None, now: float | None = None
) -> Observation:
    """One scheduler query per backend for all the given trials.

    `stalled_after` (seconds; default $VITOLAUNCH_STALLED_AFTER_S or 600): a RUNNING trial with no sign of
    life for longer is STALLED.
    """
    stalled_after = default_stalled_after() if stalled_after is None else stalled_after
    now = time.time() if now is None else now
    pending: dict[str, list[tuple[RunRecord, JobHandle]]] = defaultdict(list)
    observed = Observation({})
    for record in records:
        job_id = record.tags.get(TAG_JOB_ID)
        if RunStatus(record.status).is_terminal or not job_id:
            observed.states[record.run_id] = merge_state(record, None)
        else:
            handle = JobHandle(job_id, record.tags.get(TAG_LOG_DIR, ""))
            pending[record.tags.get(TAG_BACKEND, "local")].append((record, handle))
    for backend_name, items in pending.items():
        try:
            view = make_backend(backend_name).observe([h for _, h in items])
        except Exception as problem:  # noqa: BLE001 - whatever went wrong, a scheduler we cannot ask means UNKNOWN
            view = SchedulerView({}, problems=[f"could not ask the {backend_name} scheduler: {problem}"])
        observed.problems.extend(view.problems)
        for record, handle in items:
            state = merge_state(record, view.states.get(handle.job_id, SchedulerState.UNKNOWN))
            if state is TrialState.RUNNING:
                seen = last_activity(record, view.start_times.get(handle.job_id))
                if seen is not None and now - seen > stalled_after:
                    state = TrialState.STALLED
            observed.states[record.run_id] = state
            if handle.job_id in view.reasons and state is TrialState.QUEUED:
                observed.reasons[record.run_id] = view.reasons[handle.job_id]
    return observed
