"""ImageNet-A, ImageNet-R and any set over a subset of the ImageNet-1k classes, scored by a restricted argmax.

    <root>/<wnid>/*.JPEG        ImageNet-A and ImageNet-R: 200 wnid folders (any N <= the readout's classes)

The subset's wnid folders, sorted, are the subset's classes; sample labels are positions in that sorted list
(0..N-1), as torchvision's ImageFolder gives them. `columns[i]` is the readout column (the position in the
caller's sorted ImageNet-1k wnid list) of the subset's i-th wnid: built from the folder names, never a
hard-coded list. `restricted_top1` takes the argmax of the 1000-way logits over those columns only
(natural-adv-examples / imagenet-r's `output[:, indices_in_1k]`), so the other 1000 - N classes cannot win.
A wnid folder not in the caller's classes is a LayoutError naming it. Images at any depth under a wnid folder;
an unreadable image is skipped and reported by `ImageFolderDataset`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from vito.eval.datasets.corruption_tree import check_class_list, open_root
from vito.eval.datasets.image_folder import (
    ImageFolderSet,
    ImageSample,
    ImageTransform,
    LayoutError,
    images_of_class_folders,
    list_class_folders,
)

SUBSET_TRANSFORM = ImageTransform(resize=256, crop=224)  # every image benchmark's resize 256 / centre crop 224
_EXPECTED = "<wnid>/*.JPEG (wnid folders directly under the root)"


@dataclass
class ClassSubset:
    image_set: ImageFolderSet  # classes = the subset's sorted wnids, labels = positions in them
    columns: list[int]  # columns[i] = readout column of image_set.classes[i]
    num_readout_classes: int

    @property
    def wnids(self) -> list[str]:
        return self.image_set.classes

    def as_record(self) -> dict[str, Any]:
        return {"root": self.image_set.root, "classes": len(self.columns), "images": len(self.image_set),
                "readout_classes": self.num_readout_classes, "restricted_argmax": True,
                "transform": SUBSET_TRANSFORM.key()}


def subset_columns(wnids: Sequence[str], classes: Sequence[str]) -> list[int]:
    """The readout column of each of `wnids`, in sorted wnid order: column i = classes.index(sorted(wnids)[i])."""
    index = {wnid: i for i, wnid in enumerate(classes)}
    foreign = [wnid for wnid in wnids if wnid not in index]
    if foreign:
        raise LayoutError(f"wnid(s) not among the readout's {len(classes)} classes: {', '.join(sorted(foreign)[:5])}")
    return [index[wnid] for wnid in sorted(wnids)]


def read_class_subset(root: str, classes: Sequence[str], storage_options: dict | None = None) -> ClassSubset:
    """The images of `<root>/<wnid>/`, labelled 0..N-1 by sorted wnid, and each wnid's readout column."""
    check_class_list(classes)
    store, top, shown_root = open_root(root, storage_options)
    folders = list_class_folders(store, top, shown_root, _EXPECTED, what="wnid")
    index = {wnid: i for i, wnid in enumerate(classes)}
    foreign = [wnid for wnid in folders if wnid not in index]
    if foreign:
        shown = ", ".join(foreign[:5]) + (" ..." if len(foreign) > 5 else "")
        raise LayoutError(f"{shown_root}: {len(foreign)} folder(s) not among the readout's {len(classes)} classes: "
                          f"{shown} (expected {_EXPECTED}, wnids of the readout's ImageNet-1k classes)")
    by_class = images_of_class_folders(store, top, folders, shown_root, _EXPECTED, what="wnid")
    wnids = sorted(folders)
    samples = [ImageSample(store.sample_path(f"{top}/{wnid}/{relative}"), label)
               for label, wnid in enumerate(wnids) for relative in by_class[wnid]]
    image_set = ImageFolderSet(shown_root, "", wnids, samples, dict(storage_options or {}))
    return ClassSubset(image_set, subset_columns(wnids, classes), len(classes))


def restricted_predictions(logits: torch.Tensor, columns: Sequence[int]) -> torch.Tensor:
    """Subset labels (0..N-1): the argmax of `logits` (M x C readout logits) over `columns` only."""
    if logits.ndim != 2:
        raise ValueError(f"logits must be (M, C), got shape {tuple(logits.shape)}")
    if not columns or max(columns) >= logits.shape[1] or min(columns) < 0:
        raise ValueError(f"columns must be non-empty indices into the {logits.shape[1]} logits")
    return logits[:, torch.as_tensor(list(columns), device=logits.device)].argmax(dim=1)


def restricted_top1(logits: torch.Tensor, labels: torch.Tensor, columns: Sequence[int]) -> float:
    """Top-1 (fraction) of the restricted argmax against `labels`, positions in the subset (0..N-1)."""
    if len(labels) != len(logits):
        raise ValueError(f"{len(logits)} rows of logits but {len(labels)} labels")
    if len(labels) == 0:
        raise ValueError("no samples to score")
    predictions = restricted_predictions(logits, columns)
    return (predictions == labels.to(predictions.device)).float().mean().item()
