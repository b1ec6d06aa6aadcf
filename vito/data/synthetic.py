"""Deterministic synthetic videos: one shape per clip that moves and deforms over a textured background.

Temporally displaced frames of a clip show the same object (the class) in a different pose, squash and
colour, which is exactly the invariance VITO learns from real video; `motion_scale` > 1 renders stronger,
unseen deformations for robustness evaluation. Rendering is numpy-only mask arithmetic on a coordinate grid.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

import av
import numpy as np

from vito.config import SyntheticConfig
from vito.data.manifest import VideoRecord, write_manifest
from vito.data.video import probe_video

# Bump when rendering or encoding changes, so cached clips from an older generator are not reused.
GENERATOR_VERSION = 1

CLASS_NAMES: tuple[str, ...] = ("circle", "square", "triangle", "cross", "ring", "diamond", "star", "bar")

_CRF = "18"  # high quality: thin shapes and colours must survive yuv420p compression


# ---- shapes: signed distance in the object's own frame (unit size, negative inside) -------------------


def _box(x: np.ndarray, y: np.ndarray, half_w: float, half_h: float) -> np.ndarray:
    dx, dy = np.abs(x) - half_w, np.abs(y) - half_h
    outside = np.hypot(np.maximum(dx, 0), np.maximum(dy, 0))
    inside = np.minimum(np.maximum(dx, dy), 0)
    return outside + inside


def _triangle(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    # Equilateral triangle (after Inigo Quilez's exact 2D SDF), circumradius ~1.
    k, r = np.sqrt(3.0), 0.85
    x = np.abs(x) - r
    y = y + r / k
    fold = x + k * y > 0
    x, y = np.where(fold, (x - k * y) / 2, x), np.where(fold, (-k * x - y) / 2, y)
    x = x - np.clip(x, -2 * r, 0)
    return -np.hypot(x, y) * np.sign(y)


def _rhombus(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    # Unequal diagonals so no rotation + axis squash of a square can mimic it.
    a, b = 1.0, 0.6
    return (np.abs(x) / a + np.abs(y) / b - 1) * (a * b / np.hypot(a, b))


def _star(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    radius, angle = np.hypot(x, y), np.arctan2(y, x)
    return (radius - (0.62 + 0.38 * np.cos(5 * angle))) * 0.6


_SHAPES: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "circle": lambda x, y: np.hypot(x, y) - 0.9,
    "square": lambda x, y: _box(x, y, 0.8, 0.8),
    "triangle": _triangle,
    "cross": lambda x, y: np.minimum(_box(x, y, 0.95, 0.3), _box(x, y, 0.3, 0.95)),
    "ring": lambda x, y: np.abs(np.hypot(x, y) - 0.72) - 0.24,
    "diamond": _rhombus,
    "star": _star,
    "bar": lambda x, y: _box(x, y, 1.0, 0.24),
}
assert tuple(_SHAPES) == CLASS_NAMES


# ---- rendering ---------------------------------------------------------------------------------------


def _background(rng: np.random.Generator, xs: np.ndarray, ys: np.ndarray, time: np.ndarray) -> np.ndarray:
    """Coloured sinusoidal texture that pans slowly (a moving camera), plus fixed and per-frame noise."""
    size = xs.shape[0]
    base = rng.uniform(0.15, 0.85, size=3)
    pan = rng.normal(0, 0.15, size=2)
    image = np.broadcast_to(base, (len(time), size, size, 3)).copy()
    for _ in range(4):
        angle = rng.uniform(0, np.pi)
        freq = rng.uniform(1.0, 4.0) * np.pi
        phase = rng.uniform(0, 2 * np.pi)
        weights = rng.normal(0, 0.08, size=3)
        u = np.cos(angle) * (xs[None] + pan[0] * time[:, None, None]) + np.sin(angle) * (
            ys[None] + pan[1] * time[:, None, None]
        )
        image += np.sin(freq * u + phase)[..., None] * weights
    image += rng.normal(0, 0.03, size=(1, size, size, 3))
    image += rng.normal(0, 0.01, size=image.shape)
    return image


def _smooth_path(rng: np.random.Generator, time: np.ndarray, motion_scale: float) -> np.ndarray:
    """(T, 2) object centre: start + drift + a wobble, squashed by tanh so it never leaves the frame."""
    start = rng.uniform(-0.4, 0.4, size=2)
    drift = rng.normal(0, 0.5, size=2) * motion_scale
    amplitude = rng.uniform(0.05, 0.25, size=2) * motion_scale
    freq = rng.uniform(0.5, 1.5, size=2) * 2 * np.pi
    phase = rng.uniform(0, 2 * np.pi, size=2)
    raw = start + drift * time[:, None] + amplitude * np.sin(freq * time[:, None] + phase)
    return 0.6 * np.tanh(raw / 0.6)


def _object_colour(rng: np.random.Generator, background_mean: np.ndarray) -> np.ndarray:
    colour = rng.uniform(0, 1, size=3)
    if np.abs(colour - background_mean).sum() < 0.6:  # keep the object visible against the background
        colour = 1.0 - colour
    return colour


def _composite(image: np.ndarray, alpha: np.ndarray, colour: np.ndarray) -> np.ndarray:
    return image * (1 - alpha[..., None]) + colour * alpha[..., None]


def render_clip(
    label: int, cfg: SyntheticConfig, rng: np.random.Generator, motion_scale: float = 1.0, return_mask: bool = False
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Render one clip of class `label` as uint8 (T, H, W, 3).

    return_mask: also return the object's visible mask, bool (T, H, W): where the shape covers at least half
    of a pixel and the distractor blob does not hide it (the ground truth of label-propagation evaluations).
    The frames are the same with or without it.
    """
    if not 0 <= label < cfg.num_classes:
        raise ValueError(f"label {label} outside [0, {cfg.num_classes})")
    size, num_frames = cfg.size, cfg.num_frames
    coords = (np.arange(size) + 0.5) / size * 2 - 1
    ys, xs = np.meshgrid(coords, coords, indexing="ij")
    pixel = 2.0 / size
    time = np.linspace(0.0, 1.0, num_frames)  # normalised clip time, so motion per clip is size-free

    if cfg.background_pool:
        # Backgrounds drawn from a small pool shared by all classes: a clip's background then no longer
        # identifies it, so telling clips apart (what a contrastive loss rewards) needs the object.
        pool_index = int(rng.integers(cfg.background_pool))
        image = _background(np.random.default_rng([cfg.seed, 7919, pool_index]), xs, ys, time)
    else:
        image = _background(rng, xs, ys, time)
    if cfg.background_change > 0:
        # Blend in a fresh texture per frame: a background constant over the clip is a shortcut that lets a
        # contrastive model match temporal pairs without looking at the object at all.
        frame_rng = np.random.default_rng(rng.integers(2**63))
        fresh = np.concatenate([_background(frame_rng, xs, ys, time[t : t + 1]) for t in range(num_frames)])
        image = (1 - cfg.background_change) * image + cfg.background_change * fresh
    background_mean = image.mean(axis=(0, 1, 2))

    # Object pose over time: position, rotation, anisotropic squash (area-preserving), colour drift.
    centre = _smooth_path(rng, time, motion_scale)
    radius = rng.uniform(0.28, 0.4) * cfg.object_scale
    rotation = rng.uniform(0, 2 * np.pi) + rng.uniform(-np.pi, np.pi) * motion_scale * time
    squash_amp = rng.uniform(0.05, 0.3) * motion_scale
    log_squash = np.clip(squash_amp * np.sin(rng.uniform(1, 3) * np.pi * time + rng.uniform(0, 2 * np.pi)), -0.7, 0.7)
    colour_start = _object_colour(rng, background_mean)
    colour_end = np.clip(colour_start + rng.normal(0, 0.2, size=3) * motion_scale, 0, 1)
    shading = rng.uniform(0.1, 0.3)

    dx = xs[None] - centre[:, 0, None, None]
    dy = ys[None] - centre[:, 1, None, None]
    cos, sin = np.cos(rotation)[:, None, None], np.sin(rotation)[:, None, None]
    sx = (radius * np.exp(log_squash))[:, None, None]
    sy = (radius * np.exp(-log_squash))[:, None, None]
    u = (cos * dx + sin * dy) / sx
    v = (-sin * dx + cos * dy) / sy
    distance = _SHAPES[CLASS_NAMES[label]](u, v) * radius  # back to image units (squash is area-preserving)
    alpha = np.clip(0.5 - distance / pixel, 0, 1)  # one-pixel antialiased edge
    colour = colour_start + (colour_end - colour_start) * time[:, None]
    if cfg.object_colour_change > 0:
        # Likewise for the object's colour: with both at 1, only its shape persists across a clip.
        fresh_colours = np.random.default_rng(rng.integers(2**63)).uniform(0, 1, size=(num_frames, 3))
        colour = (1 - cfg.object_colour_change) * colour + cfg.object_colour_change * fresh_colours
    # A gradient fixed to the object makes rotation visible even for symmetric shapes.
    lit = colour[:, None, None, :] * (1 - shading * u[..., None].clip(-1, 1))
    image = image * (1 - alpha[..., None]) + lit * alpha[..., None]
    mask = alpha >= 0.5

    if rng.uniform() < cfg.distractor_p:  # small distractor blob on its own straight path
        blob_start = rng.uniform(-0.8, 0.8, size=2)
        blob_end = blob_start + rng.normal(0, 0.4, size=2) * motion_scale
        blob_path = blob_start + (blob_end - blob_start) * time[:, None]
        blob_radius = rng.uniform(0.06, 0.12)
        dist2 = (xs[None] - blob_path[:, 0, None, None]) ** 2 + (ys[None] - blob_path[:, 1, None, None]) ** 2
        blob_alpha = np.exp(-dist2 / (2 * blob_radius**2))
        image = _composite(image, blob_alpha, rng.uniform(0, 1, size=3))
        mask &= blob_alpha < 0.5

    frames = (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)
    return (frames, mask) if return_mask else frames


