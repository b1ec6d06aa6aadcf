"""benchmarks/gpu_check.py in its CPU mode: the same sections as on a GPU, tiny, so the script is known to work
before GPU minutes are spent on it."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
# The training sections; `eval` (the last of the defaults) has a test of its own below.
TRAINING_SECTIONS = ["reference", "vito_step", "trainer", "resume", "compile"]


@pytest.mark.timeout(600)
def test_cpu_tiny_mode_runs_every_section_and_reports_them(tmp_path):
    out = tmp_path / "check.json"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("VITO_COMPILE_BACKEND", None)
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--cpu", "--tiny", "--out", str(out),
         "--timeout", "500", "--work-dir", str(tmp_path), "--sections", *TRAINING_SECTIONS],
        capture_output=True, text=True, timeout=560, env=env, cwd=REPO, check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["finished"] and not report.get("timed_out")
    assert report["mode"]["backend"] == "gloo" and report["mode"]["device"].startswith("cpu")
    assert report["mode"]["compile_backend"] == "eager"
    sections = report["sections"]
    assert list(sections) == TRAINING_SECTIONS
    assert all(values["ok"] for values in sections.values()), {k: v.get("error") for k, v in sections.items()}

    assert sections["reference"]["img_per_s"] > 0
    step = sections["vito_step"]
    assert step["pairs_per_s"] > 0 and step["losses_finite"] and step["precision"] == "bf16"
    assert step["masters_fp32"] and not step["channels_last"] and not step["cudnn_benchmark"]  # CPU: NCHW, as before
    assert step["limit_backbone_only"] == pytest.approx(3 / 8)
    assert 0 < step["limit_with_pools"] < 3 / 8  # the pools and heads cost FLOPs of their own
    assert step["ratio_to_reference"] == pytest.approx(step["pairs_per_s"] / sections["reference"]["img_per_s"])
    assert step["fraction_of_pool_limit"] == pytest.approx(step["ratio_to_reference"] / step["limit_with_pools"])

    trainer = sections["trainer"]
    assert trainer["completed"] and trainer["steps"] == 6 and trainer["committed_step"] == 6
    assert trainer["workers"] == 2 and trainer["losses_finite"]
    assert 0 <= trainer["data_wait_frac"] < 1 and trainer["pairs_per_s"] > 0
    assert trainer["data_wait_frac_steady"] is None  # 6 steps: none after the 10 start-up steps
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
        capture_output=True, text=True, timeout=110, env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=REPO, check=False,
    )
    assert proc.returncode == 1
    sections = json.loads(out.read_text())["sections"]
    assert not sections["trainer"]["ok"] and "num_workers" in sections["trainer"]["error"]
    assert sections["reference"]["ok"] and sections["reference"]["img_per_s"] > 0
    assert "[trainer] FAILED" in proc.stdout


BLOCK_IMPORTS = """
import os
import sys


class _NotOnTheLentMachine:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("mlflow", "submitit", "s3fs"):
            with open(os.environ["REFUSED_IMPORTS"], "a") as refused:
                refused.write(name + "\\n")
            raise ModuleNotFoundError(f"No module named {name!r} (not on the lent GPU machine)")
        return None


sys.meta_path.insert(0, _NotOnTheLentMachine())
"""


def _parse_defaults() -> list[str]:
    spec = importlib.util.spec_from_file_location("gpu_check_under_test", REPO / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module._parse_args([]).sections


@pytest.mark.timeout(600)
def test_cpu_tiny_eval_section_checks_the_evaluation_engine_against_the_cpu(tmp_path):
    # The default run ends with eval, after every training section: a short deadline skips it, not `resume`.
    assert _parse_defaults() == [*TRAINING_SECTIONS, "eval"]
    out = tmp_path / "check.json"
    # The lent machine has neither of these (nor the bundle): importing one fails here as there. DeepSpeed's
    # autotuner tries mlflow inside a `try`, which is how it runs there.
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(BLOCK_IMPORTS)
    refused = tmp_path / "refused.txt"
    env = {**os.environ, "PYTHONPATH": f"{blocker}{os.pathsep}{REPO}", "REFUSED_IMPORTS": str(refused)}
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--cpu", "--tiny", "--out", str(out),
         "--sections", "eval", "--timeout", "540", "--work-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=580, env=env, cwd=REPO, check=False,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    section = report["sections"]["eval"]
    assert section["ok"] and "error" not in section, section.get("error")
    assert section["arch"] == "resnet18" and section["stem"] == "small"  # the tiny network of the other sections
    assert set(section["checks_passed"]) == {
        "image_exactly_once", "image_feature_cosine", "knn_same_features", "knn_end_to_end", "probe_same_features",
        "davis_sequences_once", "davis_masks_hold_objects", "davis_mask_iou", "davis_480p_context_20_masks", "davis_480p_context_5_masks",
        "davis_480p_context_0_masks", "davis_480p_mask_iou", "augmented_resume", "augmented_resume_weights",
        "ucf_exactly_once", "ucf_feature_cosine"}

    images = section["image_folder"]
    assert images["images"] == {"train": 64, "val": 32} and images["exactly_once"]
    assert images["extraction_img_per_s"] > 0 and images["encode_img_per_s"] > 0
    # On the CPU both sides run the same fp32 path: agreement is exact, which is what the GPU's tolerances bound.
    assert images["cosine_min"] == pytest.approx(1.0, abs=1e-5)
    assert set(images["knn_same_features_diff_samples"].values()) == {0}
    assert images["probe_top1_same_features"]["device"] == images["probe_top1_same_features"]["cpu"]

    davis = section["davis"]
    assert davis["sequences"] == 3 and davis["mask_iou_mean"] == 1.0 and davis["object_label_frames"] > 0
    run = davis["short_side_32"]  # the tiny network's stride-2 grid at short side 32: 16 x 24 cells
    assert run["context_frames"] == 20 and run["object_share"]["device"] > 0
    assert 0 < run["jf"]["device"] <= 1 and run["jf"]["device"] == run["jf"]["cpu"]
    large = section["davis_480p"]
    assert large["frames"] == 6 and large["context_20"]["frames_per_s"] > 0
    assert "peak_memory_gib" not in large["context_20"]  # CUDA only
    assert set(section["davis_480p_contexts"]) >= {"context_5", "context_0"}

    augmented = section["augmented"]
    assert augmented["preempted"] and augmented["resumed_from_step"] == 4 and augmented["steps"] == 6
    assert augmented["trained_steps_after_resume"] == 2 and augmented["bitwise_equal"]
    assert augmented["top1"]["uninterrupted"] == augmented["top1"]["resumed"]

    ucf = section["ucf101"]
    assert ucf["clips"] == {"train": 18, "test": 6} and ucf["exactly_once"] and ucf["cosine_min"] > 0.9999
    # The headline figures, as docs/gpu-check.md names them.
    for key in ("extraction_img_per_s", "encode_img_per_s", "feature_cosine_min", "davis_mask_iou_mean",
                "davis_480p_frames_per_s", "augmented_images_per_s"):
        assert section[key] > 0, key
    assert "[eval] ok" in proc.stdout
    # The blocker was in force: DeepSpeed's autotuner tried mlflow, was refused, and the section passed.
    assert "mlflow" in refused.read_text().split()
    # What the lent machine lacks was never imported (the bundle carries pydantic and PyAV only).
