"""ImageNet-C and ImageNet-3DCC (`kind: corruptions`), scored through an image_folder benchmark's linear readout.

Every (corruption, severity) set of the tree (vito/eval/datasets/corruption_tree.py, labelled by the readout's classes) is
extracted like any image set (every rank a share, cached by shard); the main rank takes the top-1 of the readout's
argmax on each and computes, with vito/eval/scoring/robustness_metrics.py: ImageNet-C's CE per benchmark corruption, mCE
and relative mCE (only when all 15 benchmark corruptions are present; the clean top-1 is the readout's own linear
top-1 on its val split), extras apart; ImageNet-3DCC's mean error per corruption and over all 12.
"""

from __future__ import annotations

from typing import Any

import torch

from vito.config import CorruptionsBenchmark
from vito.eval.protocols.image_folder import (
    BenchmarkOutcome,
    Encoder,
    ExtractionSettings,
    OwnHead,
    Readout,
    extract_image_set,
    transform_of,
)


def corruption_top1(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 (fraction) of the readout's argmax over all its classes (hendrycks/robustness: no restriction)."""
    if len(logits) != len(labels) or len(labels) == 0:
        raise ValueError(f"{len(logits)} rows of logits for {len(labels)} labels (need at least one)")
    return (logits.argmax(dim=1) == labels.to(logits.device)).float().mean().item()


def score_corruptions(name: str, bench: CorruptionsBenchmark, table: dict[str, dict[int, float]],
                      images: dict[str, dict[int, int]], readout_clean_top1: float | None, suffix: str = ""
                      ) -> tuple[dict[str, float], dict[str, Any], list[dict[str, Any]]]:
    """(metrics, record part, CSV rows) of a top-1 table {corruption: {severity: top1}}: pure."""
    from vito.eval.scoring.robustness_metrics import imagenet_3dcc_errors, imagenet_c_errors

    prefix = f"eval/{name}/"
    metrics: dict[str, float] = {f"{prefix}images_scored{suffix}": float(sum(sum(v.values()) for v in images.values()))}
    if bench.set == "imagenet-c":
        result = imagenet_c_errors(table, readout_clean_top1)
        for corruption, ce in result.ce.items():
            metrics[f"{prefix}{corruption}_ce{suffix}"] = ce
        if result.mce is not None:
            metrics[f"{prefix}mce{suffix}"] = result.mce
        if result.relative_mce is not None:
            metrics[f"{prefix}relative_mce{suffix}"] = result.relative_mce
        record = {**result.as_record(), "partial": bool(result.missing),
                  "mce_reported": result.mce is not None,
                  "why_no_mce": (f"{len(result.missing)} of the 15 benchmark corruptions missing: an average over a "
                                 "subset is not mCE" if result.missing else None)}
    else:
        result = imagenet_3dcc_errors(table)
        for corruption, error in result.mean_error.items():
            metrics[f"{prefix}{corruption}_error{suffix}"] = error
        if result.overall_error is not None:
            metrics[f"{prefix}mean_error{suffix}"] = result.overall_error
            metrics[f"{prefix}top1{suffix}"] = result.overall_top1
        record = {**result.as_record(), "partial": bool(result.missing)}
    rows = [{**row, "images": images[row["corruption"]][row["severity"]]} for row in result.as_rows()]
    return metrics, record, rows


def run_corruptions(name: str, bench: CorruptionsBenchmark, readout: Readout | OwnHead | None, classes: list[str],
                    encoder: Encoder, settings: ExtractionSettings, *, is_main: bool, suffix: str = ""
                    ) -> BenchmarkOutcome | None:
    """Extract every corruption x severity on every rank; score on the main one (None elsewhere)."""
    from vito.eval.datasets.corruption_tree import read_corruption_tree

    tree = read_corruption_tree(bench.root, classes, bench.set, settings.storage_options)
    transform = transform_of(bench)
    extracted = {}
    for (corruption, severity), image_set in tree.sets.items():
        split = f"{tree.folders[corruption]}/{severity}"
        extracted[corruption, severity] = extract_image_set(image_set, transform, encoder, settings,
                                                            f"{name} {split}", root=bench.root, split=split)
    if not is_main:
        return None
    assert readout is not None, "the main rank holds the readout (or the own head)"
    table: dict[str, dict[int, float]] = {}
    images: dict[str, dict[int, int]] = {}
    skipped = []
    for (corruption, severity), (features, _) in extracted.items():
        table.setdefault(corruption, {})[severity] = corruption_top1(readout.logits(features.features), features.labels)
        images.setdefault(corruption, {})[severity] = len(features.indices)
        skipped += [{"split": f"{tree.folders[corruption]}/{severity}", "index": i, "path": path, "reason": reason}
                    for i, path, reason in features.skipped]
    metrics, scores, rows = score_corruptions(name, bench, table, images, readout.clean_top1, suffix)
    metrics[f"eval/{name}/skipped_images{suffix}"] = float(len(skipped))
    record = {"benchmark": name, "kind": bench.kind, "set": bench.set, "root": bench.root,
              "scored": readout.describe(), "head": readout.head, "readout_classes": len(readout.classes),
              "transform": transform.key(), "encoder": encoder.key,
              "tree": {k: v for k, v in tree.as_record().items() if k != "transform"},  # ours is the field's
              "feature_cache": {f"{c}/{s}": folder for (c, s), (_, folder) in extracted.items()},
              **scores, "metrics": metrics}
    return BenchmarkOutcome(metrics, record, skipped, tables={"per_corruption.csv": rows})
