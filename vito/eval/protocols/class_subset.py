"""ImageNet-A / ImageNet-R (`kind: class_subset`), scored through an image_folder benchmark's linear readout.

The subset's wnid folders are mapped to the readout's columns (vito/eval/datasets/class_subsets.py); top-1 is the argmax
of the readout's logits restricted to those columns (natural-adv-examples / imagenet-r's
`output[:, indices_in_1k]`). A per-class CSV gives each wnid's images and top-1.
"""

from __future__ import annotations

from typing import Any

import torch

from vito.config import ClassSubsetBenchmark
from vito.eval.protocols.image_folder import (
    BenchmarkOutcome,
    Encoder,
    ExtractionSettings,
    OwnHead,
    Readout,
    extract_image_set,
    transform_of,
)


def score_subset(name: str, logits: torch.Tensor, labels: torch.Tensor, columns: list[int], wnids: list[str],
                 suffix: str = "") -> tuple[dict[str, float], list[dict[str, Any]]]:
    """(metrics, per-class CSV rows) of readout logits on a class subset: pure."""
    from vito.eval.datasets.class_subsets import restricted_predictions, restricted_top1

    prefix = f"eval/{name}/"
    metrics = {f"{prefix}top1{suffix}": restricted_top1(logits, labels, columns),
               f"{prefix}images_scored{suffix}": float(len(labels))}
    hits = restricted_predictions(logits, columns).cpu() == labels.cpu()
    rows = []
    for label, wnid in enumerate(wnids):
        mine = labels.cpu() == label
        count = int(mine.sum())
        rows.append({"wnid": wnid, "readout_column": columns[label], "images": count,
                     "top1": float(hits[mine].float().mean()) if count else None})
    return metrics, rows


def run_class_subset(name: str, bench: ClassSubsetBenchmark, readout: Readout | OwnHead | None, classes: list[str],
                     encoder: Encoder, settings: ExtractionSettings, *, is_main: bool, suffix: str = ""
                     ) -> BenchmarkOutcome | None:
    from vito.eval.datasets.class_subsets import read_class_subset

    subset = read_class_subset(bench.root, classes, settings.storage_options)
    transform = transform_of(bench)
    features, folder = extract_image_set(subset.image_set, transform, encoder, settings, f"{name} images",
                                         root=bench.root, split="")
    if not is_main:
        return None
    assert readout is not None, "the main rank holds the readout (or the own head)"
    metrics, rows = score_subset(name, readout.logits(features.features), features.labels, subset.columns,
                                 subset.wnids, suffix)
    metrics[f"eval/{name}/skipped_images{suffix}"] = float(len(features.skipped))
    record = {"benchmark": name, "kind": bench.kind, "root": bench.root, "scored": readout.describe(), "head": readout.head,
              **subset.as_record(), "transform": transform.key(), "encoder": encoder.key, "feature_cache": folder,
              "argmax": "restricted to the subset's readout columns", "metrics": metrics}
    skipped = [{"split": "", "index": i, "path": path, "reason": reason} for i, path, reason in features.skipped]
    return BenchmarkOutcome(metrics, record, skipped, tables={"per_class.csv": rows})
