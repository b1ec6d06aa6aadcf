"""`vitolaunch data prepare --cluster slurm` on the real loopback SLURM cluster: an array whose tasks each
prepare a share of the videos, then the same command locally finishes it without redoing anything.
Without a cluster this skips, except with CI=true, where it fails.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.integration.local_sweeps import vitolaunch

pytestmark = pytest.mark.usefixtures("slurm_cluster")  # tests/integration/conftest.py: skip, or fail under CI


@pytest.mark.timeout(400)
def test_prepare_array_then_local_finish(tmp_path: Path) -> None:
    from vito.config import SyntheticConfig
    from vito.data.manifest import read_manifest
    from vito.data.synthetic import ensure_synthetic_videos

    source = ensure_synthetic_videos(
        tmp_path / "videos", SyntheticConfig(num_videos=4, num_frames=16, fps=8, size=32, num_classes=2, seed=6))
    out = tmp_path / "prepared"
    common = ("data", "prepare", str(source), str(out), "--short-side", "16")
    submitted = vitolaunch(tmp_path / "home", *common, "--cluster", "slurm", "--tasks", "2", "--cpus-per-task", "1",
                           "--mem-gb", "1", "--time-min", "10", timeout=120).stdout
    assert "submitted array" in submitted and "2 tasks for 4 videos" in submitted
    assert not (out / "manifest.jsonl").exists()  # tasks never write the manifest
    deadline = time.monotonic() + 300
    while len(list((out / "done").glob("*.json"))) < 4 or len(list((out / "reports").glob("task-*.json"))) < 2:
        assert time.monotonic() < deadline, f"array did not finish: {submitted}"
        time.sleep(2)
    shares = [json.loads(p.read_text()) for p in sorted((out / "reports").glob("task-*.json"))]
    assert sorted(share["prepared"] for share in shares) == [2, 2]
    finished = vitolaunch(tmp_path / "home", *common, timeout=120).stdout
    assert "4/4 videos prepared" in finished and "0 now, 4 already done" in finished
    assert [r.num_frames for r in read_manifest(out / "manifest.jsonl")] == [16] * 4
    refused = vitolaunch(tmp_path / "home", "data", "prepare", str(source), str(out), "--cluster", "slurm",
                         check=False, timeout=60)
    assert refused.returncode != 0 and "prepare.json" in refused.stderr + refused.stdout  # other options, same OUT
