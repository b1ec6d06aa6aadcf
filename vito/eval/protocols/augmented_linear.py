"""The augmented linear protocol of an image_folder benchmark (`linear_augmented: true`): what papers report.

A linear layer on the frozen backbone (eval mode, no gradient; bf16 autocast and channels_last on CUDA, as the
extraction), trained on RandomResizedCrop(crop, scale 0.08-1) + flip images of the train split for
`augmented_epochs`, data parallel over the job's ranks, committed every epoch (vito/eval/scoring/augmented_linear.py)
under `<feature cache root>/augmented_linear/<key>`, the key a hash of the encoder key, the train split's
fingerprint, the train transform and every hyperparameter: a preempted or retried evaluation resumes from the last
committed step, and a later evaluation of the same checkpoint with the same settings finds the trained layer.

Constants and whose they are (docs/evaluation.md):
* SGD momentum 0.9, weight decay 0, weight N(0, 0.01), bias 0, cosine to 0 per iteration: DINO's eval_linear and
  MoCo v3's main_lincls; 100 epochs: DINO and MoCo v2 (MoCo v3: 90); batch 1024: MoCo v3 and DINO (8 x 128);
* lr: fixed, not searched -- MoCo v3's base 0.1 per 256 images (x batch / 256). A grid would multiply a cost
  that is already ~epochs x one extraction, and held-out selection needs a second pass over the held-out part;
  the cached probe's grid is the place to find an lr, this protocol reproduces the recipe;
* features standardised by the mean and std of the cached (centre-crop) train features (`augmented_standardize`,
  ours): a fixed affine map before the layer, foldable into it, like MAE's BatchNorm without affine in its
  linear probe; it makes one lr fit backbones whose feature scales differ by orders of magnitude (off: the plain
  layer of DINO/MoCo v3, then pick `augmented_lr` for the backbone);
* val: top-1 (and top-5) of the last epoch's layer on the cached centre-crop val features (resize 256, crop 224,
  the extraction's: every image exactly once; fp16 features, as kNN and the cached probe see them). The train
  images the extraction found unreadable are left out of training.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

import torch

from vito.config import ImageFolderBenchmark
from vito.eval.protocols.image_folder import BenchmarkOutcome, Encoder, ExtractionSettings, _relabel, extract_split

log = logging.getLogger(__name__)

MOMENTUM, WEIGHT_DECAY, INIT_STD = 0.9, 0.0, 0.01


def hyperparameters(bench: ImageFolderBenchmark, seed: int) -> dict[str, Any]:
    """Everything that changes the trained layer (not the checkpoint frequency): the checkpoint's key, recorded."""
    from vito.eval.datasets.augmented import RATIO

    return {
        "epochs": bench.augmented_epochs, "base_lr": bench.augmented_lr, "batch_size": bench.augmented_batch_size,
        "effective_lr": bench.augmented_lr * bench.augmented_batch_size / 256, "crop": bench.crop,
        "crop_scale": list(bench.augmented_crop_scale), "crop_ratio": list(RATIO), "flip_p": 0.5,
        "interpolation": bench.interpolation, "standardize": bench.augmented_standardize, "seed": seed,
        "momentum": MOMENTUM, "weight_decay": WEIGHT_DECAY, "init_std": INIT_STD, "schedule": "cosine per step",
    }


def checkpoint_root(settings: ExtractionSettings, encoder: Encoder, train_fingerprint: str,
                    params: dict[str, Any]) -> str:
    identity = json.dumps([encoder.key, train_fingerprint, params], sort_keys=True)
    return f"{settings.cache_root.rstrip('/')}/augmented_linear/{hashlib.sha256(identity.encode()).hexdigest()[:20]}"


def run_image_folder_augmented(name: str, bench: ImageFolderBenchmark, encoder: Encoder, settings: ExtractionSettings,
                               *, seed: int, is_main: bool, suffix: str = "") -> BenchmarkOutcome | None:
    """The augmented protocol of an image_folder benchmark, after its cached protocols have logged: the splits'
    features come from the cache they committed (read, not recomputed). The outcome on the main rank, else None."""
    train_set, train, train_cache = extract_split(bench, bench.train_split, encoder, settings, name)
    val_set, val, val_cache = extract_split(bench, bench.val_split, encoder, settings, name)
    classes = train_set.classes
    scored = run_augmented_linear(name, bench, encoder, settings, train_set=train_set, train=train, val=val,
                                  val_labels=_relabel(val.labels, val_set.classes, classes), classes=classes,
                                  seed=seed, is_main=is_main, suffix=suffix)
    if scored is None:
        return None
    metrics, protocol, readout = scored
    record = {"benchmark": name, "kind": bench.kind, "root": bench.root, "classes": len(classes),
              "protocol": "linear_augmented", "encoder": encoder.key,
              "feature_cache": {"train": train_cache, "val": val_cache}, "linear_augmented": protocol,
              "metrics": metrics}
    return BenchmarkOutcome(metrics, record, extra_readouts={"readout_augmented": readout})


