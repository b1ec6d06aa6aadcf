"""benchmarks/gpu_check.py in its CPU mode: the same sections as on a GPU, tiny, so the script is known to work
before GPU minutes are spent on it."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(600)
def test_cpu_tiny_mode_runs_every_section_and_reports_them(tmp_path):
    out = tmp_path / "check.json"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("VITO_COMPILE_BACKEND", None)
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--cpu", "--tiny", "--out", str(out),
         "--timeout", "500", "--work-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=560, env=env, cwd=REPO,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["finished"] and not report.get("timed_out")
    assert report["mode"]["backend"] == "gloo" and report["mode"]["device"].startswith("cpu")
    assert report["mode"]["compile_backend"] == "eager"
    sections = report["sections"]
    assert list(sections) == ["reference", "vito_step", "trainer", "resume", "compile"]
    assert all(values["ok"] for values in sections.values()), {k: v.get("error") for k, v in sections.items()}

    assert sections["reference"]["img_per_s"] > 0
    step = sections["vito_step"]
    assert step["pairs_per_s"] > 0 and step["losses_finite"] and step["precision"] == "bf16"
    assert step["limit_backbone_only"] == pytest.approx(3 / 8)
    assert 0 < step["limit_with_pools"] < 3 / 8  # the pools and heads cost FLOPs of their own
    assert step["ratio_to_reference"] == pytest.approx(step["pairs_per_s"] / sections["reference"]["img_per_s"])
    assert step["fraction_of_pool_limit"] == pytest.approx(step["ratio_to_reference"] / step["limit_with_pools"])

    trainer = sections["trainer"]
    assert trainer["completed"] and trainer["steps"] == 6 and trainer["committed_step"] == 6
    assert trainer["workers"] == 2 and trainer["losses_finite"]
    assert 0 <= trainer["data_wait_frac"] < 1 and trainer["pairs_per_s"] > 0
    assert len(trainer["checkpoint_save_s"]) == 1 and trainer["checkpoint_save_s"][0] > 0

    resume = sections["resume"]
    assert resume["stopped_at"] == resume["resumed_from"] == 4 and resume["resumed_completed"]
    assert resume["bitwise_equal"] and resume["max_abs_diff"] == 0.0

    assert sections["compile"]["compile"] and math.isfinite(sections["compile"]["pairs_per_s"])
    assert "==== gpu_check report ====" in proc.stdout and "[resume] ok" in proc.stdout


@pytest.mark.timeout(120)
def test_a_failing_section_is_recorded_and_the_others_still_run(tmp_path):
    out = tmp_path / "check.json"
    # A negative worker count fails validation inside the trainer section only.
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--cpu", "--tiny", "--out", str(out),
         "--sections", "trainer", "reference", "--workers", "-1", "--work-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=110, env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=REPO,
    )
    assert proc.returncode == 1
    sections = json.loads(out.read_text())["sections"]
    assert not sections["trainer"]["ok"] and "num_workers" in sections["trainer"]["error"]
    assert sections["reference"]["ok"] and sections["reference"]["img_per_s"] > 0
    assert "[trainer] FAILED" in proc.stdout
