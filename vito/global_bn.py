"""Batch norm over the global batch of every rank, for the projector/predictor heads (`model.sync_bn_heads`).

torch.nn.SyncBatchNorm refuses CPU tensors, so the 2-rank gloo tests could never run it. This one is a few
lines of plain ops and one differentiable all-reduce, works on any backend, and keeps BatchNorm1d's
parameter and buffer names, so checkpoints load either way. The heads see (B, 4096) activations: cost is one
all-reduce of 2 x 4096 + 1 numbers per layer forward, and one of the gradients backward.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.distributed.nn.functional import all_reduce as differentiable_all_reduce


def _distributed_world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class GlobalBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm1d whose training statistics are those of the concatenated batch of all ranks."""

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or _distributed_world() == 1:
            return super().forward(x)
        # Statistics in fp32 also under autocast: E[x^2] - E[x]^2 in bf16 would cancel to noise.
        xf = x.float()
        count = torch.full((1,), float(x.shape[0]), device=x.device)
        stats = differentiable_all_reduce(torch.cat([xf.sum(0), (xf * xf).sum(0), count]))
        channels = x.shape[1]
        total = stats[-1]
        mean = stats[:channels] / total
        var = (stats[channels:2 * channels] / total - mean * mean).clamp_min(0)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                # momentum None is BatchNorm's cumulative average.
                factor = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                unbiased = var * total / (total - 1).clamp_min(1)
                self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), factor)
                self.running_var.lerp_(unbiased.detach().to(self.running_var.dtype), factor)
        out = (xf - mean) * torch.rsqrt(var + self.eps)
        if self.affine:
            out = out * self.weight + self.bias
        return out.to(x.dtype)


def globalise_batch_norms(module: nn.Module) -> nn.Module:
    """`module` with every BatchNorm1d replaced by a GlobalBatchNorm1d holding the same state."""
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm1d:
            replacement = GlobalBatchNorm1d(child.num_features, child.eps, child.momentum, child.affine,
                                            child.track_running_stats)
            replacement.load_state_dict(child.state_dict())
            setattr(module, name, replacement)
        else:
            globalise_batch_norms(child)
    return module

