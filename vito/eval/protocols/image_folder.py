"""ImageNet-1k, or any labelled image folder: frozen features scored by weighted kNN and a linear probe.

The protocol (docs/evaluation.md): resize the short side to `resize`, centre crop `crop`, ImageNet mean/std;
features of train and val extracted once (every rank a share, cached by shard); weighted kNN on
L2-normalised features (DINO: k in 10/20/100/200, T 0.07); a linear probe on the cached train features with its
learning rate chosen on a held-out part of train, never on val, last epoch reported. Every constant is a field
of `ImageFolderBenchmark` and is written into the result record beside the metrics.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from vito.config import ImageFolderBenchmark

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Encoder:
    """The frozen network as the extraction sees it: `encode(images) -> features`, and what identifies it."""

    encode: Callable[[torch.Tensor], torch.Tensor]
    key: str  # checkpoint, step and architecture: features of another network never share a cache entry
    device: torch.device
    bf16_autocast: bool = False
    channels_last: bool = False
    # Dense maps for the video protocols (DAVIS): normalised images (B, 3, H, W) -> the stage-4 map at stride 8
    # (B, C, H/8, W/8) of the same network (label_propagation.dense_trunk); None: the network has none.
    dense: Callable[[torch.Tensor], torch.Tensor] | None = None


@dataclass
class BenchmarkOutcome:
    metrics: dict[str, float]
    record: dict[str, Any]  # protocol constants, counts and cache facts: the results.json of the benchmark
    skipped: list[dict[str, Any]] = field(default_factory=list)  # unreadable images: the skipped report
    readout: dict[str, Any] | None = None  # the linear probe's state (scores later benchmarks)
    extra_readouts: dict[str, dict[str, Any]] = field(default_factory=dict)  # artifact stem -> another readout
    tables: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # CSV artifacts: file name -> rows


@dataclass(frozen=True)
class Readout:
    """The linear readout an image_folder benchmark trained, as the readout kinds score through it."""

    benchmark: str  # the image_folder benchmark that trained it (eval.benchmarks.<benchmark>)
    probe: Any  # LinearProbeResult: logits(x) over `classes`
    classes: list[str]  # its columns: the sorted class folders of that benchmark's train split
    clean_top1: float | None = None  # its linear top-1 on that benchmark's val (relative mCE's clean error)

    @classmethod
    def from_outcome(cls, benchmark: str, outcome: "BenchmarkOutcome", suffix: str = "") -> "Readout | None":
        from vito.eval.scoring.linear import LinearProbeResult

        if outcome.readout is None:
            return None
        state = {k: v for k, v in outcome.readout.items() if k != "classes"}
        return cls(benchmark, LinearProbeResult.from_state_dict(state), list(outcome.readout["classes"]),
                   outcome.metrics.get(f"eval/{benchmark}/linear_top1{suffix}"))

    head = "trained_readout"  # results.json's `head`: which head scored

    def describe(self) -> str:
        return f"through the readout of eval.benchmarks.{self.benchmark}"

    def logits(self, features) -> Any:
        return self.probe.logits(features.float())


@dataclass(frozen=True)
class OwnHead:
    """The 1000-way `fc` of published weights (`head: own`), scoring the features the suite extracted: the
    network's pooled layer4 feature (global average pooling for a torchvision/timm ResNet-50, the attention pool
    for the VITO port), the input that fc was trained on. Its columns are ImageNet-1k's sorted wnids."""

    weight: torch.Tensor  # (1000, C)
    bias: torch.Tensor  # (1000,)
    source: str  # eval.weights
    device: torch.device = torch.device("cpu")
    clean_top1: float | None = None  # no clean ImageNet val is scored through it here: no relative mCE
    head = "own_fc"
    chunk = 65536  # rows per matmul: ImageNet-C's 750k rows never sit on the device at once

    @property
    def classes(self) -> list[str]:
        from vito.eval.datasets.imagenet_classes import IMAGENET_WNIDS

        return list(IMAGENET_WNIDS)

    def describe(self) -> str:
        return f"through the 1000-way fc of eval.weights {self.source} (its own head)"

    @torch.no_grad()
    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """(M, 1000) fp32 logits on the CPU, computed on the head's device in chunks."""
        weight, bias = self.weight.float().to(self.device), self.bias.float().to(self.device)
        parts = [torch.nn.functional.linear(part.float().to(self.device), weight, bias).cpu()
                 for part in features.split(self.chunk)]
        return torch.cat(parts) if parts else features.new_zeros((0, len(bias)))


@dataclass(frozen=True)
class ExtractionSettings:
    cache_root: str
    shard_size: int
    batch_size: int
    workers: int
    storage_options: dict[str, Any]
    progress: Callable[[str, int, int], None] | None = None  # (what, done, total)
    group: Any = None  # the job's gloo control group for the waits between ranks (None: one process)


def transform_of(bench):
    """The evaluation transform of any image benchmark (every kind has resize, crop, interpolation, antialias)."""
    from vito.eval.datasets.image_folder import ImageTransform

    return ImageTransform(resize=bench.resize, crop=bench.crop, interpolation=bench.interpolation,
                          antialias=bench.antialias)


def cache_dir(settings: ExtractionSettings, encoder: Encoder, dataset_fingerprint: str, transform_key: str) -> str:
    """One folder per (network, dataset, transform): reused by every protocol and later evaluation sweep."""
    identity = json.dumps([encoder.key, dataset_fingerprint, transform_key])
    return f"{settings.cache_root.rstrip('/')}/{hashlib.sha256(identity.encode()).hexdigest()[:20]}"