def run_augmented_linear(name: str, bench: ImageFolderBenchmark, encoder: Encoder, settings: ExtractionSettings, *,
                         train_set, train, val, val_labels: torch.Tensor, classes: list[str], seed: int,
                         is_main: bool, suffix: str = "") -> tuple[dict[str, float], dict[str, Any], dict] | None:
    """Train on every rank, score on the main one: (metrics, record, readout state) there, None elsewhere.
    `train`/`val`: the split's ExtractedFeatures (the cached centre-crop features)."""
    from vito.eval.datasets.augmented import AugmentedImageDataset, AugmentedTransform
    from vito.eval.scoring.augmented_linear import ProbeCheckpoints, train_augmented_linear
    from vito.eval.scoring.linear import LinearProbeResult, feature_stats

    params = hyperparameters(bench, seed)
    root = checkpoint_root(settings, encoder, train_set.fingerprint(), params)
    transform = AugmentedTransform(bench.crop, tuple(bench.augmented_crop_scale), bench.interpolation)
    mean, std = feature_stats(train.features, bench.augmented_standardize)
    report = (lambda what, done, total: settings.progress(f"{name} {what}", done, total)) if settings.progress else None
    log.info("%s: augmented linear probe, %d epochs over %d train images -> %s", name, bench.augmented_epochs,
             len(train.indices), root)
    run = train_augmented_linear(
        encoder, AugmentedImageDataset(train_set, transform, seed), train.indices, len(classes), mean=mean.cpu(),
        std=std.cpu(), base_lr=bench.augmented_lr, epochs=bench.augmented_epochs,
        batch_size=bench.augmented_batch_size, seed=seed,
        checkpoints=ProbeCheckpoints(root, settings.storage_options, {"hyperparameters": params, "benchmark": name,
                                                                      "encoder": encoder.key}),
        checkpoint_steps=bench.augmented_checkpoint_steps, workers=settings.workers, group=settings.group,
        progress=report, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY, init_std=INIT_STD)
    if not is_main:
        return None
    probe = LinearProbeResult(
        weight=run.weight, bias=run.bias, mean=mean.cpu(), std=std.cpu(), lr=bench.augmented_lr,
        lr_grid={bench.augmented_lr: float("nan")}, epochs=bench.augmented_epochs,
        batch_size=bench.augmented_batch_size, holdout_fraction=0.0, seed=seed,
        standardize=bench.augmented_standardize, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY, init_std=INIT_STD,
        num_train=len(train.indices))
    prefix = f"eval/{name}/"
    val_x = val.features.float()
    metrics = {f"{prefix}linear_augmented_top1{suffix}": probe.top1(val_x, val_labels)}
    if len(classes) > 5:
        metrics[f"{prefix}linear_augmented_top5{suffix}"] = topk_accuracy(probe.logits(val_x), val_labels, 5)
    record = {
        **params, "train_transform": transform.key(), "val": "cached centre-crop features (the extraction's)",
        "lr_policy": "fixed base lr x batch / 256 (MoCo v3's recipe), not searched",
        "standardized_by": "mean/std of the cached centre-crop train features" if bench.augmented_standardize else None,
        "reported": "last epoch", "train_images": len(train.indices), "val_images": len(val.indices),
        "checkpoint": root, "steps": run.steps, "resumed_from_step": run.resumed_from_step,
        "trained_steps_this_run": run.trained_steps, "train_decode_failures": run.decode_failures,
        "rank0_images_per_s": run.images_per_s,
        "world_size": torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1,
    }
    return metrics, record, {**probe.state_dict(), "classes": classes}


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    if logits.shape[0] == 0:
        return float("nan")
    top = logits.topk(min(k, logits.shape[1]), dim=1).indices
    return float((top == labels.to(top.device)[:, None]).any(dim=1).float().mean())
