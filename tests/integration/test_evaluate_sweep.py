"""Evaluation as a task, end to end on the local backend: a tiny pretraining sweep on a manifest that holds a
corrupt video (skipped and counted in MLflow), then a `task: evaluate` sweep that points at it by name and
lands in MLflow next to it, linked both ways."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.integration.local_sweeps import TINY_BASE, all_ended, mlflow_client, vitolaunch, wait_until, write_spec

pytestmark = pytest.mark.integration

EXPERIMENT = "tests"


def _runs(home: Path, sweep: str, kind: str = "trial"):
    client = mlflow_client(home)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    return client.search_runs([experiment.experiment_id], f"tags.`vitolaunch.kind` = '{kind}' and tags.`vitolaunch.sweep` = '{sweep}'")


def _manifest_with_a_corrupt_video(folder: Path) -> Path:
    """The tiny synthetic clips as a manifest of our own, plus one file that is not a video."""
    from vito.config import SyntheticConfig
    from vito.data.manifest import VideoRecord, read_manifest, write_manifest
    from vito.data.synthetic import ensure_synthetic_videos

    synthetic = SyntheticConfig(**TINY_BASE["data"]["synthetic"])
    records = read_manifest(ensure_synthetic_videos(folder / "gen", synthetic))
    videos = folder / "videos"
    videos.mkdir()
    for record in records:
        shutil.copy(record.uri, videos / Path(record.uri).name)
    (videos / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypisom" + b"\xde\xad" * 400)
    rows = [VideoRecord(f"videos/{Path(r.uri).name}", r.duration_s, r.fps, r.num_frames, r.label) for r in records]
    rows.insert(3, VideoRecord("videos/corrupt.mp4", 2.0, 8.0, 16))
    manifest = folder / "train.jsonl"
    write_manifest(manifest, rows)
    return manifest


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory: pytest.TempPathFactory):
    """One finished pretraining trial (2 ranks) on a manifest with a corrupt video."""
    folder = tmp_path_factory.mktemp("evaluate")
    home = folder / "home"
    manifest = _manifest_with_a_corrupt_video(folder)
    spec = write_spec(folder, "pre", {"loss.temperature": [0.2]}, data={"source": str(manifest)})
    vitolaunch(home, "sweep", str(spec))
    (row,) = wait_until(home, "pre", all_ended, timeout=420, what="the pretraining trial to end")
    assert row["state"] == "COMPLETED", row
    return home, folder


@pytest.mark.timeout(600)
def test_corrupt_video_in_the_manifest_is_skipped_and_counted(pretrained):
    home, _ = pretrained
    (trial,) = _runs(home, "pre")
    assert trial.info.status == "FINISHED"
    client = mlflow_client(home)
    skipped = client.get_metric_history(trial.info.run_id, "data/skipped_videos")
    assert skipped and skipped[-1].value == 1.0, [m.value for m in skipped]
    samples = client.get_metric_history(trial.info.run_id, "data/skipped_samples")
    assert samples[-1].value >= 1.0
    logs = "".join(p.read_text() for p in (home / "logs" / "pre").rglob("*_log.*"))
    assert "skipping unreadable video" in logs and "corrupt.mp4" in logs


@pytest.mark.timeout(600)
def test_evaluate_sweep_lands_next_to_the_pretraining_run(pretrained):
    home, folder = pretrained
    (pre_trial,) = _runs(home, "pre")
    spec = {
        "name": "pre-eval",
        "task": "evaluate",
        "evaluate": {"runs": ["pre"]},
        "base": {"eval": {
            "train_clips": 12, "test_clips": 8, "frames_per_clip": 2, "probe_epochs": 30, "severities": [3],
            "deformation_motion_scales": [2.0], "propagation_clips": 2, "propagation_size": 64,
        }},
        "parameters": {"eval.corruptions": [["gaussian_noise", "jpeg"]]},
        "resources": {"cluster": "local", "tasks_per_node": 1, "timeout_min": 20},
    }
    path = folder / "pre-eval.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))

    dry = vitolaunch(home, "sweep", str(path), "--dry-run").stdout
    assert "1 trials" in dry or "1 trial" in dry
    out = vitolaunch(home, "sweep", str(path)).stdout
    assert "1 submitted" in out
    (row,) = wait_until(home, "pre-eval", all_ended, timeout=420, what="the evaluation trial to end")
    assert row["state"] == "COMPLETED", row
    assert row["params"]["pretrain.run"] == pre_trial.info.run_id

    client = mlflow_client(home)
    (sweep,) = _runs(home, "pre-eval", kind="sweep")
    (evaluation,) = _runs(home, "pre-eval")
    # Next to the pretraining run: same experiment, its own sweep as parent, linked both ways.
    assert evaluation.info.experiment_id == pre_trial.info.experiment_id == sweep.info.experiment_id
    assert evaluation.data.tags["mlflow.parentRunId"] == sweep.info.run_id
    assert sweep.data.tags["vitolaunch.task"] == "evaluate"
    assert evaluation.data.tags["vitolaunch.pretrain_run_id"] == pre_trial.info.run_id
    assert evaluation.data.tags["vitolaunch.evaluated_step"] == "12"
    pre_tags = client.get_run(pre_trial.info.run_id).data.tags
    assert pre_tags.get(f"vitolaunch.evaluated_by.{evaluation.info.run_id}") == "step 12"

    metrics = evaluation.data.metrics
    for key in ("eval/linear_probe_acc", "eval/knn_acc", "eval/robust/gaussian_noise_s3_acc", "eval/robust/jpeg_s3_acc",
                "eval/robust/mean_corruption_acc", "eval/deform/m2_linear_probe_acc", "eval/propagation/J",
                "eval/propagation/F", "eval/propagation/JF", "eval/linear_probe_acc_random_init",
                "eval/propagation/JF_copy_first"):
        assert key in metrics and 0.0 <= metrics[key] <= 1.0, (key, metrics.get(key))
    assert metrics["train/step"] == 12
    (folder / "a").mkdir(exist_ok=True)
    (folder / "b").mkdir(exist_ok=True)
    config = json.loads(Path(client.download_artifacts(evaluation.info.run_id, "config.json", str(folder / "a"))).read_text())
    assert config["eval"]["checkpoint"] == pre_trial.data.tags["vitolaunch.checkpoint_uri"]
    assert config["model"] == json.loads(Path(client.download_artifacts(pre_trial.info.run_id, "config.json",
                                                                       str(folder / "b"))).read_text())["model"]
    artifacts = {a.path for a in client.list_artifacts(evaluation.info.run_id, "eval")}
    assert "eval/final.json" in artifacts

    again = vitolaunch(home, "sweep", str(path)).stdout
    assert "1 finished" in again, "the same evaluation is not run twice"


RESOLVE_IN_THE_CLI = """
import sys
from vitolaunch.cli import main
sys.argv = ["vitolaunch", "sweep", sys.argv[1], "--dry-run"]
try:
    main()
