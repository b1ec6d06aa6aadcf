"""A tiny VITO network and random view pairs for it: what the CPU tests of the model, the step and the
ablations build on."""

from __future__ import annotations

import torch

from vito.config import ModelConfig


def tiny_model_cfg(**overrides) -> ModelConfig:
    """A ResNet-18 of width 8 with small pooling, projection and prediction heads; `overrides` replace fields."""
    fields = {"arch": "resnet18", "width": 8, "pool_hidden": 16, "proj_hidden": 32, "proj_dim": 16, "pred_hidden": 32}
    fields.update(overrides)
    return ModelConfig(**fields)


def views(batch: int = 8, size: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two batches of random `size` x `size` RGB images, the same for the same seed."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, size, size, generator=generator), torch.randn(batch, 3, size, size, generator=generator)
