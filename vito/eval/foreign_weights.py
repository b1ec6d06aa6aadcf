"""Published ResNet-50 weights as networks the benchmark suite can evaluate beside the project's checkpoints.

Three layouts (shared/notes/eval-benchmarks.md, "Foreign checkpoints"):

- "torchvision" / "timm": a ResNet-50 state dict with torchvision's key names (timm's resnet50 uses the same
  names: the two are told apart only by what the caller says). Features: global average pooling of layer4.
- "vito_port": the released VITO weights in the layout of their public PyTorch port: torchvision names, every
  conv with TensorFlow "SAME" padding (the max-pool PyTorch's), the attention pool as
  `avgpool.module_list.{0,2,4}`, then `fc` if the file holds one. Features: the attention pool of layer4.

Keys are mapped explicitly onto the project's ResNet (`vito.model.ResNet`, see FOREIGN_TO_PROJECT), strictly:
missing and unexpected keys are listed by name in one error, a wrong architecture or a shape that does not fit
is one error naming the key and the shapes. Nothing is loaded with strict=False.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn

from vito.model import AveragePool, ResNet

Kind = Literal["torchvision", "timm", "vito_port"]
KINDS: tuple[str, ...] = ("torchvision", "timm", "vito_port")

# Prefixes of ResNet state dicts in the wild (DataParallel, self-supervised wrappers), longest first.
PREFIXES: tuple[str, ...] = ("module.encoder_q.", "module.base_encoder.", "backbone.", "module.")
# Wrappers of a state dict inside a saved checkpoint dict.
_WRAPPERS: tuple[str, ...] = ("state_dict", "model", "module")

# Foreign (torchvision) key prefix -> the project's name inside ForeignResNet. Everything else under
# layer{1-4}.{i}. is named identically (conv{1-3}, bn{1-3}); the project has no fc in its ResNet.
FOREIGN_TO_PROJECT: tuple[tuple[str, str], ...] = (
    ("conv1.", "backbone.stem.0."),
    ("bn1.", "backbone.stem.1."),
    ("avgpool.module_list.", "pool.module_list."),
    ("fc.", "fc."),
)
_DOWNSAMPLE = re.compile(r"^(layer[1-4]\.\d+)\.downsample\.([01])\.(.+)$")
_BLOCK = re.compile(r"^(layer[1-4]\.\d+)\.((?:conv|bn)[123])\.(.+)$")
_RESNET50_DEPTHS = (3, 4, 6, 3)
IMAGENET_CLASSES = 1000  # `head: own` needs an fc of this many outputs, its columns ImageNet-1k's sorted wnids


class ForeignWeightsError(ValueError):
    """A foreign state dict that does not fit the architecture it claims (or is detected as)."""


def foreign_to_project(key: str) -> str:
    """The ForeignResNet parameter name of a torchvision/port key (prefixes already stripped).

    conv1.* -> backbone.stem.0.*; bn1.* -> backbone.stem.1.*; layerL.B.convN/bnN.* -> backbone.layerL.B.convN/bnN.*;
    layerL.B.downsample.{0,1}.* -> backbone.layerL.B.shortcut.{0,1}.*; avgpool.module_list.* -> pool.module_list.*;
    fc.* -> fc.*. A key outside these patterns is returned with a '?' in front (never a real name: unexpected).
    """
    for foreign, project in FOREIGN_TO_PROJECT:
        if key.startswith(foreign):
            return project + key[len(foreign):]
    if match := _DOWNSAMPLE.match(key):
        return f"backbone.{match[1]}.shortcut.{match[2]}.{match[3]}"
    if _BLOCK.match(key):
        return f"backbone.{key}"
    return f"?{key}"


def project_to_foreign(name: str) -> str:
    """The inverse of foreign_to_project."""
    for foreign, project in FOREIGN_TO_PROJECT:
        if name.startswith(project):
            return foreign + name[len(project):]
    if name.startswith("backbone."):
        return re.sub(r"^(layer[1-4]\.\d+)\.shortcut\.", r"\1.downsample.", name[len("backbone."):])
    raise KeyError(f"{name} has no foreign name")


# ------------------------------------------------------------------------------------------------ modules


class PortAttentionPool(nn.Module):
    """The attention pool of the public port of the VITO weights, keys `module_list.{0,2,4}`.

    Not vito.model.AttentionPool: that one's last 1x1 conv has a bias (a constant shift of every logit, which the
    softmax cancels, but a parameter the port's file does not have) and its modules are named `scorer`. Same
    computation otherwise: logits from 1x1 convs C -> hidden -> C -> 1 (ReLU between), softmax over H x W,
    the weighted sum of the input map.
    """

    def __init__(self, in_ch: int = 2048, hidden: int = 4096) -> None:
        super().__init__()
        self.module_list = nn.Sequential(
            nn.Conv2d(in_ch, hidden, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, in_ch, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(in_ch, 1, 1, bias=False),
        )

    def attention(self, x: Tensor) -> Tensor:
        """(B, H*W) weights summing to 1 per sample."""
        return self.module_list(x).flatten(1).float().softmax(dim=1).to(x.dtype)

    def forward(self, x: Tensor) -> Tensor:
        return torch.einsum("bcn,bn->bc", x.flatten(2), self.attention(x))


class ForeignResNet(nn.Module):
    """A ResNet-50 (the project's ResNet) with a pool over layer4 and an optional classifier."""

    def __init__(self, width: int = 64, padding: str = "torch", pool: Literal["average", "attention"] = "average",
                 pool_hidden: int = 4096, num_classes: int | None = None) -> None:
        super().__init__()
        self.backbone = ResNet("resnet50", width, last_stage=5, stem="imagenet", padding=padding)
        channels = self.backbone.channels[5]
        self.pool = PortAttentionPool(channels, pool_hidden) if pool == "attention" else AveragePool(channels)
        self.fc = nn.Linear(channels, num_classes) if num_classes else None

    def forward(self, images: Tensor) -> Tensor:
        return self.pool(self.backbone(images)[5])


@dataclass
class ForeignNetwork:
    """A loaded foreign network: `features(images)` is what the benchmark suite extracts."""

    kind: str
    module: ForeignResNet
    digest: str  # sha256 of the (prefix-stripped) state dict's names, shapes, dtypes and values

    @property
    def has_fc(self) -> bool:
        return self.module.fc is not None

    @torch.no_grad()
    def features(self, images: Tensor) -> Tensor:
        """(B, C) pooled layer4 feature (C = 2048 at width 64), in eval mode."""
        self.module.eval()
        return self.module(images)

    @torch.no_grad()
    def logits(self, images: Tensor) -> Tensor:
        if self.module.fc is None:
            raise ForeignWeightsError(f"this {self.kind} state dict holds no fc: there are no logits")
        return self.module.fc(self.features(images))

    def own_head_problem(self) -> str | None:
        """Why this network cannot score through its own 1000-way ImageNet head (`head: own`), or None."""
        fc = self.module.fc
        if fc is None:
            return f"this {self.kind} file holds no fc"
        if fc.out_features != IMAGENET_CLASSES:
            return f"its fc has {fc.out_features} outputs, not ImageNet-1k's {IMAGENET_CLASSES}"
        return None

    def key(self) -> str:
        """The feature-cache identity: kind and the weights' digest (where the file lies plays no part)."""
        return f"foreign:{self.kind}:{self.digest[:16]}"

    def to(self, device: torch.device | str) -> "ForeignNetwork":
        self.module.to(device)
        return self


# ------------------------------------------------------------------------------------------------ loading


def load_foreign(path_or_state: str | Path | Mapping[str, Tensor], kind: Kind | None = None) -> ForeignNetwork:
    """A ForeignNetwork from a file (torch.load with weights_only=True) or an in-memory state dict.

    `kind` None: detected from the keys ("vito_port" when `avgpool.module_list.*` is present, else
    "torchvision"; a timm resnet50 has the same names, so pass kind="timm" to record it as such). The usual
    prefix that conv1.weight carries (PREFIXES) is stripped; a checkpoint dict wrapping the state dict
    under 'state_dict', 'model' or 'module' is unwrapped.
    """
    if kind is not None and kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}: expected one of {KINDS}")
    state = _strip_prefix(_unwrap(_read(path_or_state)))
    detected = detect_kind(state)
    if kind is None:
        kind = detected
    elif (kind == "vito_port") != (detected == "vito_port"):
        raise ForeignWeightsError(
            f"kind {kind!r} asked for, but the keys are those of a {detected!r} state dict "
            f"({'with' if detected == 'vito_port' else 'without'} avgpool.module_list.*)")
    _check_architecture(state)
    width = state["conv1.weight"].shape[0]
    port = kind == "vito_port"
    hidden = state["avgpool.module_list.0.weight"].shape[0] if port and "avgpool.module_list.0.weight" in state else 4096
    num_classes = state["fc.weight"].shape[0] if "fc.weight" in state else None
    module = ForeignResNet(width, padding="same" if port else "torch", pool="attention" if port else "average",
                           pool_hidden=hidden, num_classes=num_classes)
    _load_strictly(module, state, kind)
    return ForeignNetwork(kind, module.eval(), _digest(state))


