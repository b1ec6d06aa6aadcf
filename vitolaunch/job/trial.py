"""What runs inside a scheduled task: set up the rank's environment, then hand over to vito.

This object is pickled by submitit at submit time and called once per rank. It knows the trial's MLflow
run (created at submit time), so a resumed or requeued job continues the same run and step axis.
"""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from vitolaunch.backends import slurm_retry
from vitolaunch.tracking.chooser import store_in_job
from vitolaunch.tracking.records import (
    STOP_TAGS,
    TAG_EVALUATED_BY_PREFIX,
    TAG_EVALUATED_STEP,
    TAG_HOST,
    TAG_JOB_STARTED_AT,
    TAG_LAST_ERROR,
    TAG_LAST_REQUEUE,
    TAG_NOT_REQUEUED,
    TAG_RETRIES,
    TAG_SLURM_JOB_ID,
    TAG_SLURM_RESTART_COUNT,
    TAG_STOPPED_AT_STEP,
    TAG_TARGET_ENDED,
    TAG_TERMINATED_AT_STEP,
    RunStatus,
    set_run_status,
)

log = logging.getLogger(__name__)

Task = Literal["pretrain", "evaluate"]  # a sweep spec's `task`: train the config, or evaluate the checkpoint it names


@dataclass
class TrialJob:
    run_id: str
    tracking_uri: str
    config: dict[str, Any]  # the resolved vito config
    checkpoint_uri: str
    data_root: str
    scratch_root: str | None  # None: node-local, resolved inside the job (see node_scratch)
    task: Task
    cpus_per_task: int = 1
    # fsspec options for the checkpoint store (e.g. an S3 endpoint); never credentials, which come from
    # the standard AWS environment of the job.
    storage_options: dict[str, Any] = field(default_factory=dict)
    # Requeues by cause on SLURM (vitolaunch.backends.slurm_retry); preemption always requeues.
    max_timeouts: int = 0
    max_crashes: int = 0
    # The sweep's early-stopping rule (records.TAG_EARLY_STOP's JSON), applied by rank 0 at its rungs; None: off.
    early_stop: str | None = None
    # An evaluation submitted while its pretraining run still trains: wait for that run (vitolaunch.job.chained_wait).
    wait_for_run: str | None = None
    _stop: bool = field(default=False, repr=False)
    _terminated: bool = field(default=False, repr=False)  # SIGTERM: stop, and leave requeueing to the scheduler

    def __post_init__(self) -> None:
        if self.task not in get_args(Task):
            raise ValueError(f"TrialJob.task is {self.task!r}: expected one of {get_args(Task)}")

    def __call__(self) -> dict[str, Any]:
        # A scheduler's warning signal only sets a flag; the trainer acts on it at the next step boundary.
        # First thing: submitit installed its own USR2 handler (checkpoint + requeue + exit on rank 0 only),
        # which must never run here: every rank has to save before anyone requeues.
        signal.signal(signal.SIGUSR2, self._request_stop)
        # SIGTERM (scancel, `vitolaunch cancel`, SLURM preemption with a GraceTime) saves too, instead of
        # submitit's default of ignoring it until the SIGKILL: the work since the last periodic checkpoint is
        # kept when the save fits in the grace period, and a save cut short never touches `latest`.
        signal.signal(signal.SIGTERM, self._request_termination)
        rank = self._export_distributed_environment()
        _configure_logging(rank)
        os.environ["MLFLOW_RUN_ID"] = self.run_id
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        os.environ.setdefault("DO_NOT_TRACK", "true")

        import torch

        torch.set_num_threads(max(1, self.cpus_per_task))
        from vito.config import VitoConfig
        from vito.metrics import MetricsLogger
        from vito.train import RunContext

        cfg = VitoConfig.model_validate(self.config)
        tracking = MetricsLogger(self.tracking_uri, self.run_id, enabled=rank == 0, spool_dir=_spool_folder())
        if self.wait_for_run and not self._target_finished(tracking):
            return {"step": 0, "completed": False}
        _queue_status(tracking, RunStatus.RUNNING)
        tracking.set_tags(_job_tags())
        tracking.call("clear the tags of the stop this run came back from", clear_stop_tags)
        context = RunContext(
            checkpoint_uri=self.checkpoint_uri,
            data_root=self.data_root,
            scratch_dir=os.path.join(node_scratch(self.scratch_root), self.run_id),
            tracking_uri=self.tracking_uri,
            run_id=self.run_id,
            stop_requested=lambda: self._stop,
            storage_options=self.storage_options,
            metrics=tracking,
        )
        judge = self._rung_judge(tracking)
        if judge is not None:
            context.consult_at, context.consult = judge.rungs, judge
        try:
            return self._train_and_record(cfg, context, tracking, rank, judge)
        finally:
            # Metrics and status are sent by a background thread: drain it before the process ends.
            tracking.close()
            if rank == 0:  # this trial's status is recorded: the last one to end brings its sweep's run up to date
                from vitolaunch.results.sweep_summary import after_trial

                after_trial(self.tracking_uri, self.run_id)

    def entry_point(self) -> Callable[[Any, Any], Any]:
        """The vito function this job runs, `(cfg, ctx) -> TrainResult`: training, or evaluating a checkpoint."""
        if self.task == "evaluate":
            from vito.evaluate_task import run

            return run
        from vito.train import train

        return train

    def _train_and_record(self, cfg, context, tracking, rank: int, judge=None) -> dict[str, Any]:
        try:
            result = self.entry_point()(cfg, context)
        except BaseException as problem:
            if rank == 0 and slurm_retry.in_slurm_job() and slurm_retry.crash_retries_left(_task_folder(), self.max_crashes):
                # The batch script requeues this task once srun has returned (see slurm_retry.after_step).
                tracking.set_tags({TAG_LAST_ERROR: f"{type(problem).__name__}: {problem}"[:500]})
            else:
                _queue_status(tracking, RunStatus.FAILED)
            raise
        if result.completed:
            if self.task == "evaluate" and rank == 0:
                self._link_evaluation(tracking, cfg.eval.pretrain_run_id, result.step)
            _queue_status(tracking, RunStatus.FINISHED)
        elif judge is not None and judge.decision is not None:
            # Pruned: the checkpoint of this step is committed; exiting (never requeued) frees the slot.
            log.warning("pruned by early stopping at step %d (%s): `vitolaunch resume %s` continues it",
                        result.step, judge.decision.summary(), self.run_id)
            tracking.set_tags(judge.decision.pruned_tags())
            _queue_status(tracking, RunStatus.KILLED)
        elif self._terminated:
            # Cancelled, or preempted by a scheduler that requeues by itself: the canceller and the scheduler's
            # view say which, so on SLURM the run's status is left to them (it reads CANCELLED or QUEUED).
            log.warning("terminated: saved step %d; `vitolaunch resume %s` continues it (a scheduler that "
                        "requeues preempted jobs restarts it from there)", result.step, self.run_id)
            tracking.set_tags({TAG_TERMINATED_AT_STEP: str(result.step)})
            if not slurm_retry.in_slurm_job():
                _queue_status(tracking, RunStatus.KILLED)
        elif slurm_retry.in_slurm_job():
            if rank == 0:
                self._requeue_or_stop(tracking, result.step)
        else:
            tracking.set_tags({TAG_STOPPED_AT_STEP: str(result.step)})
            _queue_status(tracking, RunStatus.KILLED)
        return {"step": result.step, "completed": result.completed, **result.evaluation}

    def _target_finished(self, tracking) -> bool:
        """Wait for the pretraining run this evaluation needs; False (recorded, tracking closed) if it never finishes."""
        from vitolaunch.job.chained_wait import wait_for_target

        reason = wait_for_target(self.tracking_uri, self.wait_for_run)
        if not reason:
            return True
        log.warning("%s", reason)
        tracking.set_tags({TAG_TARGET_ENDED: reason[:500]})
        _queue_status(tracking, RunStatus.KILLED)
        tracking.close()
        return False

    def _rung_judge(self, tracking):
        """Early stopping's decision at the rungs (every rank knows the rungs; only rank 0's judge is asked)."""
        if not self.early_stop or self.task != "pretrain":
            return None
        from vitolaunch.job.rungs import RungJudge
        from vitolaunch.spec.early_stop import EarlyStop

        return RungJudge(EarlyStop.from_record(self.early_stop), self.tracking_uri, self.run_id,
                         drain=lambda: tracking.drain(timeout_s=120), set_tags=tracking.set_tags)

    def _link_evaluation(self, tracking, pretrain_run_id: str | None, step: int) -> None:
        """Record which checkpoint step this evaluation read, and tag the pretraining run with this evaluation.

        The pretraining run's tag is best effort: it is a link, not a result, and the evaluation run's own
        pretrain tag (set at submit time) already leads back to it.
        """
        tracking.set_tags({TAG_EVALUATED_STEP: str(step)})
        if not pretrain_run_id:
            return
        try:
            store_in_job(self.tracking_uri).set_tags(pretrain_run_id, {TAG_EVALUATED_BY_PREFIX + self.run_id: f"step {step}"})
        except Exception as problem:  # noqa: BLE001 - a link that cannot be written must not fail the evaluation
            log.warning("could not tag pretraining run %s with this evaluation: %s", pretrain_run_id, problem)

    def _requeue_or_stop(self, tracking, step: int) -> None:
        """Rank 0 on SLURM, once every rank saved `step`: requeue this array task, or stop resumably."""
        folder = _task_folder()
        decision = slurm_retry.decide_after_stop(folder, self.max_timeouts)
        if decision.requeue:
            # The record first: once requeued, this process may be killed at any moment.
            tracking.set_tags({
                TAG_RETRIES: json.dumps(decision.state.counts()),
                TAG_LAST_REQUEUE: f"{decision.cause} at step {step}",
            })
            # Metrics and tags go out from a background thread: all of them must reach MLflow before the
            # requeue may kill this process (the resumed run continues the step axis without a gap).
            tracking.drain(timeout_s=60)
            _set_scheduled(self.tracking_uri, self.run_id)
            requeued, message = slurm_retry.commit_requeue(folder, decision)
            if requeued:
                log.warning("%s: saved step %d and requeued %s", decision.cause, step, slurm_retry.task_id())
                return
            decision.reason = f"scontrol requeue failed: {message}"
        log.warning("%s at step %d, not requeued (%s): `vitolaunch resume %s` continues it",
                    decision.cause, step, decision.reason, self.run_id)
        tracking.set_tags({TAG_STOPPED_AT_STEP: str(step), TAG_NOT_REQUEUED: decision.reason[:500]})
        _queue_status(tracking, RunStatus.KILLED)

    def _request_stop(self, signum: int, frame: Any) -> None:
        log.warning("received signal %d: will save and stop at the next step boundary", signum)
        self._stop = True

    def _request_termination(self, signum: int, frame: Any) -> None:
        self._terminated = True
        self._request_stop(signum, frame)

    def _export_distributed_environment(self) -> int:
        import submitit

        env = submitit.helpers.TorchDistributedEnvironment()
        if os.environ.get("SUBMITIT_EXECUTOR") == "local":
            # All ranks share this machine, whose hostname may not resolve: talk over loopback.
            env.master_addr = "127.0.0.1"
            os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
        else:
            env.master_addr = master_address(env.master_addr, int(os.environ.get("SLURM_JOB_NUM_NODES", "1")))
        if "MASTER_PORT" not in os.environ:  # a site or user that sets it keeps it
            env.master_port = rendezvous_port(submitit.JobEnvironment().job_id)
        env.export(set_cuda_visible_devices=False, overwrite=True)
        return env.rank


