"""VITO's network: a ResNet frame encoder, attention pooling at stages 4 and 5, and a MoCLR-style
online/EMA-target pair held in one module (one DeepSpeed engine, one checkpoint)."""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from vito.config import EMAConfig, LossConfig, ModelConfig
from vito.global_bn import globalise_batch_norms
from vito.loss import info_nce

# ---------------------------------------------------------------------------------------------- backbone


class SameConv2d(nn.Conv2d):
    """A conv with TensorFlow's "SAME" padding, computed at run time from the input size and the current
    stride and dilation (so a stride changed after construction is followed): per spatial dim,
    total = max((ceil(in / stride) - 1) * stride + (k - 1) * dilation + 1 - in, 0), total // 2 before and the
    rest (one more for an odd total) after. Same parameters and state-dict keys as nn.Conv2d."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, stride: int = 1, bias: bool = False) -> None:
        super().__init__(in_ch, out_ch, kernel_size, stride, padding=0, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        pads = []
        for size, k, s, d in zip(x.shape[-1:-3:-1], self.kernel_size[::-1], self.stride[::-1], self.dilation[::-1]):
            total = same_pad_total(size, k, s, d)
            pads += [total // 2, total - total // 2]  # F.pad order: last dim (width) first
        if any(pads):
            x = F.pad(x, pads)
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def same_pad_total(size: int, kernel: int, stride: int, dilation: int = 1) -> int:
    """TensorFlow's total "SAME" padding along one dimension."""
    return max((math.ceil(size / stride) - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)


def _conv(in_ch: int, out_ch: int, kernel: int, stride: int = 1, padding: str = "torch") -> nn.Conv2d:
    """A bias-free conv: PyTorch's symmetric padding of kernel // 2 ("torch"), or TF "SAME" ("same")."""
    if padding == "same":
        return SameConv2d(in_ch, out_ch, kernel, stride)
    if padding != "torch":
        raise ValueError(f"unknown padding {padding!r}: expected 'torch' or 'same'")
    return nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_ch: int, width: int, stride: int = 1, padding: str = "torch") -> None:
        super().__init__()
        out_ch = width * self.expansion
        self.conv1 = _conv(in_ch, width, 3, stride, padding)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = _conv(width, out_ch, 3, 1, padding)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.last_bn = self.bn2
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = _shortcut(in_ch, out_ch, stride, padding)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_ch: int, width: int, stride: int = 1, padding: str = "torch") -> None:
        super().__init__()
        out_ch = width * self.expansion
        self.conv1 = _conv(in_ch, width, 1, 1, padding)
        self.bn1 = nn.BatchNorm2d(width)
        # Stride on the 3x3 (torchvision v1.5), as in the released ResNet-50 weights.
        self.conv2 = _conv(width, width, 3, stride, padding)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = _conv(width, out_ch, 1, 1, padding)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self.last_bn = self.bn3
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = _shortcut(in_ch, out_ch, stride, padding)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + self.shortcut(x))


def _shortcut(in_ch: int, out_ch: int, stride: int, padding: str = "torch") -> nn.Module:
    if stride == 1 and in_ch == out_ch:
        return nn.Identity()
    return nn.Sequential(_conv(in_ch, out_ch, 1, stride, padding), nn.BatchNorm2d(out_ch))


ARCHS: dict[str, tuple[type[BasicBlock] | type[Bottleneck], list[int]]] = {
    "resnet18": (BasicBlock, [2, 2, 2, 2]),
    "resnet50": (Bottleneck, [3, 4, 6, 3]),
}


class ResNet(nn.Module):
    """ResNet trunk returning the stage-4 (layer3) and stage-5 (layer4) maps.

    `last_stage=4` drops layer4 so that a stage-4-only model has no parameters without gradients.
    `padding="same"`: every conv pads as TensorFlow's "SAME" at run time (SameConv2d); the max-pool stays
    PyTorch's (3, 2, 1), as in the public port of the released VITO weights.
    """

    def __init__(self, arch: str = "resnet50", width: int = 64, last_stage: int = 5, stem: str = "imagenet",
                 padding: str = "torch") -> None:
        super().__init__()
        if last_stage not in (4, 5):
            raise ValueError(f"last_stage must be 4 or 5, got {last_stage}")
        block, depths = ARCHS[arch]
        self.last_stage = last_stage
        if stem == "imagenet":  # 7x7/2 + max-pool: /4 before layer1, for 224 px inputs
            self.stem = nn.Sequential(
                _conv(3, width, 7, 2, padding), nn.BatchNorm2d(width), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)
            )
        elif stem == "small":  # 3x3/1, no pooling (as for CIFAR): tiny frames keep a spatial map at stage 5
            self.stem = nn.Sequential(_conv(3, width, 3, 1, padding), nn.BatchNorm2d(width), nn.ReLU(inplace=True))
        else:
            raise ValueError(f"unknown stem {stem!r}: expected 'imagenet' or 'small'")
        in_ch = width
        layers = []
        for index, depth in enumerate(depths[: last_stage - 1]):
            stage_width = width * 2**index
            blocks = []
            for block_index in range(depth):
                stride = 2 if index > 0 and block_index == 0 else 1
                blocks.append(block(in_ch, stage_width, stride, padding))
                in_ch = stage_width * block.expansion
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = layers[:3]
        self.layer4 = layers[3] if last_stage == 5 else None
        self.channels = {4: width * 4 * block.expansion, 5: width * 8 * block.expansion}
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        # Each residual block starts as the identity: stabilises early training at large batch.
        for module in self.modules():
            if isinstance(module, (BasicBlock, Bottleneck)):
                nn.init.zeros_(module.last_bn.weight)

    def forward(self, x: Tensor) -> dict[int, Tensor]:
        x = self.layer2(self.layer1(self.stem(x)))
        stage4 = self.layer3(x)
        maps = {4: stage4}
        if self.layer4 is not None:
            maps[5] = self.layer4(stage4)
        return maps


