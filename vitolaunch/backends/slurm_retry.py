"""Retries by cause for a trial running as a SLURM array task: preemption, time limit, crash.

Two places decide, each where it can still act:

- In the job (rank 0, `vitolaunch.job.trial`), when the trainer stopped on SLURM's warning signal (USR2) and
  every rank has saved: a warning close to the time limit is a *timeout* (requeued up to
  `resources.retries.timeout` times), any other one a *preemption* (always requeued). Rank 0 requeues
  this array task (`scontrol requeue <array>_<task>`) and every rank exits.
- In the batch script, after `srun` returned non-zero (a rank raised, was SIGKILLed, or a node died):
  `python -m vitolaunch.backends.slurm_retry after-step RC FOLDER` requeues the task as a *crash* up to
  `resources.retries.crash` times. Only the batch script sees every way a step can fail, including the
  death of rank 0 itself, so crash retries live there and not in the ranks.

The counts live next to the task's logs (`<log dir>/<array>_<task>/vitolaunch_retries.json`), so they
belong to one submission: `vitolaunch resume` submits a new task that starts from zero, which is how a
trial whose retries ran out continues. They are mirrored to MLflow tags for people to see.
Light on purpose: no torch, no submitit at import; mlflow only when a record must be updated.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from vitolaunch.tracking.records import TAG_LAST_ERROR, TAG_LAST_REQUEUE, TAG_RETRIES, RunStatus
from vitolaunch.workspace import env_float

STATE_FILE = "vitolaunch_retries.json"
SIGNAL_DELAY_ENV = "VITOLAUNCH_SIGNAL_DELAY_S"  # exported by the sbatch script: seconds of warning before the limit
# SLURM may send the warning up to 60 s earlier than asked, and the ranks act at the next step boundary.
_TIMEOUT_SLACK_S = 90


@dataclass
class RetryState:
    timeout: int = 0
    crash: int = 0
    preemption: int = 0
    requeued_at_restart: int | None = None  # SLURM_RESTART_COUNT of the run that asked for a requeue

    @classmethod
    def load(cls, folder: Path) -> "RetryState":
        try:
            return cls(**json.loads((folder / STATE_FILE).read_text()))
        except (OSError, ValueError, TypeError):
            return cls()

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{STATE_FILE}.{os.getpid()}"
        tmp.write_text(json.dumps(asdict(self)))
        os.replace(tmp, folder / STATE_FILE)

    def counts(self) -> dict[str, int]:
        return {"preemption": self.preemption, "timeout": self.timeout, "crash": self.crash}


def in_slurm_job() -> bool:
    return os.environ.get("SUBMITIT_EXECUTOR") == "slurm" and "SLURM_JOB_ID" in os.environ


def task_id() -> str:
    """`<array>_<task>` for an array task (what requeue must name: not the whole array), else the job id."""
    array, index = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{array}_{index}" if array and index else os.environ["SLURM_JOB_ID"]


def restart_count() -> int:
    try:
        return int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)
    except ValueError:
        return 0


def parse_duration_s(text: str) -> float | None:
    """SLURM's [D-]HH:MM:SS / MM:SS / MM durations (squeue %L, sinfo); None for UNLIMITED/INVALID/N/A."""
    text = text.strip()
    if not text or not text[0].isdigit():
        return None
    days = 0
    if "-" in text:
        day_text, text = text.split("-", 1)
        days = int(day_text)
    parts = [int(p) for p in text.split(":")]
    if len(parts) == 1:  # minutes
        seconds = parts[0] * 60
    elif len(parts) == 2:  # MM:SS
        seconds = parts[0] * 60 + parts[1]
    else:
        seconds = parts[0] * 3600 + parts[1] * 60 + parts[2]
    return float(days * 86400 + seconds)


def time_left_s() -> float | None:
    try:
        out = subprocess.run(
            ["squeue", "-h", "-j", os.environ["SLURM_JOB_ID"], "-o", "%L"],
            capture_output=True, text=True, timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired, KeyError):
        return None
    return parse_duration_s(out.stdout) if out.returncode == 0 else None


def stop_cause() -> str:
    """'timeout' when the warning came because the time limit is near, else 'preemption'."""
    left = time_left_s()
    delay = env_float(SIGNAL_DELAY_ENV, 120.0)
    return "timeout" if left is not None and left <= delay + _TIMEOUT_SLACK_S else "preemption"