def rendezvous_port(job_id: str) -> int:
    """The rendezvous port of a job, the same on every rank: derived from the job id (`<array>_<task>`).

    Kept below Linux's ephemeral range (32768-60999 by default): submitit's own choice (20000-60000) falls in
    it 70% of the time, and a busy master node's outgoing connections then hold the port now and then
    (EADDRINUSE, seen on the loopback cluster), and again on the requeued attempt with the same job id.
    """
    return 20000 + random.Random(f"vitolaunch-{job_id}").randrange(12000)


def node_scratch(configured: str | None) -> str:
    """The staging folder of this node: the configured one (with `$VARS` expanded here, on the node), else
    the scheduler's per-job local disk ($SLURM_TMPDIR), $TMPDIR, or /tmp. Never the submitting user's home:
    on a cluster that is a shared, quota-limited file system."""
    if configured:
        return os.path.expandvars(os.path.expanduser(configured))
    base = os.environ.get("SLURM_TMPDIR") or os.environ.get("TMPDIR") or "/tmp"
    return os.path.join(base, "vitolaunch-scratch")


def master_address(nodelist_head: str, num_nodes: int) -> str:
    """The rendezvous host, checked: a name that does not resolve is loopback only when every rank is here."""
    try:
        socket.gethostbyname(nodelist_head)
    except OSError as problem:
        if num_nodes <= 1:
            return "127.0.0.1"  # one node: every rank is on this machine, whatever its name resolves to
        raise RuntimeError(
            f"the first node of this job, '{nodelist_head}' (SLURM_JOB_NODELIST={os.environ.get('SLURM_JOB_NODELIST', '?')}), "
            f"does not resolve here ({problem}): ranks on {num_nodes} nodes cannot meet there. Fix the node's name "
            "resolution (/etc/hosts or DNS) on the cluster."
        ) from problem
    return nodelist_head


