"""The augmented linear probe's training loop: a linear layer on a frozen backbone's features of freshly augmented
images every epoch, data parallel over the job's ranks, committed to a CheckpointStore and resumed exactly.

* Order: epoch e walks `epoch_order(n, seed, e)`, a permutation seeded by (seed, e) alone -- not a running
  generator -- so a run resumed at any step rebuilds the same order. Global batch s is positions
  [s*B, (s+1)*B) of it (the last one partial, as the cached probe); rank r takes the r-th of `world` contiguous
  slices of it (DistributedSampler's share, without its padding: no sample is seen twice in an epoch).
* Step: each rank sums the cross-entropy of its slice, divided by the GLOBAL batch's size; gradients are
  all-reduced (sum) before SGD steps, so every rank holds the same weights, and the result equals one rank's up to
  the float reduction order (bitwise on CPU for the same world size, not across world sizes).
* lr: cosine from base_lr x B / 256 to 0 over every step of every epoch, stepped per iteration (DINO, MoCo v3).
* Checkpoint: rank 0 commits the layer, its momentum and the step (`probe.pt`) through vito.checkpoint's
  CheckpointStore (marker written last, `latest` after it, the previous step kept) at each epoch's end and every
  `checkpoint_steps` steps; a restart restores the newest committed step that verifies and goes on from it.
  With the per-sample augmentation seeds of vito.eval.datasets.augmented, the final weights after any number of
  interruptions equal an uninterrupted run's (bitwise on CPU for the same world size).

Testing hook: VITO_AUGMENTED_KILL_AFTER_STEP=k SIGKILLs the process right after the checkpoint of global step k
is committed (k = e x steps per epoch: after epoch e) -- a preemption at a known point, for the resume tests.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import tempfile
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from vito.checkpoint import CheckpointStore
from vito.distributed import rank_and_world
from vito.eval.datasets.image_folder import collate

log = logging.getLogger(__name__)

PROBE_FILE = "probe.pt"
KILL_AFTER_STEP = "VITO_AUGMENTED_KILL_AFTER_STEP"
_LR_BATCH_REFERENCE = 256
_KEEP_LAST = 2  # the newest committed step and the one before: a fallback if the newest fails its checksum
_LOG_EVERY_S = 30.0


def epoch_seed(seed: int, epoch: int) -> int:
    """A 63-bit seed of (seed, epoch): epoch e's order never depends on the epochs run before it in this process."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1, np.uint64)[0]) & (2**63 - 1)


def epoch_order(num_samples: int, seed: int, epoch: int) -> Tensor:
    """Epoch `epoch`'s permutation of positions 0..num_samples-1."""
    return torch.randperm(num_samples, generator=torch.Generator().manual_seed(epoch_seed(seed, epoch)))


def steps_per_epoch(num_samples: int, batch_size: int) -> int:
    return max(1, math.ceil(num_samples / batch_size))


def rank_batches(order: Tensor, batch_size: int, rank: int, world: int, first_step: int = 0) -> list[Tensor]:
    """This rank's slice of each global batch of the epoch, from global step `first_step` of the epoch on."""
    steps = steps_per_epoch(order.numel(), batch_size)
    return [order[s * batch_size:(s + 1) * batch_size].tensor_split(world)[rank] for s in range(first_step, steps)]


def cosine_lr(peak_lr: float, step: int, total_steps: int) -> float:
    """The lr of global step `step` (0-based) of `total_steps`: peak at 0, 0 after the last."""
    return peak_lr * 0.5 * (1 + math.cos(math.pi * step / max(1, total_steps)))


@dataclass
class AugmentedRun:
    weight: Tensor  # C x D, fp32, CPU
    bias: Tensor
    steps: int  # global steps done in all (= epochs x steps per epoch when finished)
    resumed_from_step: int  # 0 for a fresh start
    trained_steps: int  # steps run by this call
    seconds: float  # of this call's training
    images: int  # images this rank pushed through the backbone in this call
    decode_failures: int  # train images that could not be read now (they were readable at extraction)

    @property
    def images_per_s(self) -> float | None:
        return self.images / self.seconds if self.trained_steps and self.seconds > 0 else None


