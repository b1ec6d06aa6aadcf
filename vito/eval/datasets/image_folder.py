"""Labelled image folders (torchvision's ImageFolder layout), local or on any fsspec store (`s3://`).

    <root>/train/<class>/*.JPEG        e.g. ImageNet-1k: train/n01440764/n01440764_10026.JPEG
    <root>/val/<class>/*.JPEG

The class index is the position of the folder name in the sorted list of class folders of `train/` (every
ImageNet-derived mapping assumes this order); another split must hold the same classes or a subset. Images
are `.jpeg`, `.jpg` or `.png` in any case, at any depth under their class folder; names starting with a dot
are ignored.

`ImageTransform` is the evaluation transform of every image benchmark: resize the short side, centre crop,
normalise with the ImageNet mean/std. Its `key()` names the resize policy, which moves top-1 by a few tenths:
record it with results and in cache keys.

`ImageFolderDataset` never raises for a bad image: `dataset[i]` is `(i, tensor, None)` or `(i, None, reason)`,
and `collate` keeps the good ones and reports the others. A store that fails to answer (not a missing file)
is retried and then raised: an outage must fail the job, not quietly thin the benchmark.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

import fsspec
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageFile

from vito.checkpoint import with_retries
from vito.data.augment import MEAN, STD

IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png")
_EXPECTED = "{split}/<class>/*.JPEG"
_ADDRESS = re.compile(r" (object )?at 0x[0-9a-fA-F]+")
_MEAN_CHW = MEAN[:, None, None]
_STD_CHW = STD[:, None, None]


class LayoutError(ValueError):
    """The folder is not in the expected layout; the message names the path and what was expected."""


def is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _is_remote(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


# -- listing -----------------------------------------------------------------------------------------------


@dataclass
class _Listing:
    root: str  # as the caller gave it, without a trailing slash: for messages and sample paths
    split: str
    classes: list[str]
    files: dict[str, list[str]]  # class -> paths relative to <root>/<split>/<class>, sorted


class FolderStore:
    """The root's filesystem, with the one difference that matters for speed: a local tree is walked with
    os.scandir (no stat per file), a remote one listed with fsspec (one recursive listing per split)."""

    def __init__(self, root: str, storage_options: dict | None):
        self.root = root.rstrip("/") or "/"
        self.local = not _is_remote(self.root)
        if self.local:
            self.fs, self.base = None, os.path.abspath(self.root.removeprefix("file://"))
        else:
            self.fs, self.base = fsspec.core.url_to_fs(self.root, **(storage_options or {}))
            self.base = self.base.rstrip("/")

    def sample_path(self, relative: str) -> str:
        """A path that opens the file: absolute for a local tree, the full URL for a remote one."""
        if self.local:
            return os.path.join(self.base, relative)
        return f"{self.root}/{relative}"

    def list_dir(self, relative: str) -> tuple[list[str], list[str]] | None:
        """(folders, files) directly under `relative`, names only, sorted; None if it is not a folder."""
        if self.local:
            path = os.path.join(self.base, relative)
            if not os.path.isdir(path):
                return None
            folders, files = [], []
            with os.scandir(path) as entries:
                for entry in entries:
                    if entry.name.startswith("."):
                        continue
                    (folders if entry.is_dir() else files).append(entry.name)
            return sorted(folders), sorted(files)
        path = f"{self.base}/{relative}"
        try:
            entries = with_retries(lambda: self.fs.ls(path, detail=True, refresh=True), f"listing {self.root}/{relative}")
        except FileNotFoundError:
            return None
        if not entries or (len(entries) == 1 and entries[0].get("type") == "file" and entries[0]["name"].rstrip("/") == path):
            return None  # nothing there (S3 has no empty folders), or a file in its place
        folders, files = [], []
        for entry in entries:
            name = entry["name"].rstrip("/").rsplit("/", 1)[-1]
            if name.startswith("."):
                continue
            (folders if entry.get("type") == "directory" else files).append(name)
        return sorted(folders), sorted(files)

    def images_by_class(self, split: str, classes: Sequence[str]) -> dict[str, list[str]]:
        """Each class folder's image files at any depth, as paths relative to the class folder, sorted.

        Local: a walk per class folder. Remote: one recursive listing of the split (on S3 a paginated
        listing, 1,000 keys a request), grouped by class: far fewer requests than one listing per class."""
        found: dict[str, list[str]] = {name: [] for name in classes}
        if self.local:
            for name in classes:
                top = os.path.join(self.base, split, name)
                for folder, dirs, files in os.walk(top):
                    dirs[:] = [d for d in dirs if not d.startswith(".")]
                    prefix = os.path.relpath(folder, top)
                    found[name] += [f if prefix == "." else f"{prefix}/{f}"
                                    for f in files if is_image_name(f) and not f.startswith(".")]
        else:
            path = f"{self.base}/{split}"
            for key in with_retries(lambda: self.fs.find(path, withdirs=False), f"listing {self.root}/{split}"):
                parts = key[len(path) + 1:].split("/")
                if len(parts) >= 2 and parts[0] in found and is_image_name(parts[-1]) \
                        and not any(part.startswith(".") for part in parts):
                    found[parts[0]].append("/".join(parts[1:]))
        return {name: sorted(files) for name, files in found.items()}


def list_class_folders(store: FolderStore, relative: str, where: str, expected: str, *, what: str = "class",
                       hint: str = "", not_found: str | None = None) -> list[str]:
    """The folders directly under `relative` (sorted): every reader's "list the class folders" step, with one
    message shape. LayoutError naming `where` when it is not a folder, holds image files directly, or holds no
    folder; `expected` is the layout the reader wants there, `hint` an optional last word, `not_found` the message
    when `relative` is not a folder (default: "<where>: not a folder")."""
    listing = store.list_dir(relative)
    if listing is None:
        raise LayoutError(not_found or f"{where}: not a folder (expected {expected})")
    folders, files = listing
    stray = [name for name in files if is_image_name(name)]
    if stray:
        raise LayoutError(f"{where}: {len(stray)} image file(s) directly under {relative.rsplit('/', 1)[-1]}/ (e.g. "
                          f"{stray[0]}); expected them in "
                          f"{what} folders, {expected}{hint}")
    if not folders:
        raise LayoutError(f"{where}: no {what} folders (expected {expected})")
    return folders


def images_of_class_folders(store: FolderStore, relative: str, folders: Sequence[str], where: str, expected: str,
                            *, what: str = "class") -> dict[str, list[str]]:
    """`FolderStore.images_by_class` of `folders`, or one LayoutError naming the empty ones (an interrupted copy)."""
    by_class = store.images_by_class(relative, folders)
    if not any(by_class.values()):
        raise LayoutError(f"{where}: no images ({' '.join(IMAGE_EXTENSIONS)}) in its {len(folders)} {what} folder(s) "
                          f"(expected {expected})")
    empty = [name for name, images in by_class.items() if not images]
    if empty:
        raise LayoutError(f"{where}: {len(empty)} {what} folder(s) without images ({' '.join(IMAGE_EXTENSIONS)}), "
                          f"e.g. {empty[0]}/ (expected {expected}; an interrupted copy?)")
    return by_class


def _list_split(store: FolderStore, split: str) -> _Listing:
    expected = _EXPECTED.format(split=split)
    where = f"{store.root}/{split}"
    folders = list_class_folders(store, split, where, expected, not_found=f"{store.root}: no {split}/ folder "
                                 f"(expected {expected})",
                                 hint=" (the official ImageNet val tar is flat: sort it into wnid folders first)")
    by_class = images_of_class_folders(store, split, folders, where, expected)
    return _Listing(store.root, split, folders, by_class)


def _check_subset(listing: _Listing, classes: Sequence[str], classes_from: str) -> None:
    known = set(classes)
    unknown = [name for name in listing.classes if name not in known]
    if unknown:
        shown = ", ".join(unknown[:5]) + (" ..." if len(unknown) > 5 else "")
        raise LayoutError(
            f"{listing.root}/{listing.split}: {len(unknown)} class folder(s) not in {classes_from}/: {shown}; "
            f"{listing.split}/ must hold the same classes as {classes_from}/ or a subset"
        )


def check_layout(root: str, splits: Sequence[str] = ("train", "val"), storage_options: dict | None = None) -> None:
    """Raise LayoutError unless every split is `<split>/<class>/<images>` with every class folder non-empty,
    and every split after the first holds the first one's classes or a subset. Lists files, opens none.

    The listing is complete (an empty class folder anywhere is found): on S3 that is one paginated listing
    per split, about 1,300 requests for ImageNet-1k train.
    """
    store = FolderStore(root, storage_options)
    listings = [_list_split(store, split) for split in splits]
    for listing in listings[1:]:
        _check_subset(listing, listings[0].classes, listings[0].split)


# -- the set -----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)  # slots: ImageNet train holds 1.28 M of them on every rank
class ImageSample:
    path: str  # opens the file: an absolute local path or a full URL
    label: int


@dataclass
class ImageFolderSet:
    root: str
    split: str
    classes: list[str]
    samples: list[ImageSample]
    storage_options: dict[str, Any] = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.samples)

    def relative_path(self, sample: ImageSample) -> str:
        """The sample's path relative to the root (`val/n01440764/x.JPEG`)."""
        for prefix in (self.root.rstrip("/") + "/", os.path.abspath(self.root.removeprefix("file://")) + "/"):
            if sample.path.startswith(prefix):
                return sample.path[len(prefix):]
        return sample.path

    def fingerprint(self) -> str:
        """A stable hash of the sorted relative paths and labels: a cache keyed by it changes with the set
        (an image added, removed or relabelled) but not with where the root is mounted."""
        digest = hashlib.sha256()
        for relative, label in sorted((self.relative_path(s), s.label) for s in self.samples):
            digest.update(f"{relative}\t{label}\n".encode())
        return digest.hexdigest()[:32]


