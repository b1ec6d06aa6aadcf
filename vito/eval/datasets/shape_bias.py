"""Shape bias on the cue-conflict images (Geirhos et al., bethgelab/model-vs-human).

    <root>/<category>/<shape><i>-<texture><j>.png     16 category folders (the shape's category), 80 images each

`read_cue_conflict` parses every image name into (shape, texture); a name that does not parse, a category
unknown to the 16, a shape that is not its folder's category, a missing or empty category folder are
LayoutErrors naming the path. Images whose shape == texture are kept in the set (`CueConflictSample.conflict`
False) but excluded from the bias.

The 1000-way readout's softmax probabilities are mapped to the 16 categories by averaging them over each
category's ImageNet indices (`CATEGORY_INDICES`, model-vs-human's mapping; indices into the sorted wnid list);
the decision is the argmax over the 16. Over the cue-conflict images:

    shape fraction   = shape hits / images          (decision == the image's shape category)
    texture fraction = texture hits / images        (decision == its texture category)
    shape bias       = shape hits / (shape hits + texture hits)

reported with the counts (`ShapeBiasResult`), and per shape category (`as_rows()`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from vito.eval.datasets.corruption_tree import open_root
from vito.eval.datasets.image_folder import (
    ImageFolderSet,
    ImageSample,
    ImageTransform,
    LayoutError,
    is_image_name,
    list_class_folders,
)

CATEGORIES: tuple[str, ...] = (
    "airplane", "bear", "bicycle", "bird", "boat", "bottle", "car", "cat", "chair", "clock", "dog", "elephant",
    "keyboard", "knife", "oven", "truck",
)


def _indices(*parts: int | tuple[int, int]) -> tuple[int, ...]:
    """Single indices and inclusive (first, last) ranges, flattened."""
    out: list[int] = []
    for part in parts:
        out += list(range(part[0], part[1] + 1)) if isinstance(part, tuple) else [part]
    return tuple(out)


# model-vs-human's 16-class-ImageNet mapping: the ImageNet-1k indices (sorted wnid order) of each category.
CATEGORY_INDICES: dict[str, tuple[int, ...]] = {
    "airplane": _indices(404),
    "bear": _indices((294, 297)),
    "bicycle": _indices(444, 671),
    "bird": _indices(8, (10, 16), (18, 20), (22, 24), (80, 83), (87, 96), (98, 100), (127, 133), (135, 145)),
    "boat": _indices(472, 554, 625, 814, 914),
    "bottle": _indices(440, 720, 737, 898, 899, 901, 907),
    "car": _indices(436, 511, 817),
    "cat": _indices((281, 286)),
    "chair": _indices(423, 559, 765, 857),
    "clock": _indices(409, 530, 892),
    "dog": _indices((152, 191), (193, 203), (205, 226), (228, 241), (243, 250), (252, 257), 259, (261, 263),
                    (265, 268)),
    "elephant": _indices(385, 386),
    "keyboard": _indices(508, 878),
    "knife": _indices(499),
    "oven": _indices(766),
    "truck": _indices(555, 569, 656, 675, 717, 734, 864, 867),
}
assert tuple(CATEGORY_INDICES) == CATEGORIES
READOUT_CLASSES = 1000  # the indices above are into the ImageNet-1k readout
# The notes' rule for every image benchmark (resize 256, centre crop 224) on the 224 px PNGs; which resize
# model-vs-human applies to PyTorch models is unverified: the caller may pass another transform.
CUE_CONFLICT_TRANSFORM = ImageTransform(resize=256, crop=224)
_NAME = re.compile(r"^([a-z]+)(\d+)-([a-z]+)(\d+)\.[A-Za-z]+$")
_EXPECTED = "<category>/<shape><i>-<texture><j>.png, 16 category folders (airplane ... truck)"


@dataclass(frozen=True)
class CueConflictSample:
    path: str
    shape: str
    texture: str

    @property
    def conflict(self) -> bool:
        return self.shape != self.texture


@dataclass
class CueConflictSet:
    root: str
    samples: list[CueConflictSample]
    storage_options: dict[str, Any] = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.samples)

    def image_set(self) -> ImageFolderSet:
        """The images as an ImageFolderSet for `ImageFolderDataset`, labelled by the shape's category index."""
        samples = [ImageSample(s.path, CATEGORIES.index(s.shape)) for s in self.samples]
        return ImageFolderSet(self.root, "", list(CATEGORIES), samples, dict(self.storage_options))


def parse_cue_conflict_name(name: str) -> tuple[str, str]:
    """(shape, texture) of `airplane1-bicycle2.png`; LayoutError if it does not parse or names another category."""
    match = _NAME.match(name)
    if not match or not is_image_name(name):
        raise LayoutError(f"{name}: not a cue-conflict name <shape><i>-<texture><j>.png (e.g. airplane1-bicycle2.png)")
    shape, texture = match.group(1), match.group(3)
    for category in (shape, texture):
        if category not in CATEGORIES:
            raise LayoutError(f"{name}: {category!r} is not one of the 16 categories ({', '.join(CATEGORIES)})")
    return shape, texture