def _job_tags() -> dict[str, str]:
    tags = {TAG_HOST: socket.gethostname(), TAG_JOB_STARTED_AT: f"{time.time():.3f}"}
    if "SLURM_JOB_ID" in os.environ:
        tags[TAG_SLURM_JOB_ID] = os.environ["SLURM_JOB_ID"]
        tags[TAG_SLURM_RESTART_COUNT] = str(slurm_retry.restart_count())
    return tags


def clear_stop_tags(client, run_id: str) -> None:
    """Remove the tags a previous stop left (records.STOP_TAGS): the run goes on, so they no longer hold.

    A run terminated, requeued and then completed kept `terminated_at_step`; a stale `stopped_at_step` would make
    a later cancel read as INTERRUPTED.
    """
    tags = client.get_run(run_id).data.tags
    for tag in STOP_TAGS:
        if tag in tags:
            client.delete_tag(run_id, tag)


def _spool_folder() -> str | None:
    """Where a tracking outage's unsent metrics go at the job's end: beside its logs, which outlive the job (the
    working directory may be a node's scratch); None outside a submitit job (the working directory)."""
    try:
        return str(_task_folder())
    except RuntimeError:
        return None


def _task_folder() -> Path:
    """This task's submitit folder (<log dir>/<array>_<task>): where its retry counts live."""
    import submitit

    return Path(submitit.JobEnvironment().paths.folder)


def _queue_status(tracking, status: RunStatus) -> None:
    """The run's status, sent in order after everything queued before it (metrics first, then FINISHED)."""
    tracking.call(f"status {status.value}", lambda client, run_id: set_run_status(client, run_id, status))


def _set_scheduled(tracking_uri: str, run_id: str) -> None:
    """Back to queued in MLflow (requeued: resumable, and not FINISHED); best effort."""
    try:
        store_in_job(tracking_uri).set_status(run_id, RunStatus.SCHEDULED)
    except Exception as problem:  # noqa: BLE001 - best effort: the requeue itself must go ahead
        log.warning("could not mark run %s as requeued in MLflow: %s", run_id, problem)


def _configure_logging(rank: int) -> None:
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stdout,
        format=f"%(asctime)s rank{rank} %(levelname)s %(name)s: %(message)s",
        force=True,
    )
