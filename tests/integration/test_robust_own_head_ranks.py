"""The readout kinds on 2 gloo ranks (local backend) score exactly as on 1: published weights (a torchvision-layout
ResNet-50 with a 1000-way fc) evaluated on an ImageNet-C tree, an ImageNet-R-style subset and the cue-conflict set
through their own head (`head: own`), once with 1 rank and once with 2, each extracting its own features (two
feature caches). Every metric of the three benchmarks is equal, and the records say which head scored."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
import yaml

from tests.integration.local_sweeps import all_ended, mlflow_client, vitolaunch, wait_until

CLASSES, VAL_PER_CLASS = 4, 5
SMALL = {"resize": 36, "crop": 32, "head": "own"}


def _weights(path: Path) -> Path:
    import torch

    from vito.eval.foreign_weights import ForeignResNet, foreign_state_dict

    torch.manual_seed(0)
    torch.save(foreign_state_dict(ForeignResNet(8, num_classes=1000)), path)
    return path


def _eval_spec(folder: Path, name: str, fixtures: Path, weights: Path, ranks: int) -> Path:
    spec = {
        "name": name, "task": "evaluate",
        "evaluate": {"checkpoints": [{"weights": str(weights), "kind": "torchvision", "name": "supervised"}]},
        "base": {"eval": {
            "synthetic_suite": False, "random_init_baseline": False, "extract_shard_size": 16,
            "extract_batch_size": 8, "loader_workers": 0, "feature_cache": str(folder / f"features-{ranks}"),
            "benchmarks": {
                "imagenet_c": {"kind": "corruptions", "root": str(fixtures / "imagenet-c"), **SMALL},
                "imagenet_r": {"kind": "class_subset", "root": str(fixtures / "imagenet-r"), **SMALL},
                "cue_conflict": {"kind": "cue_conflict", "root": str(fixtures / "cue-conflict"), **SMALL},
            },
        }},
        "resources": {"cluster": "local", "tasks_per_node": ranks, "timeout_min": 20},
        "tracking": {"experiment": "tests"},
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _run(home: Path, sweep: str):
    client = mlflow_client(home)
    experiment = client.get_experiment_by_name("tests")
    (run,) = client.search_runs([experiment.experiment_id],
                                f"tags.`vitolaunch.kind` = 'trial' and tags.`vitolaunch.sweep` = '{sweep}'")
    return client, run


@pytest.mark.timeout(900)
def test_two_ranks_score_the_readout_kinds_through_the_own_head_exactly_as_one(tmp_path: Path) -> None:
    from vito.eval.fixtures.images import FIXTURE_WNIDS, ImageFolderFixture, write_image_folder
    from vito.eval.fixtures.robustness import write_class_subset, write_corruption_tree, write_cue_conflict

    home, fixtures = tmp_path / "home", tmp_path / "fixtures"
    write_image_folder(fixtures / "imagenet", ImageFolderFixture(CLASSES, 1, VAL_PER_CLASS, size=40, image_size=40))
    val = fixtures / "imagenet" / "val"
    write_corruption_tree(val, fixtures / "imagenet-c", image_size=40, corruptions=["gaussian_noise", "contrast"])
    write_class_subset(val, fixtures / "imagenet-r", list(FIXTURE_WNIDS[: CLASSES - 1]))
    write_cue_conflict(fixtures / "cue-conflict", size=40, repeats=1)
    weights = _weights(tmp_path / "r50.pth")
    for ranks in (1, 2):
        vitolaunch(home, "sweep", str(_eval_spec(tmp_path, f"own-{ranks}", fixtures, weights, ranks)))
    for ranks in (1, 2):
        (row,) = wait_until(home, f"own-{ranks}", all_ended, timeout=600, what=f"the {ranks}-rank evaluation")
        assert row["state"] == "COMPLETED", row

    (client, one), (_, two) = _run(home, "own-1"), _run(home, "own-2")
    scored = {k: v for k, v in one.data.metrics.items() if k.startswith("eval/")}
    assert {"eval/imagenet_c/gaussian_noise_ce", "eval/imagenet_c/contrast_ce", "eval/imagenet_r/top1",
            "eval/cue_conflict/shape_fraction"} <= set(scored), scored
    assert scored["eval/imagenet_c/images_scored"] == 2 * 5 * CLASSES * VAL_PER_CLASS
    assert scored["eval/imagenet_r/images_scored"] == (CLASSES - 1) * VAL_PER_CLASS
    assert scored["eval/cue_conflict/images_scored"] == 4 * 3
    assert {k: v for k, v in two.data.metrics.items() if k.startswith("eval/")} == scored
    logs = sorted((home / "logs" / "own-2").rglob("*_log.out"))
    assert {int(log.name.split("_")[1]) for log in logs} == {0, 1}, logs  # two ranks ran
    with tempfile.TemporaryDirectory() as out:
        for name in ("imagenet_c", "imagenet_r", "cue_conflict"):
            record = json.loads(Path(client.download_artifacts(two.info.run_id, f"eval/{name}/results.json",
                                                               out)).read_text())
            assert record["head"] == "own_fc" and "its own head" in record["scored"], record
            assert record["own_fc_in_file"] is True and record["weights_kind"] == "torchvision"
        assert record["readout_is_imagenet_1k"] is True and record["readout_placement"] == "imagenet_1k"
