"""A tiny UCF-101-layout set rendered by the synthetic renderer, for tests.

    <root>/<Class>/v_<Class>_gXX_cYY.avi     classes: the synthetic CLASS_NAMES capitalised (Circle, Square, ...)
    <root>/ucfTrainTestlist/classInd.txt, trainlist01-03.txt, testlist01-03.txt

Like UCF-101, a group gXX is entirely in train or entirely in test of a split: split s (1-3) tests on the
groups of `groups_tested_in(s)` and trains on the rest. UCF-101 has 25 groups and tests split 1 on g01-g07,
split 2 on g08-g14, split 3 on g15-g21; here there are `groups` groups (default 4) and split s tests on
group s alone, group 4 onwards always train. Clips are MPEG-4 Part 2 in AVI (what UCF-101 ships is XviD,
also MPEG-4 Part 2), written with PyAV.
"""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np

from vito.config import SyntheticConfig
from vito.data.synthetic import CLASS_NAMES, render_clip
from vito.eval.ucf101 import SPLITS_FOLDER


def ucf_class_names(count: int) -> list[str]:
    """UCF-style CamelCase folder names for the first `count` synthetic classes, sorted as classInd is."""
    if not 1 <= count <= len(CLASS_NAMES):
        raise ValueError(f"count must be 1-{len(CLASS_NAMES)}, not {count}")
    return sorted(name.capitalize() for name in CLASS_NAMES[:count])


def write_avi(path: str | Path, frames: np.ndarray, fps: int) -> None:
    """Encode uint8 (T, H, W, 3) frames (even H, W) as MPEG-4 Part 2 in an AVI container."""
    _, height, width, _ = frames.shape
    if height % 2 or width % 2:
        raise ValueError(f"yuv420p needs even frame sizes, got {height}x{width}")
    with av.open(str(path), "w", format="avi") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.gop_size = fps
        stream.codec_context.thread_count = 1
        stream.bit_rate = 8_000_000
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def clip_name(name: str, group: int, clip: int) -> str:
    return f"v_{name}_g{group:02d}_c{clip:02d}.avi"


def write_ucf_fixture(root: str | Path, *, num_classes: int = 3, groups: int = 4, clips_per_group: int = 2,
                      size: int = 32, num_frames: int = 8, fps: int = 8, seed: int = 0) -> Path:
    """Write the set under `root` (created) and return it. `groups` >= 4 so that every split trains on a group."""
    if groups < 4:
        raise ValueError(f"groups must be >= 4 (splits 1-3 each test on one group), not {groups}")
    root = Path(root)
    classes = ucf_class_names(num_classes)
    cfg = SyntheticConfig(num_frames=num_frames, fps=fps, size=size, num_classes=len(CLASS_NAMES), seed=seed)
    rng = np.random.default_rng(seed)
    clips: list[tuple[str, int, str]] = []  # (class, group, relative path)
    for name in classes:
        (root / name).mkdir(parents=True, exist_ok=True)
        label = [n.capitalize() for n in CLASS_NAMES].index(name)
        for group in range(1, groups + 1):
            for clip in range(1, clips_per_group + 1):
                relative = f"{name}/{clip_name(name, group, clip)}"
                write_avi(root / relative, render_clip(label, cfg, rng), fps)
                clips.append((name, group, relative))
    splits = root / SPLITS_FOLDER
    splits.mkdir(exist_ok=True)
    newline = "\r\n"  # the official files use CRLF
    (splits / "classInd.txt").write_bytes("".join(f"{i} {n}{newline}" for i, n in enumerate(classes, 1)).encode())
    for split in (1, 2, 3):
        train = [f"{rel} {classes.index(name) + 1}" for name, group, rel in clips if group != split]
        test = [rel for _, group, rel in clips if group == split]
        (splits / f"trainlist0{split}.txt").write_bytes("".join(line + newline for line in train).encode())
        (splits / f"testlist0{split}.txt").write_bytes("".join(line + newline for line in test).encode())
    return root


def groups_tested_in(split: int) -> set[int]:
    """The fixture's test groups of a split (UCF-101's own: g01-07, g08-14, g15-21)."""
    return {split}