def detect_kind(state: Mapping[str, Tensor]) -> str:
    """'vito_port' or 'torchvision' from the (prefix-stripped) keys; an error for anything else."""
    if "conv1.weight" in state:
        return "vito_port" if any(k.startswith("avgpool.module_list.") for k in state) else "torchvision"
    if any(k == "stem.0.weight" or k.endswith(".stem.0.weight") for k in state):
        raise ForeignWeightsError("this is the project's own network layout (backbone.stem.*): load a project "
                                  "checkpoint with vito.evaluate_task.load_pretrained_model, not load_foreign")
    sample = ", ".join(sorted(state)[:5])
    raise ForeignWeightsError(f"not a ResNet state dict in torchvision's layout: no conv1.weight (keys: {sample}, ...)")


def _read(path_or_state: str | Path | Mapping[str, Tensor]) -> Mapping:
    if isinstance(path_or_state, Mapping):
        return path_or_state
    try:
        return torch.load(path_or_state, map_location="cpu", weights_only=True)
    except Exception as problem:  # an unpicklable object in a published file: say what to do
        if isinstance(problem, FileNotFoundError):
            raise
        raise ForeignWeightsError(
            f"{path_or_state} cannot be read with torch.load(weights_only=True) ({type(problem).__name__}: "
            f"{problem}); if you trust the file, load it yourself and pass the state dict") from problem


