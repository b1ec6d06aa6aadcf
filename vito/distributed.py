"""Process-group setup for DeepSpeed: gloo on CPU, nccl on GPU, from the standard env:// variables."""

from __future__ import annotations

import os
import socket
import sys
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch


@dataclass(frozen=True)
class DistInfo:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device
    # A gloo group with a long timeout for waits that are not training steps (a save's upload and commit,
    # rank 0 rendering data): on the NCCL group a slow upload would trip its watchdog and kill a finished run.
    control_group: Any = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def rank_and_world() -> tuple[int, int]:
    """This process's rank and the world size of the default process group; (0, 1) without one."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


# Set by SLURM when the job (or step) was given GPUs.
_SLURM_GPU_VARIABLES = ("SLURM_GPUS_ON_NODE", "SLURM_JOB_GPUS", "SLURM_STEP_GPUS", "SLURM_GPUS_PER_TASK")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def init_distributed() -> DistInfo:
    """Join (or, run alone, create) the process group that DeepSpeed will use.

    RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT come from the launcher (submitit's
    TorchDistributedEnvironment); a bare `python` run gets a world of one.
    """
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(_free_port()))

    import deepspeed

    # On CPU, DeepSpeed compiles a shared-memory comm op with g++ at first init (30-70 s); gloo needs none.
    ds_comm_torch = sys.modules.get("deepspeed.comm.torch")
    if ds_comm_torch is not None and not torch.cuda.is_available():
        ds_comm_torch.build_shm_op = lambda: None

    local_rank = int(os.environ["LOCAL_RANK"])
    device = rank_device(local_rank)  # before the process group: NCCL binds to the current device
    if not torch.distributed.is_initialized():
        # A rank that dies inside a collective must fail its peers, not hang them for the default 30 min.
        timeout = timedelta(seconds=float(os.environ.get("VITO_DIST_TIMEOUT_S", "600")))
        deepspeed.init_distributed(dist_backend="nccl" if device.type == "cuda" else "gloo", verbose=False, timeout=timeout)
    control_timeout = timedelta(seconds=float(os.environ.get("VITO_CONTROL_TIMEOUT_S", "7200")))
    return DistInfo(
        rank=torch.distributed.get_rank(),
        local_rank=local_rank,
        world_size=torch.distributed.get_world_size(),
        device=device,
        control_group=torch.distributed.new_group(backend="gloo", timeout=control_timeout),
    )


def rank_device(local_rank: int) -> torch.device:
    """This rank's device. Sites that bind one GPU per task (`--gpus-per-task=1`) show every rank only its own
    GPU as device 0, so the index is the local rank modulo the GPUs this process sees."""
    if torch.cuda.is_available():
        index = local_rank % torch.cuda.device_count()
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
    given = {name: os.environ[name] for name in _SLURM_GPU_VARIABLES if os.environ.get(name)}
    if given:
        # Training a GPU job on its CPUs over gloo would "work" at a hundredth of the speed: stop instead.
        raise RuntimeError(
            f"SLURM gave this job GPUs ({', '.join(f'{k}={v}' for k, v in given.items())}) but torch "
            f"{torch.__version__} sees no CUDA device (torch.version.cuda={torch.version.cuda}): install a CUDA build "
            "of torch in the job's environment (resources.setup can activate it), or check the node's driver."
        )
    return torch.device("cpu")


def control_barrier(dist_info: DistInfo) -> None:
    """A barrier for waits that may be long (a save's upload, data rendering), on the control group."""
    torch.distributed.barrier(group=dist_info.control_group)


def all_agree(flag: bool, device: torch.device) -> bool:
    """True on every rank if `flag` is True on any rank (a preemption notice reaches one rank first)."""
    tensor = torch.tensor([1.0 if flag else 0.0], device=device)
    torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.MAX)
    return bool(tensor.item() > 0)


def mean_across_ranks(value: float, device: torch.device) -> float:
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    torch.distributed.all_reduce(tensor)
    return float(tensor.item()) / torch.distributed.get_world_size()
