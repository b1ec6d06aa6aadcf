"""The training transform of the augmented linear protocol: RandomResizedCrop + horizontal flip, seeded per sample.

torchvision's `RandomResizedCrop(crop)` (scale (0.08, 1), ratio (3/4, 4/3), 10 tries then a centre crop,
bilinear through PIL, which antialiases) and `RandomHorizontalFlip()` as DINO's and MoCo v3's linear evaluation
use them, then the ImageNet mean/std. What is ours: the random numbers of sample i in epoch e come from a
generator seeded by (seed, epoch, i), not from a worker's running generator, so an epoch's images depend neither
on the number of loader workers, nor on the rank that reads them, nor on where a resumed run starts.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from PIL import Image, ImageFile

from vito.eval.datasets.image_folder import ImageFolderDataset, ImageFolderSet, ImageTransform, _to_tensor

RATIO = (3 / 4, 4 / 3)  # torchvision's default aspect-ratio range
_TRIES = 10  # torchvision's: after 10 rejected draws, a centre crop


def sample_generator(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The random numbers of one sample in one epoch: the same in any worker, rank or resumed run."""
    return np.random.default_rng([seed, epoch, index])


def crop_box(width: int, height: int, scale: tuple[float, float], rng: np.random.Generator,
             ratio: tuple[float, float] = RATIO) -> tuple[int, int, int, int]:
    """(top, left, h, w) of torchvision's RandomResizedCrop.get_params, drawing from `rng`."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(_TRIES):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    in_ratio = width / height  # the fallback: the largest centre crop within the ratio range
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


@dataclass(frozen=True)
class AugmentedTransform:
    """RandomResizedCrop(crop, scale) + flip(0.5) + ImageNet normalisation, its randomness from the caller's rng."""

    crop: int = 224
    scale: tuple[float, float] = (0.08, 1.0)
    interpolation: Literal["bilinear", "bicubic"] = "bilinear"
    flip_p: float = 0.5

    def key(self) -> str:
        """The transform in one string, e.g. `rrc224-scale0.08-1-ratio0.75-1.33-bilinear-flip0.5` (a cache key)."""
        return (f"rrc{self.crop}-scale{self.scale[0]:g}-{self.scale[1]:g}-ratio{RATIO[0]:.4g}-{RATIO[1]:.4g}-"
                f"{self.interpolation}-flip{self.flip_p:g}")

    def decode(self, data: bytes, rng: np.random.Generator) -> torch.Tensor:
        ImageFile.LOAD_TRUNCATED_IMAGES = False  # never a grey-padded half image
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            rgb = image.convert("RGB")
        return self.apply(rgb, rng)

    def apply(self, image: Image.Image, rng: np.random.Generator) -> torch.Tensor:
        top, left, h, w = crop_box(image.width, image.height, self.scale, rng)
        resample = Image.Resampling.BILINEAR if self.interpolation == "bilinear" else Image.Resampling.BICUBIC
        # PIL's resize of a box = torchvision's resized_crop on a PIL image (crop, then an antialiased resize)
        out = image.resize((self.crop, self.crop), resample=resample, box=(left, top, left + w, top + h))
        if rng.random() < self.flip_p:
            out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return ImageTransform._normalised(_to_tensor(out))


class AugmentedImageDataset(ImageFolderDataset):
    """`dataset[(i, epoch)]` = `(i, augmented tensor, None)` or `(i, None, reason)`: ImageFolderDataset's reading
    (and its never-raise contract for a bad file) with the epoch-seeded training transform."""

    def __init__(self, image_set: ImageFolderSet, transform: AugmentedTransform, seed: int,
                 storage_options: dict | None = None):
        super().__init__(image_set, ImageTransform(), storage_options)
        self.augment = transform
        self.seed = seed

    def transform_key(self) -> str:
        return self.augment.key()

    def __getitem__(self, item) -> tuple[int, torch.Tensor | None, str | None]:
        index, epoch = (int(v) for v in item)
        path = self.image_set.samples[index].path
        try:
            data = self._read(path)
        except (FileNotFoundError, PermissionError, IsADirectoryError) as problem:
            return index, None, f"cannot read {path}: {type(problem).__name__}: {problem}"
        try:
            return index, self.augment.decode(data, sample_generator(self.seed, epoch, index)), None
        except Exception as problem:  # noqa: BLE001 - a corrupt or truncated file: reported, not raised
            return index, None, f"cannot decode {path} ({len(data)} bytes): {type(problem).__name__}: {problem}"
