"""Data at scale: manifests built from folders, Parquet, labels, unreadable videos skipped and counted."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from vito.config import DataConfig, SyntheticConfig
from vito.data.health import SkipReporter
from vito.data.manifest import VideoRecord, read_manifest, write_manifest
from vito.data.manifest_builder import build_manifest, read_labels_file
from vito.data.pairs import FramePairDataset, PairSampler, build_pair_loader, gap_magnitude, place_second
from vito.data.synthetic import CLASS_NAMES
from vito.data.video import decode_all_frames, decode_frames_at, is_remote

torch.set_num_threads(1)

TINY = SyntheticConfig(num_videos=6, num_frames=12, fps=8, size=32, num_classes=3, seed=11)


@pytest.fixture(scope="module")
def synthetic_videos() -> SyntheticConfig:
    """The videos of `records` (tests/unit/conftest.py)."""
    return TINY


@pytest.fixture
def video_tree(tmp_path: Path, records: list[VideoRecord]) -> Path:
    """SRC/<class>/clip.mp4 for every clip, plus a corrupt video, an empty one and a non-video file."""
    source = tmp_path / "src"
    for record in records:
        folder = source / CLASS_NAMES[record.label]
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(record.uri, folder / Path(record.uri).name)
    (source / "circle" / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 50)
    (source / "square" / "empty.mkv").write_bytes(b"")
    (source / "README.txt").write_text("not a video")
    return source


def data_cfg(**overrides) -> DataConfig:
    fields = dict(synthetic=TINY, max_gap_s=0.5, crop_size=16, batch_size=4)
    fields.update(overrides)
    return DataConfig(**fields)


# ------------------------------------------------------------------------------------------ manifests


def test_manifest_from_folder_labels_from_subfolders_and_reports_unreadable(video_tree: Path, records) -> None:
    output = video_tree / "manifest.jsonl"
    report = build_manifest(str(video_tree), output, workers=2)
    assert (report.found, report.written, len(report.skipped)) == (8, 6, 2)
    assert sorted(Path(s["uri"]).name for s in report.skipped) == ["corrupt.mp4", "empty.mkv"]
    assert all(s["reason"] for s in report.skipped)
    assert report.classes == ["circle", "square", "triangle"]
    assert report.class_counts == {"circle": 2, "square": 2, "triangle": 2}
    built = read_manifest(output)
    assert len(built) == 6
    lines = [json.loads(line) for line in output.read_text().splitlines()]
    assert all(not Path(line["uri"]).is_absolute() for line in lines), "videos under the manifest's folder are relative"
    by_name = {Path(r.uri).name: r for r in records}
    for record in built:
        original = by_name[Path(record.uri).name]
        assert Path(record.uri).parent.name == record.label_name == CLASS_NAMES[original.label]
        assert record.label == report.classes.index(record.label_name)
        assert (record.duration_s, record.fps, record.num_frames) == (original.duration_s, original.fps, original.num_frames)
    assert report.total_duration_s == pytest.approx(sum(r.duration_s for r in built))


def test_manifest_labels_file_and_no_labels(video_tree: Path, tmp_path: Path) -> None:
    labels = tmp_path / "labels.csv"
    labels.write_text("path,label\ncircle/clip_00000_circle.mp4,round\nclip_00001_square.mp4,angular\n")
    assert read_labels_file(labels) == {"circle/clip_00000_circle.mp4": "round", "clip_00001_square.mp4": "angular"}
    output = tmp_path / "m.jsonl"
    report = build_manifest(str(video_tree), output, labels_file=labels)
    named = {Path(r.uri).name: (r.label, r.label_name) for r in read_manifest(output)}
    assert named["clip_00000_circle.mp4"] == (1, "round") and named["clip_00001_square.mp4"] == (0, "angular")
    assert report.unlabelled == 4 and report.classes == ["angular", "round"]
    report = build_manifest(str(video_tree), output, label_from="none")
    assert all(r.label is None for r in read_manifest(output)) and report.classes == []


def test_parquet_manifest_round_trip(tmp_path: Path) -> None:
    rows = [
        VideoRecord("clips/a.mp4", 2.0, 25.0, 50, 3, "dog", 0.9),
        VideoRecord("s3://bucket/b.mp4", 1.5, 30.0, 45),
    ]
    path = tmp_path / "m.parquet"
    write_manifest(path, rows)
    back = read_manifest(path)
    assert back[0] == VideoRecord(str(tmp_path / "clips/a.mp4"), 2.0, 25.0, 50, 3, "dog", 0.9)
    assert back[1] == rows[1]


def test_remote_uris_are_recognised() -> None:
    assert is_remote("s3://bucket/key.mp4") and is_remote("https://host/v.mp4")
    assert not is_remote("/data/v.mp4") and not is_remote("file:///data/v.mp4") and not is_remote("clips/v.mp4")


def test_file_url_decodes_like_a_path(records) -> None:
    path = records[0].uri
    np.testing.assert_array_equal(decode_all_frames(f"file://{path}"), decode_all_frames(path))


# ------------------------------------------------------------------------------------------ gap sampling


def test_gap_magnitude_inverse_cdfs() -> None:
    uniform = data_cfg(max_gap_s=2.0, min_gap_s=0.5)
    assert gap_magnitude(0.0, uniform) == 0.5 and gap_magnitude(1.0, uniform) == 2.0
    assert gap_magnitude(0.5, uniform) == pytest.approx(1.25)
    fixed = data_cfg(max_gap_s=2.0, gap_distribution="fixed")
    assert {gap_magnitude(u, fixed) for u in (0.0, 0.3, 0.99)} == {2.0}
    exponential = data_cfg(max_gap_s=2.0, gap_distribution="exponential", gap_scale_s=0.5)
    draws = [gap_magnitude(u, exponential) for u in np.linspace(0, 1, 11)]
    assert draws[0] == 0.0 and draws[-1] == pytest.approx(2.0) and draws == sorted(draws)
    assert draws[5] < 0.5 * 2.0, "most of an exponential's mass is near zero"


def test_second_time_is_reflected_into_the_clip() -> None:
    assert place_second(1.0, 0.5, 3.0) == 1.5
    assert place_second(2.8, 0.5, 3.0) == pytest.approx(2.3)  # past the end: the other side
    assert place_second(0.2, -0.5, 3.0) == pytest.approx(0.7)
    assert place_second(0.5, 2.0, 1.0) == 1.0  # the clip is shorter than the gap: clamped


# ------------------------------------------------------------------------------------------ unreadable videos


def with_broken(records: list[VideoRecord], tmp_path: Path) -> list[VideoRecord]:
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"this is not an mp4" * 20)
    bad = VideoRecord(str(broken), 1.5, 8.0, 12)
    missing = VideoRecord(str(tmp_path / "gone.mp4"), 1.5, 8.0, 12)
    return [*records[:2], bad, *records[2:4], missing, *records[4:]]


def test_unreadable_videos_are_skipped_deterministically_and_counted(records, tmp_path: Path) -> None:
    mixed = with_broken(records, tmp_path)
    cfg = data_cfg()
    sampler = PairSampler(mixed, cfg, seed=3)
    bad = {2, 5}
    n = len(mixed)
    positions = range(3 * n)  # three epochs: every video is drawn three times
    samples = [sampler.sample(p) for p in positions]
    hits = sum(sampler.video_index(p) in bad for p in positions)
    assert hits == 6
    assert sampler.skips.skipped_videos() == bad
    assert sampler.skips.skipped_samples() >= hits
    # A sample that fell on a bad video takes the first readable video of the next positions, with its own
    # draws: the same every time, so the stream stays a pure function of (seed, position).
    again = PairSampler(mixed, cfg, seed=3)
    for position in (p for p in positions if sampler.video_index(p) in bad):
        attempt = next(k for k in range(1, n) if sampler.video_index(position + k) not in bad)
        video, time_a, time_b = again.sample_timestamps(position, attempt)
        assert video == sampler.video_index(position + attempt)
        assert all(torch.equal(x, y) for x, y in zip(again.sample(position), samples[position]))
    for position in (p for p in positions if sampler.video_index(p) not in bad):
        assert all(torch.equal(x, y) for x, y in zip(again.sample(position), samples[position]))


def test_skips_are_counted_across_loader_workers(records, tmp_path: Path) -> None:
    mixed = with_broken(records, tmp_path)
    loader = build_pair_loader(mixed, data_cfg(num_workers=2), 0, 0, 1, 0, total_steps=8)
    batches = list(loader)
    assert len(batches) == 8 and all(torch.isfinite(b[0]).all() for b in batches)
    skips = loader.dataset.skips  # the counters the workers wrote, read in this process
    assert skips.skipped_videos() == {2, 5}
    reporter = SkipReporter()
    metrics = reporter.metrics(skips)
    assert metrics == {"data/skipped_videos": 2.0, "data/skipped_samples": float(skips.skipped_samples())}
    assert metrics["data/skipped_samples"] >= 4
    assert SkipReporter().metrics(None) == {"data/skipped_videos": 0.0, "data/skipped_samples": 0.0}


def test_every_video_unreadable_is_one_clear_error(tmp_path: Path) -> None:
    broken = [VideoRecord(str(tmp_path / f"missing_{i}.mp4"), 1.0, 8.0, 8) for i in range(3)]
    dataset = FramePairDataset(broken, data_cfg(), 0, 0, 1, 0, 1)
    with pytest.raises(RuntimeError, match="could not be decoded"):
        dataset[0]


def test_decode_of_sampled_pairs_matches_slow_decode(records) -> None:
    sampler = PairSampler(records, data_cfg(max_gap_s=1.0), seed=0)
    for position in range(12):
        video, time_a, time_b = sampler.sample_timestamps(position)
        every = decode_all_frames(records[video].uri)
        for time, frame in zip((time_a, time_b), decode_frames_at(records[video].uri, [time_a, time_b])):
            index = min(int(np.floor(time * TINY.fps + 1e-3)), TINY.num_frames - 1)
            np.testing.assert_array_equal(frame, every[index])


# ------------------------------------------------------------------------------------------ clip cache bound


def test_clip_cache_turns_itself_off_for_a_manifest_far_larger_than_it_holds(records) -> None:
    working_set = sum(r.num_frames for r in records) * 32 * 32 * 3  # TINY clips are 32x32
    small = PairSampler(records, data_cfg(), seed=0, clip_cache_bytes=int(0.2 * working_set))
    assert small.clip_cache is not None and not small.clip_cache.disabled
    reference = PairSampler(records, data_cfg(), seed=0, clip_cache_bytes=0)
    for position in range(len(records)):
        assert all(torch.equal(a, b) for a, b in zip(small.sample_crops(position), reference.sample_crops(position)))
    assert small.clip_cache.disabled and len(small.clip_cache) == 0 and small.clip_cache.nbytes == 0
    # With a quarter of the working set it stays on and fills up to its bound.
    enough = PairSampler(records, data_cfg(), seed=0, clip_cache_bytes=int(0.3 * working_set))
    for position in range(2 * len(records)):
        enough.sample_crops(position)
    assert not enough.clip_cache.disabled and 0 < enough.clip_cache.nbytes <= int(0.3 * working_set)
    assert enough.clip_cache.hits > 0


def test_no_clip_cache_when_every_video_is_too_long_for_it(records) -> None:
    long = [VideoRecord(r.uri, r.duration_s, r.fps, 10_000) for r in records]
    assert PairSampler(long, data_cfg(), seed=0).clip_cache is None
    assert PairSampler(records, data_cfg(), seed=0).clip_cache is not None
