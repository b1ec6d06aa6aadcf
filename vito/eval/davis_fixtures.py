"""A tiny DAVIS-2017-layout set rendered by the synthetic renderer (tests and CPU checks of the DAVIS reader).

Each sequence composites two rendered clips: object 1 from the first, object 2 from the second pasted over it
(the later one occludes). Frames are rendered square at the sequence's width and resized to height x width, so
sequences differ in width as DAVIS's do.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from vito.config import SyntheticConfig
from vito.data.synthetic import render_clip
from vito.eval.davis import write_mask

DEFAULT_WIDTHS = (96, 128, 96)


def _resize(array: np.ndarray, height: int, width: int, nearest: bool) -> np.ndarray:
    image = Image.fromarray(array)
    return np.asarray(image.resize((width, height), Image.NEAREST if nearest else Image.BILINEAR))


def _composite(width: int, height: int, num_frames: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    cfg = SyntheticConfig(num_frames=num_frames, size=width, num_classes=4, object_scale=0.6, distractor_p=0.0)
    for _ in range(50):  # redraw until both objects show in the first frame (they are the sequence's objects)
        frames_a, mask_a = render_clip(int(rng.integers(4)), cfg, rng, return_mask=True)
        frames_b, mask_b = render_clip(int(rng.integers(4)), cfg, rng, return_mask=True)
        frames = np.where(mask_b[..., None], frames_b, frames_a)
        ids = np.zeros(mask_a.shape, np.uint8)
        ids[mask_a], ids[mask_b] = 1, 2
        if {1, 2} <= set(np.unique(ids[0]).tolist()):
            break
    else:
        raise RuntimeError("could not render two visible objects in a first frame")
    frames = np.stack([_resize(f, height, width, nearest=False) for f in frames])
    ids = np.stack([_resize(m, height, width, nearest=True) for m in ids])
    return frames, ids


def write_davis_fixture(
    root: str | Path, widths: tuple[int, ...] = DEFAULT_WIDTHS, height: int = 64, num_frames: int = 6,
    split: str = "val", seed: int = 0,
) -> Path:
    """Write JPEGImages/480p, Annotations/480p (palette PNGs) and ImageSets/2017/<split>.txt; returns root."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    names = []
    for index, width in enumerate(widths):
        name = f"synth{index:02d}"
        names.append(name)
        frames, ids = _composite(width, height, num_frames, rng)
        frame_dir = root / "JPEGImages" / "480p" / name
        frame_dir.mkdir(parents=True, exist_ok=True)
        for t in range(num_frames):
            Image.fromarray(frames[t]).save(frame_dir / f"{t:05d}.jpg", quality=95)
            write_mask(ids[t], root / "Annotations" / "480p" / name / f"{t:05d}.png")
    split_dir = root / "ImageSets" / "2017"
    split_dir.mkdir(parents=True, exist_ok=True)
    (split_dir / f"{split}.txt").write_text("".join(f"{n}\n" for n in names))
    return root