def read_image_folder(root: str, split: str, storage_options: dict | None = None, *,
                      classes_from: str | None = "train") -> ImageFolderSet:
    """The samples of `<root>/<split>`, sorted by class then path, labelled by class index.

    The class index comes from the class folders of `<root>/<classes_from>` (train by default, as for every
    ImageNet-derived set); `classes_from=None` uses the split's own folders (a labelled folder with one split).
    """
    store = FolderStore(root, storage_options)
    listing = _list_split(store, split)
    if classes_from is None or classes_from == split:
        classes = listing.classes
    else:
        reference = store.list_dir(classes_from)
        if reference is None:
            raise LayoutError(
                f"{store.root}: no {classes_from}/ folder, which gives the class index of {split}/ (expected "
                f"{_EXPECTED.format(split=classes_from)}); for a folder whose own class folders are the classes, "
                "pass classes_from=None"
            )
        classes = reference[0]
        if not classes:
            raise LayoutError(f"{store.root}/{classes_from}: no class folders (expected {_EXPECTED.format(split=classes_from)})")
        _check_subset(listing, classes, classes_from)
    index = {name: i for i, name in enumerate(classes)}
    samples = [
        ImageSample(store.sample_path(f"{split}/{name}/{relative}"), index[name])
        for name in listing.classes
        for relative in listing.files[name]
    ]
    return ImageFolderSet(store.root, split, list(classes), samples, dict(storage_options or {}))


