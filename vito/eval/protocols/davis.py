"""DAVIS 2017 semi-supervised (`kind: davis`): label propagation with frozen features, the official J&F.

Every rank propagates a disjoint set of sequences (balanced by frame count) through the network's stage-4 map at
stride 8 (`Encoder.dense`; vito/eval/scoring/label_propagation.py) and commits each finished sequence's masks as
palette PNGs in DAVIS's results layout under the feature cache (vito/eval/mask_store.py): a preempted evaluation
resumes by sequence. The main rank then scores every committed sequence with the official metric
(vito/eval/scoring/davis_metric.py), beside the no-motion baseline (the first mask copied forward), and returns
the official CSVs as tables. Every protocol constant is a field of `DavisBenchmark`, recorded in results.json.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections import deque
from contextlib import nullcontext
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from vito.config import DavisBenchmark
from vito.eval.protocols.image_folder import BenchmarkOutcome, Encoder, ExtractionSettings, cache_dir

log = logging.getLogger(__name__)

PROTOCOL_VERSION = 1  # bump when the propagation changes what a committed mask holds


def assign_sequences(frame_counts: list[tuple[str, int]], world_size: int) -> list[list[str]]:
    """Each rank's sequences: longest first to the least loaded rank (ties: the lower rank), by frame count;
    each rank's list in the split's order. Deterministic: every rank computes the same assignment."""
    loads = [0] * world_size
    owner: dict[str, int] = {}
    for name, frames in sorted(frame_counts, key=lambda item: -item[1]):  # stable: split order among equals
        rank = min(range(world_size), key=lambda r: (loads[r], r))
        owner[name] = rank
        loads[rank] += frames
    return [[name for name, _ in frame_counts if owner[name] == rank] for rank in range(world_size)]


def protocol_constants(bench: DavisBenchmark) -> dict[str, Any]:
    return {"stage": bench.stage, "stride": bench.stride, "context_frames": bench.context_frames,
            "topk": bench.topk, "temperature": bench.temperature, "radius": bench.radius,
            "short_side": bench.short_side, "split": bench.split, "resolution": bench.resolution,
            "version": PROTOCOL_VERSION}


def dataset_fingerprint(davis) -> str:
    """The set's identity wherever it is mounted: its sequences, frames, sizes and objects."""
    parts = [[s.name, [p.stem for p in s.frames], list(s.size), s.objects] for s in davis.sequences]
    return hashlib.sha256(json.dumps([davis.split, davis.resolution, parts]).encode()).hexdigest()[:32]


def _frame_tensor(path, short_side: int | None) -> torch.Tensor:
    """A normalised (1, 3, H', W') frame: full size, or resized to short side `short_side` (bilinear, antialiased)."""
    from vito.data.augment import normalize
    from vito.eval.datasets.davis import load_frame

    image = torch.from_numpy(load_frame(path)).permute(2, 0, 1).float().div_(255)
    if short_side is not None and min(image.shape[-2:]) != short_side:
        height, width = image.shape[-2:]
        scale = short_side / min(height, width)
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
        image = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0]
    return normalize(image)[None]


def grid_stride(frame: tuple[int, int], grid: tuple[int, int]) -> int:
    """The map's stride in the frame's pixels (8 for the protocol's trunk; 2 for a network with the small CPU
    stem), checked: a grid of ceil(size / stride) cells (both paddings give that)."""
    stride = max(1, round(frame[1] / grid[1]))
    if (math.ceil(frame[0] / stride), math.ceil(frame[1] / stride)) != tuple(grid):
        raise ValueError(f"a {grid[0]}x{grid[1]} feature map of a {frame[0]}x{frame[1]} frame: expected "
                         f"ceil(size / stride) cells for an integer stride")
    return stride


