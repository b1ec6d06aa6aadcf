"""The contrastive objective: InfoNCE over the batch, positives on the diagonal."""

from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import Tensor


@torch.compiler.assume_constant_result
def _autocast_available(device_type: str) -> bool:
    # A constant per device type, so torch.compile need not trace the C function: torch 2.11's dynamo cannot, and
    # broke the compiled VITO step's graph here (2.13's traces it).
    return torch.amp.is_autocast_available(device_type)


def info_nce(query: Tensor, key: Tensor, temperature: float, positive_offset: int = 0) -> Tensor:
    """Mean InfoNCE of each query against all keys, where query i's positive is key i + positive_offset.

    `key` may hold more rows than `query` (keys gathered from every rank): this rank's positives then start
    at `positive_offset`, and every other row is a negative.

    Rows of `query @ key.T` are classified, so `info_nce(a, b)` scores a's rows against b
    and `info_nce(b, a)` scores the columns of the same similarity matrix.
    Computed in float32: bf16 logits at tau=0.1 lose the small differences the softmax ranks.
    """
    if query.dim() != 2 or key.dim() != 2 or query.shape[1] != key.shape[1]:
        raise ValueError(f"info_nce expects (B, D) and (N, D) tensors, got {tuple(query.shape)} and {tuple(key.shape)}")
    if positive_offset + query.shape[0] > key.shape[0]:
        raise ValueError(f"positives {positive_offset}..{positive_offset + query.shape[0]} outside the {key.shape[0]} keys")
    # Under the trainer's bf16 autocast the matmul below would run in bf16 despite the .float(): switch it off
    # (on devices that have autocast at all: meta tensors, used to count FLOPs, do not).
    device_type = query.device.type
    no_autocast = torch.autocast(device_type, enabled=False) if _autocast_available(device_type) else nullcontext()
    with no_autocast:
        q = F.normalize(query.float(), dim=1)
        k = F.normalize(key.float(), dim=1)
        logits = q @ k.T / temperature
        targets = torch.arange(q.shape[0], device=q.device) + positive_offset
        return F.cross_entropy(logits, targets)
