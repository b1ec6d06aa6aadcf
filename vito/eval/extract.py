"""Frozen features of a dataset, computed once per sample over every rank of the job, resumable by shard.

Layout under `cache_dir` (a local path or any fsspec URL)::

    manifest.json          # N, shard_size, the dataset's fingerprint, the caller's cache-key fields
    shard-000007.pt        # torch.save({"indices", "features" (fp16), "skipped"}) of samples [7*S, 8*S)
    shard-000007.done      # written LAST: {"sha256", "size"} of the .pt and its counts

Shard k holds the fixed index range [k*S, min((k+1)*S, N)) and is computed by rank k % world_size, in fixed
batches, so its bytes are the same whichever rank or attempt computed it. A shard is done only when its marker
exists and matches the .pt (size, sha256, counts): a .pt without a marker, or with a stale one, is recomputed.
After its own shards a rank waits for the others on a gloo barrier with a long timeout, then reads every shard,
so every rank returns the complete result with each index exactly once (no DistributedSampler padding).
A cache_dir whose manifest disagrees with this extraction is refused: caches are never silently mixed.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import fsspec
import torch
from fsspec.implementations.local import LocalFileSystem

from vito.checkpoint import with_retries
from vito.distributed import rank_and_world
from vito.eval.datasets.image_folder import collate

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
_LOG_EVERY_S = 30.0  # a progress line every 30 s or every _LOG_EVERY_BATCHES batches, whichever comes first
_LOG_EVERY_BATCHES = 50


class CacheMismatch(ValueError):
    """cache_dir holds features of a different extraction (another dataset, encoder, transform or sharding)."""


@dataclass
class ExtractedFeatures:
    features: torch.Tensor  # fp16 (N_ok, D), ordered by sample index
    indices: torch.Tensor  # int64 (N_ok,), the sample index of each row, ascending
    labels: torch.Tensor  # int64 (N_ok,), from the dataset's samples
    skipped: list[tuple[int, str, str]]  # (index, path, reason) of the samples that could not be read
    computed_shards: list[int] = field(default_factory=list)  # this rank's, computed in this call
    reused_shards: list[int] = field(default_factory=list)  # this rank's, found committed
    num_samples: int = 0  # N: len(indices) + len(skipped)


def shard_name(shard: int) -> str:
    return f"shard-{shard:06d}"


def shard_range(shard: int, shard_size: int, num_samples: int) -> range:
    return range(shard * shard_size, min((shard + 1) * shard_size, num_samples))


def _dataset_fingerprint(dataset) -> str:
    """The dataset's own fingerprint, or a hash of its samples' paths and labels."""
    if hasattr(dataset, "fingerprint"):
        return str(dataset.fingerprint())
    digest = hashlib.sha256()
    for sample in dataset.samples:
        digest.update(f"{sample.path}\t{sample.label}\n".encode())
    return digest.hexdigest()[:32]


class _Cache:
    """The cache folder on its fsspec filesystem, with the commit-marker discipline of vito.checkpoint."""

    def __init__(self, url: str, storage_options: dict | None):
        self.url = url.rstrip("/")
        self.fs, self.root = fsspec.core.url_to_fs(self.url, **(storage_options or {}))
        self.root = self.root.rstrip("/")
        self.local = isinstance(self.fs, LocalFileSystem)

    def path(self, name: str) -> str:
        return f"{self.root}/{name}"

    def read_json(self, name: str) -> dict | None:
        def read() -> dict | None:
            try:
                return json.loads(self.fs.cat_file(self.path(name)))
            except FileNotFoundError:
                return None

        try:
            return with_retries(read, f"reading {self.url}/{name}")
        except json.JSONDecodeError:
            return None  # a torn or foreign file: not a valid marker

    def write_json(self, name: str, payload: dict) -> None:
        self.write_bytes(name, json.dumps(payload, indent=1, sort_keys=True).encode())

    def write_bytes(self, name: str, data: bytes) -> None:
        # Write-then-rename on a local disk, where a crash can leave half a file; on S3 the PUT is atomic.
        final, tmp = self.path(name), self.path(f"{name}.tmp-{os.getpid()}")

        def write() -> None:
            self.fs.makedirs(self.root, exist_ok=True)
            if self.local:
                self.fs.pipe_file(tmp, data)
                self.fs.mv(tmp, final)
            else:  # an object store's PUT is atomic already: no copy
                self.fs.pipe_file(final, data)

        with_retries(write, f"writing {self.url}/{name}")

    def read_bytes(self, name: str) -> bytes | None:
        def read() -> bytes | None:
            try:
                return self.fs.cat_file(self.path(name))
            except FileNotFoundError:
                return None

        return with_retries(read, f"reading {self.url}/{name}")

    def remove(self, name: str) -> None:
        try:
            self.fs.rm(self.path(name))
        except FileNotFoundError:
            pass


CacheFolder = _Cache  # public name: the DAVIS masks (vito.eval.mask_store) keep the same discipline


def _expected_manifest(dataset, num_samples: int, shard_size: int, cache_key_fields: dict[str, Any]) -> dict:
    manifest = {
        "format": FORMAT_VERSION,
        "num_samples": num_samples,
        "shard_size": shard_size,
        "dataset_fingerprint": _dataset_fingerprint(dataset),
        "fields": json.loads(json.dumps(cache_key_fields, sort_keys=True, default=str)),
    }
    if hasattr(dataset, "transform_key"):
        manifest["transform"] = str(dataset.transform_key())
    return manifest


def _manifest_difference(found: dict, expected: dict) -> list[str]:
    differences = []
    for key in sorted(set(found) | set(expected)):
        if key == "fields":
            fields_found, fields_expected = found.get("fields") or {}, expected.get("fields") or {}
            differences += [f"fields.{name}: cached {fields_found.get(name)!r}, now {fields_expected.get(name)!r}"
                            for name in sorted(set(fields_found) | set(fields_expected))
                            if fields_found.get(name) != fields_expected.get(name)]
        elif found.get(key) != expected.get(key):
            differences.append(f"{key}: cached {found.get(key)!r}, now {expected.get(key)!r}")
    return differences


def _check_manifest(cache: _Cache, expected: dict) -> bool:
    """True if the manifest exists and agrees; False if absent; CacheMismatch if it disagrees."""
    found = cache.read_json(MANIFEST)
    if found is None:
        leftovers = _shard_files(cache)
        if leftovers:  # the manifest is written before any shard: these are of an unknown extraction
            raise CacheMismatch(f"{cache.url} holds {len(leftovers)} shard file(s) (e.g. {leftovers[0]}) but no "
                                f"{MANIFEST}, so what they were computed from is unknown: use another cache_dir, or "
                                "delete that folder to recompute")
        return False
    differences = _manifest_difference(found, expected)
    if differences:
        raise CacheMismatch(
            f"{cache.url}/{MANIFEST} was written for a different extraction ({'; '.join(differences)}): "
            "use another cache_dir for this one, or delete that folder to recompute"
        )
    return True


def _shard_batches(shards: Sequence[int], shard_size: int, num_samples: int, batch_size: int) -> list[list[int]]:
    """Fixed batches: each shard cut into runs of batch_size from its start, never crossing a shard's end."""
    batches = []
    for shard in shards:
        indices = shard_range(shard, shard_size, num_samples)
        batches += [list(indices[i:i + batch_size]) for i in range(0, len(indices), batch_size)]
    return batches


