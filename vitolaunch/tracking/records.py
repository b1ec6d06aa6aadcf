"""The vocabulary of run records: every MLflow tag vitolaunch writes or reads, the run statuses, and names.

A sweep is an MLflow parent run and each trial a child run; these tags are the whole contract between the
launcher (which creates the runs), the job (which updates its own run while it trains) and the readers
(`status`, `resume`, the SQLite reader). Keeping them in one leaf module, importable from every layer, is
what lets a newcomer find every fact a run carries in one place. `vito/` never writes these: it logs its
own metrics and `vito.*` facts (vito.metrics), and the launcher side links runs together.
"""

from __future__ import annotations

import enum
import time
from typing import Any

# -- identity: what a run is ------------------------------------------------------------------------
TAG_KIND = "vitolaunch.kind"  # "sweep" or "trial"
KIND_SWEEP = "sweep"
KIND_TRIAL = "trial"
TAG_SWEEP = "vitolaunch.sweep"  # the sweep's name, on the sweep and on each of its trials
TAG_SPEC_HASH = "vitolaunch.spec_hash"
TAG_TASK = "vitolaunch.task"  # "pretrain" or "evaluate"
TAG_TRIAL_KEY = "vitolaunch.trial_key"  # hash of the resolved config: the trial's identity
TAG_TRIAL_INDEX = "vitolaunch.trial_index"
TAG_SWEPT = "vitolaunch.swept_params"  # JSON: the trial's swept values, in spec order
TAG_TOTAL_STEPS = "vitolaunch.total_steps"

# -- how it runs: set at submit time -----------------------------------------------------------------
TAG_BACKEND = "vitolaunch.backend"  # "local" or "slurm"
TAG_RESOURCES = "vitolaunch.spec.resources"  # JSON: the resources the trial was submitted with
TAG_CHECKPOINT = "vitolaunch.checkpoint_uri"
TAG_STORAGE_OPTIONS = "vitolaunch.storage_options"  # JSON: non-secret fsspec options, e.g. an S3 endpoint
TAG_SCRATCH = "vitolaunch.scratch"  # the staging folder given to the job (absent: node-local, found by the job)
TAG_JOB_ID = "vitolaunch.job_id"
TAG_LOG_DIR = "vitolaunch.log_dir"
TAG_SUBMIT_ERROR = "vitolaunch.submit_error"

# -- what happened: set by the job and the retry hook ------------------------------------------------
TAG_HOST = "vitolaunch.host"
TAG_JOB_STARTED_AT = "vitolaunch.job_started_at"  # epoch seconds, at every (re)start: a sign of life
TAG_SLURM_JOB_ID = "vitolaunch.slurm_job_id"
TAG_SLURM_RESTART_COUNT = "vitolaunch.slurm_restart_count"
TAG_STOPPED_AT_STEP = "vitolaunch.stopped_at_step"  # stopped resumably (not requeued): INTERRUPTED
TAG_TERMINATED_AT_STEP = "vitolaunch.terminated_at_step"  # saved on SIGTERM (cancel, preemption)
TAG_NOT_REQUEUED = "vitolaunch.not_requeued"  # why a stopped SLURM task was not requeued
TAG_RETRIES = "vitolaunch.retries"  # JSON: requeues so far by cause
TAG_LAST_REQUEUE = "vitolaunch.last_requeue"
TAG_LAST_ERROR = "vitolaunch.last_error"
# What a stop leaves on the run; removed when the run goes on (requeued or resumed), so they always describe
# the stop the run is in now, never one it came back from.
STOP_TAGS = (TAG_STOPPED_AT_STEP, TAG_TERMINATED_AT_STEP, TAG_NOT_REQUEUED)

# -- links between runs ------------------------------------------------------------------------------
TAG_PRETRAIN_RUN = "vitolaunch.pretrain_run_id"  # on an evaluation trial: the trial it evaluates
TAG_EVALUATED_STEP = "vitolaunch.evaluated_step"  # on an evaluation trial: the checkpoint step it evaluated
TAG_EVALUATED_BY_PREFIX = "vitolaunch.evaluated_by."  # + evaluation run id, on the pretraining trial

# -- sweep results (issue 12): the objective, and what the parent run says once its trials have ended --
TAG_OBJECTIVE_METRIC = "vitolaunch.objective.metric"  # on the sweep: the metric that ranks its trials
TAG_OBJECTIVE_MODE = "vitolaunch.objective.mode"  # "max" or "min"
TAG_BEST_RUN = "vitolaunch.best.run_id"  # on the sweep: the trial with the best objective value
TAG_BEST_RUN_NAME = "vitolaunch.best.run_name"
TAG_BEST_VALUE = "vitolaunch.best.value"  # the objective's best value, also logged as a metric of that name
TAG_BEST_PARAM_PREFIX = "vitolaunch.best.param."  # + a swept key: the best trial's value of it
TAG_SUMMARY_OF = "vitolaunch.summary_of"  # fingerprint of the trial outcomes the summary was made from
SUMMARY_ARTIFACT_DIR = "summary"  # on the sweep: comparison.csv/.md, objective_vs_<param>.png, loss_curves.png
# MLflow UI settings on the experiment (what the web UI reads; see vitolaunch/results/mlflow_ui.py)
TAG_EXPERIMENT_KIND = "mlflow.experimentKind"
EXPERIMENT_KIND_TRAINING = "custom_model_development"  # not "genai_development": no GenAI overview page
TAG_SHARED_VIEW_PREFIX = "mlflow.sharedViewState."  # + a key that the URL's viewStateShareKey names

