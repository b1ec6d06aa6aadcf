"""The status view: one row per trial, from MLflow progress merged with the scheduler's state."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from vitolaunch.results.states import TrialState, observe_trials, state_markup
from vitolaunch.tracking.records import (
    TAG_EVAL_ERROR,
    TAG_EVAL_PROGRESS,
    TAG_JOB_ID,
    TAG_JOB_STARTED_AT,
    TAG_LAST_REQUEUE,
    TAG_SLURM_RESTART_COUNT,
    TAG_TOTAL_STEPS,
)
from vitolaunch.tracking.store import RunQueries, RunRecord


@dataclass
class TrialRow:
    sweep: str
    sweep_run_id: str
    run_id: str
    index: int
    trial_key: str
    params: dict[str, Any]
    state: str
    step: int | None
    total_steps: int | None
    loss: float | None
    eval_acc: float | None
    eval_acc_random_init: float | None
    elapsed_s: float | None  # running time: since its job (last) started, to its end or now; None if it never ran
    job_id: str | None
    progress: str | None = None  # an evaluation's "<benchmark> <split> <done>/<total>", while it extracts
    queued_s: float | None = None  # from submission to its job's start (or to now, or to its end if it never ran)
    note: str | None = None  # why it is in its state: the scheduler's word (a requeue after a node failed), or
    # why an evaluation failed before its work (its benchmark's layout)


# vito's tag on a run that continued from a checkpoint (vito.metrics.TAG_RESUMED_FROM_STEP; not imported: the
# status path stays free of torch)
_TAG_RESUMED_FROM_STEP = "vito.resumed_from_step"


def _job_started(record: RunRecord) -> float | None:
    """When the trial's job last started running (the job's own tag, written at every (re)start)."""
    try:
        return float(record.tags[TAG_JOB_STARTED_AT])
    except (KeyError, ValueError):
        return None


def _restarted(record: RunRecord) -> bool:
    """Ran more than once (requeued or resumed): its submission-to-start time is no longer one wait."""
    return (record.tags.get(TAG_SLURM_RESTART_COUNT, "0") not in ("", "0") or TAG_LAST_REQUEUE in record.tags
            or _TAG_RESUMED_FROM_STEP in record.tags)


def _end(record: RunRecord, state: TrialState) -> float:
    return record.end_time if state.is_terminal and record.end_time else time.time()


def _elapsed(record: RunRecord, state: TrialState) -> float | None:
    """The running time, not the time since submission (the run is created then, and may wait in the queue)."""
    started = _job_started(record)
    if started is None or state is TrialState.QUEUED:  # nothing runs now (never, or requeued): no time to show
        return None
    return max(0.0, _end(record, state) - started)


def _queued(record: RunRecord, state: TrialState) -> float | None:
    """From submission to the start of its job; for one that never started, to now (or to its end)."""
    if record.start_time is None:
        return None
    started = _job_started(record)
    if started is None:
        if state is TrialState.QUEUED or (state.is_terminal and record.end_time):
            return max(0.0, _end(record, state) - record.start_time)
        return None
    if _restarted(record):
        return None
    return max(0.0, started - record.start_time)


@dataclass
class StatusReport:
    rows: list[TrialRow]  # one per trial
    problems: list[str]  # what kept the scheduler from vouching for a state
    sweep_problems: list[str]  # parent runs that could not be brought up to date (best effort)


def collect_rows(
    registry: RunQueries, sweep_filter: str | None = None, stalled_after: float | None = None,
    update_sweeps: bool = False,
) -> StatusReport:
    """One row per trial (of every sweep, or of the one named). With `update_sweeps`, the sweeps' parent runs
    are also brought up to date with what was observed (vitolaunch/results/sweep_summary.py)."""
    if sweep_filter:
        target = registry.resolve(sweep_filter)
        sweeps = [registry.sweep_of(target)]
    else:
        sweeps = sorted(registry.sweeps(), key=lambda s: s.start_time or 0)
    rows = []
    trials_of = {sweep.run_id: registry.trials(sweep) for sweep in sweeps}
    # One scheduler query for every trial shown (sacct takes many arrays in one call).
    observed = observe_trials([t for trials in trials_of.values() for t in trials], stalled_after=stalled_after)
    states = observed.states
    sweep_problems: list[str] = []
    if update_sweeps:
        from vitolaunch.results.sweep_summary import update_observed

        sweep_problems = update_observed(registry, [(s, trials_of[s.run_id]) for s in sweeps], states)
    for sweep in sweeps:
        trials = trials_of[sweep.run_id]
        for trial in trials:
            metrics = trial.metrics
            step = metrics.get("train/step")
            rows.append(
                TrialRow(
                    sweep=sweep.sweep,
                    sweep_run_id=sweep.run_id,
                    run_id=trial.run_id,
                    index=trial.trial_index,
                    trial_key=trial.trial_key,
                    params=trial.swept,
                    state=states[trial.run_id].value,
                    step=int(step) if step is not None else None,
                    total_steps=int(trial.tags[TAG_TOTAL_STEPS]) if TAG_TOTAL_STEPS in trial.tags else None,
                    loss=metrics.get("train/loss"),
                    eval_acc=metrics.get("eval/linear_probe_acc"),
                    eval_acc_random_init=metrics.get("eval/linear_probe_acc_random_init"),
                    elapsed_s=_elapsed(trial, states[trial.run_id]),
                    job_id=trial.tags.get(TAG_JOB_ID),
                    queued_s=_queued(trial, states[trial.run_id]),
                    progress=_progress(trial, states[trial.run_id]),
                    note=observed.reasons.get(trial.run_id) or _failure(trial, states[trial.run_id]),
                )
            )
    return StatusReport(rows, observed.problems, sweep_problems)


def _failure(record: RunRecord, state: TrialState) -> str | None:
    """Why an evaluation failed before its work (its run's tag), for the line under the table."""
    return record.tags.get(TAG_EVAL_ERROR) if state is TrialState.FAILED else None


def _progress(record: RunRecord, state: TrialState) -> str | None:
    """Where a running evaluation is, in the step column's place."""
    text = record.tags.get(TAG_EVAL_PROGRESS)
    return text if text and text != "done" and state.is_active else None


def all_terminal(rows: list[TrialRow]) -> bool:
    return all(TrialState(row.state).is_terminal for row in rows)


def rows_as_json(rows: list[TrialRow]) -> str:
    return json.dumps([asdict(row) for row in rows], indent=2)


def _fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _elapsed_cell(row: TrialRow) -> str:
    """The running time; a trial still waiting shows how long it has waited instead (its running time is none)."""
    if row.state == TrialState.QUEUED.value and row.elapsed_s is None and row.queued_s is not None:
        return f"[dim]queued {_fmt_duration(row.queued_s)}[/]"
    return _fmt_duration(row.elapsed_s)


def _fmt_params(params: dict[str, Any]) -> str:
    return " ".join(f"{key.split('.')[-1]}={value}" for key, value in params.items()) or "-"


def render_table(rows: list[TrialRow], title: str | None = None, problems: Sequence[str] = ()):
    from rich.markup import escape
    from rich.table import Table

    # What the scheduler could not tell goes right under the table, where UNKNOWN rows send the eye.
    caption = "\n".join(f"[yellow]{problem}: states it cannot vouch for show as UNKNOWN[/]" for problem in problems)
    # Why a trial is in its state, where the scheduler said more than the state (a requeue after a node failure).
    notes = "\n".join(f"{row.sweep} trial {row.index:03d} ({row.run_id[:12]}, {row.state}): {escape(row.note)}"
                      for row in rows if row.note)
    caption = "\n".join(part for part in (notes, caption) if part)
    table = Table(title=title, caption=caption or None, caption_justify="left", header_style="bold", expand=False)
    for column in ("sweep", "trial", "run id", "params", "state", "step", "loss", "probe acc (rand)", "elapsed"):
        table.add_column(column, no_wrap=column != "params")
    previous_sweep = None
    for row in rows:
        if previous_sweep is not None and row.sweep != previous_sweep:
            table.add_section()
        previous_sweep = row.sweep
        progress = row.progress or (f"{row.step or 0}/{row.total_steps}" if row.total_steps else "-")
        acc = "-"
        if row.eval_acc is not None:
            acc = f"{row.eval_acc:.3f}"
            if row.eval_acc_random_init is not None:
                acc += f" ({row.eval_acc_random_init:.3f})"
        table.add_row(
            row.sweep,
            f"{row.index:03d} {row.trial_key[:8]}",
            row.run_id[:12],
            _fmt_params(row.params),
            state_markup(row.state),
            progress,
            f"{row.loss:.4f}" if row.loss is not None else "-",
            acc,
            _elapsed_cell(row),
        )
    return table