def _encode_bytes(payload: dict) -> bytes:
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return buffer.getvalue()


def _marker_for(shard: int, data: bytes, payload: dict) -> dict:
    return {
        "shard": shard,
        "sha256": hashlib.sha256(data).hexdigest(),
        "size": len(data),
        "count": int(payload["indices"].numel()),
        "skipped": len(payload["skipped"]),
    }


def _load_shard(cache: _Cache, shard: int, shard_size: int, num_samples: int) -> tuple[dict, str | None]:
    """(payload, None) for a committed shard that verifies; (None-ish, why not) otherwise."""
    name = shard_name(shard)
    marker = cache.read_json(f"{name}.done")
    if marker is None:
        return {}, "no commit marker"
    data = cache.read_bytes(f"{name}.pt")
    if data is None:
        return {}, "marker without its .pt"
    if len(data) != marker.get("size") or hashlib.sha256(data).hexdigest() != marker.get("sha256"):
        return {}, f"the .pt ({len(data)} bytes) does not match its marker ({marker.get('size')} bytes, sha256 differs)"
    payload = torch.load(io.BytesIO(data), weights_only=True)
    expected = shard_range(shard, shard_size, num_samples)
    seen = sorted(payload["indices"].tolist() + [int(index) for index, _, _ in payload["skipped"]])
    if seen != list(expected) or marker.get("count") != payload["indices"].numel():
        return {}, f"holds indices other than [{expected.start}, {expected.stop})"
    return payload, None


def _resolve_device(encode, device) -> torch.device:
    if device is not None:
        return torch.device(device)
    if isinstance(encode, torch.nn.Module):
        for parameter in encode.parameters():
            return parameter.device
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def barrier(group) -> None:
    if group is None:
        return
    torch.distributed.barrier(group=group)


