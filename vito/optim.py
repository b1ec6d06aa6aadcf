"""Optimizers (LARS, AdamW) and the learning-rate schedule as a pure function of the step."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from vito.config import OptimConfig


class LARS(torch.optim.Optimizer):
    """SGD with momentum, weight decay and a layer-wise trust ratio (You et al. 2017, as in BYOL).

    Param groups with `lars_exclude=True` (biases, norm parameters) get plain momentum SGD: their
    norms are tiny or meaningless, so a trust ratio would freeze or explode them.
    Note: the trust ratio is per tensor; an optimizer wrapper that flattens tensors (ZeRO) changes it.
    """

    def __init__(
        self,
        params: Iterable[nn.Parameter] | Iterable[dict],
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        eta: float = 0.001,
        lars_exclude: bool = False,
    ) -> None:
        if lr < 0 or not 0 <= momentum < 1 or weight_decay < 0 or eta <= 0:
            raise ValueError(f"invalid LARS hyper-parameters lr={lr} momentum={momentum} wd={weight_decay} eta={eta}")
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, lars_exclude=lars_exclude)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [param for param in group["params"] if param.grad is not None]
            if not params:
                continue
            # Multi-tensor (foreach) ops: a ResNet-50 VITO has ~190 tensors, and one Python-level op per tensor
            # per line below would cost more host time than the GPU spends on the update.
            updates = [param.grad for param in params]
            if not group["lars_exclude"]:
                if group["weight_decay"]:
                    updates = torch._foreach_add(updates, params, alpha=group["weight_decay"])
                param_norms = torch.stack(torch._foreach_norm(params))
                update_norms = torch.stack(torch._foreach_norm(updates))
                # Fresh zero-init tensors (e.g. zero-gamma BN if not excluded) keep ratio 1. Per tensor, never
                # per flattened shard: Trainer checks that this optimizer holds the module's own tensors.
                trust = torch.where(
                    (param_norms > 0) & (update_norms > 0),
                    group["eta"] * param_norms / update_norms,
                    torch.ones_like(param_norms),
                )
                updates = torch._foreach_mul(updates, list(trust.unbind(0)))
            fresh = [index for index, param in enumerate(params) if "momentum_buffer" not in self.state[param]]
            for index in fresh:
                self.state[params[index]]["momentum_buffer"] = updates[index].detach().clone()
            fresh_set = set(fresh)
            old = [index for index in range(len(params)) if index not in fresh_set]
            if old:
                buffers = [self.state[params[index]]["momentum_buffer"] for index in old]
                torch._foreach_mul_(buffers, group["momentum"])
                torch._foreach_add_(buffers, [updates[index] for index in old])
            all_buffers = [self.state[param]["momentum_buffer"] for param in params]
            torch._foreach_add_(params, all_buffers, alpha=-group["lr"])
        return loss


def param_groups_for(named_params: Iterable[tuple[str, nn.Parameter]], weight_decay: float) -> list[dict]:
    """Two groups: weights (decayed, LARS-adapted) and biases/1-d params (neither)."""
    decayed, excluded = [], []
    for name, param in named_params:
        if not param.requires_grad:
            continue
        if param.ndim <= 1 or name.endswith(".bias"):
            excluded.append(param)
        else:
            decayed.append(param)
    groups = [
        {"params": decayed, "weight_decay": weight_decay, "lars_exclude": False},
        {"params": excluded, "weight_decay": 0.0, "lars_exclude": True},
    ]
    return [group for group in groups if group["params"]]


def base_learning_rate(cfg: OptimConfig, global_batch: int) -> float:
    """Linear scaling rule: cfg.lr is per 256 samples."""
    return cfg.lr * global_batch / 256


def build_optimizer(
    named_params: Iterable[tuple[str, nn.Parameter]], cfg: OptimConfig, global_batch: int
) -> torch.optim.Optimizer:
    groups = param_groups_for(named_params, cfg.weight_decay)
    lr = base_learning_rate(cfg, global_batch)
    if cfg.name == "lars":
        return LARS(groups, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(groups, lr=lr, betas=cfg.betas, weight_decay=cfg.weight_decay)


def learning_rate(step: int, total_steps: int, cfg: OptimConfig, global_batch: int) -> float:
    """Linear warmup from 0 to the base lr at `warmup_steps`, then cosine to min_lr_ratio * base."""
    peak = base_learning_rate(cfg, global_batch)
    if step < cfg.warmup_steps:
        return peak * step / cfg.warmup_steps
    decay_steps = max(total_steps - cfg.warmup_steps, 1)
    progress = min((step - cfg.warmup_steps) / decay_steps, 1.0)
    floor = cfg.min_lr_ratio * peak
    return floor + (peak - floor) * 0.5 * (1 + math.cos(math.pi * progress))
