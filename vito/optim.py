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
            exclude = group["lars_exclude"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                update = param.grad
                if not exclude:
                    if group["weight_decay"]:
                        update = update.add(param, alpha=group["weight_decay"])
                    param_norm = torch.linalg.vector_norm(param)
                    update_norm = torch.linalg.vector_norm(update)
                    # Fresh zero-init tensors (e.g. zero-gamma BN if not excluded) keep ratio 1.
                    trust = torch.where(
                        (param_norm > 0) & (update_norm > 0),
                        group["eta"] * param_norm / update_norm,
                        torch.ones_like(param_norm),
                    )
                    update = update * trust
                state = self.state[param]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = update.detach().clone()
                else:
                    state["momentum_buffer"].mul_(group["momentum"]).add_(update)
                param.add_(state["momentum_buffer"], alpha=-group["lr"])
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
