"""Linear probe on cached frozen features (N x D, usually fp16, with int64 labels).

Protocol (every constant a parameter, every value returned with the result):

* a linear layer D -> C, weight N(0, 0.01), bias 0 (MoCo v3, DINO); cross-entropy; SGD momentum 0.9, weight
  decay 0; lr = base_lr x batch_size / 256 with batch 1024 (MoCo v3); cosine decay to 0 over `epochs` (default
  100, DINO / MoCo v2; MoCo v3 uses 90), stepped per iteration; each epoch a seeded permutation of the whole
  split, the last partial batch kept;
* features standardised by the train split's per-dimension mean and std (`standardize=True`; recorded; with
  `standardize=False` the mean is 0 and the std 1). This is ours: cached features are not augmented, and
  standardising makes one lr grid fit backbones whose feature scales differ by orders of magnitude (the reason
  MoCo v2 needs lr 30 where MoCo v3 uses 0.1 and DINO 0.001);
* the base lr is chosen from a small grid on a held-out part of TRAIN (default 10 %, stratified per class, seeded)
  -- never on val, which this module never receives -- then the probe is retrained on the whole train split with
  the chosen lr and its LAST epoch is returned (not the best epoch on anything: picking the best epoch on val is
  optimistic, as lightly does).

The default grid (0.01, 0.03, 0.1, 0.3, 1.0) base lrs per 256: half-decade steps over two decades centred on
MoCo v3's 0.1 x B/256, the published value for a linear probe with SGD on frozen ResNet-50 features. On
standardised inputs the gradient scale no longer depends on the backbone's feature scale, so the published
recipes' spread (DINO's 0.001 and MoCo v2's 30 are on unstandardised ViT and ResNet features) collapses to
this range; recipes do not transfer across methods (lr 30 fails for BYOL), hence a sweep rather than one value.
Five values keep the selection at 5 x the cost of one probe. With `standardize=False`, pass a grid that fits.

Determinism: given `seed`, the split, the initial weights and every epoch's order are fixed; on CPU the result is
bit-identical across runs. Data parallel: when torch.distributed is initialised with more than one rank, every
rank holds the same features, walks the same permutation, and computes the loss of its slice of each global
batch (summed, divided by the global batch size); gradients are all-reduced (sum) before each step, so the
result equals one rank's up to the float reduction order. Held-out scoring is forward-only and runs whole on
every rank.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from vito.distributed import rank_and_world

DEFAULT_LR_GRID = (0.01, 0.03, 0.1, 0.3, 1.0)
_LR_BATCH_REFERENCE = 256  # grid values are base lrs per 256 samples
_STD_FLOOR = 1e-6  # a constant feature dimension is divided by this, not by 0
_EVAL_CHUNK = 8192  # rows standardised and scored at a time


@dataclass
class LinearProbeResult:
    """The trained readout (kept as an artifact: later benchmarks score through it) and its protocol constants."""

    weight: Tensor  # C x D, fp32, on CPU
    bias: Tensor  # C
    mean: Tensor  # D: subtracted from the features before the layer
    std: Tensor  # D: divides them
    lr: float  # the chosen base lr (per 256 samples)
    lr_grid: dict[float, float]  # base lr -> held-out top-1 (NaN when a single lr needed no selection)
    epochs: int
    batch_size: int
    holdout_fraction: float
    seed: int
    standardize: bool = True
    momentum: float = 0.9
    weight_decay: float = 0.0
    init_std: float = 0.01
    num_train: int = 0

    @property
    def effective_lr(self) -> float:
        """The peak lr the optimiser used: base lr x batch_size / 256."""
        return self.lr * self.batch_size / _LR_BATCH_REFERENCE

    def logits(self, x: Tensor) -> Tensor:
        """C logits per row of x (N x D, any float dtype), fp32, on x's device."""
        return _logits(x, self.weight.to(x.device), self.bias.to(x.device), self.mean.to(x.device), self.std.to(x.device))

    def top1(self, x: Tensor, y: Tensor) -> float:
        """Top-1 accuracy (fraction) on (x, y)."""
        return _top1(x, y, self.weight.to(x.device), self.bias.to(x.device), self.mean.to(x.device), self.std.to(x.device))

    def as_dict(self) -> dict[str, float | int | bool]:
        """The protocol constants, flat, for logging beside the metric."""
        row: dict[str, float | int | bool] = dict(
            linear_lr=self.lr, linear_effective_lr=self.effective_lr, linear_epochs=self.epochs,
            linear_batch_size=self.batch_size, linear_holdout_fraction=self.holdout_fraction, linear_seed=self.seed,
            linear_standardize=self.standardize, linear_momentum=self.momentum, linear_weight_decay=self.weight_decay,
            linear_init_std=self.init_std, linear_num_train=self.num_train,
        )
        for lr, acc in self.lr_grid.items():
            row[f"linear_holdout_top1_lr{lr:g}"] = acc
        return row

    def state_dict(self) -> dict:
        """Tensors and plain values only (loads with torch.load(weights_only=True))."""
        return {
            "weight": self.weight, "bias": self.bias, "mean": self.mean, "std": self.std, "lr": self.lr,
            "lr_grid": [[lr, acc] for lr, acc in self.lr_grid.items()], "epochs": self.epochs,
            "batch_size": self.batch_size, "holdout_fraction": self.holdout_fraction, "seed": self.seed,
            "standardize": self.standardize, "momentum": self.momentum, "weight_decay": self.weight_decay,
            "init_std": self.init_std, "num_train": self.num_train,
        }

    @classmethod
    def from_state_dict(cls, state: dict) -> LinearProbeResult:
        fields = dict(state)
        fields["lr_grid"] = {float(lr): float(acc) for lr, acc in state["lr_grid"]}
        return cls(**fields)


