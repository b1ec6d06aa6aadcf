"""JPEG sets and a toy encoder shared by the evaluation tests (unit and integration): real files written by
PIL's encoder, so the readers are exercised as they are on a user's copy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vito.eval.datasets.image_folder import ImageFolderDataset, ImageTransform, read_image_folder

TRANSFORM = ImageTransform(resize=32, crop=28)


def write_jpeg(path: Path, seed: int, size: tuple[int, int] = (40, 30), fmt: str = "JPEG") -> None:
    """A smooth random image (a photo-like JPEG, not noise) of size (width, height)."""
    rng = np.random.default_rng(seed)
    width, height = size
    small = rng.integers(0, 256, (max(2, height // 8), max(2, width // 8), 3), dtype=np.uint8)
    image = Image.fromarray(small).resize((width, height), Image.Resampling.BILINEAR)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, fmt, **({"quality": 90} if fmt == "JPEG" else {}))


def truncate(path: Path, keep: float = 0.6) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def toy_encoder() -> torch.nn.Module:
    """Two convolutions and a mean pool: (B, 3, 28, 28) -> (B, 8), the same weights in every process."""
    generator = torch.Generator().manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, stride=2), torch.nn.ReLU(), torch.nn.Conv2d(4, 8, 3, stride=2),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
    )
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
    return model.eval()


def write_image_folder(root: Path, num_images: int, bad: dict[int, str] | None = None) -> Path:
    """`num_images` 40x30 JPEGs over 3 classes under root/val; `bad` maps a sample index to 'truncated' or
    'garbage' (sample order = sorted class, then sorted name)."""
    for i in range(num_images):
        write_jpeg(root / "val" / f"c{i % 3}" / f"img{i:04d}.JPEG", seed=i)
    order = sorted((root / "val").glob("*/*.JPEG"))
    for index, kind in (bad or {}).items():
        if kind == "truncated":
            truncate(order[index])
        else:
            order[index].write_bytes(b"garbage")
    return root


def dataset_of(root: Path) -> ImageFolderDataset:
    return ImageFolderDataset(read_image_folder(str(root), "val", classes_from=None), TRANSFORM)


KEYS = {"encoder": "toy-2conv", "transform": TRANSFORM.key()}
