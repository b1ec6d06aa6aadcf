"""UCF-101 in its distributed layout, local or on any fsspec store, and a clip dataset for frozen-feature
extraction.

    <root>/<Class>/v_<Class>_gXX_cYY.avi
    <root>/ucfTrainTestlist/classInd.txt        "1 ApplyEyeMakeup" ... (1-indexed, alphabetical)
    <root>/ucfTrainTestlist/trainlist0N.txt     "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1"
    <root>/ucfTrainTestlist/testlist0N.txt      "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi"

The splits folder may live elsewhere (`splits_dir`). N is 1, 2 or 3. Labels are 0-indexed here (classInd's
index minus one); a test clip's label comes from its folder through classInd. Anything off is refused with one
`LayoutError` naming the path and what was expected.

`UcfClipDataset` has the extraction contract of `ImageFolderDataset` (`dataset[i]` is `(i, tensor, None)` or
`(i, None, reason)`, `.samples`, `fingerprint()`): the tensor is `(T, 3, H, W)`, T frames taken at the centres
of T equal segments of the clip (TSN's test-time sampling). `image_folder.collate` stacks them to
`(B, T, 3, H, W)`; `clip_encoder(frame_encode)` turns a per-frame encoder into one that maps such a batch to
`(B, D)` by averaging the frames' features, so `extract_features` runs unchanged (with channels_last=False:
a 5-D batch has no channels_last layout).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import fsspec
import torch
from PIL import Image

from vito.checkpoint import with_retries
from vito.data.video import decode_frames_at, probe_video
from vito.eval.datasets.image_folder import FolderStore, ImageTransform, LayoutError

SPLITS_FOLDER = "ucfTrainTestlist"
SPLITS = (1, 2, 3)
SAMPLING = "segment-centres"  # the frame-sampling rule, for cache keys
_ADDRESS = re.compile(r" (object )?at 0x[0-9a-fA-F]+")

__all__ = ["ClipSample", "UcfSet", "read_ucf101", "check_ucf_layout", "segment_centre_indices", "UcfClipDataset", "clip_encoder",
           "LayoutError", "SPLITS_FOLDER"]


@dataclass(frozen=True, slots=True)
class ClipSample:
    path: str  # opens the file: an absolute local path or a full URL
    label: int  # 0-indexed (classInd's index - 1)


@dataclass
class UcfSet:
    root: str
    split: int
    subset: str  # "train" | "test"
    classes: list[str]  # classInd's names, in its order
    samples: list[ClipSample]
    storage_options: dict[str, Any] = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.samples)

    def relative_path(self, sample: ClipSample) -> str:
        """The clip's path relative to the root (`ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi`)."""
        for prefix in (self.root.rstrip("/") + "/", os.path.abspath(self.root.removeprefix("file://")) + "/"):
            if sample.path.startswith(prefix):
                return sample.path[len(prefix):]
        return sample.path

    def fingerprint(self) -> str:
        """A stable hash of the sorted relative paths and labels (not of where the root is mounted)."""
        digest = hashlib.sha256()
        for relative, label in sorted((self.relative_path(s), s.label) for s in self.samples):
            digest.update(f"{relative}\t{label}\n".encode())
        return digest.hexdigest()[:32]


def _read_text(path: str, storage_options: dict | None) -> str | None:
    """The file's text, or None when it does not exist."""
    if "://" not in path or path.startswith("file://"):
        local = path.removeprefix("file://")
        if not os.path.isfile(local):
            return None
        with open(local, encoding="utf-8-sig") as handle:
            return handle.read()
    fs, inner = fsspec.core.url_to_fs(path, **(storage_options or {}))
    try:
        data = with_retries(lambda: fs.cat_file(inner), f"reading {path}")
    except FileNotFoundError:
        return None
    return data.decode("utf-8-sig")


def _lines(text: str) -> list[tuple[int, str]]:
    """(line number, stripped line) of the non-blank lines; the official files end lines with CRLF."""
    return [(number, line.strip()) for number, line in enumerate(text.splitlines(), 1) if line.strip()]


