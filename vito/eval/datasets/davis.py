"""DAVIS 2017 on disk: the reader of a user's copy and the writer of predicted masks in DAVIS's results layout.

Layout: JPEGImages/<res>/<seq>/<frame>.jpg, Annotations/<res>/<seq>/<frame>.png (8-bit palette PNGs whose pixel
value is the object id: 0 background, 255 void), ImageSets/2017/<split>.txt (one sequence a line). The objects
of a sequence are 1..max id of its first annotation, as the official evaluator counts them. Anything else is
refused with one LayoutError naming the path and what was expected, before anything is scored.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from vito.eval.datasets.image_folder import LayoutError
from vito.eval.scoring.davis_metric import VOID


def voc_palette() -> list[int]:
    """The PASCAL VOC colour map (256 RGB triples, flattened), computed here: the one DAVIS's PNGs carry."""
    palette = []
    for index in range(256):
        r = g = b = 0
        c = index
        for bit in range(8):
            r |= ((c >> 0) & 1) << (7 - bit)
            g |= ((c >> 1) & 1) << (7 - bit)
            b |= ((c >> 2) & 1) << (7 - bit)
            c >>= 3
        palette += [r, g, b]
    return palette


PALETTE = voc_palette()


@dataclass(frozen=True)
class DavisSequence:
    name: str
    frames: list[Path]
    annotations: list[Path]
    objects: list[int]
    size: tuple[int, int]  # (height, width)


@dataclass(frozen=True)
class DavisSet:
    root: Path
    split: str
    resolution: str
    sequences: list[DavisSequence]


def load_frame(path: str | Path) -> np.ndarray:
    """An RGB frame as uint8 (H, W, 3)."""
    with Image.open(path) as image:
        return np.array(image.convert("RGB"), dtype=np.uint8)


def load_mask(path) -> np.ndarray:
    """A palette PNG's object ids as uint8 (H, W); refuses a PNG that is not single-channel (P or L)."""
    with Image.open(path) as image:
        if image.mode not in ("P", "L"):
            raise LayoutError(f"{path}: a {image.mode} image; expected an 8-bit palette PNG of object ids")
        return np.array(image, dtype=np.uint8)


def _files(folder: Path, suffix: str) -> dict[str, Path]:
    """The folder's files with this suffix (any case), by stem, in name order."""
    found = {p.stem: p for p in folder.iterdir() if p.is_file() and p.suffix.lower() == suffix}
    return dict(sorted(found.items()))


def _read_sequence(root: Path, resolution: str, name: str) -> DavisSequence:
    frame_dir, mask_dir = root / "JPEGImages" / resolution / name, root / "Annotations" / resolution / name
    if not frame_dir.is_dir():
        raise LayoutError(f"{frame_dir}: missing; expected the frames of sequence {name} listed in the split "
                          f"(JPEGImages/{resolution}/{name}/*.jpg)")
    if not mask_dir.is_dir():
        raise LayoutError(f"{mask_dir}: missing; expected the annotations of sequence {name} "
                          f"(Annotations/{resolution}/{name}/*.png)")
    frame_files, mask_files = _files(frame_dir, ".jpg"), _files(mask_dir, ".png")
    frames, masks = list(frame_files), list(mask_files)
    if not frames:
        raise LayoutError(f"{frame_dir}: no .jpg frames; expected JPEGImages/{resolution}/{name}/*.jpg")
    if not masks:
        raise LayoutError(f"{mask_dir}: no .png annotations; expected one per frame of {frame_dir}")
    if frames != masks:
        only_f, only_m = sorted(set(frames) - set(masks)), sorted(set(masks) - set(frames))
        raise LayoutError(
            f"{mask_dir}: annotations do not match the frames of {frame_dir} ({len(masks)} vs {len(frames)}; "
            f"frames without annotation: {only_f[:3]}, annotations without frame: {only_m[:3]}); expected one "
            f"<frame>.png per <frame>.jpg"
        )
    if len(frames) < 3:
        raise LayoutError(f"{frame_dir}: {len(frames)} frame(s); expected at least 3 (DAVIS scores all but the "
                          f"first and last)")
    frame_paths, mask_paths = list(frame_files.values()), list(mask_files.values())
    with Image.open(frame_paths[0]) as image:
        width, height = image.size
    first = load_mask(mask_paths[0])
    ids = set(np.unique(first).tolist()) - {0, VOID}
    if not ids:
        raise LayoutError(f"{mask_paths[0]}: no object in the first annotation; expected ids 1..N")
    objects = list(range(1, max(ids) + 1))
    allowed = set(objects) | {0, VOID}
    for path in mask_paths:
        mask = first if path == mask_paths[0] else load_mask(path)
        if mask.shape != (height, width):
            raise LayoutError(f"{path}: {mask.shape[1]}x{mask.shape[0]} annotation; expected {width}x{height} "
                              f"like the frames of {name}")
        stray = sorted(set(np.unique(mask).tolist()) - allowed)
        if stray:
            raise LayoutError(f"{path}: object id(s) {stray} not among the first frame's objects {objects} "
                              f"(expected ids 0, {objects} or 255 void)")
    return DavisSequence(name, frame_paths, mask_paths, objects, (height, width))


def read_davis(root: str | Path, split: str = "val", resolution: str = "480p") -> DavisSet:
    """Read (and check) every sequence the split lists; a LayoutError on the first thing out of place."""
    root = Path(root)
    split_file = root / "ImageSets" / "2017" / f"{split}.txt"
    if not split_file.is_file():
        raise LayoutError(f"{split_file}: missing; expected the DAVIS 2017 split file listing the {split} "
                          f"sequences, one a line")
    names = [line.strip() for line in split_file.read_text().splitlines() if line.strip()]
    if not names:
        raise LayoutError(f"{split_file}: empty; expected one sequence name a line")
    return DavisSet(root, split, resolution, [_read_sequence(root, resolution, n) for n in names])


def mask_png(mask: np.ndarray, where: str = "mask") -> bytes:
    """An id map as the bytes of an 8-bit palette PNG with the VOC colour map."""
    ids = np.asarray(mask)
    if ids.ndim != 2 or ids.min(initial=0) < 0 or ids.max(initial=0) > 255:
        raise ValueError(f"{where}: expected an (H, W) id map with ids in 0..255, got shape {ids.shape}")
    image = Image.fromarray(ids.astype(np.uint8), mode="P")
    image.putpalette(PALETTE)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def read_mask_png(data: bytes) -> np.ndarray:
    """The id map of a palette PNG's bytes (as load_mask)."""
    return load_mask(io.BytesIO(data))


def write_mask(mask: np.ndarray, path: str | Path) -> Path:
    """Save an id map as an 8-bit palette PNG with the VOC colour map."""
    data = mask_png(mask, str(path))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def write_results(out: str | Path, sequence: DavisSequence, masks: list[np.ndarray]) -> list[Path]:
    """Predicted masks in DAVIS's results layout: <out>/<seq>/<frame>.png, one per annotated frame."""
    if len(masks) != len(sequence.annotations):
        raise ValueError(f"{sequence.name}: {len(masks)} masks for {len(sequence.annotations)} frames")
    folder = Path(out) / sequence.name
    return [write_mask(m, folder / a.name) for m, a in zip(masks, sequence.annotations)]