# ---- encoding and the on-disk dataset ----------------------------------------------------------------


def _video_codec() -> str:
    return "libx264" if "libx264" in av.codecs_available else "mpeg4"


def write_mp4(path: str | Path, frames: np.ndarray, fps: int) -> None:
    """Encode uint8 (T, H, W, 3) frames; keyframe every second so seeking has something to land on."""
    _, height, width, _ = frames.shape
    if height % 2 or width % 2:
        raise ValueError(f"yuv420p needs even frame sizes, got {height}x{width}")
    codec = _video_codec()
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.gop_size = fps
        stream.codec_context.thread_count = 1  # tiny frames; and a single thread keeps output reproducible
        if codec == "libx264":
            # mbtree off: at tiny sizes (32 px) x264's macroblock-tree rate control made encodes of
            # identical frames differ from run to run; without it they are reproducible.
            stream.options = {"crf": _CRF, "mbtree": "0"}
        else:
            stream.bit_rate = 8_000_000  # mpeg4 has no crf; a generous rate is near-lossless at these sizes
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def _clip_seed(cfg: SyntheticConfig, split: str, index: int) -> np.random.SeedSequence:
    split_key = int.from_bytes(hashlib.sha256(split.encode()).digest()[:8], "little")
    return np.random.SeedSequence([cfg.seed, split_key, index])


