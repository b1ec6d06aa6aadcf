"""Small benchmark sets in the real layouts, rendered from the synthetic videos: a laptop can run the same
evaluation a cluster runs on ImageNet, on sets of a few hundred images.

Each writer produces exactly the layout its reader expects from the user's copy (ImageFolder here:
`train/<class>/*.JPEG`, `val/<class>/*.JPEG`), encoded by a real JPEG encoder, so the readers are exercised as
they will be on real data. Class folders are named like ImageNet wnids (`n0000000k`) so the same fixtures serve
the benchmarks that map wnids.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from vito.config import SyntheticConfig
from vito.data.synthetic import CLASS_NAMES, render_clip

FIXTURES_VERSION = 1


@dataclass(frozen=True)
class ImageFolderFixture:
    """`per_class` images of each class per split; frames `size` px, upscaled to `image_size` px like photos."""

    num_classes: int = 4
    train_per_class: int = 100
    val_per_class: int = 25
    size: int = 64
    image_size: int = 128
    seed: int = 0
    # The quickstart's scenes (sweeps/quickstart.yaml): what its trials learnt from, so a laptop sees a signal.
    background_pool: int = 8
    object_scale: float = 1.6
    distractor_p: float = 0.0


def wnid(index: int) -> str:
    """An ImageNet-shaped folder name for class `index` (sorted order = class order)."""
    return f"n{index:08d}"


def write_image_folder(out: Path, fixture: ImageFolderFixture = ImageFolderFixture()) -> dict[str, int]:
    """train/ and val/ under `out`, one JPEG per frame drawn from clips of each class; returns images per split."""
    synthetic = SyntheticConfig(size=fixture.size, num_frames=8, num_classes=fixture.num_classes, seed=fixture.seed,
                                background_pool=fixture.background_pool, object_scale=fixture.object_scale,
                                distractor_p=fixture.distractor_p)
    counts = {}
    for split, per_class in (("train", fixture.train_per_class), ("val", fixture.val_per_class)):
        rng = np.random.default_rng([fixture.seed, 0 if split == "train" else 1])
        for label in range(fixture.num_classes):
            folder = out / split / wnid(label)
            folder.mkdir(parents=True, exist_ok=True)
            written = 0
            while written < per_class:  # a few frames of each clip: different poses of one object
                frames = render_clip(label, synthetic, rng)
                for frame in frames[:1]:  # one frame per clip: every image its own scene
                    image = Image.fromarray(frame).resize((fixture.image_size,) * 2, Image.Resampling.BICUBIC)
                    image.save(folder / f"{wnid(label)}_{written:05d}.JPEG", quality=90)
                    written += 1
        counts[split] = per_class * fixture.num_classes
    names = {wnid(i): CLASS_NAMES[i] for i in range(fixture.num_classes)}
    (out / "classes.json").write_text(json.dumps({"version": FIXTURES_VERSION, "classes": names}, indent=2))
    return counts