# -- early stopping (vitolaunch.job.rungs): decided by each trial at its rungs --------------------------
TAG_EARLY_STOP = "vitolaunch.job.rungs"  # JSON: the rule a trial applies at its rungs (spec early_stop), set at submit
TAG_RUNG_PREFIX = "vitolaunch.rung."  # + rung step: the decision taken there, in words (continue or prune, and why)
TAG_PRUNED_AT_STEP = "vitolaunch.pruned_at_step"  # stopped by early stopping, checkpoint committed there: PRUNED
TAG_PRUNE_DECISION = "vitolaunch.prune_decision"  # JSON: rung, metric, mode, value, threshold, compared_with, keep
TAG_PRUNE_OVERRIDDEN = "vitolaunch.prune_overridden"  # a pruned trial resumed by hand: no more early stopping for it


def rung_metric(metric: str, rung: int) -> str:
    """The metric a trial logs at a rung, a copy of `metric` at that step: siblings read all of them in one search."""
    return f"early_stop/rung_{rung}/{metric}"


# -- evaluation chained to pretraining (vitolaunch.job.chained_wait) ----------------------------------------------
TAG_WAITS_FOR_RUN = "vitolaunch.waits_for_run"  # on an evaluation trial: the pretraining run it waits to finish
TAG_TARGET_ENDED = "vitolaunch.target_ended"  # why an evaluation never ran: its target ended without finishing

# -- what an evaluation trial says about itself (written by vito/evaluate_task.py and vito/eval/suite.py) --------
TAG_EVAL_PROGRESS = "vito.eval_progress"  # "<benchmark> <split> <done>/<total>" while features are extracted
TAG_EVAL_ERROR = "vito.eval_error"  # why an evaluation could not start (a benchmark's layout, say)


# -- MLflow's own tags, which vitolaunch sets or reads ------------------------------------------------
TAG_PARENT = "mlflow.parentRunId"
TAG_NOTE = "mlflow.note.content"  # the run's description in the MLflow UI
TAG_GIT_COMMIT = "mlflow.source.git.commit"

# -- artifacts -----------------------------------------------------------------------------------------
CONFIG_ARTIFACT = "config.json"  # a trial's full resolved vito config


class RunStatus(str, enum.Enum):
    """MLflow's run statuses, as vitolaunch uses them.

    SCHEDULED: submitted (or requeued), no rank has started. RUNNING: a job works on it. FINISHED: done.
    FAILED: ended in an error with no retry left. KILLED: stopped before the end (cancelled, or stopped
    resumably; the tags above say which).
    """

    SCHEDULED = "SCHEDULED"
    RUNNING = "RUNNING"
    FINISHED = "FINISHED"
    FAILED = "FAILED"
    KILLED = "KILLED"

    @property
    def is_active(self) -> bool:
        return self in (RunStatus.SCHEDULED, RunStatus.RUNNING)

    @property
    def is_terminal(self) -> bool:
        return not self.is_active


def status_change(status: RunStatus | str, end_time_s: float | None = None) -> tuple[RunStatus, int | None]:
    """The rule of every status change: (the status, the end time to stamp in epoch ms, or None to keep it).

    Active statuses keep the run open; terminal ones stamp its end time (now unless `end_time_s` says when,
    e.g. a sweep's last trial's end), which is what the MLflow UI and `status` show as the run's duration.
    Every writer (MLflow's client below, the standard-library sqlite and REST writers) applies it.
    """
    status = RunStatus(status)
    if status.is_active:
        return status, None
    return status, int((end_time_s if end_time_s else time.time()) * 1000)


def set_run_status(client: Any, run_id: str, status: RunStatus | str, end_time_s: float | None = None) -> None:
    """A run's status change through an MlflowClient (`status_change` says what it writes)."""
    status, end_time = status_change(status, end_time_s)
    if end_time is None:
        client.update_run(run_id, status=status.value)
    else:
        client.set_terminated(run_id, status=status.value, end_time=end_time)


# -- names ---------------------------------------------------------------------------------------------
def trial_job_name(sweep: str, index: int, key: str) -> str:
    """The scheduler's name for a trial's job: `<sweep>.<index>.<key8>` (dots: sweep names cannot hold one)."""
    return f"{sweep}.{index:03d}.{key[:8]}"


def sweep_of_job_name(job_name: str) -> str:
    """The sweep part of a `trial_job_name`."""
    return job_name.split(".", 1)[0]


def trial_run_name(sweep: str, index: int, key: str) -> str:
    """The MLflow run name of a trial, as the UI lists it."""
    return f"{sweep}-{index:03d}-{key[:6]}"
