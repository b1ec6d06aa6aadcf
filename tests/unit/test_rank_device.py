"""Which device a rank trains on, before any process group exists."""

from __future__ import annotations

import pytest
import torch

from vito.distributed import rank_device


def test_a_gpu_job_on_a_cpu_torch_fails_fast_and_says_why(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("SLURM_GPUS_ON_NODE", "8")
    with pytest.raises(RuntimeError, match=r"SLURM gave this job GPUs \(SLURM_GPUS_ON_NODE=8\) but torch .* sees no CUDA"):
        rank_device(3)


def test_a_cpu_job_trains_on_the_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for name in ("SLURM_GPUS_ON_NODE", "SLURM_JOB_GPUS", "SLURM_STEP_GPUS", "SLURM_GPUS_PER_TASK"):
        monkeypatch.delenv(name, raising=False)
    assert rank_device(5) == torch.device("cpu")


@pytest.mark.parametrize(("visible", "local_rank", "index"), [(8, 3, 3), (1, 3, 0), (4, 6, 2)])
def test_gpu_index_is_the_local_rank_modulo_the_visible_gpus(monkeypatch, visible, local_rank, index):
    """--gpus-per-task=1 shows each rank one GPU as device 0: cuda:LOCAL_RANK would be an invalid ordinal."""
    chosen = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: visible)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    assert rank_device(local_rank) == torch.device("cuda", index)
    assert chosen == [index]  # set before the process group, which binds NCCL to the current device
