"""Small robustness sets in the real layouts, from an ImageFolder val set and the synthetic shapes.

Smoke fixtures for the machinery (readers, scoring, records), not measurements: their figures say nothing about
a model's robustness. Each writer produces the layout its reader expects from a user's copy:

- `write_corruption_tree`: ImageNet-C's `<corruption>/<1-5>/<wnid>/*.JPEG` (optionally under `<family>/`), made
  with the project's own corruptions (vito/robustness.py) where they match an ImageNet-C name:
  gaussian_noise, contrast, jpeg -> jpeg_compression (3 of the 15 benchmark corruptions: the mCE machinery
  sees a partial table and must report it as such) and gaussian_blur (an extra). Images are prepared as
  ImageNet-C's are (short side resized, centre crop to `image_size`, 224 by default) and saved as JPEG q85.
- `write_class_subset`: ImageNet-A/R's `<wnid>/*.JPEG` with some of the val set's wnid folders.
- `write_cue_conflict`: the 16 category folders of model-vs-human's cue-conflict set, each image a synthetic
  shape's silhouette filled with the texture of another category's background, named
  `<shape><i>-<texture><j>.png`. There are 8 synthetic shapes for 16 categories: category k gets shape k % 8,
  so two categories share a silhouette and the fixture cannot measure a shape bias, only exercise it.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vito.config import SyntheticConfig
from vito.data.synthetic import CLASS_NAMES, render_clip
from vito.eval.corruption_tree import IMAGENET_C_FAMILIES, SEVERITIES
from vito.eval.image_folder import is_image_name
from vito.eval.shape_bias import CATEGORIES
from vito.robustness import corrupt

# ImageNet-C folder name -> the vito.robustness corruption that stands in for it.
FIXTURE_CORRUPTIONS: dict[str, str] = {
    "gaussian_noise": "gaussian_noise",
    "contrast": "contrast",
    "jpeg_compression": "jpeg",
    "gaussian_blur": "gaussian_blur",  # an ImageNet-C extra: reported apart, never in mCE
}
IMAGENET_C_JPEG_QUALITY = 85
RESIZE_RATIO = 256 / 224  # ImageNet-C's preparation: resize 256, centre crop 224
CUE_CONFLICT_SHAPES: dict[str, str] = {c: CLASS_NAMES[k % len(CLASS_NAMES)] for k, c in enumerate(CATEGORIES)}


def _family(name: str) -> str:
    return next(family for family, names in IMAGENET_C_FAMILIES.items() if name in names)


def _val_images(val_dir: Path) -> list[tuple[str, Path]]:
    """(wnid, path) of every image directly in a class folder of `val_dir`, sorted."""
    found = [(folder.name, path) for folder in sorted(val_dir.iterdir()) if folder.is_dir()
             for path in sorted(folder.iterdir()) if path.is_file() and is_image_name(path.name)]
    if not found:
        raise ValueError(f"{val_dir}: no images in class folders (expected <wnid>/*.JPEG)")
    return found


def _prepared(path: Path, image_size: int) -> torch.Tensor:
    """(3, S, S) float in [0, 1]: short side to S * 256/224, centre crop S."""
    with Image.open(path) as image:
        rgb = image.convert("RGB")
    short = round(image_size * RESIZE_RATIO)
    width, height = rgb.size
    scale = short / min(width, height)
    rgb = rgb.resize((max(short, round(width * scale)), max(short, round(height * scale))), Image.Resampling.BILINEAR)
    left, top = (rgb.width - image_size) // 2, (rgb.height - image_size) // 2
    rgb = rgb.crop((left, top, left + image_size, top + image_size))
    return torch.from_numpy(np.asarray(rgb, dtype=np.uint8).copy()).permute(2, 0, 1).float().div_(255)


def write_corruption_tree(val_dir: Path, out: Path, *, image_size: int = 224, families: bool = False,
                          corruptions: Sequence[str] = tuple(FIXTURE_CORRUPTIONS), seed: int = 0) -> dict[str, int]:
    """`out/[<family>/]<corruption>/<severity>/<wnid>/<name>.JPEG` for every image of `val_dir/<wnid>/`;
    returns the images written per corruption (the same at each severity)."""
    images = _val_images(Path(val_dir))
    batch = torch.stack([_prepared(path, image_size) for _, path in images])
    counts = {}
    for name in corruptions:
        folder = Path(out) / (f"{_family(name)}/{name}" if families else name)
        for severity in SEVERITIES:
            corrupted = corrupt(batch, FIXTURE_CORRUPTIONS[name], severity, seed=seed)
            pixels = (corrupted.clamp(0, 1) * 255 + 0.5).to(torch.uint8).permute(0, 2, 3, 1).numpy()
            for (wnid, path), array in zip(images, pixels, strict=True):
                target = folder / str(severity) / wnid / f"{path.stem}.JPEG"
                target.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(array).save(target, "JPEG", quality=IMAGENET_C_JPEG_QUALITY)
        counts[name] = len(images)
    return counts


def write_class_subset(val_dir: Path, out: Path, wnids: Sequence[str]) -> int:
    """`out/<wnid>/*` copied from `val_dir/<wnid>/` for each of `wnids`; returns the images copied."""
    copied = 0
    for wnid in wnids:
        source = Path(val_dir) / wnid
        if not source.is_dir():
            raise ValueError(f"{source}: no such class folder")
        for path in sorted(source.iterdir()):
            if path.is_file() and is_image_name(path.name):
                (Path(out) / wnid).mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, Path(out) / wnid / path.name)
                copied += 1
    return copied


def write_cue_conflict(out: Path, *, size: int = 64, seed: int = 0) -> int:
    """`out/<category>/<category><i>-<texture>1.png` for every (category, texture) pair of the 16, including
    shape == texture (as the real set has: excluded from the bias); returns the images written (256)."""
    shape_cfg = SyntheticConfig(size=size, num_frames=2, num_classes=len(CLASS_NAMES), background_pool=0,
                                distractor_p=0.0, object_scale=1.6, seed=seed)
    texture_cfg = shape_cfg.model_copy(update={"object_scale": 0.01})  # a background with no visible object
    textures = [render_clip(0, texture_cfg, np.random.default_rng([seed, 1, t]))[0].astype(np.float32)
                for t in range(len(CATEGORIES))]
    written = 0
    for c, category in enumerate(CATEGORIES):
        label = CLASS_NAMES.index(CUE_CONFLICT_SHAPES[category])
        folder = Path(out) / category
        folder.mkdir(parents=True, exist_ok=True)
        for t, texture_name in enumerate(CATEGORIES):
            _, masks = render_clip(label, shape_cfg, np.random.default_rng([seed, 2, c, t]), return_mask=True)
            texture = textures[t]
            washed = 255.0 - (255.0 - texture) * 0.3  # outside the silhouette: the texture, faded to light
            image = np.where(masks[0][..., None], texture, washed)
            Image.fromarray((image + 0.5).astype(np.uint8)).save(folder / f"{category}{t + 1}-{texture_name}1.png")
            written += 1
    return written
