"""The few places vitolaunch relies on submitit internals, each named here and nowhere else.

submitit's public API submits through its own executors, one sbatch per call; vitolaunch needs more control
(one held array per chunk, released together; a detached local controller behind run slots), so it reuses
submitit's sbatch template, task entry point and local controller directly. Each of those is private in
submitit; tests/unit/test_compat_adapters.py fails loudly when a submitit upgrade moves one of them.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

# What every task runs: unpickles the submitted callable from the job folder and calls it.
TASK_ENTRY_MODULE = "submitit.core._submit"
# submitit's local controller: starts the tasks of a local job and forwards signals to them.
LOCAL_CONTROLLER_MODULE = "submitit.local._local"
# The LocalExecutor method that starts a job's controller; the local backend overrides it to detach it.
LOCAL_SUBMIT_HOOK = "_submit_command"


def task_command(python: str, log_folder: Path) -> str:
    """The command line a task runs (`log_folder` holds submitit's `%j` placeholder)."""
    return " ".join([python, "-u -m", TASK_ENTRY_MODULE, shlex.quote(str(log_folder))])


def sbatch_script(python: str, log_folder: Path, **params: Any) -> str:
    """submitit's sbatch template filled with `params` (its SlurmExecutor parameter names)."""
    from submitit.slurm.slurm import _make_sbatch_string

    return _make_sbatch_string(command=task_command(python, log_folder), folder=log_folder, **params)


def submitted_callable(log_folder: Path, job_id: str) -> Any:
    """The callable submitted as job `job_id` (e.g. `123_4`) whose pickles live in `log_folder` (with `%j`)."""
    from submitit.core.utils import DelayedSubmission, JobPaths

    return DelayedSubmission.load(JobPaths(log_folder, job_id).submitted_pickle).function