# -- the transform -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageTransform:
    """Resize the short side to `resize` (0: no resize, e.g. ImageNet-C's 224 px images), centre crop `crop`,
    to a float (3, crop, crop) tensor normalised by the ImageNet mean/std.

    antialias=True resizes with PIL (whose filters always antialias: torchvision's PIL pipeline);
    antialias=False resizes the uint8 tensor with torch's interpolate without antialiasing (torchvision's tensor
    pipeline). decoder_draft asks libjpeg to decode a JPEG at 1/2, 1/4 or 1/8 scale when the result is still at
    least the resize target in both sides, then resizes from there: several times faster on large photos. The
    reduced decode averages pixels (DCT scaling), so with antialias=False it is further from a full decode than
    with antialias=True; both are part of key().
    """

    resize: int = 256
    crop: int = 224
    interpolation: Literal["bilinear", "bicubic"] = "bilinear"
    antialias: bool = True
    decoder_draft: bool = True

    def __post_init__(self) -> None:
        if self.interpolation not in ("bilinear", "bicubic"):
            raise ValueError(f"interpolation must be 'bilinear' or 'bicubic', not {self.interpolation!r}")
        if self.resize < 0 or self.crop <= 0:
            raise ValueError(f"resize must be >= 0 and crop > 0 (got resize={self.resize}, crop={self.crop})")

    def key(self) -> str:
        """The resize policy in one string, e.g. `resize256-crop224-bilinear-antialias-draft`."""
        return "-".join([
            f"resize{self.resize}" if self.resize else "noresize",
            f"crop{self.crop}",
            self.interpolation,
            "antialias" if self.antialias else "noantialias",
            "draft" if self.decoder_draft else "nodraft",
        ])

    def target_size(self, width: int, height: int) -> tuple[int, int] | None:
        """(width, height) after the short-side resize, as torchvision computes it; None when not resizing."""
        if not self.resize:
            return None
        if width <= height:
            return self.resize, int(self.resize * height / width)
        return int(self.resize * width / height), self.resize

    def decode(self, data: bytes) -> torch.Tensor:
        """Decode the bytes of one image fully (a truncated file raises) and transform it."""
        ImageFile.LOAD_TRUNCATED_IMAGES = False  # never a grey-padded half image
        with Image.open(io.BytesIO(data)) as image:
            original_size = image.size
            target = self.target_size(*original_size)
            box = None
            if self.decoder_draft and target is not None and image.format == "JPEG":
                drafted = image.draft("RGB", target)
                if drafted is not None and image.size != original_size:
                    box = drafted[1]  # the original image's extent, in drafted pixels
            image.load()  # the full decode: a truncated file raises here
            if box is not None and (image.width < target[0] or image.height < target[1]):
                raise AssertionError(f"draft decoded {image.size}, below the target {target}")  # PIL guarantees not
            rgb = image.convert("RGB")
        return self.apply(rgb, original_size=original_size, box=box)

    def apply(self, image: Image.Image, *, original_size: tuple[int, int] | None = None,
              box: tuple[float, float, float, float] | None = None) -> torch.Tensor:
        """Transform a decoded RGB image. For a drafted decode, `original_size` is the file's size (the resize
        target is computed from it, so the geometry is that of a full decode) and `box` the region to resize."""
        if self.resize:
            pixels = self._resized(image, self.target_size(*(original_size or image.size)), box)
        else:
            pixels = _to_tensor(image)
        return self._normalised(self._centre_crop(pixels))

    def _resized(self, image: Image.Image, target: tuple[int, int], box) -> torch.Tensor:
        """uint8 (3, H, W) of size `target` (width, height)."""
        if self.antialias:
            resample = Image.Resampling.BILINEAR if self.interpolation == "bilinear" else Image.Resampling.BICUBIC
            return _to_tensor(image.resize(target, resample=resample, box=box))
        pixels = _to_tensor(image)
        if box is not None:  # a drafted decode may carry a partial last row/column: keep the original extent
            pixels = pixels[:, : max(1, round(box[3])), : max(1, round(box[2]))]
        out = F.interpolate(pixels[None].float(), size=(target[1], target[0]), mode=self.interpolation,
                            align_corners=False, antialias=False)[0]
        return out.round_().clamp_(0, 255).to(torch.uint8)

    def _centre_crop(self, pixels: torch.Tensor) -> torch.Tensor:
        """torchvision's center_crop: offsets round((size - crop) / 2), zero padding when the image is smaller."""
        _, height, width = pixels.shape
        size = self.crop
        if height < size or width < size:
            pad_w, pad_h = max(0, size - width), max(0, size - height)
            pixels = F.pad(pixels, (pad_w // 2, (pad_w + 1) // 2, pad_h // 2, (pad_h + 1) // 2))
            _, height, width = pixels.shape
        top, left = int(round((height - size) / 2.0)), int(round((width - size) / 2.0))
        return pixels[:, top:top + size, left:left + size]

    @staticmethod
    def _normalised(pixels: torch.Tensor) -> torch.Tensor:
        return (pixels.float().div_(255) - _MEAN_CHW).div_(_STD_CHW).contiguous()


def _to_tensor(image: Image.Image) -> torch.Tensor:
    """uint8 (3, H, W) of an RGB image."""
    return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)


# -- the dataset -------------------------------------------------------------------------------------------


class ImageBatch(NamedTuple):
    indices: torch.Tensor  # int64, the samples that decoded, in batch order
    images: torch.Tensor | None  # (len(indices), 3, H, W), None when none decoded
    errors: list[tuple[int, str]]  # (index, reason) of the samples that did not


def collate(items: Sequence[tuple[int, torch.Tensor | None, str | None]]) -> ImageBatch:
    """Stack the samples that decoded; list the others with their reasons."""
    good = [(index, image) for index, image, _ in items if image is not None]
    errors = [(index, error or "no image") for index, image, error in items if image is None]
    indices = torch.tensor([index for index, _ in good], dtype=torch.int64)
    images = torch.stack([image for _, image in good]) if good else None
    return ImageBatch(indices, images, errors)


class ImageFolderDataset(torch.utils.data.Dataset):
    """`dataset[i]` = `(i, tensor, None)`, or `(i, None, reason)` for an image that cannot be read or decoded."""

    def __init__(self, image_set: ImageFolderSet, transform: ImageTransform | None = None,
                 storage_options: dict | None = None):
        self.image_set = image_set
        self.transform = transform or ImageTransform()
        self.storage_options = dict(storage_options if storage_options is not None else image_set.storage_options)
        self._fs = None
        self._fs_pid = None

    @property
    def samples(self) -> list[ImageSample]:
        return self.image_set.samples

    def __len__(self) -> int:
        return len(self.image_set.samples)

    def fingerprint(self) -> str:
        return self.image_set.fingerprint()

    def transform_key(self) -> str:
        return self.transform.key()

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_fs"] = state["_fs_pid"] = None  # a worker opens its own connection
        return state

    def _read(self, path: str) -> bytes:
        if not _is_remote(path):
            with open(path.removeprefix("file://"), "rb") as handle:
                return handle.read()
        if self._fs is None or self._fs_pid != os.getpid():
            self._fs = fsspec.core.url_to_fs(path, **self.storage_options)[0]
            self._fs_pid = os.getpid()
        return with_retries(lambda: self._fs.cat_file(path), f"reading {path}", attempts=4)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor | None, str | None]:
        index = int(index)
        path = self.image_set.samples[index].path
        try:
            data = self._read(path)
        except (FileNotFoundError, PermissionError, IsADirectoryError) as problem:
            return index, None, f"cannot read {path}: {type(problem).__name__}: {problem}"
        # Anything else while reading is the store failing: raised (after retries), never a skipped image.
        try:
            return index, self.transform.decode(data), None
        except Exception as problem:  # noqa: BLE001 - a corrupt, truncated or foreign file: reported, not raised
            # Reasons are stored in the feature cache, whose bytes must not depend on the process: no addresses.
            reason = _ADDRESS.sub("", f"{type(problem).__name__}: {problem}")
            return index, None, f"cannot decode {path} ({len(data)} bytes): {reason}"