def control_group(world_size: int, group):
    """The group to wait on: the caller's (e.g. DistInfo.control_group), else a new gloo group with the long
    control timeout (a rank whose shards were all cached may wait for the whole extraction of another)."""
    if world_size == 1:
        return None
    if group is not None:
        return group
    timeout = timedelta(seconds=float(os.environ.get("VITO_CONTROL_TIMEOUT_S", "7200")))
    return torch.distributed.new_group(backend="gloo", timeout=timeout)


class _Progress:
    def __init__(self, total: int, done: int, rank: int, callback: Callable[[int, int], None] | None):
        self.total, self.done, self.rank, self.callback = total, done, rank, callback
        self.started = time.monotonic()
        self.last_log = time.monotonic()
        self.batches_since_log = 0
        self.computed = 0
        self.skipped = 0

    def report(self, force: bool = False) -> None:
        if self.callback is not None:
            self.callback(self.done, self.total)
        now = time.monotonic()
        self.batches_since_log += 1
        if force or now - self.last_log >= _LOG_EVERY_S or self.batches_since_log >= _LOG_EVERY_BATCHES:
            self.last_log, self.batches_since_log = now, 0
            rate = self.computed / max(now - self.started, 1e-9)
            log.info("extract: rank %d: %d/%d samples done (%d computed here, %.1f/s, %d unreadable)",
                     self.rank, self.done, self.total, self.computed, rate, self.skipped)


def extract_features(
    encode: Callable[[torch.Tensor], torch.Tensor],
    dataset,
    cache_dir: str,
    *,
    shard_size: int = 4096,
    batch_size: int = 64,
    workers: int = 4,
    device: torch.device | str | None = None,
    bf16_autocast: bool = False,
    channels_last: bool = False,
    storage_options: dict | None = None,
    progress: Callable[[int, int], None] | None = None,
    cache_key_fields: dict[str, Any] | None = None,
    group: Any = None,
) -> ExtractedFeatures:
    """Features of every sample of `dataset`, each computed exactly once over the ranks of the job.

    `encode(images (B, 3, H, W)) -> (B, D)`; the caller puts the model in eval mode. `dataset[i]` returns
    `(i, tensor | None, reason | None)` and `dataset.samples[i]` has `.path` and `.label` (ImageFolderDataset).
    `cache_key_fields` (encoder and transform keys, ...) are written into manifest.json and must match on
    resume. `group`: a gloo process group for the waits (pass vito.distributed's DistInfo.control_group; by
    default each call makes a new gloo group with VITO_CONTROL_TIMEOUT_S, 2 h: a rank whose shards were cached
    may wait for all of another's). If a rank fails, the others fail when its process exits.
    `progress(done, total)` counts samples over all shards, cached ones included (a rank sees the shards that
    were committed when it started, plus its own). On CUDA, `bf16_autocast` and `channels_last` apply; on CPU
    the encoder runs in fp32. Features are stored and returned in fp16.
    """
    if shard_size <= 0 or batch_size <= 0:
        raise ValueError(f"shard_size and batch_size must be positive (got {shard_size}, {batch_size})")
    rank, world_size = rank_and_world()
    num_samples = len(dataset)
    num_shards = math.ceil(num_samples / shard_size)
    cache = _Cache(cache_dir, storage_options)
    control = control_group(world_size, group)

    expected = _expected_manifest(dataset, num_samples, shard_size, dict(cache_key_fields or {}))
    if control is not None:  # every rank must be extracting the same thing: say so on all of them, not hang
        seen: list[Any] = [None] * world_size
        torch.distributed.all_gather_object(seen, expected, group=control)
        disagree = [r for r, other in enumerate(seen) if other != seen[0]]
        if disagree:
            raise CacheMismatch(f"ranks disagree on the extraction: rank {disagree[0]} has "
                                f"{'; '.join(_manifest_difference(seen[0], seen[disagree[0]]))} (against rank 0)")
    if not _check_manifest(cache, expected) and rank == 0:
        cache.write_json(MANIFEST, expected)
    barrier(control)
    if not _check_manifest(cache, expected):
        raise CacheMismatch(f"{cache.url}/{MANIFEST} is missing after rank 0 wrote it: is cache_dir shared by every rank?")

    mine = [shard for shard in range(num_shards) if shard % world_size == rank]
    payloads: dict[int, dict] = {}
    todo, reused = [], []
    for shard in mine:
        payload, why_not = _load_shard(cache, shard, shard_size, num_samples)
        if why_not is None:
            payloads[shard] = payload
            reused.append(shard)
        else:
            todo.append(shard)
            if why_not != "no commit marker" or cache.fs.exists(cache.path(f"{shard_name(shard)}.pt")):
                log.info("extract: %s/%s: %s; recomputing it", cache.url, shard_name(shard), why_not)
    others_done = _committed_elsewhere(cache, num_shards, set(mine))
    done = sum(len(shard_range(s, shard_size, num_samples)) for s in (*reused, *others_done))
    tracker = _Progress(num_samples, done, rank, progress)
    log.info("extract: rank %d of %d: %d samples in %d shards of %d; %d of its %d shards cached, %d to compute -> %s",
             rank, world_size, num_samples, num_shards, shard_size, len(reused), len(mine), len(todo), cache.url)
    tracker.report(force=True)

    if todo:
        run_on = _resolve_device(encode, device)
        payloads.update(_compute(encode, dataset, cache, todo, shard_size, batch_size, workers, run_on,
                                 bf16_autocast, channels_last, tracker))
    tracker.report(force=True)

    barrier(control)  # every shard is committed
    result = _gather(dataset, cache, payloads, num_shards, shard_size, world_size)
    if progress is not None:
        progress(num_samples, num_samples)
    result.computed_shards, result.reused_shards = list(todo), reused
    return result