def _resized_ids(ids: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """An id map at another size (nearest neighbour: ids are labels, not intensities)."""
    if ids.shape == size:
        return ids
    resized = F.interpolate(torch.from_numpy(ids)[None, None].float(), size=size, mode="nearest")
    return resized[0, 0].numpy().astype(np.uint8)


def propagate_sequence(sequence, encoder: Encoder, bench: DavisBenchmark) -> list[np.ndarray]:
    """Predicted id maps of every frame of one sequence (frame 0: the given annotation, void as background).

    Frames are encoded one at a time and only the context's features are kept (the first frame's and a ring of
    the last `context_frames`): memory grows with the context, not with the sequence.
    """
    from vito.eval.datasets.davis import load_mask
    from vito.eval.scoring.label_propagation import ids_from_labels, labels_on_grid, propagate_frame

    first = load_mask(sequence.annotations[0])
    given = np.where(first <= max(sequence.objects), first, 0).astype(np.uint8)  # void (255) -> background
    num_labels = len(sequence.objects) + 1
    device = encoder.device
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" and encoder.bf16_autocast
                else nullcontext())
    keys: torch.Tensor | None = None  # (1 + context, h, w, C): slot 0 the first frame, then a ring
    labels: torch.Tensor | None = None  # (1 + context, K, h, w)
    ring: deque[int] = deque(maxlen=bench.context_frames)
    masks = [given]
    for t, path in enumerate(sequence.frames):
        image = _frame_tensor(path, bench.short_side).to(device)
        with torch.inference_mode(), autocast:
            maps = encoder.dense(image)
        feature = F.normalize(maps[0].float(), dim=0).permute(1, 2, 0).contiguous()  # (h, w, C)
        stride = grid_stride(tuple(image.shape[-2:]), tuple(feature.shape[:2]))
        if t == 0:
            keys = torch.empty(1 + bench.context_frames, *feature.shape, device=device)
            labels = torch.empty(1 + bench.context_frames, num_labels, *feature.shape[:2], device=device)
            keys[0] = feature
            seen = _resized_ids(given, tuple(image.shape[-2:]))  # the given mask on the frame the network saw
            labels[0] = labels_on_grid(seen, num_labels, feature.shape[:2], stride).to(device)
            continue
        slots = [0, *ring]
        soft = propagate_frame(feature, keys[slots], labels[slots], topk=bench.topk,
                               temperature=bench.temperature, radius=bench.radius)
        masks.append(ids_from_labels(soft.cpu(), stride, image.shape[-2:], sequence.size))
        if bench.context_frames:
            slot = 1 + (t - 1) % bench.context_frames  # the oldest frame's slot once the ring is full
            keys[slot], labels[slot] = feature, soft
            if slot in ring:
                ring.remove(slot)
            ring.append(slot)
    return masks


def run_davis(name: str, bench: DavisBenchmark, encoder: Encoder, settings: ExtractionSettings, *, seed: int = 0,
              is_main: bool, suffix: str = "") -> BenchmarkOutcome | None:
    """Propagate on every rank (a disjoint set of sequences each), score on the main one (None elsewhere)."""
    from vito.distributed import rank_and_world
    from vito.eval.datasets.davis import read_davis
    from vito.eval.extract import barrier, control_group
    from vito.eval.mask_store import MaskStore

    if encoder.dense is None:
        raise ValueError(f"eval.benchmarks.{name}: the network {encoder.key} gives no dense feature maps "
                         "(Encoder.dense), which DAVIS label propagation needs")
    davis = read_davis(bench.root, bench.split, bench.resolution)
    constants = protocol_constants(bench)
    fingerprint = dataset_fingerprint(davis)
    folder = cache_dir(settings, encoder, fingerprint, json.dumps(constants, sort_keys=True))
    store = MaskStore(folder, settings.storage_options)
    rank, world_size = rank_and_world()
    control = control_group(world_size, settings.group)
    expected = {"dataset_fingerprint": fingerprint, "fields": {"encoder": encoder.key, **constants}}
    store.check_manifest(expected, write=rank == 0)
    barrier(control)
    store.check_manifest(expected, write=False)

    by_name = {s.name: s for s in davis.sequences}
    mine = assign_sequences([(s.name, len(s.frames)) for s in davis.sequences], world_size)[rank]
    computed, reused = [], []
    for done, sequence_name in enumerate(mine):
        sequence = by_name[sequence_name]
        if store.load(sequence) is not None:
            reused.append(sequence_name)
        else:
            started = time.monotonic()
            store.commit(sequence, propagate_sequence(sequence, encoder, bench))
            computed.append(sequence_name)
            log.info("%s: committed %s/%s (%d frames, %.1f frames/s)", name, store.url, sequence_name,
                     len(sequence.frames), (len(sequence.frames) - 1) / max(time.monotonic() - started, 1e-9))
        if settings.progress:
            settings.progress(f"{name} sequences (rank {rank})", done + 1, len(mine))
    log.info("%s: rank %d of %d: sequences computed here %s, reused %s -> %s", name, rank, world_size, computed,
             reused, store.url)
    barrier(control)  # every sequence is committed
    counts: list[Any] = [(computed, reused)]
    if control is not None:
        counts = [None] * world_size
        torch.distributed.all_gather_object(counts, (computed, reused), group=control)
    if not is_main:
        return None
    return _score(name, bench, davis, store, encoder, constants, counts, suffix)


