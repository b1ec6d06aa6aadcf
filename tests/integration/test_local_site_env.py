"""The local backend honours `resources.env` (every rank sees it, as on SLURM); real local jobs, no training."""

from __future__ import annotations

import functools
import subprocess
import time

import pytest

from vitolaunch.backends.base import SchedulerState
from vitolaunch.backends.local import LocalBackend
from vitolaunch.spec.resources import Resources


@pytest.mark.timeout(120)
def test_env_reaches_every_rank_of_a_local_job(tmp_path):
    from submitit.core.utils import JobPaths, pickle_load

    backend = LocalBackend()
    resources = Resources(cluster="local", tasks_per_node=2, timeout_min=5, env={"VITO_SITE_GREETING": "hello locally"},
                          account="ignored-here", setup=["module load cuda/12.4"])
    backend.check(resources)  # SLURM-only keys do not stop a laptop run (the CLI says they are ignored)
    job = functools.partial(subprocess.check_output, ["bash", "-c", 'echo "$SUBMITIT_LOCAL_GLOBAL_RANK|$VITO_SITE_GREETING"'],
                            text=True)
    (handle,) = backend.submit([job], ["it-local-env.000.abcdef12"], resources, tmp_path)
    deadline = time.monotonic() + 90
    while backend.states([handle])[handle.job_id] is not SchedulerState.COMPLETED:
        assert backend.states([handle])[handle.job_id] in (SchedulerState.PENDING, SchedulerState.RUNNING)
        assert time.monotonic() < deadline, "local job did not complete"
        time.sleep(0.5)
    seen = []
    for rank in (0, 1):
        outcome, value = pickle_load(JobPaths(handle.log_dir, handle.job_id, rank).result_pickle)
        assert outcome == "success", value
        seen.append(value.strip().split("|")[1])
    assert seen == ["hello locally", "hello locally"]
    # the job's files live in its own folder; none named after submitit's `%j` placeholder is left beside it
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == [".slots", handle.job_id]
