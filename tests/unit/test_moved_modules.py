"""Work queued before the layout change must still run after an upgrade: its pickles and batch scripts name
the old paths."""

from __future__ import annotations

import importlib
import pickle
from pathlib import Path

from vitolaunch.job.trial import TrialJob

# Pickled by submitit's DelayedSubmission from the code at 52c3165, where the trial job was vitolaunch/job.py.
BEFORE_LAYOUT = Path(__file__).parents[1] / "fixtures" / "submitted_trial_job_before_layout.pkl"


def test_a_trial_job_pickled_before_the_layout_change_loads_and_keeps_its_fields() -> None:
    assert b"\x8c\x0evitolaunch.job\x94\x8c\x08TrialJob" in BEFORE_LAYOUT.read_bytes()  # the old path, really
    submission = pickle.loads(BEFORE_LAYOUT.read_bytes())
    job = submission.function
    assert type(job) is TrialJob
    assert (job.run_id, job.task, job.cpus_per_task, job.max_timeouts, job.max_crashes) == (
        "0123456789abcdef0123456789abcdef", "pretrain", 2, 3, 1)
    assert job.config == {"train": {"steps": 7}} and job.wait_for_run == "fedcba9876543210"
    assert job.scratch_root is None and job.storage_options == {} and job.early_stop is None


def test_the_requeue_hook_queued_batch_scripts_call_is_still_there() -> None:
    # Batch scripts already in the queue run `python -m vitolaunch.backends.slurm_retry`.
    module = importlib.import_module("vitolaunch.backends.slurm_retry")
    assert callable(getattr(module, "main", None))
