"""Shape bias on the cue-conflict images (`kind: cue_conflict`), through an image_folder benchmark's readout.

The readout's softmax is averaged over each of the 16 categories' ImageNet indices and the decision is the argmax
over the 16 (vito/eval/datasets/shape_bias.py, model-vs-human's mapping). That mapping indexes the 1000-way ImageNet-1k
readout: a readout with fewer classes (the fixtures' 4) is placed in columns 0..C-1 of 1000 with the others at
-inf, which exercises the machinery but measures nothing (recorded as `readout_is_imagenet_1k: false`).
"""

from __future__ import annotations

from typing import Any

import torch

from vito.config import CueConflictBenchmark
from vito.eval.protocols.image_folder import BenchmarkOutcome, Encoder, ExtractionSettings, Readout, extract_image_set, transform_of


def as_imagenet_logits(logits: torch.Tensor) -> torch.Tensor:
    """(M, 1000) logits: a 1000-way readout as is; fewer columns in 0..C-1 and -inf elsewhere."""
    from vito.eval.datasets.shape_bias import READOUT_CLASSES

    if logits.shape[1] == READOUT_CLASSES:
        return logits
    if logits.shape[1] > READOUT_CLASSES:
        raise ValueError(f"a readout of {logits.shape[1]} classes: the cue-conflict mapping needs ImageNet-1k's 1000")
    padded = torch.full((len(logits), READOUT_CLASSES), float("-inf"), dtype=logits.dtype, device=logits.device)
    padded[:, : logits.shape[1]] = logits
    return padded


def score_shape_bias(name: str, cue_set, logits: torch.Tensor, indices, suffix: str = ""
                     ) -> tuple[dict[str, float], dict[str, Any], list[dict[str, Any]]]:
    """(metrics, record part, per-category CSV rows) of readout logits on the cue-conflict images: pure."""
    from vito.eval.datasets.shape_bias import score_cue_conflict

    result = score_cue_conflict(cue_set, as_imagenet_logits(logits), indices)
    prefix = f"eval/{name}/"
    metrics = {f"{prefix}shape_fraction{suffix}": result.shape_fraction,
               f"{prefix}texture_fraction{suffix}": result.texture_fraction,
               f"{prefix}images_scored{suffix}": float(result.images)}
    if result.shape_bias is not None:
        metrics[f"{prefix}shape_bias{suffix}"] = result.shape_bias
    record = {**result.as_record(), "readout_is_imagenet_1k": logits.shape[1] == 1000}
    return metrics, record, result.as_rows()


def run_cue_conflict(name: str, bench: CueConflictBenchmark, readout: Readout | None, classes: list[str],
                     encoder: Encoder, settings: ExtractionSettings, *, is_main: bool, suffix: str = ""
                     ) -> BenchmarkOutcome | None:
    from vito.eval.datasets.shape_bias import read_cue_conflict

    cue_set = read_cue_conflict(bench.root, settings.storage_options)
    transform = transform_of(bench)
    features, folder = extract_image_set(cue_set.image_set(), transform, encoder, settings, f"{name} images",
                                         root=bench.root, split="")
    if not is_main:
        return None
    assert readout is not None, "the main rank holds the readout"
    metrics, scores, rows = score_shape_bias(name, cue_set, readout.logits(features.features),
                                             features.indices.tolist(), suffix)
    metrics[f"eval/{name}/skipped_images{suffix}"] = float(len(features.skipped))
    record = {"benchmark": name, "kind": bench.kind, "root": bench.root, "scored": readout.describe(),
              "readout_classes": len(readout.classes), "transform": transform.key(), "encoder": encoder.key,
              "feature_cache": folder, **scores, "metrics": metrics}
    skipped = [{"split": "", "index": i, "path": path, "reason": reason} for i, path, reason in features.skipped]
    return BenchmarkOutcome(metrics, record, skipped, tables={"per_category.csv": rows})