def read_cue_conflict(root: str, storage_options: dict | None = None) -> CueConflictSet:
    """Every image of the 16 category folders, with its parsed (shape, texture), sorted by category then name."""
    store, top, shown_root = open_root(root, storage_options)
    folders = list_class_folders(store, top, shown_root, _EXPECTED, what="category")
    foreign = [name for name in folders if name not in CATEGORIES]
    if foreign:
        raise LayoutError(f"{shown_root}: folder(s) {', '.join(foreign[:5])} not among the 16 categories "
                          f"(expected {_EXPECTED})")
    missing = [name for name in CATEGORIES if name not in folders]
    if missing:
        raise LayoutError(f"{shown_root}: category folder(s) {', '.join(missing)} missing (expected {_EXPECTED})")
    samples: list[CueConflictSample] = []
    for category in CATEGORIES:
        names = [f for f in (store.list_dir(f"{top}/{category}") or ([], []))[1] if is_image_name(f)]
        if not names:
            raise LayoutError(f"{shown_root}/{category}: no images (expected {_EXPECTED}; an interrupted copy?)")
        for name in names:
            try:
                shape, texture = parse_cue_conflict_name(name)
            except LayoutError as problem:
                raise LayoutError(f"{shown_root}/{category}/{problem}") from None
            if shape != category:
                raise LayoutError(f"{shown_root}/{category}/{name}: shape {shape} in the {category}/ folder "
                                  f"(expected each image under its shape's category)")
            samples.append(CueConflictSample(store.sample_path(f"{top}/{category}/{name}"), shape, texture))
    return CueConflictSet(shown_root, samples, dict(storage_options or {}))


def category_probabilities(probabilities: torch.Tensor) -> torch.Tensor:
    """(M, 16): each category's mean of the (M, 1000) softmax probabilities over its ImageNet indices."""
    if probabilities.ndim != 2 or probabilities.shape[1] != READOUT_CLASSES:
        raise ValueError(f"expected (M, {READOUT_CLASSES}) probabilities, got shape {tuple(probabilities.shape)}")
    return torch.stack([probabilities[:, list(CATEGORY_INDICES[c])].mean(dim=1) for c in CATEGORIES], dim=1)


def decisions_16(logits: torch.Tensor) -> list[str]:
    """The 16-class decision of each row of (M, 1000) readout logits: softmax, category means, argmax."""
    probabilities = torch.softmax(logits.float(), dim=1)
    return [CATEGORIES[i] for i in category_probabilities(probabilities).argmax(dim=1).tolist()]


@dataclass
class ShapeBiasResult:
    shape_bias: float | None  # None when no decision hit the shape or the texture
    shape_fraction: float
    texture_fraction: float
    shape_hits: int
    texture_hits: int
    images: int  # cue-conflict images scored (shape != texture)
    excluded: int  # images with shape == texture, not in any figure
    per_category: dict[str, dict[str, Any]]  # shape category -> images, shape_hits, texture_hits, shape_bias

    def as_rows(self) -> list[dict[str, Any]]:
        return [{"category": c, **self.per_category[c]} for c in CATEGORIES if c in self.per_category]

    def as_record(self) -> dict[str, Any]:
        return {"shape_bias": self.shape_bias, "shape_fraction": self.shape_fraction,
                "texture_fraction": self.texture_fraction, "shape_hits": self.shape_hits,
                "texture_hits": self.texture_hits, "images": self.images, "excluded_shape_equals_texture": self.excluded,
                "aggregation": "mean softmax probability over each category's ImageNet indices, argmax over 16",
                "categories": list(CATEGORIES)}


def _bias(shape_hits: int, texture_hits: int) -> float | None:
    total = shape_hits + texture_hits
    return shape_hits / total if total else None


def shape_bias(shapes: Sequence[str], textures: Sequence[str], decisions: Sequence[str]) -> ShapeBiasResult:
    """Shape bias of 16-class `decisions` on images of the given (shape, texture); shape == texture excluded."""
    if not len(shapes) == len(textures) == len(decisions):
        raise ValueError(f"{len(shapes)} shapes, {len(textures)} textures, {len(decisions)} decisions: one each")
    per: dict[str, dict[str, Any]] = {}
    excluded = 0
    for shape, texture, decision in zip(shapes, textures, decisions, strict=True):
        if shape == texture:
            excluded += 1
            continue
        row = per.setdefault(shape, {"images": 0, "shape_hits": 0, "texture_hits": 0})
        row["images"] += 1
        row["shape_hits"] += decision == shape
        row["texture_hits"] += decision == texture
    for row in per.values():
        row["shape_bias"] = _bias(row["shape_hits"], row["texture_hits"])
    images = sum(row["images"] for row in per.values())
    shape_hits = sum(row["shape_hits"] for row in per.values())
    texture_hits = sum(row["texture_hits"] for row in per.values())
    if not images:
        raise ValueError("no cue-conflict image (every image has shape == texture)")
    return ShapeBiasResult(_bias(shape_hits, texture_hits), shape_hits / images, texture_hits / images,
                           shape_hits, texture_hits, images, excluded, per)


def score_cue_conflict(cue_set: CueConflictSet, logits: torch.Tensor,
                       indices: Sequence[int] | None = None) -> ShapeBiasResult:
    """Shape bias of the readout's (M, 1000) logits; row k is sample `indices[k]` (all samples in order when None,
    e.g. the extraction's indices when some images could not be decoded)."""
    rows = list(range(len(cue_set))) if indices is None else [int(i) for i in indices]
    if len(logits) != len(rows):
        raise ValueError(f"{len(logits)} rows of logits for {len(rows)} images")
    samples = [cue_set.samples[i] for i in rows]
    return shape_bias([s.shape for s in samples], [s.texture for s in samples], decisions_16(logits))