def _shard_files(cache: _Cache) -> list[str]:
    """Names of the shard files (.pt and .done) in the cache folder."""
    try:
        names = cache.fs.ls(cache.root, detail=False, refresh=True)
    except FileNotFoundError:
        return []
    bases = (name.rstrip("/").rsplit("/", 1)[-1] for name in names)
    return sorted(base for base in bases if base.startswith("shard-") and base.endswith((".pt", ".done")))


def _committed_elsewhere(cache: _Cache, num_shards: int, mine: set[int]) -> list[int]:
    """Other ranks' shards whose markers exist now (for progress counts only; read and verified later)."""
    found = []
    for base in _shard_files(cache):
        number = base[len("shard-"):-len(".done")]
        if base.endswith(".done") and number.isdigit() and int(number) < num_shards and int(number) not in mine:
            found.append(int(number))
    return found


def _compute(encode, dataset, cache: _Cache, shards: list[int], shard_size: int, batch_size: int, workers: int,
             device: torch.device, bf16_autocast: bool, channels_last: bool, tracker: _Progress) -> dict[int, dict]:
    num_samples = len(dataset)
    batches = _shard_batches(shards, shard_size, num_samples, batch_size)
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=batches, num_workers=workers, collate_fn=collate,
        pin_memory=device.type == "cuda", persistent_workers=False,
    )
    cuda = device.type == "cuda"
    if not cuda and (bf16_autocast or channels_last):
        log.info("extract: on %s the encoder runs in fp32, contiguous (bf16_autocast/channels_last are for CUDA)", device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda and bf16_autocast else nullcontext()
    paths = [sample.path for sample in dataset.samples]

    finished: dict[int, dict] = {}
    pending = iter(shards)
    shard = next(pending)
    end = shard_range(shard, shard_size, num_samples).stop
    rows, indices, skipped = [], [], []
    for batch_number, (good, images, errors) in enumerate(loader):
        first = batches[batch_number][0]
        while first >= end:  # an empty shard cannot happen; this only advances past a finished one
            shard = next(pending)
            end = shard_range(shard, shard_size, num_samples).stop
        returned = sorted(good.tolist() + [index for index, _ in errors])
        if returned != batches[batch_number]:
            raise ValueError(f"the dataset returned samples {returned[:4]}... for indices {batches[batch_number][:4]}...: "
                             "dataset[i] must return (i, tensor | None, reason | None)")
        if images is not None:
            images = images.to(device, non_blocking=True)
            if cuda and channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with torch.inference_mode(), autocast:
                out = encode(images)
            if out.ndim != 2 or out.shape[0] != images.shape[0]:
                raise ValueError(f"encode returned shape {tuple(out.shape)} for {images.shape[0]} images: expected (B, D)")
            out = out.float().cpu()
            half = out.half()
            if not torch.isfinite(half).all():
                raise ValueError(f"features of samples {good[:4].tolist()}... are not finite in fp16 (|x| max "
                                 f"{out.abs().max().item():.3g}): normalise or scale the encoder output")
            rows.append(half)
            indices.append(good)
        skipped += [(index, paths[index], reason) for index, reason in errors]
        tracker.done += len(batches[batch_number])
        tracker.computed += len(batches[batch_number])
        tracker.skipped += len(errors)
        tracker.report()
        if batches[batch_number][-1] == end - 1:  # the shard's last batch: commit it
            finished[shard] = _commit_shard(cache, shard, rows, indices, skipped)
            rows, indices, skipped = [], [], []
    return finished


def _commit_shard(cache: _Cache, shard: int, rows: list[torch.Tensor], indices: list[torch.Tensor],
                  skipped: list[tuple[int, str, str]]) -> dict:
    name = shard_name(shard)
    width = rows[0].shape[1] if rows else 0
    payload = {
        "indices": torch.cat(indices) if indices else torch.zeros(0, dtype=torch.int64),
        "features": torch.cat(rows) if rows else torch.zeros(0, width, dtype=torch.float16),
        "skipped": [(int(index), str(path), str(reason)) for index, path, reason in skipped],
    }
    data = _encode_bytes(payload)
    cache.remove(f"{name}.done")  # a stale marker must never vouch for the new bytes
    cache.write_bytes(f"{name}.pt", data)
    cache.write_json(f"{name}.done", _marker_for(shard, data, payload))  # last: the shard now counts as done
    log.info("extract: committed %s/%s (%d features, %d unreadable)", cache.url, name,
             payload["indices"].numel(), len(skipped))
    return payload


def _gather(dataset, cache: _Cache, own: dict[int, dict], num_shards: int, shard_size: int,
            world_size: int) -> ExtractedFeatures:
    """Every shard in order into one preallocated fp16 matrix: the peak is the result plus one shard (and this
    rank's own shards, already in memory), not two copies of the whole bank."""
    num_samples = len(dataset)
    counts = {}
    for shard in range(num_shards):
        if shard in own:
            counts[shard] = int(own[shard]["indices"].numel())
        else:
            marker = cache.read_json(f"{shard_name(shard)}.done")
            if marker is None:
                raise RuntimeError(f"{cache.url}/{shard_name(shard)} (rank {shard % world_size}'s) has no commit marker "
                                   "after every rank finished: is cache_dir shared by every rank?")
            counts[shard] = int(marker.get("count", 0))
    total = sum(counts.values())
    features: torch.Tensor | None = None
    index_parts, skipped, offset = [], [], 0
    for shard in range(num_shards):
        payload = own.pop(shard, None)
        if payload is None:
            payload, why_not = _load_shard(cache, shard, shard_size, num_samples)
            if why_not is not None:
                raise RuntimeError(f"{cache.url}/{shard_name(shard)} (rank {shard % world_size}'s) is not usable after "
                                   f"every rank finished: {why_not}")
        rows = payload["features"]
        if rows.shape[0] != counts[shard]:
            raise RuntimeError(f"{cache.url}/{shard_name(shard)} changed while being read ({rows.shape[0]} rows, "
                               f"{counts[shard]} expected)")
        if rows.shape[0]:
            if features is None:
                features = torch.empty(total, rows.shape[1], dtype=torch.float16)
            elif rows.shape[1] != features.shape[1]:
                raise RuntimeError(f"{cache.url}/{shard_name(shard)} holds {rows.shape[1]}-d features, the shards "
                                   f"before it {features.shape[1]}-d")
            features[offset:offset + rows.shape[0]] = rows
        offset += rows.shape[0]
        index_parts.append(payload["indices"])
        skipped += [(int(i), str(path), str(reason)) for i, path, reason in payload["skipped"]]
        del payload, rows
    if features is None:
        features = torch.zeros(0, 0, dtype=torch.float16)
    indices = torch.cat(index_parts) if index_parts else torch.zeros(0, dtype=torch.int64)
    skipped.sort()
    if indices.numel() > 1 and not bool((indices[1:] > indices[:-1]).all()):
        order = torch.argsort(indices)  # never with shards this module wrote (ascending within each)
        features, indices = features[order], indices[order]
    covered = torch.zeros(num_samples, dtype=torch.int64)
    covered.index_add_(0, indices, torch.ones_like(indices))
    for index, _, _ in skipped:
        covered[index] += 1
    if num_samples and not bool((covered == 1).all()):
        wrong = torch.nonzero(covered != 1).flatten()[:5].tolist()
        raise RuntimeError(f"indices not covered exactly once by the shards, e.g. {wrong}")
    labels = torch.tensor([dataset.samples[i].label for i in indices.tolist()], dtype=torch.int64)
    return ExtractedFeatures(features=features, indices=indices, labels=labels, skipped=skipped,
                             num_samples=num_samples)
