"""Data pipeline: manifests, synthetic clips, seek decoding, augmentations, and the resumable pair stream."""

from __future__ import annotations

import json
import math
import multiprocessing
import pickle
from pathlib import Path

import av
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vito.config import AugmentConfig, DataConfig, SyntheticConfig
from vito.data import video as video_module
from vito.data.augment import augment_view, eval_view, gaussian_blur
from vito.data.manifest import VideoRecord, read_manifest, write_manifest
from vito.data.pairs import FramePairDataset, PairSampler, build_pair_loader
from vito.data.synthetic import CLASS_NAMES, ensure_synthetic_videos, render_clip
from vito.data.video import ClipCache, decode_all_frames, decode_frames_at, probe_video, to_rgb

torch.set_num_threads(1)

TINY = SyntheticConfig(num_videos=8, num_frames=12, fps=8, size=32, num_classes=4, seed=3)


@pytest.fixture(scope="module")
def synthetic_videos() -> SyntheticConfig:
    """The videos of `records` (tests/unit/conftest.py)."""
    return TINY


def data_cfg(**overrides) -> DataConfig:
    fields = dict(synthetic=TINY, max_gap_s=0.5, crop_size=16, batch_size=4, num_workers=0)
    fields.update(overrides)
    return DataConfig(**fields)


# ------------------------------------------------------------------------------------------ manifest


def test_manifest_round_trip(tmp_path: Path) -> None:
    records = [
        VideoRecord(uri=str(tmp_path / "a.mp4"), duration_s=3.0, fps=8.0, num_frames=24, label=2),
        VideoRecord(uri="s3://bucket/b.mp4", duration_s=1.5, fps=30.0, num_frames=45),
    ]
    path = tmp_path / "m.jsonl"
    write_manifest(path, records)
    assert len(path.read_text().splitlines()) == 2
    assert read_manifest(path) == records


