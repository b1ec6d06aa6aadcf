"""Loader settings sized from what this rank was given: worker count, pinning, prefetch, main-process threads.

A rank owns `cpus_per_rank()` CPUs. With `data.num_workers: auto` the loader takes all of them but
`data.main_process_cpus`, which the training process keeps (Python, kernel launches, CPU-side collectives);
the main process's torch threads are set to what is left, so workers and the main process do not fight over
cores. Pinned memory only where there is a device to copy to asynchronously (CUDA).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from vito.config import DataConfig


@dataclass(frozen=True)
class LoaderPlan:
    num_workers: int
    pin_memory: bool
    persistent_workers: bool
    prefetch_factor: int | None  # None with no workers (torch refuses a prefetch factor then)
    main_threads: int  # torch threads of the training process


def _positive_int(env: Mapping[str, str], name: str) -> int | None:
    try:
        value = int(env.get(name, ""))
    except ValueError:
        return None
    return value if value > 0 else None


def cpus_per_rank(env: Mapping[str, str] | None = None, available: int | None = None) -> int:
    """SLURM's CPUs per task when set; else the CPUs this process may run on, shared by the node's ranks."""
    env = os.environ if env is None else env
    slurm = _positive_int(env, "SLURM_CPUS_PER_TASK")
    if slurm:
        return slurm
    if available is None:
        available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    local_ranks = _positive_int(env, "LOCAL_WORLD_SIZE") or _positive_int(env, "SLURM_NTASKS_PER_NODE") or 1
    return max(1, available // local_ranks)


def plan_loader(cfg: DataConfig, device_type: str, cpus: int | None = None) -> LoaderPlan:
    cpus = cpus_per_rank() if cpus is None else cpus
    if cfg.num_workers == "auto":
        workers = max(0, cpus - cfg.main_process_cpus)
    else:
        workers = cfg.num_workers
    return LoaderPlan(
        num_workers=workers,
        pin_memory=device_type == "cuda",
        persistent_workers=workers > 0,
        prefetch_factor=cfg.prefetch_factor if workers > 0 else None,
        main_threads=max(1, cpus - workers),
    )


def apply_main_threads(plan: LoaderPlan) -> None:
    """Size the training process's torch thread pool to the CPUs the workers leave it.

    Only when there are workers: with none, the process keeps the thread count its launcher set."""
    if plan.num_workers > 0:
        import torch

        torch.set_num_threads(plan.main_threads)
