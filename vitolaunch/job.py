"""What runs inside a scheduled task: set up the rank's environment, then hand over to vito.

This object is pickled by submitit at submit time and called once per rank. It knows the trial's MLflow
run (created at submit time), so a resumed or requeued job continues the same run and step axis.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("vitolaunch.job")


@dataclass
class TrialJob:
    run_id: str
    tracking_uri: str
    config: dict[str, Any]  # the resolved vito config
    checkpoint_uri: str
    data_root: str
    scratch_root: str
    cpus_per_task: int = 1
    _stop: bool = field(default=False, repr=False)

    def __call__(self) -> dict[str, Any]:
        rank = self._export_distributed_environment()
        _configure_logging(rank)
        os.environ["MLFLOW_RUN_ID"] = self.run_id
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        os.environ.setdefault("DO_NOT_TRACK", "true")
        # A scheduler's warning signal only sets a flag; the trainer acts on it at the next step boundary.
        signal.signal(signal.SIGUSR2, self._request_stop)

        import torch

        torch.set_num_threads(max(1, self.cpus_per_task))
        from vito.config import VitoConfig
        from vito.metrics import MetricsLogger
        from vito.train import RunContext, train

        cfg = VitoConfig.model_validate(self.config)
        tracking = MetricsLogger(self.tracking_uri, self.run_id, enabled=rank == 0)
        tracking.set_status("RUNNING")
        tracking.set_tags(_job_tags())
        context = RunContext(
            checkpoint_uri=self.checkpoint_uri,
            data_root=self.data_root,
            scratch_dir=os.path.join(self.scratch_root, self.run_id),
            tracking_uri=self.tracking_uri,
            run_id=self.run_id,
            stop_requested=lambda: self._stop,
        )
        try:
            result = train(cfg, context)
        except BaseException:
            tracking.set_status("FAILED")
            raise
        if result.completed:
            tracking.set_status("FINISHED")
        else:
            tracking.set_tags({"vitolaunch.stopped_at_step": str(result.step)})
            tracking.set_status("KILLED")
        return {"step": result.step, "completed": result.completed, **result.evaluation}

    def _request_stop(self, signum: int, frame: Any) -> None:
        log.warning("received signal %d: will save and stop at the next step boundary", signum)
        self._stop = True

    def _export_distributed_environment(self) -> int:
        import submitit

        env = submitit.helpers.TorchDistributedEnvironment()
        if os.environ.get("SUBMITIT_EXECUTOR") == "local":
            # All ranks share this machine, whose hostname may not resolve: talk over loopback.
            env.master_addr = "127.0.0.1"
            os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
        else:
            try:
                socket.gethostbyname(env.master_addr)
            except OSError:
                env.master_addr = "127.0.0.1"
        env.export(set_cuda_visible_devices=False, overwrite=True)
        return env.rank


def _job_tags() -> dict[str, str]:
    tags = {"vitolaunch.host": socket.gethostname()}
    if "SLURM_JOB_ID" in os.environ:
        tags["vitolaunch.slurm_job_id"] = os.environ["SLURM_JOB_ID"]
    return tags


def _configure_logging(rank: int) -> None:
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stdout,
        format=f"%(asctime)s rank{rank} %(levelname)s %(name)s: %(message)s",
        force=True,
    )
