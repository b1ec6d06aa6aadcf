"""Published weights beside a pretraining trial in one evaluate sweep (local backend): a torchvision-layout
ResNet-50 state dict saved to a file and the project trial are scored on the same ImageFolder benchmark; both
rows carry eval/imagenet/* metrics, the foreign row is labelled by its name in `compare` and in the parent run's
benchmark table, and its results.json says which head scored (its own fc)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
import yaml

from tests.integration.local_sweeps import all_ended, mlflow_client, vitolaunch, wait_until, write_spec

CLASSES, TRAIN_PER_CLASS, VAL_PER_CLASS = 4, 8, 4


def _torchvision_file(path: Path) -> Path:
    """A width-8 ResNet-50 with a 1000-way fc, in torchvision's names (the inverse of the project's name map)."""
    import torch

    from vito.eval.foreign_weights import ForeignResNet, foreign_state_dict

    torch.manual_seed(0)
    state = foreign_state_dict(ForeignResNet(8, num_classes=1000))
    assert "conv1.weight" in state and "layer1.0.downsample.0.weight" in state and "fc.weight" in state
    torch.save(state, path)
    return path


def _eval_spec(folder: Path, root: Path, weights: Path) -> Path:
    spec = {
        "name": "side-by-side", "task": "evaluate",
        "evaluate": {"runs": ["pre"], "checkpoints": [{"weights": str(weights), "kind": "torchvision",
                                                       "name": "supervised"}]},
        "base": {"eval": {
            "synthetic_suite": False, "random_init_baseline": False, "extract_shard_size": 16,
            "extract_batch_size": 8, "loader_workers": 0,
            "benchmarks": {"imagenet": {"root": str(root), "resize": 36, "crop": 32, "knn_k": [5],
                                        "linear_epochs": 3, "linear_batch_size": 16, "linear_lr_grid": [0.1]}},
        }},
        "resources": {"cluster": "local", "tasks_per_node": 1, "timeout_min": 20},
        "tracking": {"experiment": "tests"},
    }
    path = folder / "side-by-side.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


@pytest.mark.timeout(900)
def test_published_weights_are_scored_beside_a_trial_and_labelled_by_name(tmp_path: Path) -> None:
    from vito.eval.fixtures.images import ImageFolderFixture, write_image_folder

    home = tmp_path / "home"
    root = tmp_path / "fixtures" / "imagenet"
    write_image_folder(root, ImageFolderFixture(CLASSES, TRAIN_PER_CLASS, VAL_PER_CLASS, size=40, image_size=40))
    weights = _torchvision_file(tmp_path / "resnet50-torchvision.pth")
    vitolaunch(home, "sweep", str(write_spec(tmp_path, "pre", {"loss.temperature": [0.2]}, tasks_per_node=1)))
    (row,) = wait_until(home, "pre", all_ended, timeout=420, what="the pretraining trial to end")
    assert row["state"] == "COMPLETED", row
    vitolaunch(home, "sweep", str(_eval_spec(tmp_path, root, weights)))
    rows = wait_until(home, "side-by-side", all_ended, timeout=420, what="the evaluations to end")
    assert len(rows) == 2 and all(r["state"] == "COMPLETED" for r in rows), rows

    client = mlflow_client(home)
    experiment = client.get_experiment_by_name("tests")
    runs = client.search_runs([experiment.experiment_id],
                              "tags.`vitolaunch.kind` = 'trial' and tags.`vitolaunch.sweep` = 'side-by-side'")
    assert len(runs) == 2
    foreign = [r for r in runs if r.data.params.get("pretrain.weights") == "supervised"]
    assert len(foreign) == 1, [r.data.params for r in runs]
    for run in runs:
        metrics = run.data.metrics
        assert {"eval/imagenet/linear_top1", "eval/imagenet/knn5_top1"} <= set(metrics), metrics
        assert metrics["eval/imagenet/val_images_scored"] == CLASSES * VAL_PER_CLASS
    assert (weights.parent / f"{weights.name}.features").is_dir(), "the feature cache lies next to the weights"
    with tempfile.TemporaryDirectory() as out:
        record = json.loads(Path(client.download_artifacts(foreign[0].info.run_id, "eval/imagenet/results.json",
                                                           out)).read_text())
    assert record["head"] == "trained_readout" and record["own_fc_in_file"] is True
    assert record["weights_kind"] == "torchvision"

    compared = vitolaunch(home, "compare", "side-by-side").stdout
    assert "supervised" in compared, compared
    (parent,) = client.search_runs([experiment.experiment_id],
                                   "tags.`vitolaunch.kind` = 'sweep' and tags.`vitolaunch.sweep` = 'side-by-side'")
    with tempfile.TemporaryDirectory() as out:
        table = Path(client.download_artifacts(parent.info.run_id, "summary/benchmarks.csv", out)).read_text()
    assert "weights=supervised" in table, table
