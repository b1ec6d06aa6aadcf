"""A benchmark in its standard layout, evaluated end to end on the local backend with 2 ranks: every image counted
once (a truncated JPEG skipped, counted and listed), the extraction split between the ranks, the features cached
by shard beside the checkpoint and reused by a later evaluation sweep of the same checkpoint."""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

import pytest
import yaml

from tests.integration.checkpoints import committed_checkpoint
from tests.integration.local_sweeps import all_ended, mlflow_client, vitolaunch, wait_until
from vito.eval.fixtures.images import FIXTURE_WNIDS

TRAIN_PER_CLASS, VAL_PER_CLASS, CLASSES = 13, 7, 4  # uneven against the shard size: the last shards are short


def _eval_spec(folder: Path, name: str, root: Path) -> Path:
    spec = {
        "name": name, "task": "evaluate", "evaluate": {"checkpoints": [str(folder / "checkpoint")]},
        "base": {"eval": {
            "synthetic_suite": False, "random_init_baseline": False, "extract_shard_size": 8,
            "extract_batch_size": 4, "loader_workers": 1,
            "benchmarks": {"imagenet": {"root": str(root), "resize": 36, "crop": 32, "knn_k": [5, 10],
                                        "linear_epochs": 5, "linear_batch_size": 16, "linear_lr_grid": [0.1, 1.0]}},
        }},
        "resources": {"cluster": "local", "tasks_per_node": 2, "timeout_min": 20},
        "tracking": {"experiment": "tests"},
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _trial(home: Path, sweep: str):
    client = mlflow_client(home)
    experiment = client.get_experiment_by_name("tests")
    (run,) = client.search_runs([experiment.experiment_id],
                                f"tags.`vitolaunch.kind` = 'trial' and tags.`vitolaunch.sweep` = '{sweep}'")
    return client, run


def _shards_by_rank(home: Path, sweep: str) -> dict[int, list[list[int]]]:
    """Per rank, the shards it computed for each split, from its log lines."""
    found: dict[int, list[list[int]]] = {}
    for log in sorted((home / "logs" / sweep).rglob("*_log.out")):
        rank = int(log.name.split("_")[1])
        for computed in re.findall(r"shards computed here \[([\d, ]*)\]", log.read_text()):
            found.setdefault(rank, []).append([int(s) for s in computed.split(",") if s.strip()])
    return found


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory: pytest.TempPathFactory):
    from vito.eval.fixtures.images import ImageFolderFixture, write_image_folder

    folder = tmp_path_factory.mktemp("bench")
    home = folder / "home"
    root = folder / "fixtures" / "imagenet"
    write_image_folder(root, ImageFolderFixture(CLASSES, TRAIN_PER_CLASS, VAL_PER_CLASS, size=48, image_size=48))
    truncated = sorted((root / "val" / FIXTURE_WNIDS[2]).glob("*.JPEG"))[3]
    truncated.write_bytes(truncated.read_bytes()[:300])  # a download cut short
    committed_checkpoint(folder / "checkpoint")  # the evaluation needs a checkpoint, not a pretraining sweep
    vitolaunch(home, "sweep", str(_eval_spec(folder, "bench-eval", root)))
    (row,) = wait_until(home, "bench-eval", all_ended, timeout=420, what="the evaluation to end")
    assert row["state"] == "COMPLETED", row
    return home, folder, root, truncated


@pytest.mark.timeout(900)
def test_every_image_is_counted_once_and_the_truncated_one_is_reported(evaluated):
    home, _, _, truncated = evaluated
    client, run = _trial(home, "bench-eval")
    metrics = run.data.metrics
    assert metrics["eval/imagenet/train_images"] == CLASSES * TRAIN_PER_CLASS
    assert metrics["eval/imagenet/val_images_scored"] == CLASSES * VAL_PER_CLASS - 1
    assert metrics["eval/imagenet/skipped_images"] == 1
    assert {"eval/imagenet/knn5_top1", "eval/imagenet/knn10_top1", "eval/imagenet/linear_top1"} <= set(metrics)
    with tempfile.TemporaryDirectory() as out:
        skipped = json.loads(Path(client.download_artifacts(run.info.run_id, "eval/imagenet/skipped.json", out)).read_text())
        record = json.loads(Path(client.download_artifacts(run.info.run_id, "eval/imagenet/results.json", out)).read_text())
        readout = Path(client.download_artifacts(run.info.run_id, "eval/imagenet/readout.pt", out))
        import torch

        state = torch.load(readout, weights_only=False)
    assert skipped["count"] == 1 and skipped["images"][0]["path"].endswith(truncated.name), skipped
    assert record["knn"]["knn_temperature"] == 0.07 and record["transform"] and record["linear"]["linear_epochs"] == 5
    assert state["weight"].shape[0] == CLASSES and state["classes"] == list(FIXTURE_WNIDS[:CLASSES])


@pytest.mark.timeout(900)
def test_the_two_ranks_split_the_shards_between_them(evaluated):
    home = evaluated[0]
    by_rank = _shards_by_rank(home, "bench-eval")
    assert set(by_rank) == {0, 1}, by_rank
    for split in range(2):  # train, then val: disjoint, together every shard, each rank some
        ours, theirs = set(by_rank[0][split]), set(by_rank[1][split])
        assert ours and theirs and not ours & theirs
    train_shards = -(-CLASSES * TRAIN_PER_CLASS // 8)
    assert set(by_rank[0][0]) | set(by_rank[1][0]) == set(range(train_shards))


@pytest.mark.timeout(900)
def test_a_later_evaluation_of_the_same_checkpoint_reuses_the_features(evaluated):
    home, folder, root, _ = evaluated
    vitolaunch(home, "sweep", str(_eval_spec(folder, "bench-again", root)))
    (row,) = wait_until(home, "bench-again", all_ended, timeout=420, what="the second evaluation to end")
    assert row["state"] == "COMPLETED", row
    by_rank = _shards_by_rank(home, "bench-again")
    assert all(computed == [] for lists in by_rank.values() for computed in lists), by_rank
    _, first = _trial(home, "bench-eval")
    _, again = _trial(home, "bench-again")
    for key in ("eval/imagenet/knn5_top1", "eval/imagenet/linear_top1", "eval/imagenet/val_images_scored"):
        assert again.data.metrics[key] == first.data.metrics[key], key
