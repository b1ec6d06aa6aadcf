"""The DAVIS 2017 semi-supervised metric (J, F and their statistics), as the official davis2017-evaluation computes it.

Pure numpy (torch only for the disk dilation) on id maps (uint8 H x W: 0 background, 1..N objects, 255 void).
Following the official code: J is the IoU, an empty union counting 1; F is the boundary F-measure of seg2bmap
boundaries (a pixel that differs from its right, bottom or bottom-right neighbour, with the official handling of
the last row and column), matched within ceil(0.008 x image diagonal) pixels by dilation with an exact disk
(skimage's disk: dx^2 + dy^2 <= r^2); scored frames are all but the first and the last; per object the mean, the
recall (share of frames > 0.5) and the decay (first minus last of four bins from the official rounded linspace
split, whose neighbouring bins share their edge frame); J-Mean and F-Mean average over objects of all sequences.
Void (255) in the truth is background in semi-supervised scoring: the official evaluator reads void masks but
passes None to the semi-supervised metric, so void pixels are not left out (the `void` arguments exist for other
protocols and are not used by score_sequence).
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

VOID = 255
BOUND_TH = 0.008
GLOBAL_COLUMNS = ("J&F-Mean", "J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay")
SEQUENCE_COLUMNS = ("Sequence", "J-Mean", "F-Mean")


def region_similarity(predicted: np.ndarray, truth: np.ndarray, void: np.ndarray | None = None) -> float:
    """J: IoU of two boolean masks outside the void pixels; 1 when the union is empty (db_eval_iou)."""
    predicted, truth = predicted.astype(bool), truth.astype(bool)
    keep = np.ones_like(truth) if void is None else ~void.astype(bool)
    union = int(((predicted | truth) & keep).sum())
    return 1.0 if union == 0 else int(((predicted & truth) & keep).sum()) / union


def seg2bmap(mask: np.ndarray) -> np.ndarray:
    """Boundary map of a boolean mask, the official _seg2bmap on the image's own grid.

    A pixel is on the boundary when it differs from its right, bottom or bottom-right neighbour (outside the
    image counts as background); the last row compares with the right neighbour only, the last column with the
    bottom one only, and the bottom-right pixel is never a boundary.
    """
    seg = mask.astype(bool)
    east, south, south_east = np.zeros_like(seg), np.zeros_like(seg), np.zeros_like(seg)
    east[:, :-1] = seg[:, 1:]
    south[:-1, :] = seg[1:, :]
    south_east[:-1, :-1] = seg[1:, 1:]
    boundary = (seg ^ east) | (seg ^ south) | (seg ^ south_east)
    boundary[-1, :] = seg[-1, :] ^ east[-1, :]
    boundary[:, -1] = seg[:, -1] ^ south[:, -1]
    boundary[-1, -1] = False
    return boundary


def boundary_tolerance(shape: tuple[int, int], bound_th: float = BOUND_TH) -> int:
    """Pixels of tolerance: bound_th itself when >= 1, else ceil(bound_th x image diagonal)."""
    return int(bound_th) if bound_th >= 1 else math.ceil(bound_th * math.hypot(shape[0], shape[1]))


def disk(radius: int) -> np.ndarray:
    """The exact disk structuring element of skimage.morphology.disk: dx^2 + dy^2 <= radius^2."""
    offsets = np.arange(-radius, radius + 1)
    return offsets[None, :] ** 2 + offsets[:, None] ** 2 <= radius**2


def dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation by an exact disk; pixels outside the image never contribute (cv2.dilate's default border).

    A convolution of the 0/1 map with the disk's 0/1 kernel, > 0 where any disk pixel hits the mask (the sums
    are small integers, exact in float32); torch (a dependency already) rather than scipy, which is undeclared.
    """
    if radius <= 0 or not mask.any():
        return mask.astype(bool)
    source = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None, None]
    kernel = torch.from_numpy(disk(radius).astype(np.float32))[None, None]
    return (F.conv2d(source, kernel, padding=radius)[0, 0] > 0.5).numpy()


def _crop_around(boundaries: np.ndarray, radius: int) -> tuple[slice, slice]:
    """The bounding box of the boundary pixels grown by the radius: nothing outside it can match (a speed-up)."""
    rows, cols = np.nonzero(boundaries)
    height, width = boundaries.shape
    return (slice(max(rows.min() - radius, 0), min(rows.max() + radius + 1, height)),
            slice(max(cols.min() - radius, 0), min(cols.max() + radius + 1, width)))