class ProbeCheckpoints:
    """probe.pt of each committed step under `root`, through CheckpointStore (local or s3://)."""

    def __init__(self, root: str, storage_options: dict[str, Any] | None, metadata: dict[str, Any]):
        self.store = CheckpointStore(root, storage_options)
        self.root = root
        self.metadata = metadata

    def restore(self, rank: int, group) -> dict[str, Any] | None:
        """The newest committed state that verifies (read by rank 0, broadcast to the others), or None."""
        box: list[Any] = [None]
        if rank == 0:
            with tempfile.TemporaryDirectory() as scratch:
                found = self.store.restore_newest(scratch)
                if found is not None:
                    step, marker = found
                    saved_by = (marker.get("metadata") or {}).get("world_size")
                    box[0] = torch.load(f"{scratch}/step_{step:08d}/{PROBE_FILE}", map_location="cpu",
                                        weights_only=True)
                    box[0]["saved_by_world_size"] = saved_by
        if group is not None:
            dist.broadcast_object_list(box, src=0, group=group)
        return box[0]

    def save(self, step: int, state: dict[str, Any], world: int) -> None:
        """Rank 0 only: upload probe.pt of `step`, commit it, keep the newest two."""
        with tempfile.TemporaryDirectory() as scratch:
            torch.save(state, f"{scratch}/{PROBE_FILE}")
            files = self.store.upload(step, scratch)
        self.store.commit(step, files, {**self.metadata, "world_size": world})
        self.store.prune(_KEEP_LAST)


class _EpochBatches:
    """The batch sampler of one rank's epoch: its slices as [(dataset index, epoch), ...], built as the loader asks
    (ImageNet's 1.28 M tuples are never all in memory)."""

    def __init__(self, slices: list[Tensor], positions: Tensor, epoch: int):
        self.slices, self.positions, self.epoch = slices, positions, epoch

    def __len__(self) -> int:
        return len(self.slices)

    def __iter__(self):
        for batch in self.slices:
            yield [(index, self.epoch) for index in self.positions[batch].tolist()]


