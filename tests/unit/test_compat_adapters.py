"""submitit internals that vitolaunch relies on (vitolaunch/backends/submitit_compat.py) are still there.

A failure here means a submitit upgrade moved something the backends use: fix the adapter, not the backends.
"""

from __future__ import annotations

import importlib.util
import inspect
import pickle
from pathlib import Path

import submitit

from vitolaunch.backends import submitit_compat
from vitolaunch.backends.slurm import sbatch_parameters
from vitolaunch.spec.resources import Resources


def test_entry_modules_exist():
    for module in (submitit_compat.TASK_ENTRY_MODULE, submitit_compat.LOCAL_CONTROLLER_MODULE):
        assert importlib.util.find_spec(module) is not None, f"submitit no longer has {module}"


def test_local_executor_still_starts_jobs_through_the_hook_we_override():
    hook = getattr(submitit.LocalExecutor, submitit_compat.LOCAL_SUBMIT_HOOK, None)
    assert hook is not None, f"submitit.LocalExecutor has no {submitit_compat.LOCAL_SUBMIT_HOOK}"
    assert list(inspect.signature(hook).parameters) == ["self", "command"]


def test_sbatch_template_takes_every_parameter_we_pass(tmp_path: Path):
    params = sbatch_parameters(Resources(nodes=2, tasks_per_node=2, partition="debug"), "sweep", tmp_path, 3, "python")
    script = submitit_compat.sbatch_script("python", tmp_path / "%j", **params)
    assert script.startswith("#!/bin/bash")
    for line in ("#SBATCH --array=0-2%", "#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=2", "#SBATCH --requeue",
                 "#SBATCH --signal=USR2@", "#SBATCH --partition=debug", "--kill-on-bad-exit=1"):
        assert line in script, f"{line!r} missing from the sbatch script"
    assert f"-u -m {submitit_compat.TASK_ENTRY_MODULE} {tmp_path}/%j" in script


def _answer() -> int:
    return 42


def test_submitted_callable_reads_what_submitit_pickled(tmp_path: Path):
    from submitit.core.utils import DelayedSubmission, JobPaths

    paths = JobPaths(tmp_path / "%j", "7_1")
    paths.folder.mkdir(parents=True)
    DelayedSubmission(_answer).dump(paths.submitted_pickle)
    function = submitit_compat.submitted_callable(tmp_path / "%j", "7_1")
    assert function() == 42
    assert pickle.loads(pickle.dumps(function)) is _answer
