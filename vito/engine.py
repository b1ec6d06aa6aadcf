"""The training engine for one device: model, optimizer and DeepSpeed, with precision, memory format and
kernel choices made once here so the step itself stays a few lines.

bf16 is fp32 master weights with the forward passes under torch.autocast, not DeepSpeed's bf16 optimizer:
that wrapper flattens (and under ZeRO shards) parameter groups, which would turn LARS's per-tensor trust
ratio into a per-shard one, keeps the module's weights in bf16 (an EMA target would then average rounded
weights), and all-reduces gradients in bf16. With autocast, gradients, their all-reduce, LARS and the EMA all
see fp32 tensors, and only the convolutions and matmuls run in bf16.
"""

from __future__ import annotations

import logging
import os
from contextlib import AbstractContextManager
from typing import Any

import torch
from torch import nn

from vito.config import VitoConfig
from vito.distributed import DistInfo
from vito.model import VitoModel
from vito.optim import LARS, build_optimizer

log = logging.getLogger(__name__)

# torch.compile's backend. "eager" or "aot_eager" (dynamo tracing without code generation) are the usual
# way to tell a tracing problem from a code-generation one, and what the CPU check of the compile path uses.
COMPILE_BACKEND_ENV = "VITO_COMPILE_BACKEND"

# Steps of a compiled model whose time is compilation, not training (forward, backward, a possible
# recompile when BN buffers first change): left out of throughput metrics.
COMPILE_WARMUP_STEPS = 3


def deepspeed_config(cfg: VitoConfig, world_size: int) -> dict[str, Any]:
    global_batch = cfg.data.batch_size
    if global_batch % world_size:
        raise ValueError(f"data.batch_size={global_batch} is not divisible by the {world_size} ranks of this trial")
    return {
        "train_batch_size": global_batch,
        "train_micro_batch_size_per_gpu": global_batch // world_size,
        "gradient_accumulation_steps": 1,
        "zero_optimization": {"stage": cfg.train.zero_stage},
        # We pass a torch optimizer object (LARS/AdamW): naming one here would compile DeepSpeed's own.
        "zero_allow_untested_optimizer": True,
        # Pinned rather than inferred: DeepSpeed would pick bf16 if its bf16 section were ever switched on.
        "communication_data_type": "fp32",
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def configure_kernels(cfg: VitoConfig, device: torch.device) -> None:
    """cuDNN autotuning, or deterministic kernels; nothing on CPU, whose kernels are deterministic already."""
    if device.type != "cuda":
        return
    if cfg.train.deterministic:
        # Read when cuBLAS creates its handle: set before the first matmul of this process.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
        # warn_only: an op without a deterministic kernel is named in the log instead of killing a job.
        torch.use_deterministic_algorithms(True, warn_only=True)
    else:
        # Fixed input shapes every step: the autotuner's first-step cost buys the fastest conv algorithms.
        torch.backends.cudnn.benchmark = True


def autocast(cfg: VitoConfig, device: torch.device) -> AbstractContextManager:
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.train.precision == "bf16")


def memory_format(device: torch.device) -> torch.memory_format:
    # NHWC is what tensor-core convolutions want; on CPU it would change results and run slower.
    return torch.channels_last if device.type == "cuda" else torch.preserve_format


def to_device(view: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A batch of views on the training device, in the model's memory format (dtype unchanged)."""
    # Copy first (asynchronous from pinned memory), then relayout on the device, not on the host.
    return view.to(device, non_blocking=True).contiguous(memory_format=memory_format(device))


def check_whole_tensors(optimizer: torch.optim.Optimizer, model: nn.Module) -> None:
    """LARS's trust ratio is per tensor: fail if a wrapper handed it flattened or sharded copies instead."""
    own = {id(param) for param in model.parameters()}
    foreign = [tuple(p.shape) for group in optimizer.param_groups for p in group["params"] if id(p) not in own]
    if foreign:
        raise RuntimeError(
            f"LARS holds {len(foreign)} tensors that are not the model's own (shapes {foreign[:3]}): a DeepSpeed "
            "wrapper flattened them, so trust ratios would be per shard. Use train.zero_stage 0 and no bf16 section."
        )


def build_engine(cfg: VitoConfig, dist_info: DistInfo):
    """(DeepSpeed engine, its optimizer) for `cfg` on this rank's device. Call after seeding."""
    import deepspeed

    configure_kernels(cfg, dist_info.device)
    model = VitoModel(cfg.model, cfg.loss)
    if dist_info.device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model.named_online_parameters(), cfg.optim, cfg.data.batch_size)
    if cfg.train.compile:
        # In place (nn.Module.compile): parameter names, and so checkpoints, stay those of the eager model.
        model.compile(backend=os.environ.get(COMPILE_BACKEND_ENV, "inductor"))
    engine, engine_optimizer, _, _ = deepspeed.initialize(
        model=model, optimizer=optimizer, config=deepspeed_config(cfg, dist_info.world_size)
    )
    if isinstance(optimizer, LARS):
        check_whole_tensors(optimizer, engine.module)
    if engine.communication_data_type != torch.float32:
        raise RuntimeError(f"gradients would be all-reduced in {engine.communication_data_type}, not fp32")
    return engine, engine_optimizer