def _on_cpu(value: Any) -> Any:
    """The optimizer's state with CPU tensors: the file (and the broadcast of a restore) never names a GPU."""
    if isinstance(value, Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {key: _on_cpu(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_on_cpu(item) for item in value)
    return value


def train_augmented_linear(
    encoder,
    dataset,
    positions: Tensor,
    num_classes: int,
    *,
    mean: Tensor,
    std: Tensor,
    base_lr: float,
    epochs: int,
    batch_size: int,
    seed: int,
    checkpoints: ProbeCheckpoints,
    checkpoint_steps: int = 0,
    workers: int = 0,
    group: Any = None,
    progress: Callable[[str, int, int], None] | None = None,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    init_std: float = 0.01,
) -> AugmentedRun:
    """Train a D -> C layer on `encoder.encode` of `dataset[(positions[p], epoch)]` (AugmentedImageDataset), every
    rank its share of each global batch; resume from `checkpoints`. `mean`/`std` (D) standardise the features
    (zeros/ones: not at all). `encoder`: vito.eval.protocols.image_folder.Encoder, its module in eval mode."""
    rank, world = rank_and_world()
    if world > 1 and group is None:
        group = dist.new_group(backend="gloo")  # the object broadcast of the restore: CPU, whatever the backend
    device = encoder.device
    cuda = device.type == "cuda"
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda and encoder.bf16_autocast else nullcontext()
    positions = positions.cpu().to(torch.int64)
    labels = torch.tensor([sample.label for sample in dataset.samples], dtype=torch.int64)
    n = positions.numel()
    per_epoch = steps_per_epoch(n, batch_size)
    total = epochs * per_epoch
    peak_lr = base_lr * batch_size / _LR_BATCH_REFERENCE

    generator = torch.Generator().manual_seed(seed)  # N(0, 0.01) weight, 0 bias (MoCo v3, DINO)
    weight = (torch.randn(num_classes, mean.numel(), generator=generator) * init_std).to(device).requires_grad_()
    bias = torch.zeros(num_classes, device=device, requires_grad=True)
    optimizer = torch.optim.SGD([weight, bias], lr=peak_lr, momentum=momentum, weight_decay=weight_decay)
    state = checkpoints.restore(rank, group)
    step = 0
    if state is not None:
        if state["weight"].shape != weight.shape:
            raise ValueError(f"{checkpoints.root}: the committed probe is {tuple(state['weight'].shape)}, this run's "
                             f"{tuple(weight.shape)}: not the same training")
        with torch.no_grad():
            weight.copy_(state["weight"])
            bias.copy_(state["bias"])
        optimizer.load_state_dict(state["optimizer"])
        step = int(state["step"])
        if state.get("saved_by_world_size") not in (None, world):
            log.warning("augmented linear: %s was saved by %s ranks, this run has %d: the result is not bitwise "
                        "that of an uninterrupted run (float reduction order)", checkpoints.root,
                        state["saved_by_world_size"], world)
        log.info("augmented linear: resumed from %s at step %d of %d (%d epochs and %d steps done)",
                 checkpoints.root, step, total, step // per_epoch, step % per_epoch)
    resumed_from = step
    weight.grad, bias.grad = torch.zeros_like(weight), torch.zeros_like(bias)  # an empty slice still all-reduces
    mean, std = mean.to(device), std.to(device)
    kill_after = os.environ.get(KILL_AFTER_STEP)

    started, images, failures = time.monotonic(), 0, 0
    while step < total:
        epoch, first = divmod(step, per_epoch)
        order = epoch_order(n, seed, epoch)
        mine = rank_batches(order, batch_size, rank, world, first)
        global_sizes = [len(b) for b in rank_batches(order, batch_size, 0, 1, first)]
        loader = torch.utils.data.DataLoader(dataset, batch_sampler=_EpochBatches(mine, positions, epoch),
                                             num_workers=workers, collate_fn=collate, pin_memory=cuda)
        epoch_loss, last_log = 0.0, time.monotonic()
        for global_size, (indices, batch_images, errors) in zip(global_sizes, loader):
            for group_ in optimizer.param_groups:
                group_["lr"] = cosine_lr(peak_lr, step, total)
            optimizer.zero_grad(set_to_none=False)
            if errors:
                failures += len(errors)
                log.warning("augmented linear: %d train image(s) unreadable now, left out of the step: %s",
                            len(errors), errors[0][1][:300])
            if batch_images is not None:
                batch_images = batch_images.to(device, non_blocking=True)
                if cuda and encoder.channels_last:
                    batch_images = batch_images.contiguous(memory_format=torch.channels_last)
                with torch.no_grad(), autocast:  # frozen: no graph through the backbone
                    features = encoder.encode(batch_images)
                features = (features.float() - mean) / std
                logits = torch.addmm(bias, features, weight.T)
                loss = torch.nn.functional.cross_entropy(logits, labels[indices].to(device), reduction="sum") / global_size
                loss.backward()
                epoch_loss += float(loss.detach())
                images += len(indices)
            if world > 1:
                for parameter in (weight, bias):
                    dist.all_reduce(parameter.grad, op=dist.ReduceOp.SUM)
            optimizer.step()
            step += 1
            done_in_epoch = min(n, (step - epoch * per_epoch) * batch_size)
            if progress is not None:
                progress(f"linear_augmented epoch {epoch + 1}/{epochs}", done_in_epoch, n)
            epoch_end = step % per_epoch == 0
            if epoch_end or (checkpoint_steps and step % checkpoint_steps == 0):
                if rank == 0:
                    checkpoints.save(step, {"weight": weight.detach().cpu(), "bias": bias.detach().cpu(),
                                            "optimizer": _on_cpu(optimizer.state_dict()), "step": step}, world)
                if kill_after is not None and step == int(kill_after):
                    log.warning("augmented linear: %s=%s: killing this process after step %d's checkpoint",
                                KILL_AFTER_STEP, kill_after, step)
                    os.kill(os.getpid(), signal.SIGKILL)
            if time.monotonic() - last_log >= _LOG_EVERY_S or epoch_end:
                last_log = time.monotonic()
                log.info("augmented linear: rank %d: epoch %d/%d, %d/%d images, step %d/%d, lr %.4g, loss share %.4f, "
                         "%.1f images/s here", rank, epoch + 1, epochs, done_in_epoch, n, step, total,
                         optimizer.param_groups[0]["lr"], epoch_loss / max(1, step - epoch * per_epoch - first),
                         images / max(time.monotonic() - started, 1e-9))
    return AugmentedRun(weight.detach().cpu(), bias.detach().cpu(), step, resumed_from, step - resumed_from,
                        time.monotonic() - started, images, failures)