def contour_accuracy(
    predicted: np.ndarray, truth: np.ndarray, void: np.ndarray | None = None, bound_th: float = BOUND_TH
) -> float:
    """F: boundary F-measure (db_eval_boundary/f_measure); both without boundary -> 1, only one -> 0."""
    keep = np.ones(truth.shape, bool) if void is None else ~void.astype(bool)
    pred_b, true_b = seg2bmap(predicted.astype(bool) & keep), seg2bmap(truth.astype(bool) & keep)
    n_pred, n_true = int(pred_b.sum()), int(true_b.sum())
    if n_pred == 0 and n_true == 0:
        return 1.0
    if n_pred == 0 or n_true == 0:
        return 0.0
    radius = boundary_tolerance(truth.shape, bound_th)
    window = _crop_around(pred_b | true_b, radius)
    pred_b, true_b = pred_b[window], true_b[window]
    precision = int((pred_b & dilate(true_b, radius)).sum()) / n_pred
    recall = int((true_b & dilate(pred_b, radius)).sum()) / n_true
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def statistics(per_frame: np.ndarray | list[float]) -> tuple[float, float, float]:
    """(mean, recall, decay) of one object's per-frame values (db_statistics).

    Decay = mean of the first bin - mean of the last of four bins; bin edges are
    round(linspace(1, n, 5)) - 1 and bin i holds frames edge[i]..edge[i+1] inclusive (neighbours share a frame).
    """
    values = np.asarray(per_frame, dtype=np.float64)
    if values.size == 0:
        raise ValueError("no scored frames (a sequence needs at least 3 frames: the first and last are not scored)")
    mean, recall = float(np.nanmean(values)), float(np.nanmean(values > 0.5))
    edges = (np.round(np.linspace(1, len(values), 5) + 1e-10) - 1).astype(np.int64)
    bins = [values[edges[i] : edges[i + 1] + 1] for i in range(4)]
    return mean, recall, float(np.nanmean(bins[0]) - np.nanmean(bins[3]))


@dataclass(frozen=True)
class ObjectScore:
    """One object's per-frame J and F over the scored frames (all but the first and last) and their statistics."""

    sequence: str
    object_id: int
    j_frames: tuple[float, ...]
    f_frames: tuple[float, ...]

    @property
    def name(self) -> str:
        return f"{self.sequence}_{self.object_id}"

    @property
    def j(self) -> tuple[float, float, float]:
        return statistics(self.j_frames)

    @property
    def f(self) -> tuple[float, float, float]:
        return statistics(self.f_frames)


def score_sequence(
    name: str, predicted: list[np.ndarray], truth: list[np.ndarray], objects: list[int], bound_th: float = BOUND_TH
) -> list[ObjectScore]:
    """Score one sequence: id maps per frame (predicted and truth, same length and shape).

    As the official semi-supervised evaluation: truth 255 (void) counts as background, and a predicted id above
    the sequence's last object is refused (the official evaluator stops there too). The first and last frames
    are not scored.
    """
    if len(predicted) != len(truth):
        raise ValueError(f"{name}: {len(predicted)} predicted masks for {len(truth)} annotated frames")
    if len(truth) < 3:
        raise ValueError(f"{name}: {len(truth)} frame(s); DAVIS scores all but the first and last, so at least 3")
    js: dict[int, list[float]] = {obj: [] for obj in objects}
    fs: dict[int, list[float]] = {obj: [] for obj in objects}
    last = max(objects)
    for t in range(1, len(truth) - 1):
        pred, true = np.asarray(predicted[t]), np.asarray(truth[t])
        if pred.shape != true.shape:
            raise ValueError(f"{name}: frame {t} predicted {pred.shape} for an annotation of {true.shape}")
        if pred.max(initial=0) > last:
            raise ValueError(f"{name}: frame {t} predicts id {int(pred.max())}; the sequence's objects are {objects}")
        for obj in objects:
            js[obj].append(region_similarity(pred == obj, true == obj))
            fs[obj].append(contour_accuracy(pred == obj, true == obj, bound_th=bound_th))
    return [ObjectScore(name, obj, tuple(js[obj]), tuple(fs[obj])) for obj in objects]


def no_motion(first_mask: np.ndarray, num_frames: int) -> list[np.ndarray]:
    """The no-motion baseline: the first frame's mask copied to every frame."""
    return [np.array(first_mask, copy=True) for _ in range(num_frames)]


def global_scores(objects: list[ObjectScore]) -> dict[str, float]:
    """The official global row: every statistic averaged over objects (of all sequences), J&F = (J-Mean + F-Mean) / 2."""
    if not objects:
        raise ValueError("no objects scored")
    j = np.array([o.j for o in objects])
    f = np.array([o.f for o in objects])
    jm, jr, jd = j.mean(axis=0)
    fm, fr, fd = f.mean(axis=0)
    return dict(zip(GLOBAL_COLUMNS, map(float, ((jm + fm) / 2, jm, jr, jd, fm, fr, fd))))


def csv_rows(objects: list[ObjectScore]) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """(global rows, per-sequence rows) in the official columns, values formatted %.3f as the evaluator writes."""
    scores = global_scores(objects)
    global_rows = [{c: f"{scores[c]:.3f}" for c in GLOBAL_COLUMNS}]
    per_sequence = [dict(zip(SEQUENCE_COLUMNS, (o.name, f"{o.j[0]:.3f}", f"{o.f[0]:.3f}"))) for o in objects]
    return global_rows, per_sequence


def write_csvs(objects: list[ObjectScore], out_dir: str | Path, split: str = "val") -> tuple[Path, Path]:
    """global_results-<split>.csv and per-sequence_results-<split>.csv (values %.3f, the official columns)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    global_path, per_path = out / f"global_results-{split}.csv", out / f"per-sequence_results-{split}.csv"
    for path, (columns, rows) in ((global_path, (GLOBAL_COLUMNS, csv_rows(objects)[0])),
                                  (per_path, (SEQUENCE_COLUMNS, csv_rows(objects)[1]))):
        with open(path, "w", newline="") as handle:
            writer = csv.DictWriter(handle, columns)
            writer.writeheader()
            writer.writerows(rows)
    return global_path, per_path