def requeue(job: str) -> tuple[bool, str]:
    try:
        out = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as problem:
        return False, str(problem)
    return out.returncode == 0, (out.stderr or out.stdout).strip()


@dataclass
class StopDecision:
    cause: str  # preemption | timeout
    requeue: bool
    state: RetryState
    reason: str = ""


def decide_after_stop(folder: Path, max_timeouts: int) -> StopDecision:
    """Rank 0, after every rank saved on the warning signal: requeue or not, and why."""
    state = RetryState.load(folder)
    cause = stop_cause()
    if cause == "timeout" and state.timeout >= max_timeouts:
        return StopDecision(cause, False, state, f"time limit reached {state.timeout + 1} times (retries.timeout: {max_timeouts})")
    setattr(state, cause, getattr(state, cause) + 1)
    return StopDecision(cause, True, state)


def commit_requeue(folder: Path, decision: StopDecision) -> tuple[bool, str]:
    """Record the count, then requeue this array task. Returns (requeued, scontrol's message)."""
    decision.state.requeued_at_restart = restart_count()
    decision.state.save(folder)
    ok, message = requeue(task_id())
    if not ok:
        decision.state.requeued_at_restart = None
        decision.state.save(folder)
    return ok, message


def crash_retries_left(folder: Path, max_crashes: int) -> bool:
    return RetryState.load(folder).crash < max_crashes


# ---------------------------------------------------------------- the batch script's hook


def _trial_job(folder: Path, job: str):
    from vitolaunch.backends.submitit_compat import submitted_callable

    return submitted_callable(folder.parent / "%j", job)


def _update_run(trial, status: RunStatus | None, tags: dict[str, str], only_if_active: bool = False) -> None:
    """Best effort: a tracking outage must not stop the retry itself."""
    try:
        from vitolaunch.tracking.chooser import store_in_job

        store = store_in_job(trial.tracking_uri)
        if only_if_active and not RunStatus(store.get(trial.run_id).status).is_active:
            status = None
        store.set_tags(trial.run_id, tags)
        if status:
            store.set_status(trial.run_id, status)
    except Exception as problem:  # noqa: BLE001
        print(f"vitolaunch: could not update MLflow run {trial.run_id}: {problem}", file=sys.stderr)


def after_step(exit_code: int, log_root: str) -> int:
    """Called by the batch script when srun returned `exit_code`; returns the batch script's exit code."""
    if exit_code == 0:
        return 0
    job = task_id()
    folder = Path(log_root) / job
    state = RetryState.load(folder)
    if state.requeued_at_restart is not None and state.requeued_at_restart == restart_count():
        return 0  # rank 0 already requeued this task after a preemption or timeout
    try:
        trial = _trial_job(folder, job)
    except Exception as problem:  # noqa: BLE001
        print(f"vitolaunch: cannot read the trial of job {job} ({problem}): not retried", file=sys.stderr)
        return exit_code
    max_crashes = int(getattr(trial, "max_crashes", 0))
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    if state.crash < max_crashes:
        state.crash += 1
        state.requeued_at_restart = restart_count()
        state.save(folder)
        _update_run(trial, RunStatus.SCHEDULED, {
            TAG_RETRIES: json.dumps(state.counts()),
            TAG_LAST_REQUEUE: f"crash (exit {exit_code}) at {stamp}",
        })
        ok, message = requeue(job)
        if ok:
            print(f"vitolaunch: step exited {exit_code}; requeued {job} (crash retry {state.crash}/{max_crashes})",
                  file=sys.stderr)
            return 0
        print(f"vitolaunch: scontrol requeue {job} failed: {message}", file=sys.stderr)
    else:
        print(f"vitolaunch: step exited {exit_code}; no crash retries left ({state.crash}/{max_crashes}): "
              f"`vitolaunch resume {trial.run_id}` continues from the last checkpoint", file=sys.stderr)
    _update_run(trial, RunStatus.FAILED, {TAG_LAST_ERROR: f"exit {exit_code} at {stamp}", TAG_RETRIES: json.dumps(state.counts())},
                only_if_active=True)
    return exit_code


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 3 or args[0] != "after-step":
        print("usage: python -m vitolaunch.backends.slurm_retry after-step EXIT_CODE LOG_ROOT", file=sys.stderr)
        return 2
    return after_step(int(args[1]), args[2])


if __name__ == "__main__":
    sys.exit(main())