def extract_split(bench: ImageFolderBenchmark, split: str, encoder: Encoder, settings: ExtractionSettings, name: str):
    """Features of one split, from the cache where its shards are committed, else computed by every rank."""
    from vito.eval.datasets.image_folder import read_image_folder

    images = read_image_folder(bench.root, split, settings.storage_options)
    extracted, folder = extract_image_set(images, transform_of(bench), encoder, settings, f"{name} {split}",
                                          root=bench.root, split=split)
    return images, extracted, folder


def extract_image_set(images, transform, encoder: Encoder, settings: ExtractionSettings, what: str, *, root: str,
                      split: str):
    """Features of any ImageFolderSet (an image folder's split, a corruption x severity, a class subset, the
    cue-conflict images) through `extract_features`: every rank a share, cached by shard. (extracted, folder)."""
    from vito.eval.datasets.image_folder import ImageFolderDataset
    from vito.eval.extract import extract_features

    folder = cache_dir(settings, encoder, images.fingerprint(), transform.key())
    report = (lambda done, total: settings.progress(what, done, total)) if settings.progress else None
    extracted = extract_features(
        encoder.encode, ImageFolderDataset(images, transform), folder,
        shard_size=settings.shard_size, batch_size=settings.batch_size, workers=settings.workers,
        device=encoder.device, bf16_autocast=encoder.bf16_autocast, channels_last=encoder.channels_last,
        storage_options=settings.storage_options, progress=report, group=settings.group,
        # Not the root: the fingerprint is the set's, wherever it is mounted (a copy on node-local scratch
        # reuses the features of the shared one).
        cache_key_fields={"encoder": encoder.key, "dataset": images.fingerprint(), "transform": transform.key(),
                          "split": split},
    )
    log.info("%s: %d images, %d skipped; shards computed here %s, reused %s", what,
             extracted.num_samples, len(extracted.skipped), extracted.computed_shards, extracted.reused_shards)
    return extracted, folder


def run_image_folder(name: str, bench: ImageFolderBenchmark, encoder: Encoder, settings: ExtractionSettings, *,
                     seed: int, is_main: bool, suffix: str = "") -> BenchmarkOutcome | None:
    """Extract on every rank, score on the main one (None elsewhere). `suffix` names a baseline's metrics."""
    from vito.eval.scoring.knn import knn_evaluate
    from vito.eval.scoring.linear import fit_linear_probe

    train_set, train, train_cache = extract_split(bench, bench.train_split, encoder, settings, name)
    val_set, val, val_cache = extract_split(bench, bench.val_split, encoder, settings, name)
    classes = train_set.classes
    val_labels = _relabel(val.labels, val_set.classes, classes)
    probe = None
    if bench.linear:  # every rank: the probe is data-parallel over the job's ranks (each holds all features)
        probe = fit_linear_probe(train.features.float(), train.labels, len(classes), lr_grid=tuple(bench.linear_lr_grid),
                                 epochs=bench.linear_epochs, batch_size=bench.linear_batch_size,
                                 holdout_fraction=bench.linear_holdout, seed=seed, device=encoder.device)
    if not is_main:
        return None
    prefix = f"eval/{name}/"
    metrics: dict[str, float] = {
        f"{prefix}val_images_scored{suffix}": float(len(val.indices)),
        f"{prefix}train_images{suffix}": float(len(train.indices)),
        f"{prefix}skipped_images{suffix}": float(len(train.skipped) + len(val.skipped)),
    }
    record: dict[str, Any] = {
        "benchmark": name, "kind": bench.kind, "root": bench.root, "classes": len(classes),
        "splits": {"train": bench.train_split, "val": bench.val_split},
        "transform": transform_of(bench).key(), "encoder": encoder.key,
        "feature_cache": {"train": train_cache, "val": val_cache},
        "images": {"train": len(train.indices), "val": len(val.indices)},
        "skipped": {"train": len(train.skipped), "val": len(val.skipped)},
    }
    if bench.knn:
        knn = knn_evaluate(train.features, train.labels, val.features, val_labels, len(classes),
                           k_values=tuple(bench.knn_k), temperature=bench.knn_temperature, device=encoder.device)
        for k, top1 in knn.top1.items():
            metrics[f"{prefix}knn{k}_top1{suffix}"] = top1
        record["knn"] = {**knn.as_dict(), "similarity": "cosine of L2-normalised features", "vote": "exp(sim / T)"}
    readout = None
    if probe is not None:
        metrics[f"{prefix}linear_top1{suffix}"] = probe.top1(val.features.float(), val_labels)
        record["linear"] = {**probe.as_dict(), "schedule": "cosine", "reported": "last epoch",
                            "lr_chosen_on": f"{probe.holdout_fraction:g} of train, stratified (never val)"}
        readout = {**probe.state_dict(), "classes": classes}
    record["metrics"] = metrics
    skipped = [{"split": split, "index": i, "path": path, "reason": reason}
               for split, part in (("train", train), ("val", val)) for i, path, reason in part.skipped]
    return BenchmarkOutcome(metrics, record, skipped, readout)


def _relabel(labels: torch.Tensor, val_classes: list[str], train_classes: list[str]) -> torch.Tensor:
    """Val's labels in train's class order (val may hold a subset of train's classes; the reader checked it)."""
    if val_classes == train_classes:
        return labels
    position = {c: i for i, c in enumerate(train_classes)}
    mapping = torch.tensor([position[c] for c in val_classes], dtype=torch.long)
    return mapping[labels]