def _read_class_index(path: str, storage_options: dict | None) -> list[str]:
    text = _read_text(path, storage_options)
    if text is None:
        raise LayoutError(f"{path}: missing (expected classInd.txt with lines '<index> <Class>', e.g. '1 ApplyEyeMakeup')")
    classes: list[str] = []
    for number, line in _lines(text):
        parts = line.split()
        if len(parts) != 2 or not parts[0].isdigit():
            raise LayoutError(f"{path}:{number}: {line!r} (expected '<index> <Class>', e.g. '1 ApplyEyeMakeup')")
        if int(parts[0]) != len(classes) + 1:
            raise LayoutError(f"{path}:{number}: index {parts[0]} (expected {len(classes) + 1}: indices run 1, 2, ... in order)")
        classes.append(parts[1])
    if not classes:
        raise LayoutError(f"{path}: no classes (expected lines '<index> <Class>', e.g. '1 ApplyEyeMakeup')")
    if len(set(classes)) != len(classes):
        raise LayoutError(f"{path}: a class is listed twice (expected each class once)")
    return classes


def read_ucf101(root: str, split: int = 1, subset: Literal["train", "test"] = "train", splits_dir: str | None = None,
                storage_options: dict | None = None) -> UcfSet:
    """The clips of one official split's train or test list, in list order, labelled 0-indexed.

    Checks: classInd and the list exist; every class folder under the root is in classInd; every listed clip
    sits in a classInd class folder and exists; a train label agrees with its folder."""
    if split not in SPLITS or isinstance(split, bool):
        raise ValueError(f"UCF-101 split must be 1, 2 or 3, not {split!r}")
    if subset not in ("train", "test"):
        raise ValueError(f"UCF-101 subset must be 'train' or 'test', not {subset!r}")
    store = FolderStore(root, storage_options)
    splits = (splits_dir or f"{store.root}/{SPLITS_FOLDER}").rstrip("/")
    classes = _read_class_index(f"{splits}/classInd.txt", storage_options)
    index = {name: i for i, name in enumerate(classes)}

    top = store.list_dir("")
    if top is None:
        raise LayoutError(f"{store.root}: not a folder (expected <root>/<Class>/v_<Class>_gXX_cYY.avi)")
    folders = [name for name in top[0] if name != SPLITS_FOLDER]
    unknown = [name for name in folders if name not in index]
    if unknown:
        shown = ", ".join(unknown[:5]) + (" ..." if len(unknown) > 5 else "")
        raise LayoutError(f"{store.root}: {len(unknown)} class folder(s) not in {splits}/classInd.txt: {shown} "
                          f"(expected every folder under the root to be a class of classInd.txt)")

    list_path = f"{splits}/{subset}list0{split}.txt"
    text = _read_text(list_path, storage_options)
    if text is None:
        expected = "'<Class>/<clip>.avi <label>' lines" if subset == "train" else "'<Class>/<clip>.avi' lines"
        raise LayoutError(f"{list_path}: missing (expected {subset}list0{split}.txt with {expected})")

    present: dict[str, set[str]] = {}
    samples: list[ClipSample] = []
    for number, line in _lines(text):
        parts = line.split()
        where = f"{list_path}:{number}"
        if subset == "train" and (len(parts) != 2 or not parts[1].isdigit()):
            raise LayoutError(f"{where}: {line!r} (expected '<Class>/<clip>.avi <label>', label 1-{len(classes)})")
        if subset == "test" and len(parts) != 1:
            raise LayoutError(f"{where}: {line!r} (expected '<Class>/<clip>.avi', no label)")
        relative = parts[0].replace("\\", "/")
        folder, _, name = relative.partition("/")
        if not name or "/" in name:
            raise LayoutError(f"{where}: {relative!r} (expected '<Class>/<clip>.avi')")
        if folder not in index:
            raise LayoutError(f"{where}: class folder {folder!r} is not in {splits}/classInd.txt "
                              f"(expected one of its {len(classes)} classes)")
        label = index[folder]
        if subset == "train" and int(parts[1]) != label + 1:
            raise LayoutError(f"{where}: label {parts[1]} for {relative}, whose folder {folder} is {label + 1} in "
                              f"classInd.txt (expected the label of the clip's folder)")
        if folder not in present:
            listing = store.list_dir(folder)
            present[folder] = set(listing[1]) if listing is not None else set()
        if name not in present[folder]:
            raise LayoutError(f"{where}: {store.root}/{relative} does not exist (expected every listed clip under the root)")
        samples.append(ClipSample(store.sample_path(relative), label))
    if not samples:
        raise LayoutError(f"{list_path}: no clips (expected one '<Class>/<clip>.avi' line per clip)")
    return UcfSet(store.root, split, subset, classes, samples, dict(storage_options or {}))


