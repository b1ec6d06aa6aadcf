"""ImageNet-C and ImageNet-3DCC: corruption trees scored through the 1000-way ImageNet readout.

    <root>/<corruption>/<severity 1-5>/<wnid>/*.JPEG            e.g. gaussian_noise/3/n01440764/x.JPEG
    <root>/<family>/<corruption>/<severity 1-5>/<wnid>/*.JPEG   ImageNet-C as unpacked from its family tarballs

Corruption folder names are checked against the known lists (`IMAGENET_C_BENCHMARK`, `IMAGENET_C_EXTRA`,
`IMAGENET_3DCC`). A folder that is neither a known corruption nor (ImageNet-C only) a family folder is reported
in `CorruptionTree.unknown` and never scored. Every corruption must hold exactly the severity folders 1..5: a
missing one, or any other folder name, is a LayoutError. The wnid folders of a severity are labelled by the
position of the wnid in the caller's class list (the sorted ImageNet-1k wnids, the readout's columns); a wnid
not in that list is a LayoutError naming it. Images at any depth under a wnid folder; an unreadable image is
skipped and reported by `ImageFolderDataset`, as for every image benchmark.

The images are already 224 px: `CORRUPTION_TRANSFORM` centre crops only.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from vito.eval.datasets.image_folder import (
    FolderStore,
    ImageFolderSet,
    ImageSample,
    ImageTransform,
    LayoutError,
    images_of_class_folders,
    list_class_folders,
)

# hendrycks/robustness (ImageNet-C): the 15 corruptions of the benchmark, by family tarball.
IMAGENET_C_FAMILIES: dict[str, tuple[str, ...]] = {
    "noise": ("gaussian_noise", "shot_noise", "impulse_noise"),
    "blur": ("defocus_blur", "glass_blur", "motion_blur", "zoom_blur"),
    "weather": ("snow", "frost", "fog", "brightness"),
    "digital": ("contrast", "elastic_transform", "pixelate", "jpeg_compression"),
    "extra": ("speckle_noise", "gaussian_blur", "spatter", "saturate"),
}
IMAGENET_C_BENCHMARK: tuple[str, ...] = tuple(
    name for family in ("noise", "blur", "weather", "digital") for name in IMAGENET_C_FAMILIES[family]
)
IMAGENET_C_EXTRA: tuple[str, ...] = IMAGENET_C_FAMILIES["extra"]  # reported apart, never in mCE
# ImageNet-3DCC (Kar et al. 2022): 12 corruptions, no family level known (unverified whether its tarballs add one).
IMAGENET_3DCC: tuple[str, ...] = (
    "near_focus", "far_focus", "xy_motion_blur", "z_motion_blur", "flash", "h265_crf", "h265_abr", "bit_error",
    "fog_3d", "iso_noise", "color_quant", "low_light",
)
SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)
CORRUPTION_TRANSFORM = ImageTransform(resize=0, crop=224)  # the images are 224 px already: centre crop only

Benchmark = Literal["imagenet-c", "imagenet-3dcc"]
KNOWN_CORRUPTIONS: dict[str, tuple[str, ...]] = {
    "imagenet-c": IMAGENET_C_BENCHMARK + IMAGENET_C_EXTRA,
    "imagenet-3dcc": IMAGENET_3DCC,
}
FAMILY_FOLDERS: dict[str, tuple[str, ...]] = {"imagenet-c": tuple(IMAGENET_C_FAMILIES), "imagenet-3dcc": ()}
_EXPECTED = "<corruption>/<severity 1-5>/<wnid>/*.JPEG"


@dataclass
class CorruptionTree:
    """Every (corruption, severity) of a tree as an ImageFolderSet over the caller's classes."""

    root: str
    benchmark: str
    classes: list[str]
    sets: dict[tuple[str, int], ImageFolderSet]  # (corruption, severity) -> its samples, labels = index in classes
    folders: dict[str, str]  # corruption -> its folder relative to the root (`gaussian_noise`, `noise/gaussian_noise`)
    unknown: list[str] = field(default_factory=list)  # folders (relative to root) neither a corruption nor a family

    @property
    def corruptions(self) -> list[str]:
        """The corruptions found, in the order of the benchmark's list."""
        return [name for name in KNOWN_CORRUPTIONS[self.benchmark] if name in self.folders]

    @property
    def missing(self) -> list[str]:
        return [name for name in KNOWN_CORRUPTIONS[self.benchmark] if name not in self.folders]

    def counts(self) -> dict[str, dict[int, int]]:
        return {name: {severity: len(self.sets[name, severity]) for severity in SEVERITIES}
                for name in self.corruptions}

    def as_record(self) -> dict[str, Any]:
        """The reader's facts and constants, for the result record."""
        return {
            "benchmark": self.benchmark,
            "root": self.root,
            "corruptions": self.corruptions,
            "missing": self.missing,
            "unknown_folders": list(self.unknown),
            "severities": list(SEVERITIES),
            "images": self.counts(),
            "transform": CORRUPTION_TRANSFORM.key(),
        }