def _unwrap(obj: Mapping) -> dict[str, Tensor]:
    while not all(isinstance(v, Tensor) for v in obj.values()):
        wrapped = [k for k in _WRAPPERS if isinstance(obj.get(k), Mapping)]
        if not wrapped:
            others = sorted(k for k, v in obj.items() if not isinstance(v, Tensor))[:5]
            raise ForeignWeightsError(f"not a state dict: entries that are not tensors ({', '.join(map(str, others))})")
        obj = obj[wrapped[0]]
    return dict(obj)


def _strip_prefix(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The prefix that conv1.weight carries, stripped (again while one is left); keys without it stay as they
    are, to be listed as unexpected (e.g. a MoCo checkpoint's encoder_k: select the keys you mean first)."""
    for prefix in PREFIXES:
        if prefix + "conv1.weight" in state:
            return _strip_prefix({k[len(prefix):] if k.startswith(prefix) else k: v for k, v in state.items()})
    return state


def _check_architecture(state: Mapping[str, Tensor]) -> None:
    """A ResNet-50 (Bottleneck blocks 3, 4, 6, 3), or one error saying what the dict is instead."""
    depths = []
    for layer in range(1, 5):
        blocks = {int(m[1]) for k in state if (m := re.match(rf"^layer{layer}\.(\d+)\.", k))}
        depths.append(max(blocks) + 1 if blocks else 0)
    bottleneck = "layer1.0.conv3.weight" in state
    if tuple(depths) != _RESNET50_DEPTHS or not bottleneck:
        block = "Bottleneck" if bottleneck else "BasicBlock (no conv3)"
        guess = {((2, 2, 2, 2), False): " (resnet18)", ((3, 4, 6, 3), False): " (resnet34)",
                 ((3, 4, 23, 3), True): " (resnet101)", ((3, 8, 36, 3), True): " (resnet152)"}.get(
            (tuple(depths), bottleneck), "")
        shape = tuple(state["layer1.0.conv1.weight"].shape) if "layer1.0.conv1.weight" in state else None
        raise ForeignWeightsError(
            f"not a ResNet-50: {block} blocks per layer {tuple(depths)}{guess}, expected Bottleneck blocks "
            f"{_RESNET50_DEPTHS}; e.g. layer1.0.conv1.weight has shape {shape}")


def project_aliases(module: nn.Module) -> dict[str, str]:
    """Names in module.state_dict() that repeat a tensor under another name -> that first name.

    The project's blocks register their last BN twice (`bn3`, and `last_bn` for the zero-gamma init; `bn2` in
    a BasicBlock), so its state dicts hold `layerL.B.last_bn.*` beside `layerL.B.bn3.*`; torchvision has only
    `bn3`. Aliases are neither expected in a foreign file nor written to one."""
    first: dict[int, str] = {}
    aliases = {}
    for name, tensor in module.state_dict(keep_vars=True).items():
        if id(tensor) in first:
            aliases[name] = first[id(tensor)]
        else:
            first[id(tensor)] = name
    return aliases


def foreign_state_dict(module: ForeignResNet) -> dict[str, Tensor]:
    """`module`'s weights in the foreign layout (torchvision names; the port's names for its pool)."""
    aliases = project_aliases(module)
    return {project_to_foreign(name): v for name, v in module.state_dict().items() if name not in aliases}


def _load_strictly(module: ForeignResNet, state: Mapping[str, Tensor], kind: str) -> None:
    """Every parameter and BN running statistic by its mapped name, or one error. The one leniency: batch
    norms' `num_batches_tracked` (files saved before PyTorch 0.4.1 lack it; evaluation never reads it) keep
    the fresh network's 0 when absent."""
    aliases = project_aliases(module)
    expected = {name: v for name, v in module.state_dict().items() if name not in aliases}
    given = {foreign_to_project(k): (k, v) for k, v in state.items()}
    for name, value in expected.items():
        if name.endswith(".num_batches_tracked") and name not in given:
            given[name] = (project_to_foreign(name), value)
    missing = sorted(project_to_foreign(name) for name in expected if name not in given)
    unexpected = sorted(k for name, (k, _) in given.items() if name not in expected)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)}: {', '.join(missing)}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)}: {', '.join(unexpected)}")
        raise ForeignWeightsError(f"the {kind} state dict does not fit a ResNet-50 of its layout: " + "; ".join(parts))
    wrong = [f"{k}: {tuple(v.shape)} where the network has {tuple(expected[name].shape)}"
             for name, (k, v) in given.items() if v.shape != expected[name].shape]
    if wrong:
        raise ForeignWeightsError(f"the {kind} state dict's shapes do not fit a ResNet-50 of width "
                                  f"{module.backbone.stem[0].out_channels}: " + "; ".join(wrong))
    loaded = {name: v.float() if v.is_floating_point() else v for name, (_, v) in given.items()}
    loaded.update({alias: loaded[name] for alias, name in aliases.items()})
    module.load_state_dict(loaded)


def _digest(state: Mapping[str, Tensor]) -> str:
    digest = hashlib.sha256()
    for key in sorted(state):
        tensor = state[key].detach().cpu().contiguous()
        digest.update(f"{key}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