def _dataset_dirname(cfg: SyntheticConfig, split: str, num_videos: int, motion_scale: float = 1.0) -> str:
    # cfg.num_videos is left out: only the count actually generated changes the clips.
    content = cfg.model_dump_json(exclude={"num_videos"})
    key = f"v{GENERATOR_VERSION}|{content}|{split}|{num_videos}"
    if motion_scale != 1.0:  # the default keeps the names (and caches) of datasets made before the option
        key += f"|motion{motion_scale!r}"
    return "synthetic-" + hashlib.sha256(key.encode()).hexdigest()[:12]


def _generate(directory: Path, cfg: SyntheticConfig, split: str, num_videos: int, motion_scale: float = 1.0) -> None:
    records = []
    for index in range(num_videos):
        label = index % cfg.num_classes
        frames = render_clip(label, cfg, np.random.default_rng(_clip_seed(cfg, split, index)), motion_scale)
        name = f"clip_{index:05d}_{CLASS_NAMES[label]}.mp4"
        write_mp4(directory / name, frames, cfg.fps)
        duration_s, fps, frame_count = probe_video(directory / name)
        # Relative uri: the manifest stays valid after the rename below and if the tree is moved.
        records.append(VideoRecord(uri=name, duration_s=duration_s, fps=fps, num_frames=frame_count, label=label))
    write_manifest(directory / "manifest.jsonl", records)


def ensure_synthetic_videos(
    root: str | Path, cfg: SyntheticConfig, split: str = "train", num_videos: int | None = None,
    motion_scale: float = 1.0,
) -> Path:
    """Generate (once) the clips of `split` under root and return the path of their manifest.

    motion_scale > 1 renders stronger motion and deformation than training ever shows (robustness splits).

    Safe under concurrent callers: each builds a private temp dir and renames it into place; losers of
    the race discard theirs. Rename of a directory onto an existing non-empty one fails atomically.
    """
    num_videos = cfg.num_videos if num_videos is None else num_videos
    if not split or Path(split).name != split or split.startswith("."):
        raise ValueError(f"split must be a plain directory name, got {split!r}")
    if num_videos < 1:
        raise ValueError("num_videos must be >= 1")
    if motion_scale < 0:
        raise ValueError("motion_scale must be >= 0")
    parent = Path(root) / _dataset_dirname(cfg, split, num_videos, motion_scale)
    target = parent / split
    manifest = target / "manifest.jsonl"
    if manifest.exists():
        return manifest
    parent.mkdir(parents=True, exist_ok=True)
    temp = parent / f".tmp-{split}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    temp.mkdir()
    try:
        _generate(temp, cfg, split, num_videos, motion_scale)
        os.rename(temp, target)
    except OSError:
        if not manifest.exists():
            raise
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    return manifest
