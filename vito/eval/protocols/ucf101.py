"""UCF-101 with a frame network: clip features = per-frame pooled features averaged over evenly spaced frames, a
linear probe on the split's train clips, top-1 on its test clips.

The protocol (docs/evaluation.md): `frames_per_clip` frames at the centres of equal segments of each clip (TSN's
test-time sampling), each resized and centre cropped as the image benchmarks are, encoded, pooled and averaged;
train and test features extracted once through `extract_features` (every rank a shard, cached by shard beside the
checkpoint, keyed by the split list's contents, frames_per_clip, the transform and the network). The linear probe
of scoring/linear.py chooses its lr on whole groups of train clips held out (UCF-101's groups share actor and
scene, and the official splits are group-disjoint: a clip-level holdout would score the lr on near-duplicates of
its fit clips), never on test, and reports its last epoch. A clip that cannot be decoded is skipped, listed and
left out of both counts; `clips_scored` says how many test clips the top-1 is over. Its own classifier: no
readout of an image benchmark is involved.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import torch

from vito.config import Ucf101Benchmark
from vito.eval.protocols.image_folder import BenchmarkOutcome, Encoder, ExtractionSettings, cache_dir, transform_of

log = logging.getLogger(__name__)

_GROUP = re.compile(r"_g(\d+)_c\d+\.[A-Za-z0-9]+$")  # v_<Class>_g08_c01.avi


def clip_batching(shard_size: int, batch_size: int, frames_per_clip: int) -> tuple[int, int]:
    """(clips per shard, clips per batch): eval.extract_shard_size and extract_batch_size count frames here, so
    a batch holds as many frames as an image kind's (the same memory) and the shards spread over the ranks as
    finely (4096 frames: 512 clips of 8, ~19 shards for split 1's train list, where 4096 clips would be 3)."""
    return max(1, shard_size // frames_per_clip), max(1, batch_size // frames_per_clip)


def clip_group(path: str) -> int | None:
    """The group number gXX of an official clip name (`v_ApplyEyeMakeup_g08_c01.avi` -> 8); None otherwise."""
    match = _GROUP.search(path)
    return int(match.group(1)) if match else None


def group_holdout(groups: list[int], fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(fit rows, held-out rows) holding out whole group numbers across every class, as the official splits do
    (split 1 tests on g01-g07 of every class): max(1, round(fraction x groups)) of the distinct groups, at most
    all but one, chosen by a seeded permutation. None with fewer than 2 groups (no group-disjoint holdout)."""
    if not 0 < fraction < 1:
        raise ValueError(f"holdout fraction must be in (0, 1), got {fraction}")
    distinct = sorted(set(groups))
    if len(distinct) < 2:
        return None
    take = min(len(distinct) - 1, max(1, round(fraction * len(distinct))))
    order = torch.randperm(len(distinct), generator=torch.Generator().manual_seed(seed))
    held = torch.tensor(sorted(distinct[i] for i in order[:take].tolist()), dtype=torch.int64)
    held_rows = torch.isin(torch.tensor(groups, dtype=torch.int64), held)
    return held_rows.logical_not().nonzero().flatten(), held_rows.nonzero().flatten()


def per_class_rows(predictions: torch.Tensor, labels: torch.Tensor, classes: list[str]) -> list[dict[str, Any]]:
    """One row per class of classInd: its test clips scored, how many were right, its top-1 (None without clips)."""
    rows = []
    for index, name in enumerate(classes):
        mine = labels == index
        count = int(mine.sum())
        correct = int((predictions[mine] == index).sum())
        rows.append({"class": name, "clips": count, "correct": correct, "top1": correct / count if count else None})
    return rows


def extract_clips(bench: Ucf101Benchmark, subset: str, encoder: Encoder, settings: ExtractionSettings, name: str):
    """(ucf_set, extracted, cache folder) of one list of the split, from the cache where its shards are committed,
    else computed by every rank."""
    from vito.eval.datasets.ucf101 import UcfClipDataset, clip_encoder, read_ucf101
    from vito.eval.extract import extract_features

    ucf_set = read_ucf101(bench.root, bench.split, subset, bench.splits_dir, settings.storage_options)
    dataset = UcfClipDataset(ucf_set, bench.frames_per_clip, transform_of(bench))
    folder = cache_dir(settings, encoder, ucf_set.fingerprint(), dataset.transform_key())
    shard_clips, batch_clips = clip_batching(settings.shard_size, settings.batch_size, bench.frames_per_clip)
    what = f"{name} {subset}"
    report = (lambda done, total: settings.progress(what, done, total)) if settings.progress else None

    def frames(images: torch.Tensor) -> torch.Tensor:  # a clip batch is 5-D: channels_last applies per frame
        if encoder.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return encoder.encode(images)

    extracted = extract_features(
        clip_encoder(frames), dataset, folder, shard_size=shard_clips, batch_size=batch_clips,
        workers=settings.workers, device=encoder.device, bf16_autocast=encoder.bf16_autocast, channels_last=False,
        storage_options=settings.storage_options, progress=report, group=settings.group,
        cache_key_fields={"encoder": encoder.key, "dataset": ucf_set.fingerprint(), "transform": dataset.transform_key(),
                          "split": f"{subset}list0{bench.split}", "frames_per_clip": bench.frames_per_clip},
    )
    log.info("%s: %d clips, %d skipped; shards computed here %s, reused %s", what, extracted.num_samples,
             len(extracted.skipped), extracted.computed_shards, extracted.reused_shards)
    return ucf_set, extracted, folder


def run_ucf101(name: str, bench: Ucf101Benchmark, encoder: Encoder, settings: ExtractionSettings, *, seed: int,
               is_main: bool, suffix: str = "") -> BenchmarkOutcome | None:
    """Extract on every rank, fit the probe on every rank (data-parallel), score on the main one (None elsewhere)."""
    from vito.eval.scoring.knn import knn_evaluate
    from vito.eval.scoring.linear import fit_linear_probe

    train_set, train, train_cache = extract_clips(bench, "train", encoder, settings, name)
    _, test, test_cache = extract_clips(bench, "test", encoder, settings, name)
    classes = train_set.classes
    probe, chosen_on = None, None
    if bench.linear:
        groups = [clip_group(train_set.samples[i].path) for i in train.indices.tolist()]
        holdout = None
        if len(bench.linear_lr_grid) > 1 and None not in groups:
            holdout = group_holdout(groups, bench.linear_holdout, seed)
        if holdout is not None:
            held_groups = sorted({groups[i] for i in holdout[1].tolist()})
            chosen_on = (f"train groups {', '.join(f'g{g:02d}' for g in held_groups)} held out whole "
                         f"({len(held_groups)} of {len(set(groups))}; never test)")
        elif len(bench.linear_lr_grid) > 1:
            chosen_on = f"{bench.linear_holdout:g} of train clips, stratified (clip names without gXX; never test)"
        probe = fit_linear_probe(train.features.float(), train.labels, len(classes), lr_grid=tuple(bench.linear_lr_grid),
                                 epochs=bench.linear_epochs, batch_size=bench.linear_batch_size,
                                 holdout_fraction=bench.linear_holdout, seed=seed, device=encoder.device,
                                 holdout=holdout)
    if not is_main:
        return None
    prefix = f"eval/{name}/"
    metrics: dict[str, float] = {
        f"{prefix}clips_scored{suffix}": float(len(test.indices)),
        f"{prefix}train_clips{suffix}": float(len(train.indices)),
        f"{prefix}skipped_clips{suffix}": float(len(train.skipped) + len(test.skipped)),
    }
    lists = {subset: f"{subset}list0{bench.split}.txt" for subset in ("train", "test")}
    record: dict[str, Any] = {
        "benchmark": name, "kind": bench.kind, "root": bench.root, "splits_dir": bench.splits_dir,
        "split": bench.split, "lists": lists, "classes": len(classes), "frames_per_clip": bench.frames_per_clip,
        "frame_sampling": "centres of frames_per_clip equal segments of the clip (TSN test sampling)",
        "clip_feature": "mean over the frames of the network's pooled feature", "transform": transform_of(bench).key(),
        "encoder": encoder.key, "feature_cache": {"train": train_cache, "test": test_cache},
        "clips": {"train": len(train.indices), "test": len(test.indices)},
        "skipped": {"train": len(train.skipped), "test": len(test.skipped)},
        "extraction": dict(zip(("clips_per_shard", "clips_per_batch"),
                               clip_batching(settings.shard_size, settings.batch_size, bench.frames_per_clip))),
    }
    tables: dict[str, list[dict[str, Any]]] = {}
    if probe is not None:
        test_x = test.features.float()
        predictions = probe.logits(test_x).argmax(dim=1) if test_x.shape[0] else torch.zeros(0, dtype=torch.int64)
        metrics[f"{prefix}linear_top1{suffix}"] = probe.top1(test_x, test.labels)
        record["linear"] = {**probe.as_dict(), "schedule": "cosine", "reported": "last epoch",
                            "lr_chosen_on": chosen_on or "a single lr: no selection"}
        tables["per_class.csv"] = per_class_rows(predictions.cpu(), test.labels, classes)
    if bench.knn:
        knn = knn_evaluate(train.features, train.labels, test.features, test.labels, len(classes),
                           k_values=tuple(bench.knn_k), temperature=bench.knn_temperature, device=encoder.device)
        for k, top1 in knn.top1.items():
            metrics[f"{prefix}knn{k}_top1{suffix}"] = top1
        record["knn"] = {**knn.as_dict(), "similarity": "cosine of L2-normalised features", "vote": "exp(sim / T)"}
    record["metrics"] = metrics
    skipped = [{"subset": subset, "index": i, "path": path, "reason": reason}
               for subset, part in (("train", train), ("test", test)) for i, path, reason in part.skipped]
    return BenchmarkOutcome(metrics, record, skipped, tables=tables)
