"""Shape bias on the cue-conflict images (`kind: cue_conflict`), through an image_folder benchmark's readout.

The readout's softmax is averaged over each of the 16 categories' ImageNet indices and the decision is the argmax
over the 16 (vito/eval/datasets/shape_bias.py, model-vs-human's mapping). That mapping indexes the 1000-way ImageNet-1k
head. A readout over a subset of ImageNet's wnids (the fixtures' 4) is placed into its wnids' columns, the others
-inf: only the categories it covers can be decided (`categories_decidable`), and `readout_is_imagenet_1k: false`
says the figure is not comparable with a 1000-way model's. Classes that are not ImageNet wnids fall back to columns
0..C-1 (`readout_placement: first_columns`), which exercises the machinery but measures nothing.
"""

from __future__ import annotations

from typing import Any

import torch

from vito.config import CueConflictBenchmark
from vito.eval.protocols.image_folder import (
    BenchmarkOutcome,
    Encoder,
    ExtractionSettings,
    OwnHead,
    Readout,
    extract_image_set,
    transform_of,
)


def as_imagenet_logits(logits: torch.Tensor, classes: list[str]) -> tuple[torch.Tensor, str]:
    """(M, 1000) logits in ImageNet-1k's sorted-wnid columns, and how the readout was placed there.

    A 1000-way ImageNet readout (its classes are the 1000 sorted wnids) is taken as is ("imagenet_1k"). A readout
    whose classes are all ImageNet wnids (a subset of ImageNet, the fixtures') is placed into its wnids' columns,
    the other columns -inf ("by_wnid": the categories it does not cover can never be decided). Classes that are
    not ImageNet wnids go to columns 0..C-1 ("first_columns"): the 16-class mapping then measures nothing."""
    from vito.eval.datasets.imagenet_classes import imagenet_columns, is_imagenet_1k
    from vito.eval.datasets.shape_bias import READOUT_CLASSES

    if logits.shape[1] != len(classes):
        raise ValueError(f"{logits.shape[1]} logit columns for a readout of {len(classes)} classes")
    if is_imagenet_1k(classes):
        return logits, "imagenet_1k"
    if logits.shape[1] > READOUT_CLASSES:
        raise ValueError(f"a readout of {logits.shape[1]} classes: the cue-conflict mapping needs ImageNet-1k's 1000")
    columns = imagenet_columns(classes)
    placement = "by_wnid" if columns is not None else "first_columns"
    padded = torch.full((len(logits), READOUT_CLASSES), float("-inf"), dtype=logits.dtype, device=logits.device)
    padded[:, columns if columns is not None else list(range(logits.shape[1]))] = logits
    return padded, placement


def covered_categories(classes: list[str]) -> list[str]:
    """The 16 categories with at least one of their ImageNet indices among the readout's wnid classes."""
    from vito.eval.datasets.imagenet_classes import imagenet_columns
    from vito.eval.datasets.shape_bias import CATEGORIES, CATEGORY_INDICES

    columns = set(imagenet_columns(classes) or [])
    return [c for c in CATEGORIES if columns & set(CATEGORY_INDICES[c])]


def score_shape_bias(name: str, cue_set, logits: torch.Tensor, indices, classes: list[str], suffix: str = ""
                     ) -> tuple[dict[str, float], dict[str, Any], list[dict[str, Any]]]:
    """(metrics, record part, per-category CSV rows) of readout logits (columns: `classes`) on the cue-conflict
    images: pure."""
    from vito.eval.datasets.imagenet_classes import is_imagenet_1k
    from vito.eval.datasets.shape_bias import score_cue_conflict

    placed, placement = as_imagenet_logits(logits, classes)
    result = score_cue_conflict(cue_set, placed, indices)
    prefix = f"eval/{name}/"
    metrics = {f"{prefix}shape_fraction{suffix}": result.shape_fraction,
               f"{prefix}texture_fraction{suffix}": result.texture_fraction,
               f"{prefix}images_scored{suffix}": float(result.images)}
    if result.shape_bias is not None:
        metrics[f"{prefix}shape_bias{suffix}"] = result.shape_bias
    record = {**result.as_record(), "readout_is_imagenet_1k": is_imagenet_1k(classes),
              "readout_placement": placement,
              "categories_decidable": covered_categories(classes) if placement == "by_wnid" else
              (list(result.as_record()["categories"]) if placement == "imagenet_1k" else [])}
    return metrics, record, result.as_rows()


def run_cue_conflict(name: str, bench: CueConflictBenchmark, readout: Readout | OwnHead | None, classes: list[str],
                     encoder: Encoder, settings: ExtractionSettings, *, is_main: bool, suffix: str = ""
                     ) -> BenchmarkOutcome | None:
    from vito.eval.datasets.shape_bias import read_cue_conflict

    cue_set = read_cue_conflict(bench.root, settings.storage_options)
    transform = transform_of(bench)
    features, folder = extract_image_set(cue_set.image_set(), transform, encoder, settings, f"{name} images",
                                         root=bench.root, split="")
    if not is_main:
        return None
    assert readout is not None, "the main rank holds the readout (or the own head)"
    metrics, scores, rows = score_shape_bias(name, cue_set, readout.logits(features.features),
                                             features.indices.tolist(), list(readout.classes), suffix)
    metrics[f"eval/{name}/skipped_images{suffix}"] = float(len(features.skipped))
    record = {"benchmark": name, "kind": bench.kind, "root": bench.root, "scored": readout.describe(), "head": readout.head,
              "readout_classes": len(readout.classes), "transform": transform.key(), "encoder": encoder.key,
              "feature_cache": folder, **scores, "metrics": metrics}
    skipped = [{"split": "", "index": i, "path": path, "reason": reason} for i, path, reason in features.skipped]
    return BenchmarkOutcome(metrics, record, skipped, tables={"per_category.csv": rows})