def _standardised(x: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    return (x.to(torch.float32) - mean) / std


def _logits(x: Tensor, weight: Tensor, bias: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    parts = [torch.addmm(bias, _standardised(x[s:s + _EVAL_CHUNK], mean, std), weight.T) for s in range(0, x.shape[0], _EVAL_CHUNK)]
    return torch.cat(parts) if parts else torch.empty(0, weight.shape[0], device=x.device)


def _top1(x: Tensor, y: Tensor, weight: Tensor, bias: Tensor, mean: Tensor, std: Tensor) -> float:
    if x.shape[0] == 0:
        return float("nan")
    correct = 0
    for s in range(0, x.shape[0], _EVAL_CHUNK):
        logits = torch.addmm(bias, _standardised(x[s:s + _EVAL_CHUNK], mean, std), weight.T)
        correct += int((logits.argmax(dim=1) == y[s:s + _EVAL_CHUNK].to(logits.device)).sum())
    return correct / x.shape[0]


def feature_stats(x: Tensor, standardize: bool = True, indices: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Per-dimension mean and std (population, floored at 1e-6) of x (or of its rows `indices`) in fp32,
    accumulated in fp64 over row chunks (no full fp32 copy of an fp16 bank); (0, 1) when not standardising."""
    dim = x.shape[1]
    if not standardize:
        return torch.zeros(dim, device=x.device), torch.ones(dim, device=x.device)
    total = torch.zeros(dim, dtype=torch.float64, device=x.device)
    squares = torch.zeros(dim, dtype=torch.float64, device=x.device)
    count = x.shape[0] if indices is None else indices.numel()
    for s in range(0, count, _EVAL_CHUNK):
        rows = x[s:s + _EVAL_CHUNK] if indices is None else x[indices[s:s + _EVAL_CHUNK].to(x.device)]
        rows = rows.to(torch.float64)
        total += rows.sum(0)
        squares += (rows * rows).sum(0)
    n = max(1, count)
    mean = total / n
    var = (squares / n - mean * mean).clamp_min(0)
    return mean.float(), var.sqrt().float().clamp_min(_STD_FLOOR)


def stratified_holdout(labels: Tensor, fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """(fit indices, held-out indices) of a seeded per-class split: each class with n >= 2 samples gives
    max(1, round(fraction x n)) of them (at most n - 1) to the held-out part; both index lists sorted."""
    if not 0 < fraction < 1:
        raise ValueError(f"holdout_fraction must be in (0, 1), got {fraction}")
    generator = torch.Generator().manual_seed(seed)
    labels = labels.cpu().to(torch.int64)
    held: list[Tensor] = []
    for cls in torch.unique(labels).tolist():
        members = (labels == cls).nonzero().flatten()
        n = members.numel()
        if n < 2:
            continue
        take = min(n - 1, max(1, round(fraction * n)))
        held.append(members[torch.randperm(n, generator=generator)[:take]])
    held_idx = torch.sort(torch.cat(held)).values if held else torch.empty(0, dtype=torch.int64)
    mask = torch.ones(labels.numel(), dtype=torch.bool)
    mask[held_idx] = False
    return mask.nonzero().flatten(), held_idx


def train_linear(
    x: Tensor,
    y: Tensor,
    num_classes: int,
    base_lr: float,
    *,
    epochs: int,
    batch_size: int,
    seed: int,
    mean: Tensor,
    std: Tensor,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    init_std: float = 0.01,
    device=None,
    indices: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """(weight C x D, bias C) after `epochs` of SGD on (x, y) -- or on its rows `indices`, without copying them --
    with a per-iteration cosine lr from base_lr x batch_size / 256 to 0; the last epoch's weights.
    Data-parallel over the initialised process group."""
    device = torch.device(device) if device is not None else x.device
    rank, world = rank_and_world()
    generator = torch.Generator().manual_seed(seed)
    weight = (torch.randn(num_classes, x.shape[1], generator=generator) * init_std).to(device).requires_grad_()
    bias = torch.zeros(num_classes, device=device, requires_grad=True)
    weight.grad, bias.grad = torch.zeros_like(weight), torch.zeros_like(bias)  # a rank with an empty slice still all-reduces
    peak_lr = base_lr * batch_size / _LR_BATCH_REFERENCE
    optimizer = torch.optim.SGD([weight, bias], lr=peak_lr, momentum=momentum, weight_decay=weight_decay)
    mean, std = mean.to(device), std.to(device)
    y = y.to(torch.int64)
    rows = torch.arange(x.shape[0]) if indices is None else indices.cpu().to(torch.int64)
    n = rows.numel()
    steps_per_epoch = math.ceil(n / batch_size)
    total_steps = max(1, epochs * steps_per_epoch)
    step = 0
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator)
        for s in range(0, n, batch_size):
            batch = rows[order[s:s + batch_size]]
            mine = batch.tensor_split(world)[rank].to(x.device)  # this rank's slice of the global batch
            for group in optimizer.param_groups:
                group["lr"] = peak_lr * 0.5 * (1 + math.cos(math.pi * step / total_steps))
            optimizer.zero_grad(set_to_none=False)
            if mine.numel():
                logits = torch.addmm(bias, _standardised(x[mine].to(device), mean, std), weight.T)
                loss = torch.nn.functional.cross_entropy(logits, y[mine.to(y.device)].to(device), reduction="sum") / batch.numel()
                loss.backward()
            if world > 1:
                for p in (weight, bias):
                    dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
            optimizer.step()
            step += 1
    return weight.detach().cpu(), bias.detach().cpu()


def fit_linear_probe(
    train_x: Tensor,
    train_y: Tensor,
    num_classes: int,
    *,
    lr_grid=DEFAULT_LR_GRID,
    epochs: int = 100,
    batch_size: int = 1024,
    holdout_fraction: float = 0.1,
    seed: int = 0,
    standardize: bool = True,
    device=None,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    init_std: float = 0.01,
    holdout: tuple[Tensor, Tensor] | None = None,
) -> LinearProbeResult:
    """Choose the base lr on a held-out part of the train split, retrain on all of it, return the last epoch.

    Only the train split is given: the selection cannot see val. With a single lr in the grid nothing is held out
    (its held-out top-1 is recorded as NaN). `holdout`: the (fit, held-out) row indices to choose on instead of
    `stratified_holdout`'s (e.g. whole groups of correlated clips held out, as UCF-101's splits do).
    """
    if train_x.ndim != 2 or train_y.shape != (train_x.shape[0],):
        raise ValueError(f"train_x must be N x D and train_y N labels, got {tuple(train_x.shape)} and {tuple(train_y.shape)}")
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be >= 1, got {epochs}, {batch_size}")
    if train_y.numel() and (int(train_y.min()) < 0 or int(train_y.max()) >= num_classes):
        raise ValueError(f"train labels must lie in [0, {num_classes})")
    grid = sorted({float(lr) for lr in lr_grid})
    if not grid or any(lr <= 0 for lr in grid):
        raise ValueError(f"lr_grid must hold positive base lrs, got {lr_grid}")
    common = dict(epochs=epochs, batch_size=batch_size, momentum=momentum, weight_decay=weight_decay, init_std=init_std, device=device)

    scores: dict[float, float] = {}
    if len(grid) == 1:
        chosen = grid[0]
        scores[chosen] = float("nan")
    else:
        fit_idx, held_idx = holdout if holdout is not None else stratified_holdout(train_y, holdout_fraction, seed)
        if held_idx.numel() == 0:
            raise ValueError("the held-out part is empty (every class has fewer than 2 samples): cannot choose an lr")
        # The held-out part's statistics stay unseen too: standardise by the fit part's.
        fit_mean, fit_std = feature_stats(train_x, standardize, indices=fit_idx)
        held_x, held_y = train_x[held_idx.to(train_x.device)], train_y[held_idx.to(train_y.device)]
        for lr in grid:
            weight, bias = train_linear(train_x, train_y, num_classes, lr, seed=seed, mean=fit_mean, std=fit_std, indices=fit_idx, **common)
            dev = held_x.device
            scores[lr] = _top1(held_x, held_y, weight.to(dev), bias.to(dev), fit_mean.to(dev), fit_std.to(dev))
        chosen = max(grid, key=lambda lr: (scores[lr], -lr))  # ties: the smaller lr
        del held_x, held_y

    mean, std = feature_stats(train_x, standardize)
    weight, bias = train_linear(train_x, train_y, num_classes, chosen, seed=seed, mean=mean, std=std, **common)
    return LinearProbeResult(
        weight=weight, bias=bias, mean=mean.cpu(), std=std.cpu(), lr=chosen, lr_grid=scores, epochs=epochs,
        batch_size=batch_size, holdout_fraction=holdout_fraction if len(grid) > 1 else 0.0, seed=seed,
        standardize=standardize, momentum=momentum, weight_decay=weight_decay, init_std=init_std,
        num_train=int(train_x.shape[0]),
    )
