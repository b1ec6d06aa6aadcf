"""The embedded default: submitit's LocalExecutor, with each job detached from the submitting command.

submitit's local controller inherits the caller's terminal and process group, so it would die with the
shell (or hold a test's pipes open until training ends). Here it starts in its own session with its output
in a file, which makes `vitolaunch sweep` return at once while trials keep running, as on SLURM. Each
controller first waits for one of the sweep's `array_parallelism` slots (`local_slots.py`), so a sweep of 20
trials runs a few at a time instead of 20 at once, in submission order, like a SLURM array's `%N`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import submitit
from submitit.core.utils import JobPaths, pickle_load

from vitolaunch.backends import local_slots
from vitolaunch.backends.base import Backend, JobHandle, SchedulerState
from vitolaunch.backends.submitit_compat import LOCAL_CONTROLLER_MODULE
from vitolaunch.errors import ResourceError
from vitolaunch.spec.resources import Resources

_SLOTS_DIR = ".slots"


class _DetachedLocalExecutor(submitit.LocalExecutor):
    """Starts each job's controller detached, behind a wait for one of `parallelism` slots in `slots_dir`."""

    def __init__(self, folder: Path, slots_dir: Path, parallelism: int, env: dict[str, str] | None = None) -> None:
        super().__init__(folder=folder)
        self.slots_dir = slots_dir
        self.parallelism = parallelism
        self.extra_env = dict(env or {})  # resources.env: every rank sees it, as on SLURM

    def _submit_command(self, command: str) -> submitit.LocalJob:  # submitit_compat.LOCAL_SUBMIT_HOOK
        tasks = self.parameters.get("tasks_per_node", 1)
        env = {**os.environ, **self.extra_env}
        env.update(
            SUBMITIT_LOCAL_NTASKS=str(tasks),
            SUBMITIT_LOCAL_COMMAND=command,
            SUBMITIT_LOCAL_TIMEOUT_S=str(int(60 * self.parameters.get("timeout_min", 60))),
            SUBMITIT_LOCAL_SIGNAL_DELAY_S=str(int(self.parameters.get("signal_delay_s", 30))),
            SUBMITIT_LOCAL_NODEID="0",
            SUBMITIT_LOCAL_JOB_NUM_NODES="1",
            SUBMITIT_STDERR_TO_STDOUT="",
            SUBMITIT_EXECUTOR="local",
            CUDA_VISIBLE_DEVICES=",".join(str(k) for k in range(self.parameters.get("gpus_per_node", 0))),
            SUBMITIT_LOCAL_WITH_SHELL="",
        )
        folder = Path(str(self.folder))
        folder.parent.mkdir(parents=True, exist_ok=True)
        controller = [sys.executable, "-m", LOCAL_CONTROLLER_MODULE, str(self.folder)]
        with open(folder.parent / "controllers.log", "ab") as controller_log:
            process = local_slots.start(
                str(self.slots_dir),
                self.parallelism,
                controller,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=controller_log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return submitit.LocalJob(folder=self.folder, job_id=str(process.pid), process=process, tasks=list(range(tasks)))


def _job_process_state(pid: int) -> SchedulerState | None:
    """RUNNING (submitit's controller), PENDING (waiting for a slot), or None when no job of ours has the pid."""
    import psutil

    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return None
        # A pid can be reused after a reboot: it is ours only if it runs the slot waiter or the controller.
        command = " ".join(process.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None
    if local_slots.__name__ in command:
        return SchedulerState.PENDING
    if LOCAL_CONTROLLER_MODULE in command:
        return SchedulerState.RUNNING
    return None


def _controller_alive(pid: int) -> bool:
    return _job_process_state(pid) is not None


class LocalBackend(Backend):
    name = "local"

    def check(self, resources: Resources) -> None:
        if resources.nodes != 1:
            raise ResourceError(
                f"resources.nodes is {resources.nodes}, but the local backend runs on this one machine: "
                "set resources.nodes: 1, or run on a SLURM cluster (resources.cluster: slurm)",
                key="resources.nodes",
            )
        if resources.gpus_per_node:
            import torch

            available = torch.cuda.device_count()
            if resources.gpus_per_node > available:
                raise ResourceError(
                    f"resources.gpus_per_node is {resources.gpus_per_node}, but this machine has {available} GPUs",
                    key="resources.gpus_per_node",
                )

    def submit(
        self, jobs: Sequence[Callable[[], object]], names: Sequence[str], resources: Resources, log_dir: Path,
        dependencies: Sequence[str | None] | None = None,  # the jobs wait themselves (vitolaunch.job.chained_wait)
    ) -> list[JobHandle]:
        # SLURM-only site settings (account, setup, ...) have no meaning here; the CLI says they are ignored.
        executor = _DetachedLocalExecutor(log_dir / "%j", log_dir / _SLOTS_DIR, resources.array_parallelism, resources.env)
        executor.update_parameters(
            timeout_min=resources.timeout_min,
            tasks_per_node=resources.tasks_per_node,
            gpus_per_node=resources.gpus_per_node,
        )
        handles = []
        for job in jobs:
            submitted = executor.submit(job)
            handles.append(JobHandle(job_id=submitted.job_id, log_dir=str(log_dir / submitted.job_id)))
        return handles

    def states(self, handles: Sequence[JobHandle]) -> dict[str, SchedulerState]:
        return {handle.job_id: self._state(handle) for handle in handles}

    def _state(self, handle: JobHandle) -> SchedulerState:
        try:
            alive = _job_process_state(int(handle.job_id))
            if alive is not None:
                return alive
            result = JobPaths(handle.log_dir, handle.job_id, 0).result_pickle
            if not result.exists():
                return SchedulerState.INTERRUPTED
            outcome = pickle_load(result)[0]
            return SchedulerState.COMPLETED if outcome == "success" else SchedulerState.FAILED
        except Exception:  # noqa: BLE001 - a result we cannot read is not a verdict: UNKNOWN, never FAILED
            return SchedulerState.UNKNOWN

    def cancel(self, handles: Sequence[JobHandle], grace_s: float = 10.0) -> None:
        pids = [int(h.job_id) for h in handles if _controller_alive(int(h.job_id))]
        for pid in pids:
            # The controller leads its own session: the signal reaches it and every rank it started.
            _signal_group(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while any(_controller_alive(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.2)
        for pid in pids:
            _signal_group(pid, signal.SIGKILL)
        for handle in handles:
            local_slots.forget(str(Path(handle.log_dir).parent / _SLOTS_DIR), int(handle.job_id))

    def log_files(self, handle: JobHandle, rank: int) -> tuple[Path, Path]:
        paths = JobPaths(handle.log_dir, handle.job_id, rank)
        return paths.stdout, paths.stderr


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