def check_ucf_layout(root: str, split: int = 1, splits_dir: str | None = None,
                     storage_options: dict | None = None) -> dict[str, int]:
    """Both lists of the split read and checked as `read_ucf101` does (classInd, the list files, every listed
    clip present); their clip counts, or the first `LayoutError`."""
    return {subset: len(read_ucf101(root, split, subset, splits_dir, storage_options)) for subset in ("train", "test")}


# -- frames --------------------------------------------------------------------------------------------------


def segment_centre_indices(num_frames: int, count: int) -> list[int]:
    """Frame k of `count`: floor((k + 0.5) * num_frames / count), the centre of the k-th of `count` equal
    segments (TSN's test-time sampling). Fewer frames than `count` repeat frames."""
    if num_frames <= 0 or count <= 0:
        raise ValueError(f"need num_frames > 0 and count > 0 (got {num_frames}, {count})")
    return [min(num_frames - 1, int((2 * k + 1) * num_frames // (2 * count))) for k in range(count)]


class UcfClipDataset(torch.utils.data.Dataset):
    """`dataset[i]` = `(i, (T, 3, H, W) tensor, None)`, or `(i, None, reason)` for a clip that cannot be read
    or decoded. Frames are chosen by `segment_centre_indices` over the clip's frame count and fetched at
    `index / fps` seconds by `decode_frames_at`; each is transformed by `transform.apply`."""

    def __init__(self, ucf_set: UcfSet, frames_per_clip: int = 8, transform: ImageTransform | None = None):
        if frames_per_clip < 1:
            raise ValueError(f"frames_per_clip must be >= 1, not {frames_per_clip}")
        self.ucf_set = ucf_set
        self.frames_per_clip = frames_per_clip
        self.transform = transform or ImageTransform()

    @property
    def samples(self) -> list[ClipSample]:
        return self.ucf_set.samples

    def __len__(self) -> int:
        return len(self.ucf_set.samples)

    def fingerprint(self) -> str:
        return self.ucf_set.fingerprint()

    def transform_key(self) -> str:
        """The frame transform's key plus the sampling: `t8-segment-centres-resize256-crop224-...`."""
        return f"t{self.frames_per_clip}-{SAMPLING}-{self.transform.key()}"

    def frames(self, path: str) -> list:
        """The sampled RGB uint8 (H, W, 3) frames of one clip."""
        _, fps, num_frames = probe_video(path, self.ucf_set.storage_options or None)
        if num_frames <= 0 or fps <= 0:
            raise ValueError(f"no frames (frames={num_frames}, fps={fps})")
        indices = segment_centre_indices(num_frames, self.frames_per_clip)
        return decode_frames_at(path, [i / fps for i in indices])

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor | None, str | None]:
        index = int(index)
        path = self.ucf_set.samples[index].path
        try:
            frames = self.frames(path)
            clip = torch.stack([self.transform.apply(Image.fromarray(frame)) for frame in frames])
        except (FileNotFoundError, PermissionError, IsADirectoryError) as problem:
            return index, None, f"cannot read {path}: {type(problem).__name__}: {problem}"
        except Exception as problem:  # noqa: BLE001 - a corrupt or foreign clip: reported, not raised
            reason = _ADDRESS.sub("", f"{type(problem).__name__}: {problem}")
            return index, None, f"cannot decode {path}: {reason}"
        return index, clip, None


def clip_encoder(frame_encode: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    """`encode((B, T, 3, H, W)) -> (B, D)`: the frames' features from `frame_encode((N, 3, H, W)) -> (N, D)`,
    averaged over T. A frame is never mixed with another clip's: all B*T frames go through in one call."""

    def encode(clips: torch.Tensor) -> torch.Tensor:
        if clips.ndim != 5:
            raise ValueError(f"clip_encoder expects (B, T, 3, H, W) clips, got shape {tuple(clips.shape)}")
        batch, frames = clips.shape[:2]
        features = frame_encode(clips.reshape(batch * frames, *clips.shape[2:]))
        if features.ndim != 2 or features.shape[0] != batch * frames:
            raise ValueError(f"frame encoder returned {tuple(features.shape)} for {batch * frames} frames: expected (N, D)")
        return features.reshape(batch, frames, -1).float().mean(dim=1)

    return encode
