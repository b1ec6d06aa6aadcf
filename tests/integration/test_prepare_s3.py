"""`vitolaunch data prepare` from S3 into S3 (SeaweedFS): done-markers in the bucket, resume, and the prepared
manifest read back from S3 by the training sampler.

Started by scripts/services-up.sh; skipped with a reason when absent, failed under CI=true.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import pytest

from tests.integration.local_sweeps import vitolaunch
from tests.integration.services import remove_tree, s3_filesystem, services_env

pytestmark = pytest.mark.integration


@pytest.mark.timeout(300)
def test_prepare_from_s3_into_s3_resumes_and_trains_from_the_new_manifest(tmp_path: Path) -> None:
    from vito.config import DataConfig, SyntheticConfig
    from vito.data.manifest import VideoRecord, read_manifest, write_manifest
    from vito.data.pairs import PairSampler
    from vito.data.synthetic import ensure_synthetic_videos

    env = services_env(s3=True, mlflow=False)
    keys = {k: env[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL_S3")}
    saved = {k: os.environ.get(k) for k in keys}
    os.environ.update(keys)
    prefix = f"{env['VITOLAUNCH_TEST_S3_ROOT']}/prepare-{uuid.uuid4().hex[:8]}"
    fs = s3_filesystem(env)
    try:
        local = read_manifest(ensure_synthetic_videos(
            tmp_path / "videos", SyntheticConfig(num_videos=4, num_frames=16, fps=8, size=32, num_classes=2, seed=2)))
        remote = []
        for record in local:
            key = f"{prefix.removeprefix('s3://')}/src/{Path(record.uri).name}"
            fs.put_file(record.uri, key)
            remote.append(VideoRecord(f"s3://{key}", record.duration_s, record.fps, record.num_frames, record.label))
        write_manifest(tmp_path / "src.jsonl", remote)
        fs.put_file(str(tmp_path / "src.jsonl"), f"{prefix.removeprefix('s3://')}/src/manifest.jsonl")

        args = ("data", "prepare", f"{prefix}/src/manifest.jsonl", f"{prefix}/prepared", "--workers", "2")
        first = vitolaunch(tmp_path / "home", *args, env=keys, timeout=240).stdout
        assert "4/4 videos prepared" in first and "4 now, 0 already done; 0 failed" in first
        assert len(fs.find(f"{prefix.removeprefix('s3://')}/prepared/done")) == 4
        again = vitolaunch(tmp_path / "home", *args, env=keys, timeout=240).stdout
        assert "0 now, 4 already done" in again
        report = json.loads(fs.cat_file(f"{prefix.removeprefix('s3://')}/prepared/prepare-report.json"))
        assert report["resumed"] == 4 and report["bytes_after"] > 0

        prepared = read_manifest(f"{prefix}/prepared/manifest.jsonl")
        assert all(r.uri.startswith(f"{prefix}/prepared/videos/") for r in prepared)
        assert [(r.num_frames, r.label) for r in prepared] == [(r.num_frames, r.label) for r in local]
        sampler = PairSampler(prepared, DataConfig(crop_size=16, batch_size=4), seed=0, clip_cache_bytes=0)
        for position in range(4):
            crops = sampler.sample_crops(position)
            assert crops.crop_a.shape == (3, 16, 16)
        assert sampler.skips.skipped_samples() == 0
    finally:
        remove_tree(env, prefix)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