def open_root(root: str, storage_options: dict | None) -> tuple[FolderStore, str, str]:
    """The store of the root's parent and the root's own name: every listing is then `<name>/...`."""
    stripped = root.rstrip("/") or "/"
    if "://" in stripped and not stripped.startswith("file://"):
        scheme, _, path = stripped.partition("://")
        parent, _, name = path.rpartition("/")
        if not parent or not name:
            raise LayoutError(f"{root}: the tree must be a folder inside a bucket, not the bucket itself")
        return FolderStore(f"{scheme}://{parent}", storage_options), name, stripped
    local = os.path.abspath(stripped.removeprefix("file://"))
    return FolderStore(os.path.dirname(local), None), os.path.basename(local), stripped


def check_class_list(classes: Sequence[str]) -> None:
    """The readout's class list: unique and sorted (the ImageFolder order every ImageNet mapping assumes)."""
    if not classes:
        raise ValueError("classes is empty: pass the readout's class list (the sorted ImageNet-1k wnids)")
    if list(classes) != sorted(set(classes)):
        raise ValueError("classes must be unique and sorted (the ImageFolder order of the readout's train/ folders)")


def read_corruption_tree(root: str, classes: Sequence[str], benchmark: Benchmark = "imagenet-c",
                         storage_options: dict | None = None) -> CorruptionTree:
    """The (corruption, severity) sets of an ImageNet-C or ImageNet-3DCC tree, labelled by `classes`.

    Unknown folders are returned in `unknown`, not raised and not scored. LayoutError: no known corruption
    at all, a corruption found twice (flat and under a family), a missing or extra severity folder, image files
    where folders are expected, a wnid not in `classes`, an empty wnid folder or severity.
    """
    if benchmark not in KNOWN_CORRUPTIONS:
        raise ValueError(f"benchmark must be one of {sorted(KNOWN_CORRUPTIONS)}, not {benchmark!r}")
    check_class_list(classes)
    store, top, shown_root = open_root(root, storage_options)
    known, families = KNOWN_CORRUPTIONS[benchmark], FAMILY_FOLDERS[benchmark]
    listing = store.list_dir(top)
    if listing is None:
        raise LayoutError(f"{shown_root}: not a folder (expected {_EXPECTED})")

    folders: dict[str, str] = {}
    unknown: list[str] = []

    def add(name: str, relative: str) -> None:
        if name in folders:
            raise LayoutError(f"{shown_root}: corruption {name} found twice, {folders[name]}/ and {relative}/ "
                              f"(expected one {_EXPECTED})")
        folders[name] = relative

    for name in listing[0]:
        if name in known:
            add(name, name)
        elif name in families:
            inner = store.list_dir(f"{top}/{name}")
            for child in inner[0] if inner else []:
                if child in known:
                    add(child, f"{name}/{child}")
                else:
                    unknown.append(f"{name}/{child}")
        else:
            unknown.append(name)
    if not folders:
        shown = ", ".join(unknown[:5]) or "nothing"
        raise LayoutError(f"{shown_root}: no {benchmark} corruption folder (found {shown}; expected {_EXPECTED}"
                          f"{' with an optional <family>/ level' if families else ''}, corruptions named as in "
                          f"{', '.join(known[:3])} ...)")

    index = {wnid: i for i, wnid in enumerate(classes)}
    sets: dict[tuple[str, int], ImageFolderSet] = {}
    for name in [n for n in known if n in folders]:
        relative = folders[name]
        found_folders = list_class_folders(store, f"{top}/{relative}", f"{shown_root}/{relative}",
                                           f"{relative}/<severity 1-5>/<wnid>/*.JPEG", what="severity")
        wrong = [s for s in found_folders if s not in {str(v) for v in SEVERITIES}]
        if wrong:
            raise LayoutError(f"{shown_root}/{relative}: severity folder(s) {', '.join(wrong)} outside 1..5 "
                              f"(expected {relative}/<severity 1-5>/<wnid>/*.JPEG)")
        missing = [str(s) for s in SEVERITIES if str(s) not in found_folders]
        if missing:
            raise LayoutError(f"{shown_root}/{relative}: severity folder(s) {', '.join(missing)} missing "
                              f"(expected {relative}/1/ ... {relative}/5/, an interrupted copy?)")
        for severity in SEVERITIES:
            split = f"{relative}/{severity}"
            sets[name, severity] = _read_severity(store, top, shown_root, split, index, list(classes),
                                                  storage_options)
    return CorruptionTree(shown_root, benchmark, list(classes), sets, folders, unknown)


def _read_severity(store: FolderStore, top: str, shown_root: str, split: str, index: dict[str, int],
                   classes: list[str], storage_options: dict | None) -> ImageFolderSet:
    where, expected = f"{shown_root}/{split}", f"{split}/<wnid>/*.JPEG"
    folders = list_class_folders(store, f"{top}/{split}", where, expected, what="wnid")
    foreign = [wnid for wnid in folders if wnid not in index]
    if foreign:
        shown = ", ".join(foreign[:5]) + (" ..." if len(foreign) > 5 else "")
        raise LayoutError(f"{where}: {len(foreign)} wnid folder(s) not among the readout's {len(index)} classes: "
                          f"{shown} (the tree must use the readout's ImageNet-1k wnids)")
    by_class = images_of_class_folders(store, f"{top}/{split}", folders, where, expected, what="wnid")
    samples = [ImageSample(store.sample_path(f"{top}/{split}/{wnid}/{relative}"), index[wnid])
               for wnid in folders for relative in by_class[wnid]]
    return ImageFolderSet(shown_root, split, classes, samples, dict(storage_options or {}))