# ------------------------------------------------------------------------------------------------- heads


class AttentionPool(nn.Module):
    """Softmax-over-positions pooling; the logits come from a 1x1-conv MLP on the map itself."""

    def __init__(self, in_ch: int, hidden: int) -> None:
        super().__init__()
        self.scorer = nn.Sequential(
            nn.Conv2d(in_ch, hidden, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, in_ch, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(in_ch, 1, 1),
        )

    def attention(self, x: Tensor) -> Tensor:
        """(B, H*W) weights that sum to 1 per sample (also what saliency evaluations read)."""
        logits = self.scorer(x).flatten(1)
        return logits.float().softmax(dim=1).to(x.dtype)

    def forward(self, x: Tensor) -> Tensor:
        weights = self.attention(x)
        return torch.einsum("bcn,bn->bc", x.flatten(2), weights)


class AveragePool(nn.Module):
    """Global average pooling with AttentionPool's interface (the MoCLR baseline / ablation)."""

    def __init__(self, in_ch: int, hidden: int = 0) -> None:
        super().__init__()

    def attention(self, x: Tensor) -> Tensor:
        batch, _, height, width = x.shape
        return x.new_full((batch, height * width), 1.0 / (height * width))

    def forward(self, x: Tensor) -> Tensor:
        return x.mean(dim=(2, 3))


class MLP(nn.Module):
    """Linear -> BN -> ReLU -> Linear, the BYOL/MoCLR projector and predictor."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden, bias=False),  # a bias before BN is cancelled by its mean
            nn.BatchNorm1d(hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, out_dim),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def _make_pool(kind: str, in_ch: int, hidden: int) -> nn.Module:
    return AttentionPool(in_ch, hidden) if kind == "attention" else AveragePool(in_ch, hidden)


# ------------------------------------------------------------------------------------------ online/target


class VitoModel(nn.Module):
    """Online network (backbone, per-scale pool + projector + predictor) and its EMA target."""

    def __init__(self, model_cfg: ModelConfig, loss_cfg: LossConfig) -> None:
        super().__init__()
        self.scales = sorted(model_cfg.scales)
        self.temperature = loss_cfg.temperature
        self.symmetric = loss_cfg.symmetric
        self.global_negatives = loss_cfg.global_negatives

        self.backbone = ResNet(model_cfg.arch, model_cfg.width, last_stage=max(self.scales), stem=model_cfg.stem,
                               padding=model_cfg.padding)
        channels = self.backbone.channels
        self.pools = nn.ModuleDict(
            {_key(s): _make_pool(model_cfg.pooling, channels[s], model_cfg.pool_hidden) for s in self.scales}
        )
        self.projectors = nn.ModuleDict(
            {_key(s): MLP(channels[s], model_cfg.proj_hidden, model_cfg.proj_dim) for s in self.scales}
        )
        self.predictors = nn.ModuleDict(
            {_key(s): MLP(model_cfg.proj_dim, model_cfg.pred_hidden, model_cfg.proj_dim) for s in self.scales}
        )
        if model_cfg.sync_bn_heads:  # before the target copy, so the target's projectors follow
            globalise_batch_norms(self.projectors)
            globalise_batch_norms(self.predictors)

        self.target_backbone = copy.deepcopy(self.backbone)
        self.target_pools = copy.deepcopy(self.pools)
        self.target_projectors = copy.deepcopy(self.projectors)
        for param in self._target_modules().parameters():
            param.requires_grad_(False)

    # The pairing order of these two lists is what update_target relies on.
    def _online_modules(self) -> nn.ModuleList:
        return nn.ModuleList([self.backbone, self.pools, self.projectors])

    def _target_modules(self) -> nn.ModuleList:
        return nn.ModuleList([self.target_backbone, self.target_pools, self.target_projectors])

    def named_online_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        for name, param in self.named_parameters():
            if not name.startswith("target_"):
                yield name, param

    def online_parameters(self) -> Iterator[nn.Parameter]:
        for _, param in self.named_online_parameters():
            yield param

    def forward(self, view_a: Tensor, view_b: Tensor) -> dict[str, Tensor]:
        batch = view_a.shape[0]
        both = torch.cat([view_a, view_b], dim=0)  # one pass per network per step

        online_maps = self.backbone(both)
        # The target stays in the module's mode (train during training, as in BYOL): its BN uses batch stats.
        # Its weights are fp32 like the online masters; under the trainer's autocast its convs run in bf16.
        with torch.no_grad():
            target_maps = self.target_backbone(both)

        losses: dict[str, Tensor] = {}
        for scale in self.scales:
            key = _key(scale)
            prediction = self.predictors[key](self.projectors[key](self.pools[key](online_maps[scale])))
            with torch.no_grad():
                target = self.target_projectors[key](self.target_pools[key](target_maps[scale]))
            pred_a, pred_b = prediction[:batch], prediction[batch:]
            target_a, target_b = target[:batch], target[batch:]
            offset = 0
            if self.global_negatives:
                (target_a, target_b), offset = gather_across_ranks(target_a, target_b)
            loss = info_nce(pred_a, target_b, self.temperature, offset)
            if self.symmetric:
                loss = 0.5 * (loss + info_nce(pred_b, target_a, self.temperature, offset))
            losses[f"loss/s{scale}"] = loss

        total = torch.stack(list(losses.values())).sum()
        return {"loss": total, **losses}

    @torch.no_grad()
    def update_target(self, momentum: float) -> None:
        """target <- m * target + (1 - m) * online for parameters; buffers (BN stats) copied.

        Both sides are the fp32 masters (bf16 lives only inside autocast), so an update of (1 - m) = 0.004
        is never rounded away.
        """
        online, target = self._online_modules(), self._target_modules()
        online_params = list(online.parameters())
        target_params = list(target.parameters())
        if target_params and target_params[0].is_cuda:
            # One fused pass over all tensors (read 2, write 1) instead of two.
            torch._foreach_lerp_(target_params, online_params, 1.0 - momentum)
        else:
            # The CPU keeps the original two-op formula: lerp rounds differently in the last bit, and CPU
            # results stay comparable with runs before the GPU work.
            torch._foreach_mul_(target_params, momentum)
            torch._foreach_add_(target_params, online_params, alpha=1.0 - momentum)
        online_buffers = list(online.buffers())
        target_buffers = list(target.buffers())
        if target_buffers:
            torch._foreach_copy_(target_buffers, online_buffers)

    @torch.no_grad()
    def features(self, x: Tensor, scale: int = 5) -> Tensor:
        """Pooled (B, C) feature of the online backbone at `scale`, in eval mode, for linear probes."""
        if scale not in self.scales:
            raise ValueError(f"scale {scale} not among the model's scales {self.scales}")
        modules = [self.backbone, self.pools[_key(scale)]]
        modes = [m.training for m in modules]
        for module in modules:
            module.eval()
        try:
            return self.pools[_key(scale)](self.backbone(x)[scale])
        finally:
            for module, mode in zip(modules, modes):
                module.train(mode)


def gather_across_ranks(*keys: Tensor) -> tuple[list[Tensor], int]:
    """All ranks' target keys (no gradient flows to the target), and where this rank's rows start."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return list(keys), 0
    world = torch.distributed.get_world_size()
    if world == 1:
        return list(keys), 0
    # One collective for all keys: (K, B, D) per rank, concatenated along dim 0 into (world * K, B, D).
    stacked = torch.stack(keys)
    gathered = stacked.new_empty((world * stacked.shape[0], *stacked.shape[1:]))
    gather = getattr(torch.distributed, "all_gather_single", None) or torch.distributed.all_gather_into_tensor
    gather(gathered, stacked)
    per_rank = gathered.view(world, *stacked.shape)
    rows = [per_rank[:, index].reshape(world * keys[0].shape[0], -1) for index in range(len(keys))]
    return rows, torch.distributed.get_rank() * keys[0].shape[0]


def _key(scale: int) -> str:
    return f"s{scale}"


def ema_momentum(step: int, total_steps: int, cfg: EMAConfig) -> float:
    """Target EMA decay at `step`: cosine from base to final momentum (BYOL), or constant."""
    if cfg.schedule == "constant" or total_steps <= 0:
        return cfg.base_momentum
    progress = min(max(step / total_steps, 0.0), 1.0)
    return cfg.final_momentum - (cfg.final_momentum - cfg.base_momentum) * 0.5 * (1 + math.cos(math.pi * progress))