def test_manifest_relative_uri_resolves_against_manifest_dir(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    write_manifest(path, [VideoRecord(uri="clips/x.mp4", duration_s=1.0, fps=8.0, num_frames=8)])
    assert read_manifest(path)[0].uri == str(tmp_path / "clips" / "x.mp4")


@pytest.mark.parametrize(
    "bad_line",
    ['{"uri": "b.mp4", "duration_s": 1.0', '{"uri": "b.mp4", "fps": 8, "num_frames": 8}', "[1, 2]"],
)
def test_manifest_malformed_line_names_file_and_line(tmp_path: Path, bad_line: str) -> None:
    good = json.dumps({"uri": "a.mp4", "duration_s": 1.0, "fps": 8.0, "num_frames": 8})
    path = tmp_path / "m.jsonl"
    path.write_text(f"{good}\n\n{bad_line}\n{good}\n")
    with pytest.raises(ValueError, match=r"m\.jsonl:3\b"):
        read_manifest(path)


# ------------------------------------------------------------------------------------------ synthetic


def test_synthetic_manifest_is_balanced_and_probed(records: list[VideoRecord]) -> None:
    assert [r.label for r in records] == [i % TINY.num_classes for i in range(TINY.num_videos)]
    for record in records:
        assert Path(record.uri).exists()
        assert record.num_frames == TINY.num_frames
        assert record.fps == pytest.approx(TINY.fps)
        assert record.duration_s == pytest.approx(TINY.num_frames / TINY.fps)
        assert probe_video(record.uri) == (record.duration_s, record.fps, record.num_frames)


def test_synthetic_is_deterministic_and_splits_differ(tmp_path: Path, records: list[VideoRecord]) -> None:
    again = read_manifest(ensure_synthetic_videos(tmp_path / "elsewhere", TINY, num_videos=TINY.num_videos))
    for first, second in zip(records, again, strict=True):
        np.testing.assert_array_equal(decode_all_frames(first.uri), decode_all_frames(second.uri))
    other_split = read_manifest(ensure_synthetic_videos(tmp_path / "elsewhere", TINY, split="test", num_videos=2))
    assert other_split[0].label == records[0].label
    assert not np.array_equal(decode_all_frames(other_split[0].uri), decode_all_frames(records[0].uri))


def test_render_clip_is_pure_function_of_rng() -> None:
    clip = render_clip(1, TINY, np.random.default_rng(7))
    assert clip.shape == (TINY.num_frames, TINY.size, TINY.size, 3) and clip.dtype == np.uint8
    np.testing.assert_array_equal(clip, render_clip(1, TINY, np.random.default_rng(7)))
    with pytest.raises(ValueError):
        render_clip(TINY.num_classes, TINY, np.random.default_rng(0))


def test_motion_scale_controls_how_much_the_object_changes() -> None:
    def mean_change(motion_scale: float) -> float:
        clips = [render_clip(i % 4, TINY, np.random.default_rng(i), motion_scale).astype(np.float32) for i in range(8)]
        return float(np.mean([np.abs(clip[-1] - clip[0]).mean() for clip in clips]))

    still, normal, strong = mean_change(0.0), mean_change(1.0), mean_change(3.0)
    assert still < normal < strong


def test_synthetic_objects_move_smoothly(records: list[VideoRecord]) -> None:
    for record in records[:4]:
        frames = decode_all_frames(record.uri).astype(np.float32)
        step = np.abs(frames[1:] - frames[:-1]).mean(axis=(1, 2, 3))
        far = np.abs(frames[-1] - frames[0]).mean()
        assert step.min() > 0.1, "consecutive frames are identical: nothing moves"
        assert step.max() < 20, "consecutive frames jump: motion is not smooth"
        assert far > step.mean(), "frames far apart should differ more than neighbours"


def test_ensure_is_idempotent(tmp_path: Path) -> None:
    cfg = TINY.model_copy(update={"num_videos": 2})
    manifest = ensure_synthetic_videos(tmp_path, cfg)
    stamp = manifest.stat().st_mtime_ns
    assert ensure_synthetic_videos(tmp_path, cfg) == manifest
    assert manifest.stat().st_mtime_ns == stamp
    assert not list(manifest.parent.parent.glob(".tmp-*")), "temp dir left behind"


def _ensure_in_child(root: str) -> str:
    return str(ensure_synthetic_videos(root, TINY.model_copy(update={"num_videos": 3})))


def test_ensure_is_safe_under_concurrent_callers(tmp_path: Path) -> None:
    with multiprocessing.get_context("fork").Pool(3) as pool:
        manifests = pool.map(_ensure_in_child, [str(tmp_path)] * 3)
    assert len(set(manifests)) == 1
    records = read_manifest(manifests[0])
    assert len(records) == 3 and all(Path(r.uri).exists() for r in records)
    assert not list(Path(manifests[0]).parent.parent.glob(".tmp-*")), "losers' temp dirs left behind"


def test_class_names_cover_max_classes() -> None:
    assert len(CLASS_NAMES) == 8 and len(set(CLASS_NAMES)) == 8


# ------------------------------------------------------------------------------------------ decoding


def test_decode_frames_at_matches_sequential_decode(records: list[VideoRecord]) -> None:
    record = records[1]
    every_frame = decode_all_frames(record.uri)
    assert every_frame.shape == (TINY.num_frames, TINY.size, TINY.size, 3)
    # Unsorted, duplicated, exactly on frame boundaries, mid-frame, before the start and past the end.
    times = [1.2, 0.0, 0.5, 0.49, 1.2, 0.125, 0.7, 1.0, 10.0, -0.3, 0.3, 1.49]
    frames = decode_frames_at(record.uri, times)
    assert len(frames) == len(times)
    for time, frame in zip(times, frames):
        index = min(max(int(np.floor(time * TINY.fps + 1e-9)), 0), TINY.num_frames - 1)
        np.testing.assert_array_equal(frame, every_frame[index], err_msg=f"t={time} frame {index}")


def test_decode_frames_at_far_apart_times_in_one_call(records: list[VideoRecord]) -> None:
    # Gaps above the decode-forward limit make the reader seek again inside the same container.
    record = records[3]
    every_frame = decode_all_frames(record.uri)
    times = [1.45, 0.05, 0.8]
    for time, frame in zip(times, decode_frames_at(record.uri, times)):
        np.testing.assert_array_equal(frame, every_frame[int(time * TINY.fps)])


def test_decode_frames_at_exact_frame_starts(tmp_path: Path) -> None:
    # At 10 fps, k / 10 in floating point falls a hair short of frame k's start for several k.
    cfg = TINY.model_copy(update={"fps": 10, "size": 16, "num_videos": 1})
    (record,) = read_manifest(ensure_synthetic_videos(tmp_path, cfg))
    every_frame = decode_all_frames(record.uri)
    times = [k / cfg.fps for k in range(cfg.num_frames)]
    for index, frame in enumerate(decode_frames_at(record.uri, times)):
        np.testing.assert_array_equal(frame, every_frame[index], err_msg=f"frame {index}")


def test_decode_frames_at_every_frame_backwards(records: list[VideoRecord]) -> None:
    # Descending mid-frame times in separate calls force a fresh seek for each one.
    record = records[2]
    every_frame = decode_all_frames(record.uri)
    for index in reversed(range(TINY.num_frames)):
        (frame,) = decode_frames_at(record.uri, [(index + 0.5) / TINY.fps])
        np.testing.assert_array_equal(frame, every_frame[index])


def test_rgb_conversion_matches_pyav_default(records: list[VideoRecord]) -> None:
    # The shared single-threaded reformatter must give exactly what frame.to_ndarray(format="rgb24") gives.
    with av.open(records[0].uri) as container:
        frames = list(container.decode(container.streams.video[0]))
    for frame in frames:
        np.testing.assert_array_equal(to_rgb(frame), frame.to_ndarray(format="rgb24"))


# ------------------------------------------------------------------------------------------ clip cache

MIXED_TIMES = [1.2, 0.0, 0.5, 0.49, 1.2, 0.125, 0.7, 1.0, 10.0, -0.3, 0.3, 1.49]


def test_clip_cache_returns_the_seek_path_frames(records: list[VideoRecord]) -> None:
    cache = ClipCache()
    for record in records[:3]:
        seeking = decode_frames_at(record.uri, MIXED_TIMES)
        filled = decode_frames_at(record.uri, MIXED_TIMES, cache=cache)  # miss: decodes the clip whole
        assert record.uri in cache
        served = decode_frames_at(record.uri, MIXED_TIMES, cache=cache)  # hit
        for expected, first, second in zip(seeking, filled, served, strict=True):
            np.testing.assert_array_equal(first, expected)
            np.testing.assert_array_equal(second, expected)
    assert (cache.hits, cache.misses, len(cache)) == (3, 3, 3)
    # Callers get their own arrays: writing to one changes neither the cache nor a duplicate time.
    frame_a, frame_b = decode_frames_at(records[0].uri, [0.5, 0.5], cache=cache)
    frame_a[0, 0, 0] ^= 255
    np.testing.assert_array_equal(frame_b, decode_frames_at(records[0].uri, [0.5], cache=cache)[0])
    assert not np.array_equal(frame_a, frame_b)


def test_clip_cache_is_bounded(records: list[VideoRecord]) -> None:
    clip_bytes = TINY.num_frames * TINY.size * TINY.size * 3
    cache = ClipCache(max_bytes=int(2.5 * clip_bytes))
    uris = [record.uri for record in records[:4]]
    for uri in uris:
        expected = decode_frames_at(uri, MIXED_TIMES)
        for frame, reference in zip(decode_frames_at(uri, MIXED_TIMES, cache=cache), expected):
            np.testing.assert_array_equal(frame, reference)
        assert cache.nbytes <= cache.max_bytes
    # Decoding admits clips while they fit and never churns: the first two stay, the rest are read by seeking.
    assert len(cache) == 2 and uris[0] in cache and uris[1] in cache and cache.nbytes == 2 * clip_bytes
    assert not cache.admits(TINY.num_frames, TINY.size, TINY.size)


def test_clip_cache_put_evicts_least_recently_used(records: list[VideoRecord]) -> None:
    clip_bytes = TINY.num_frames * TINY.size * TINY.size * 3
    cache = ClipCache(max_bytes=int(2.5 * clip_bytes))
    uris = [record.uri for record in records[:3]]
    for uri in uris[:2]:
        decode_frames_at(uri, [0.0], cache=cache)
    clip = cache.get(uris[0])  # touch: uris[1] is now the least recently used
    assert clip is not None
    cache.put(uris[2], clip)
    assert len(cache) == 2 and uris[1] not in cache and uris[0] in cache and uris[2] in cache
    assert cache.nbytes == 2 * clip_bytes <= cache.max_bytes
    cache.clear()
    assert len(cache) == 0 and cache.nbytes == 0


def test_clip_cache_skips_clips_over_the_frame_budget(records: list[VideoRecord]) -> None:
    record = records[1]
    cache = ClipCache(max_clip_frames=TINY.num_frames - 1)  # a "long" video: always read by seeking
    cached = decode_frames_at(record.uri, MIXED_TIMES, cache=cache)
    for frame, expected in zip(cached, decode_frames_at(record.uri, MIXED_TIMES), strict=True):
        np.testing.assert_array_equal(frame, expected)
    assert len(cache) == 0


def test_clip_cache_falls_back_to_seeking_when_metadata_understates_length(
    records: list[VideoRecord], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(video_module, "_estimated_frames", lambda stream: 1)
    cache = ClipCache(max_clip_frames=4)  # admitted on metadata, but decoding stops after 4 frames
    record = records[2]
    cached = decode_frames_at(record.uri, MIXED_TIMES, cache=cache)
    for frame, expected in zip(cached, decode_frames_at(record.uri, MIXED_TIMES), strict=True):
        np.testing.assert_array_equal(frame, expected)
    assert len(cache) == 0


def test_clip_cache_pickles_empty(records: list[VideoRecord]) -> None:
    # A spawned loader worker gets the limits, not the parent's decoded clips.
    cache = ClipCache(max_bytes=10**7, max_clip_frames=100)
    decode_frames_at(records[0].uri, [0.0], cache=cache)
    copy = pickle.loads(pickle.dumps(cache))
    assert len(cache) == 1 and len(copy) == 0 and copy.nbytes == 0
    assert (copy.max_bytes, copy.max_clip_frames) == (10**7, 100)


@pytest.mark.parametrize("pair_source", ["temporal", "same_frame"])
def test_cached_and_uncached_pipelines_give_identical_samples(records: list[VideoRecord], pair_source: str) -> None:
    cfg = data_cfg(pair_source=pair_source)
    cached = FramePairDataset(records, cfg, seed=2, rank=0, world_size=1, start_step=0, total_steps=8)
    uncached = FramePairDataset(records, cfg, 2, 0, 1, start_step=0, total_steps=8, clip_cache_bytes=0)
    assert cached.sampler.clip_cache is not None and uncached.sampler.clip_cache is None
    for index in range(len(cached)):
        for mine, reference in zip(cached[index], uncached[index]):
            assert torch.equal(mine, reference)
    assert len(cached.sampler.clip_cache) == len(records)


# ------------------------------------------------------------------------------------------ augment


def _conv_blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """The original separable depthwise-conv2d Gaussian blur, as the reference."""
    radius = max(1, math.ceil(3 * sigma))
    offsets = torch.arange(-radius, radius + 1, dtype=image.dtype)
    kernel = torch.exp(-(offsets**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    channels = image.shape[0]
    padded = F.pad(image[None], (radius, radius, radius, radius), mode="reflect")
    rows = F.conv2d(padded, kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
    return F.conv2d(rows, kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)[0]


@pytest.mark.parametrize("sigma", [0.05, 0.3, 0.4, 1.0, 2.0])
def test_blur_matches_depthwise_conv(sigma: float) -> None:
    image = torch.rand(3, 24, 30, generator=torch.Generator().manual_seed(4))
    for view in (image, image[:1].expand(3, -1, -1)):  # also the expanded grayscale the pipeline blurs
        blurred = gaussian_blur(view, sigma)
        assert blurred.shape == view.shape
        torch.testing.assert_close(blurred, _conv_blur(view, sigma), rtol=0, atol=1e-6)


def test_augment_view_shape_and_determinism() -> None:
    frame = torch.rand(3, 32, 40, generator=torch.Generator().manual_seed(0))
    cfg = AugmentConfig(blur_p=0.5, solarize_p=0.5)
    view = augment_view(frame, cfg, 16, torch.Generator().manual_seed(5))
    assert view.shape == (3, 16, 16) and view.dtype == torch.float32 and torch.isfinite(view).all()
    assert torch.equal(view, augment_view(frame, cfg, 16, torch.Generator().manual_seed(5)))
    assert not torch.equal(view, augment_view(frame, cfg, 16, torch.Generator().manual_seed(6)))


def test_augment_does_not_touch_global_rng() -> None:
    torch.manual_seed(123)
    expected = torch.rand(4)
    torch.manual_seed(123)
    augment_view(torch.rand(3, 24, 24, generator=torch.Generator()), AugmentConfig(), 16, torch.Generator())
    assert torch.equal(torch.rand(4), expected)


def test_eval_view_is_deterministic_center_crop() -> None:
    frame = torch.rand(3, 24, 32, generator=torch.Generator().manual_seed(1))
    view = eval_view(frame, 24)
    assert view.shape == (3, 24, 24)
    assert torch.equal(view, eval_view(frame, 24))
    # At the crop's own size the resize is the identity, so the centred 24x24 window must come back.
    expected = (frame[:, :, 4:28] - torch.tensor([0.485, 0.456, 0.406])[:, None, None]) / torch.tensor(
        [0.229, 0.224, 0.225]
    )[:, None, None]
    torch.testing.assert_close(view, expected)


# ------------------------------------------------------------------------------------------ pairs


def test_same_item_twice_is_identical(records: list[VideoRecord]) -> None:
    dataset = FramePairDataset(records, data_cfg(), seed=0, rank=0, world_size=1, start_step=0, total_steps=2)
    item = dataset[5]
    assert item.crop_a.shape == item.crop_b.shape == (3, 16, 16) and item.crop_a.dtype == torch.uint8
    assert item.params_a.shape == item.params_b.shape == (8,) and item.params_a.dtype == torch.float64
    again = dataset[5]
    assert all(torch.equal(mine, other) for mine, other in zip(item, again))
    assert not torch.equal(item.crop_a, item.crop_b)


def test_worker_count_does_not_change_batches(records: list[VideoRecord]) -> None:
    batches = {}
    for workers in (0, 2):
        loader = build_pair_loader(records, data_cfg(num_workers=workers), 0, 0, 1, 0, 3)
        batches[workers] = list(loader)
    assert len(batches[0]) == 3
    for serial, parallel in zip(batches[0], batches[2]):
        assert serial.crop_a.shape == (4, 3, 16, 16) and serial.params_b.shape == (4, 8)
        assert all(torch.equal(mine, other) for mine, other in zip(serial, parallel))


def test_resume_reproduces_the_uninterrupted_stream(records: list[VideoRecord]) -> None:
    cfg = data_cfg()
    full = FramePairDataset(records, cfg, seed=1, rank=0, world_size=1, start_step=0, total_steps=5)
    resumed = FramePairDataset(records, cfg, seed=1, rank=0, world_size=1, start_step=3, total_steps=5)
    assert len(resumed) == 2 * cfg.batch_size
    offset = 3 * cfg.batch_size
    for j in (0, 3, 5, 7):
        assert resumed.position(j) == full.position(offset + j)
        for mine, reference in zip(resumed[j], full[offset + j]):
            assert torch.equal(mine, reference)


def test_rank_slices_are_disjoint_and_cover_global_batch(records: list[VideoRecord]) -> None:
    cfg = data_cfg(batch_size=6)
    world = [FramePairDataset(records, cfg, 0, rank, 3, start_step=2, total_steps=4) for rank in range(3)]
    single = FramePairDataset(records, cfg, 0, 0, 1, start_step=2, total_steps=4)
    for step in range(2):
        per_rank = [[ds.position(step * ds.rank_batch + k) for k in range(ds.rank_batch)] for ds in world]
        flat = [p for positions in per_rank for p in positions]
        assert len(set(flat)) == len(flat)
        assert sorted(flat) == list(range((2 + step) * 6, (3 + step) * 6))
    # Concatenating the ranks' items gives the single-process global batch.
    for rank, ds in enumerate(world):
        mine = ds[ds.rank_batch + 1]
        reference = single[6 + rank * ds.rank_batch + 1]
        assert torch.equal(mine[0], reference[0]) and torch.equal(mine[1], reference[1])
    with pytest.raises(ValueError):
        FramePairDataset(records, cfg, 0, 0, 4, start_step=0, total_steps=1)


def test_epoch_visits_every_video_once(records: list[VideoRecord]) -> None:
    sampler = PairSampler(records, data_cfg(), seed=0)
    n = len(records)
    for epoch in range(2):
        assert sorted(sampler.video_index(epoch * n + i) for i in range(n)) == list(range(n))
    assert [sampler.video_index(i) for i in range(n)] != [sampler.video_index(n + i) for i in range(n)]


def test_pair_timestamps_temporal_vs_same_frame(records: list[VideoRecord]) -> None:
    temporal = PairSampler(records, data_cfg(pair_source="temporal"), seed=0)
    same = PairSampler(records, data_cfg(pair_source="same_frame"), seed=0)
    differs = 0
    for position in range(32):
        video, time_a, time_b = temporal.sample_timestamps(position)
        duration = records[video].duration_s
        assert 0 <= time_a <= duration and 0 <= time_b <= duration
        assert abs(time_b - time_a) <= 0.5 + 1e-9
        differs += time_a != time_b
        same_video, same_a, same_b = same.sample_timestamps(position)
        assert same_a == same_b
        assert (same_video, same_a) == (video, time_a), "both arms must share videos and first times"
    assert differs >= 28


def test_same_frame_views_come_from_one_frame(records: list[VideoRecord]) -> None:
    sampler = PairSampler(records, data_cfg(pair_source="same_frame"), seed=0)
    video, time_a, time_b = sampler.sample_timestamps(3)
    frame_a, frame_b = decode_frames_at(records[video].uri, [time_a, time_b])
    np.testing.assert_array_equal(frame_a, frame_b)
    frame_a[0, 0, 0] ^= 255
    assert not np.array_equal(frame_a, frame_b), "the two frames must not share a buffer"


def test_without_augmentation_only_temporal_pairs_differ(records: list[VideoRecord]) -> None:
    # A full-scale crop of a square frame is the whole frame, so with the rest off a view is just the frame.
    still = AugmentConfig(crop_scale_min=1.0, flip_p=0, color_jitter_p=0, grayscale_p=0, blur_p=0, solarize_p=0)
    same = PairSampler(records, data_cfg(pair_source="same_frame", augment=still, crop_size=32), seed=0)
    temporal = PairSampler(records, data_cfg(pair_source="temporal", augment=still, crop_size=32), seed=0)
    temporal_differs = 0
    for position in range(6):
        view_a, view_b = same.sample(position)
        assert torch.equal(view_a, view_b)
        view_a, view_b = temporal.sample(position)
        temporal_differs += not torch.equal(view_a, view_b)
    assert temporal_differs >= 4
