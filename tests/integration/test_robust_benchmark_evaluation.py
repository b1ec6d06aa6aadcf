"""The robustness benchmarks as entries of eval.benchmarks, evaluated end to end on the local backend (1 rank):
ImageNet-C (a partial table: CE per corruption, no mCE), ImageNet-R (restricted top-1) and the cue-conflict set
(shape bias), each scored through the linear readout the imagenet entry trained, with their CSV artifacts."""

from __future__ import annotations

import csv
import json
import tempfile
from pathlib import Path

import pytest
import yaml

from tests.integration.checkpoints import committed_checkpoint
from tests.integration.local_sweeps import all_ended, mlflow_client, vitolaunch, wait_until
from vito.eval.fixtures.images import FIXTURE_WNIDS

TRAIN_PER_CLASS, VAL_PER_CLASS, CLASSES = 6, 3, 4
SMALL = {"resize": 36, "crop": 32}


def _eval_spec(folder: Path, name: str, fixtures: Path) -> Path:
    spec = {
        "name": name, "task": "evaluate", "evaluate": {"checkpoints": [str(folder / "checkpoint")]},
        "base": {"eval": {
            "synthetic_suite": False, "random_init_baseline": False, "extract_shard_size": 64,
            "extract_batch_size": 16, "loader_workers": 0,
            "benchmarks": {
                # listed before its readout: the suite runs the image folders first all the same
                "imagenet_c": {"kind": "corruptions", "root": str(fixtures / "imagenet-c"), "readout": "imagenet",
                               **SMALL},
                "imagenet": {"root": str(fixtures / "imagenet"), **SMALL, "knn_k": [3], "linear_epochs": 3,
                             "linear_batch_size": 8, "linear_lr_grid": [0.1]},
                "imagenet_r": {"kind": "class_subset", "root": str(fixtures / "imagenet-r"), "readout": "imagenet",
                               **SMALL},
                "cue_conflict": {"kind": "cue_conflict", "root": str(fixtures / "cue-conflict"),
                                 "readout": "imagenet", **SMALL},
            },
        }},
        "resources": {"cluster": "local", "tasks_per_node": 1, "timeout_min": 20},
        "tracking": {"experiment": "tests"},
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory: pytest.TempPathFactory):
    from vito.eval.fixtures.images import ImageFolderFixture, write_image_folder
    from vito.eval.fixtures.robustness import write_class_subset, write_corruption_tree, write_cue_conflict

    folder = tmp_path_factory.mktemp("robust")
    home = folder / "home"
    fixtures = folder / "fixtures"
    write_image_folder(fixtures / "imagenet", ImageFolderFixture(CLASSES, TRAIN_PER_CLASS, VAL_PER_CLASS, size=40,
                                                                 image_size=40))
    val = fixtures / "imagenet" / "val"
    # a partial tree on purpose (the fixtures command writes all 19): CE per corruption and no mCE
    write_corruption_tree(val, fixtures / "imagenet-c", image_size=40,
                          corruptions=["gaussian_noise", "contrast", "jpeg_compression", "gaussian_blur"])
    write_class_subset(val, fixtures / "imagenet-r", list(FIXTURE_WNIDS[: CLASSES - 1]))
    write_cue_conflict(fixtures / "cue-conflict", size=40)
    committed_checkpoint(folder / "checkpoint")  # the evaluation needs a checkpoint, not a pretraining sweep
    vitolaunch(home, "sweep", str(_eval_spec(folder, "robust-eval", fixtures)))
    (row,) = wait_until(home, "robust-eval", all_ended, timeout=420, what="the evaluation to end")
    assert row["state"] == "COMPLETED", row
    client = mlflow_client(home)
    experiment = client.get_experiment_by_name("tests")
    (run,) = client.search_runs([experiment.experiment_id],
                                "tags.`vitolaunch.kind` = 'trial' and tags.`vitolaunch.sweep` = 'robust-eval'")
    return client, run


def _artifact(client, run, path: str, out: str) -> Path:
    return Path(client.download_artifacts(run.info.run_id, path, out))


@pytest.mark.timeout(900)
def test_the_partial_imagenet_c_table_is_logged_without_mce_with_its_csv(evaluated):
    client, run = evaluated
    metrics = run.data.metrics
    assert {"eval/imagenet_c/gaussian_noise_ce", "eval/imagenet_c/contrast_ce",
            "eval/imagenet_c/jpeg_compression_ce"} <= set(metrics)
    assert "eval/imagenet_c/mce" not in metrics and "eval/imagenet_c/relative_mce" not in metrics
    assert metrics["eval/imagenet_c/images_scored"] == 4 * 5 * CLASSES * VAL_PER_CLASS
    with tempfile.TemporaryDirectory() as out:
        record = json.loads(_artifact(client, run, "eval/imagenet_c/results.json", out).read_text())
        rows = list(csv.DictReader(_artifact(client, run, "eval/imagenet_c/per_corruption.csv", out).open()))
    assert record["partial"] and record["mce"] is None and len(record["missing"]) == 12
    assert record["scored"] == "through the readout of eval.benchmarks.imagenet"
    assert len(rows) == 4 * 5 and {r["corruption"] for r in rows} >= {"gaussian_noise", "gaussian_blur"}


@pytest.mark.timeout(900)
def test_imagenet_r_top1_and_the_shape_bias_are_logged_with_their_csvs(evaluated):
    client, run = evaluated
    metrics = run.data.metrics
    assert 0.0 <= metrics["eval/imagenet_r/top1"] <= 1.0
    assert metrics["eval/imagenet_r/images_scored"] == (CLASSES - 1) * VAL_PER_CLASS
    assert {"eval/cue_conflict/shape_bias", "eval/cue_conflict/shape_fraction", "eval/cue_conflict/texture_fraction",
            "eval/cue_conflict/images_scored"} <= set(metrics)
    assert metrics["eval/cue_conflict/images_scored"] == 4 * 3 * 3  # 4 categories x 3 other textures x 3 repeats
    with tempfile.TemporaryDirectory() as out:
        per_class = list(csv.DictReader(_artifact(client, run, "eval/imagenet_r/per_class.csv", out).open()))
        per_category = list(csv.DictReader(_artifact(client, run, "eval/cue_conflict/per_category.csv", out).open()))
        cue = json.loads(_artifact(client, run, "eval/cue_conflict/results.json", out).read_text())
    assert [r["wnid"] for r in per_class] == list(FIXTURE_WNIDS[: CLASSES - 1])
    assert [r["category"] for r in per_category] == ["airplane", "elephant", "knife", "oven"]
    assert cue["readout_is_imagenet_1k"] is False and cue["readout_placement"] == "by_wnid"
    assert cue["categories_decidable"] == ["airplane", "elephant", "knife", "oven"] and cue["head"] == "trained_readout"
    assert cue["scored"] == "through the readout of eval.benchmarks.imagenet"