def _score(name: str, bench: DavisBenchmark, davis, store, encoder: Encoder, constants: dict[str, Any],
           counts: list[Any], suffix: str) -> BenchmarkOutcome:
    from vito.eval.datasets.davis import load_mask
    from vito.eval.scoring.davis_metric import csv_rows, global_scores, no_motion, score_sequence

    scored, baseline = [], []
    for sequence in davis.sequences:
        predicted = store.load(sequence)
        if predicted is None:
            raise RuntimeError(f"{store.url}/{sequence.name}: not committed after every rank finished: is "
                               "the feature cache shared by every rank?")
        truth = [load_mask(path) for path in sequence.annotations]
        scored += score_sequence(sequence.name, predicted, truth, sequence.objects)
        if not suffix:  # the baseline needs no network: once, beside the evaluated one
            baseline += score_sequence(sequence.name, no_motion(truth[0], len(truth)), truth, sequence.objects)
    prefix = f"eval/{name}/"
    metrics = {f"{prefix}{key}{suffix}": value for key, value in _headline(global_scores(scored)).items()}
    metrics[f"{prefix}sequences_scored{suffix}"] = float(len(davis.sequences))
    metrics[f"{prefix}objects_scored{suffix}"] = float(len(scored))
    global_rows, sequence_rows = csv_rows(scored)
    tables = {f"global_results-{bench.split}.csv": global_rows, f"per-sequence_results-{bench.split}.csv": sequence_rows}
    if baseline:
        metrics.update({f"{prefix}{key}_no_motion": value for key, value in _headline(global_scores(baseline)).items()})
        tables[f"global_results-{bench.split}_no_motion.csv"] = csv_rows(baseline)[0]
    first = _frame_tensor(davis.sequences[0].frames[0], bench.short_side)
    with torch.inference_mode():
        grid = tuple(encoder.dense(first.to(encoder.device)).shape[-2:])
    computed = sorted(s for part, _ in counts for s in part)
    reused = sorted(s for _, part in counts for s in part)
    record = {
        "benchmark": name, "kind": bench.kind, "root": bench.root, "encoder": encoder.key, "protocol": constants,
        "stride_effective": grid_stride(tuple(first.shape[-2:]), grid),  # 8 but for the small CPU stem's 2
        "masks": store.url, "masks_layout": "<seq>/<frame>.png (palette PNGs, DAVIS's results layout), "
                                            "<seq>.done commit markers",
        "sequences": {"total": len(davis.sequences), "computed": computed, "reused": reused,
                      "by_rank": [sorted(c + r) for c, r in counts]},
        "frames": sum(len(s.frames) for s in davis.sequences), "objects": len(scored),
        "metric": "davis2017-evaluation semi-supervised: J (IoU), F (boundary F, ceil(0.008 x diagonal) px), "
                  "first and last frames unscored, statistics per object",
        "metrics": metrics,
    }
    log.info("%s: %d sequences (%d computed, %d reused), J&F %.4f", name, len(davis.sequences), len(computed),
             len(reused), metrics[f"{prefix}jf{suffix}"])
    return BenchmarkOutcome(metrics, record, tables=tables)


def _headline(scores: dict[str, float]) -> dict[str, float]:
    """The official global row under metric names: jf, j_mean, j_recall, j_decay, f_mean, f_recall, f_decay."""
    return {"jf": scores["J&F-Mean"], "j_mean": scores["J-Mean"], "j_recall": scores["J-Recall"],
            "j_decay": scores["J-Decay"], "f_mean": scores["F-Mean"], "f_recall": scores["F-Recall"],
            "f_decay": scores["F-Decay"]}
