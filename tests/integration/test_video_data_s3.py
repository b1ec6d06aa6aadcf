"""Videos in real S3 (SeaweedFS): a manifest built from an s3:// prefix by the CLI, and frame pairs decoded
from S3 by seeking, equal to the frames decoded the slow way from a local copy.

Started by scripts/services-up.sh; skipped with a reason when absent, failed under CI.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.integration.local_sweeps import vitolaunch
from tests.integration.services import remove_tree, s3_filesystem, services_env


@pytest.fixture(scope="module")
def s3_videos(tmp_path_factory: pytest.TempPathFactory, module_monkeypatch: pytest.MonkeyPatch):
    """A class-per-folder tree of tiny synthetic clips (and one corrupt file) under a fresh S3 prefix."""
    from vito.config import SyntheticConfig
    from vito.data.manifest import read_manifest
    from vito.data.synthetic import CLASS_NAMES, ensure_synthetic_videos

    env = services_env(s3=True, mlflow=False)
    keys = {k: env[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL_S3")}
    for key, value in keys.items():  # fsspec in this process (decoding) reads the standard AWS environment
        module_monkeypatch.setenv(key, value)
    prefix = f"{env['VITOLAUNCH_TEST_S3_ROOT']}/videos-{uuid.uuid4().hex[:8]}"
    synthetic = SyntheticConfig(num_videos=6, num_frames=16, fps=8, size=32, num_classes=3, seed=4)
    local = read_manifest(ensure_synthetic_videos(tmp_path_factory.mktemp("videos"), synthetic))
    fs = s3_filesystem(env)
    bucket_path = prefix.removeprefix("s3://")
    by_uri = {}
    for record in local:
        key = f"{bucket_path}/{CLASS_NAMES[record.label]}/{Path(record.uri).name}"
        fs.put_file(record.uri, key)
        by_uri[f"s3://{key}"] = record
    fs.pipe_file(f"{bucket_path}/circle/corrupt.mp4", b"\x00\x00\x00\x18ftypmp42" + b"x" * 300)
    fs.pipe_file(f"{bucket_path}/notes.txt", b"not a video")
    yield env, keys, prefix, by_uri
    remove_tree(env, prefix)


@pytest.mark.timeout(180)
def test_manifest_from_an_s3_prefix(s3_videos, tmp_path):
    from vito.data.manifest import read_manifest

    _, keys, prefix, by_uri = s3_videos
    output = tmp_path / "manifest.jsonl"
    out = vitolaunch(tmp_path / "home", "data", "manifest", prefix, str(output), env=keys).stdout
    assert "6 videos" in out and "1 skipped" in out and "corrupt.mp4" in out
    records = read_manifest(output)
    assert sorted(r.uri for r in records) == sorted(by_uri)
    for record in records:
        original = by_uri[record.uri]
        shape = (original.duration_s, original.fps, original.num_frames)
        assert (record.duration_s, record.fps, record.num_frames) == shape
        assert record.label_name == record.uri.split("/")[-2]
    report = json.loads((tmp_path / "manifest.report.json").read_text())
    assert report["skipped"] == 1 and report["skipped_files"][0]["uri"].endswith("circle/corrupt.mp4")
    assert report["class_counts"] == {"circle": 2, "square": 2, "triangle": 2}


@pytest.mark.timeout(180)
def test_sampled_pairs_decoded_from_s3_equal_the_slow_local_decode(s3_videos):
    from vito.config import DataConfig
    from vito.data.manifest import VideoRecord
    from vito.data.pairs import FramePairDataset, PairSampler
    from vito.data.video import decode_all_frames, decode_frames_at

    _, _, _, by_uri = s3_videos
    remote = sorted(by_uri)
    records = [VideoRecord(uri, by_uri[uri].duration_s, by_uri[uri].fps, by_uri[uri].num_frames, by_uri[uri].label)
               for uri in remote]
    local = [by_uri[uri] for uri in remote]
    cfg = DataConfig(max_gap_s=1.0, crop_size=16, batch_size=4)
    sampler = PairSampler(records, cfg, seed=0, clip_cache_bytes=0)  # every sample seeks in the remote file
    slow = {uri: decode_all_frames(by_uri[uri].uri) for uri in remote}
    for position in range(10):
        video, time_a, time_b = sampler.sample_timestamps(position)
        frames = decode_frames_at(records[video].uri, [time_a, time_b])
        for time, frame in zip((time_a, time_b), frames):
            index = min(int(np.floor(time * records[video].fps + 1e-3)), records[video].num_frames - 1)
            np.testing.assert_array_equal(frame, slow[records[video].uri][index])
    # The whole pipeline (cache on) gives the same views from S3 as from the local files.
    from_s3 = FramePairDataset(records, cfg, 0, 0, 1, 0, 2)
    from_disk = FramePairDataset(local, cfg, 0, 0, 1, 0, 2)
    for index in range(len(from_s3)):
        assert all(torch.equal(a, b) for a, b in zip(from_s3[index], from_disk[index]))
    assert from_s3.skips.skipped_samples() == 0
