"""`linear_augmented: true` in an evaluate sweep on the local backend, 2 ranks: the trial logs
eval/<name>/linear_augmented_top1 for the checkpoint and for its random-init baseline, after the cached protocols'
metrics, with results_augmented.json (every hyperparameter) and readout_augmented.pt as artifacts. The checkpoint
is a committed VitoModel written here in the trainer's layout, so no pretraining has to run first."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
import torch
import yaml

from tests.integration.checkpoints import committed_checkpoint
from tests.integration.local_sweeps import all_ended, mlflow_client, vitolaunch, wait_until

pytestmark = pytest.mark.integration

CLASSES, TRAIN_PER_CLASS, VAL_PER_CLASS = 4, 6, 3
EPOCHS, BATCH = 2, 8


def _spec(folder: Path, checkpoint: Path, images: Path) -> Path:
    spec = {
        "name": "aug-eval", "task": "evaluate", "evaluate": {"checkpoints": [str(checkpoint)]},
        "base": {"eval": {
            "synthetic_suite": False, "random_init_baseline": True, "extract_shard_size": 16,
            "extract_batch_size": 8, "loader_workers": 0,
            "benchmarks": {"imagenet": {"root": str(images), "resize": 36, "crop": 32, "knn_k": [3],
                                        "linear_epochs": 2, "linear_batch_size": 8, "linear_lr_grid": [0.1],
                                        "linear_augmented": True, "augmented_epochs": EPOCHS,
                                        "augmented_batch_size": BATCH}},
        }},
        "resources": {"cluster": "local", "tasks_per_node": 2, "timeout_min": 20},
        "tracking": {"experiment": "tests"},
    }
    path = folder / "aug-eval.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


@pytest.mark.timeout(600)
def test_an_evaluate_trial_logs_the_augmented_protocol_for_the_checkpoint_and_its_baseline(tmp_path: Path) -> None:
    from vito.eval.fixtures.images import ImageFolderFixture, wnid, write_image_folder

    home = tmp_path / "home"
    images = tmp_path / "fixtures" / "imagenet"
    write_image_folder(images, ImageFolderFixture(CLASSES, TRAIN_PER_CLASS, VAL_PER_CLASS, size=40, image_size=40))
    checkpoint = committed_checkpoint(tmp_path / "checkpoint")
    vitolaunch(home, "sweep", str(_spec(tmp_path, checkpoint, images)))
    (row,) = wait_until(home, "aug-eval", all_ended, timeout=540, what="the evaluation to end")
    assert row["state"] == "COMPLETED", row

    client = mlflow_client(home)
    experiment = client.get_experiment_by_name("tests")
    (run,) = client.search_runs([experiment.experiment_id],
                                "tags.`vitolaunch.kind` = 'trial' and tags.`vitolaunch.sweep` = 'aug-eval'")
    metrics = run.data.metrics
    for suffix in ("", "_random_init"):
        top1 = metrics[f"eval/imagenet/linear_augmented_top1{suffix}"]
        assert 0 <= top1 <= 1 and f"eval/imagenet/linear_top1{suffix}" in metrics
    assert metrics["eval/imagenet/val_images_scored"] == CLASSES * VAL_PER_CLASS
    # The cached protocols' metrics were logged before the augmented ones (of both networks) began.
    history = {key: client.get_metric_history(run.info.run_id, key)[0].timestamp
               for key in ("eval/imagenet/linear_top1_random_init", "eval/imagenet/linear_augmented_top1")}
    assert history["eval/imagenet/linear_top1_random_init"] <= history["eval/imagenet/linear_augmented_top1"]
    with tempfile.TemporaryDirectory() as out:
        record = json.loads(Path(client.download_artifacts(run.info.run_id, "eval/imagenet/results_augmented.json",
                                                           out)).read_text())
        readout = torch.load(client.download_artifacts(run.info.run_id, "eval/imagenet/readout_augmented.pt", out),
                             weights_only=False)
    protocol = record["linear_augmented"]
    assert protocol["epochs"] == EPOCHS and protocol["batch_size"] == BATCH and protocol["base_lr"] == 0.1
    assert protocol["crop_scale"] == [0.08, 1.0] and protocol["world_size"] == 2
    assert protocol["steps"] == EPOCHS * -(-CLASSES * TRAIN_PER_CLASS // BATCH)
    assert protocol["val_images"] == CLASSES * VAL_PER_CLASS and record["head"] == "trained_readout"
    assert readout["weight"].shape[0] == CLASSES and readout["epochs"] == EPOCHS
    assert readout["classes"] == [wnid(i) for i in range(CLASSES)]  # the fixture's class folders
    # beside the feature cache, keyed by encoder, dataset and hyperparameters: one folder per network
    assert len(list((checkpoint / "features" / "augmented_linear").iterdir())) == 2
