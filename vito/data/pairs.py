"""The stream of positive pairs: two (augmented) frames of one video, a random time gap apart.

Everything about sample p of the stream (which video, which two times, which augmentations) is a pure
function of (seed, p). A rank reads the global positions of its slice of each step's batch, so the batches
are the same for any number of loader workers, and a run resumed at step s sees exactly the batches an
uninterrupted run would have seen from step s on.

A loader worker returns a sample as two uint8 crops and the photometric choices drawn for them
(`sample_crops`); the trainer applies those batched on its device (vito/data/batch_augment.py). `sample` is
the per-sample float reference of the same views.

Each sampler (so each loader worker) keeps a bounded `ClipCache` of small clips decoded whole: after the
first visit a sample costs its augmentations, not an open + seek + decode. Cached or not, the frames and
therefore the batches are identical; long videos are never cached and are read by seeking.

A video that cannot be opened or decoded never stops training: sample p then takes the video of position
p + 1 (then p + 2, ...) with times and augmentations drawn from (seed, p, attempt). Which files are
unreadable is a property of the data, so the stream stays a pure function of (seed, position) and exact
resume keeps working. Every such skip is counted in a per-video counter shared by the loader's workers
(`SkipCounter`); the trainer logs the totals.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from vito.config import DataConfig
from vito.data.augment import augment_view, crop_uint8, draw_view_params
from vito.data.batch_augment import PairCrops
from vito.data.loader_plan import LoaderPlan
from vito.data.manifest import VideoRecord
from vito.data.video import CLIP_CACHE_BYTES, CLIP_CACHE_MAX_FRAMES, ClipCache, decode_frames_at

log = logging.getLogger(__name__)

# Domain tags keep the epoch-permutation and per-sample seed streams from ever colliding.
_PERMUTATION_STREAM = 0
_SAMPLE_STREAM = 1
# Skipping stops (with an error) after this many unreadable videos in a row for one sample.
MAX_SKIPS_PER_SAMPLE = 64


class SkipCounter:
    """How often each video was skipped as unreadable, in shared memory.

    The tensor lives in shared memory before loader workers start, so workers (forked or spawned: torch
    pickles shared storage by handle) increment the very counters the training process reads. A lost
    increment when two workers skip the same video at the same instant is possible and harmless.
    """

    def __init__(self, num_videos: int) -> None:
        self.counts = torch.zeros(num_videos, dtype=torch.int32).share_memory_()

    def record(self, video: int) -> None:
        self.counts[video] += 1

    def skipped_samples(self) -> int:
        return int(self.counts.sum())

    def skipped_videos(self) -> set[int]:
        return set(torch.nonzero(self.counts).flatten().tolist())


def gap_magnitude(u: float, cfg: DataConfig) -> float:
    """|gap| in seconds for a uniform draw u in [0, 1) (inverse CDF of the configured distribution)."""
    low, high = cfg.min_gap_s, cfg.max_gap_s
    span = high - low
    if cfg.gap_distribution == "fixed" or span <= 0:
        return high
    if cfg.gap_distribution == "uniform":
        return low + span * u
    # Exponential with mean gap_scale_s, truncated to [0, span]: inverse of its CDF (1 - e^(-x/s)) / (1 - e^(-span/s)).
    scale = cfg.gap_scale_s
    return low - scale * math.log1p(-u * -math.expm1(-span / scale))


def place_second(first: float, gap: float, duration: float) -> float:
    """first + gap if it lies in the clip, else first - gap if that does, else the nearest end."""
    for second in (first + gap, first - gap):
        if 0.0 <= second <= duration:
            return second
    return min(max(first + gap, 0.0), duration)


def _derived_seed(*parts: int) -> int:
    """A well-mixed 64-bit seed from integers (nearby inputs give unrelated generators)."""
    return int(np.random.SeedSequence([int(part) for part in parts]).generate_state(1, np.uint64)[0])


def _generator(*parts: int) -> torch.Generator:
    return torch.Generator().manual_seed(_derived_seed(*parts))


def to_chw_float(frame: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(frame).permute(2, 0, 1).float().div_(255)


class PairSampler:
    """The infinite sample stream: position p -> (video, two timestamps, two augmented views)."""

    def __init__(
        self,
        records: list[VideoRecord],
        data_cfg: DataConfig,
        seed: int,
        clip_cache_bytes: int = CLIP_CACHE_BYTES,
        clip_cache_max_frames: int = CLIP_CACHE_MAX_FRAMES,
    ) -> None:
        """clip_cache_bytes=0 turns the decoded-clip cache off (every sample opens and seeks)."""
        if not records:
            raise ValueError("PairSampler needs at least one video")
        self.records = records
        self.cfg = data_cfg
        self.seed = seed
        self.skips = SkipCounter(len(records))
        cacheable = clip_cache_bytes > 0 and any(0 < r.num_frames <= clip_cache_max_frames for r in records)
        self.clip_cache = (
            ClipCache(max_bytes=clip_cache_bytes, max_clip_frames=clip_cache_max_frames) if cacheable else None
        )
        if self.clip_cache is not None:
            # Bounded by what it can usefully hold: far larger manifests turn it off (see ClipCache).
            self.clip_cache.expect([r.num_frames for r in records])
        self._permutation_epoch: int | None = None
        self._permutation: torch.Tensor | None = None

    def video_index(self, position: int) -> int:
        """Each epoch visits every video once, in an order fixed by (seed, epoch)."""
        epoch, offset = divmod(position, len(self.records))
        if epoch != self._permutation_epoch:  # cached: consecutive positions share an epoch
            gen = _generator(_PERMUTATION_STREAM, self.seed, epoch)
            self._permutation = torch.randperm(len(self.records), generator=gen)
            self._permutation_epoch = epoch
        return int(self._permutation[offset])

    def _draw_timestamps(self, record: VideoRecord, gen: torch.Generator) -> tuple[float, float]:
        duration = max(record.duration_s, 0.0)
        first = duration * torch.rand((), generator=gen, dtype=torch.float64).item()
        # One draw gives the gap's sign and size, for every distribution and even for same_frame, so all arms
        # of an ablation consume the generator identically: they get the very same videos, first times and
        # augmentations. (For uniform this is the historical max_gap_s * (2u - 1).)
        u = torch.rand((), generator=gen, dtype=torch.float64).item()
        if self.cfg.pair_source == "same_frame":
            return first, first
        sign = 1.0 if u >= 0.5 else -1.0
        return first, place_second(first, sign * gap_magnitude(abs(2 * u - 1), self.cfg), duration)

    def _attempt(self, position: int, attempt: int) -> tuple[int, torch.Generator]:
        """The video and generator of try `attempt` of sample `position` (0: the sample itself)."""
        video = self.video_index(position + attempt)
        if attempt == 0:
            return video, _generator(_SAMPLE_STREAM, self.seed, position)
        return video, _generator(_SAMPLE_STREAM, self.seed, position, attempt)

    def sample_timestamps(self, position: int, attempt: int = 0) -> tuple[int, float, float]:
        """(video index, time of view a, time of view b) of sample `position` (of a retry, with attempt > 0)."""
        video, gen = self._attempt(position, attempt)
        return (video, *self._draw_timestamps(self.records[video], gen))

    def _decoded_pair(self, position: int) -> tuple[torch.Generator, np.ndarray, np.ndarray]:
        """The sample's generator (after its time draws) and its two uint8 frames; unreadable videos skipped."""
        for attempt in range(min(MAX_SKIPS_PER_SAMPLE, len(self.records)) + 1):
            video, gen = self._attempt(position, attempt)
            record = self.records[video]
            time_a, time_b = self._draw_timestamps(record, gen)
            try:
                frame_a, frame_b = decode_frames_at(record.uri, [time_a, time_b], cache=self.clip_cache)
            except Exception as problem:  # noqa: BLE001 - any unreadable file (missing, corrupt, truncated)
                if self.skips.counts[video] == 0:
                    log.warning("skipping unreadable video %s (%s: %s)", record.uri, type(problem).__name__,
                                str(problem).splitlines()[0][:200] if str(problem) else "")
                self.skips.record(video)
                continue
            return gen, frame_a, frame_b
        raise RuntimeError(
            f"sample {position}: {attempt + 1} videos in a row could not be decoded (last: {record.uri}); "
            "check the manifest's files and storage access"
        )

    def sample_crops(self, position: int) -> PairCrops:
        """What a loader worker returns for sample `position`: the two views' uint8 crops (3, crop, crop) and
        their photometric choices, applied later on the device by `vito.data.batch_augment.augment_pairs`."""
        gen, frame_a, frame_b = self._decoded_pair(position)
        size, cfg = self.cfg.crop_size, self.cfg.augment
        params_a = draw_view_params(*frame_a.shape[:2], cfg, size, gen)
        params_b = draw_view_params(*frame_b.shape[:2], cfg, size, gen)
        return PairCrops(crop_uint8(frame_a, params_a, size), crop_uint8(frame_b, params_b, size),
                         params_a.to_row(), params_b.to_row())

    def sample(self, position: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The two augmented views (3, crop, crop) of sample `position`, augmented per sample on the CPU in
        float (the reference of sample_crops + augment_pairs: same choices, same recipe)."""
        gen, frame_a, frame_b = self._decoded_pair(position)
        view_a = augment_view(to_chw_float(frame_a), self.cfg.augment, self.cfg.crop_size, gen)
        view_b = augment_view(to_chw_float(frame_b), self.cfg.augment, self.cfg.crop_size, gen)
        return view_a, view_b


class FramePairDataset(Dataset):
    """This rank's share of steps [start_step, total_steps), in step order, as a map-style dataset."""

    def __init__(
        self,
        records: list[VideoRecord],
        data_cfg: DataConfig,
        seed: int,
        rank: int,
        world_size: int,
        start_step: int,
        total_steps: int,
        clip_cache_bytes: int = CLIP_CACHE_BYTES,
        clip_cache_max_frames: int = CLIP_CACHE_MAX_FRAMES,
    ) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in a world of size {world_size}")
        if data_cfg.batch_size % world_size:
            raise ValueError(f"global batch {data_cfg.batch_size} does not split over {world_size} ranks")
        if not 0 <= start_step <= total_steps:
            raise ValueError(f"start_step {start_step} must lie in [0, total_steps={total_steps}]")
        self.sampler = PairSampler(records, data_cfg, seed, clip_cache_bytes, clip_cache_max_frames)
        self.global_batch = data_cfg.batch_size
        self.rank_batch = data_cfg.batch_size // world_size
        self.rank = rank
        self.start_step = start_step
        self.total_steps = total_steps

    def __len__(self) -> int:
        return (self.total_steps - self.start_step) * self.rank_batch

    def position(self, index: int) -> int:
        """Global stream position of this rank's item `index`."""
        step, slot = divmod(index, self.rank_batch)
        return (self.start_step + step) * self.global_batch + self.rank * self.rank_batch + slot

    def __getitem__(self, index: int) -> PairCrops:
        if not 0 <= index < len(self):
            raise IndexError(index)
        return self.sampler.sample_crops(self.position(index))

    @property
    def skips(self) -> SkipCounter:
        """Unreadable-video skips of this rank (every loader worker's, shared memory)."""
        return self.sampler.skips


def build_pair_loader(
    records: list[VideoRecord],
    data_cfg: DataConfig,
    seed: int,
    rank: int,
    world_size: int,
    start_step: int,
    total_steps: int,
    pin_memory: bool = False,
    clip_cache_bytes: int = CLIP_CACHE_BYTES,
    clip_cache_max_frames: int = CLIP_CACHE_MAX_FRAMES,
    plan: LoaderPlan | None = None,
) -> DataLoader:
    """A loader whose k-th batch is this rank's slice of global step start_step + k, as collated `PairCrops`
    (uint8 crops + choices; `vito.data.batch_augment.augment_pairs` turns a batch into the two views).

    plan: workers, pinning and prefetch sized from the allocation (`loader_plan.plan_loader`); without one,
    data_cfg.num_workers (an integer) and pin_memory as given. The clip cache is per worker process (each
    worker holds up to clip_cache_bytes of decoded clips).
    """
    if plan is None:
        if data_cfg.num_workers == "auto":
            raise ValueError("data.num_workers 'auto' needs a LoaderPlan (vito.data.loader_plan.plan_loader)")
        workers = data_cfg.num_workers
        plan = LoaderPlan(workers, pin_memory, workers > 0, data_cfg.prefetch_factor if workers else None, 1)
    dataset = FramePairDataset(
        records, data_cfg, seed, rank, world_size, start_step, total_steps, clip_cache_bytes, clip_cache_max_frames
    )
    return DataLoader(
        dataset,
        batch_size=dataset.rank_batch,
        shuffle=False,
        num_workers=plan.num_workers,
        pin_memory=plan.pin_memory,
        drop_last=False,
        persistent_workers=plan.persistent_workers,
        prefetch_factor=plan.prefetch_factor,
    )
