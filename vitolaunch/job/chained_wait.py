"""Evaluation chained to pretraining: an evaluation trial submitted while its target still trains waits for it.

On SLURM the scheduler holds the evaluation array task (`--dependency=afterok:<array>_<task>`, see
backends/slurm.py); on the local backend the job itself waits. Either way the job checks the target's MLflow
run before evaluating: only FINISHED lets it go on. A target that ended otherwise (failed, cancelled, pruned,
stopped) ends the evaluation at once, KILLED with the reason in `records.TAG_TARGET_ENDED` (state CANCELLED).
A requeued target goes back to SCHEDULED: still worth waiting for.
"""

from __future__ import annotations

import logging
import time

from vitolaunch.tracking.chooser import store_in_job
from vitolaunch.tracking.records import TAG_PRUNED_AT_STEP, TAG_STOPPED_AT_STEP, TAG_TERMINATED_AT_STEP, RunStatus

log = logging.getLogger(__name__)
POLL_S = 10.0


def target_outcome(status: str, tags: dict[str, str]) -> str | None:
    """None while the target may still finish; "" once it did; otherwise why it never will."""
    status = RunStatus(status)
    if status.is_active:
        return None
    if status is RunStatus.FINISHED:
        return ""
    for tag, what in ((TAG_PRUNED_AT_STEP, "pruned by early stopping at step"), (TAG_STOPPED_AT_STEP, "stopped at step"),
                      (TAG_TERMINATED_AT_STEP, "cancelled at step")):
        if tag in tags:
            return f"{what} {tags[tag]}"
    return "failed" if status is RunStatus.FAILED else "cancelled"


def wait_for_target(tracking_uri: str, run_id: str, poll_s: float = POLL_S) -> str:
    """Block until the pretraining run `run_id` ends; "" if it finished, else why the evaluation cannot run.

    MLflow being unreachable is waited out (logged), never read as a failure of the target.
    """
    store = store_in_job(tracking_uri)
    announced = False
    while True:
        try:
            target = store.get(run_id)
            outcome = target_outcome(target.status, target.tags)
        except Exception as problem:  # noqa: BLE001 - a tracking outage is waited out like a running target
            log.warning("cannot read the target run %s (%s): waiting", run_id, problem)
            outcome = None
        if outcome is not None:
            return "" if outcome == "" else f"pretraining run {run_id} {outcome}: nothing to evaluate"
        if not announced:
            log.info("waiting for pretraining run %s to finish", run_id)
            announced = True
        time.sleep(poll_s)