except SystemExit as end:
    assert not end.code, end.code
print("torch imported:", "torch" in sys.modules)
"""


@pytest.mark.timeout(300)
def test_a_checkpoint_only_target_takes_its_config_from_the_marker_without_torch(pretrained):
    """A copy of the trained checkpoint that no MLflow run points at: its COMMITTED marker (written by the real
    trainer) holds the config, so the CLI resolves it without loading weights or importing torch."""
    from vito.checkpoint import CheckpointStore

    home, folder = pretrained
    (pre_trial,) = _runs(home, "pre")
    copy = folder / "copied-checkpoint"
    shutil.copytree(pre_trial.data.tags["vitolaunch.checkpoint_uri"], copy)
    store = CheckpointStore(str(copy))
    step = store.committed_steps()[-1]
    (folder / "c").mkdir(exist_ok=True)
    trained_config = json.loads(Path(mlflow_client(home).download_artifacts(pre_trial.info.run_id, "config.json",
                                                                             str(folder / "c"))).read_text())
    assert store.committed_config(step) == trained_config

    path = folder / "copy-eval.yaml"
    path.write_text(yaml.safe_dump({
        "name": "copy-eval", "task": "evaluate", "evaluate": {"checkpoints": [str(copy)]},
        "resources": {"cluster": "local", "tasks_per_node": 1},
    }))
    env = {**os.environ, "VITOLAUNCH_HOME": str(home), "MLFLOW_DISABLE_TELEMETRY": "true", "COLUMNS": "200"}
    env.pop("MLFLOW_TRACKING_URI", None)
    done = subprocess.run([sys.executable, "-c", RESOLVE_IN_THE_CLI, str(path)], env=env, capture_output=True,
                          text=True, timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "dry run: 1 trials, nothing submitted" in done.stdout, done.stdout
    assert "torch imported: False" in done.stdout, done.stdout
