"""Process-group setup for DeepSpeed: gloo on CPU, nccl on GPU, from the standard env:// variables."""

from __future__ import annotations

import os
import socket
import sys
from dataclasses import dataclass
from datetime import timedelta

import torch


@dataclass(frozen=True)
class DistInfo:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


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

    use_cuda = torch.cuda.is_available()
    if not torch.distributed.is_initialized():
        # A rank that dies inside a collective must fail its peers, not hang them for the default 30 min.
        timeout = timedelta(seconds=float(os.environ.get("VITO_DIST_TIMEOUT_S", "600")))
        deepspeed.init_distributed(dist_backend="nccl" if use_cuda else "gloo", verbose=False, timeout=timeout)
    local_rank = int(os.environ["LOCAL_RANK"])
    if use_cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    return DistInfo(
        rank=torch.distributed.get_rank(),
        local_rank=local_rank,
        world_size=torch.distributed.get_world_size(),
        device=device,
    )


def all_agree(flag: bool, device: torch.device) -> bool:
    """True on every rank if `flag` is True on any rank (a preemption notice reaches one rank first)."""
    tensor = torch.tensor([1.0 if flag else 0.0], device=device)
    torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.MAX)
    return bool(tensor.item() > 0)


def mean_across_ranks(value: float, device: torch.device) -> float:
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    torch.distributed.all_reduce(tensor)
    return float(tensor.item()) / torch.distributed.get_world_size()
