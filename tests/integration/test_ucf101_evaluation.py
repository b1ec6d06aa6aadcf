"""UCF-101 as an entry of eval.benchmarks, evaluated end to end on the local backend with 2 ranks: top-1 and the
clips scored logged (with the random-init baseline), a corrupt .avi skipped and listed in skipped.json, the
protocol recorded in results.json, the extraction split between the ranks, and the clip features reused by a
later evaluation of the same checkpoint."""

from __future__ import annotations

import csv
import json
import re
import tempfile
from pathlib import Path

import pytest
import yaml

from tests.integration.checkpoints import committed_checkpoint
from tests.integration.local_sweeps import all_ended, mlflow_client, vitolaunch, wait_until

FRAMES = 4


def _eval_spec(folder: Path, name: str, root: Path) -> Path:
    spec = {
        "name": name, "task": "evaluate", "evaluate": {"checkpoints": [str(folder / "checkpoint")]},
        "base": {"eval": {
            "synthetic_suite": False, "random_init_baseline": True, "extract_shard_size": 4 * FRAMES,
            "extract_batch_size": 2 * FRAMES, "loader_workers": 1,
            "benchmarks": {"ucf": {"kind": "ucf101", "root": str(root), "frames_per_clip": FRAMES, "resize": 36,
                                   "crop": 32, "linear_epochs": 5, "linear_batch_size": 8,
                                   "linear_lr_grid": [0.1, 1.0]}},
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
    """Per rank, the shards it computed for each clip list (train, test; per network), from its log lines."""
    found: dict[int, list[list[int]]] = {}
    for log in sorted((home / "logs" / sweep).rglob("*_log.out")):
        rank = int(log.name.split("_")[1])
        for computed in re.findall(r"ucf (?:train|test): .* shards computed here \[([\d, ]*)\]", log.read_text()):
            found.setdefault(rank, []).append([int(s) for s in computed.split(",") if s.strip()])
    return found


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory: pytest.TempPathFactory):
    from vito.eval.fixtures.ucf101 import write_ucf_fixture

    folder = tmp_path_factory.mktemp("ucf")
    home = folder / "home"
    # 3 classes x 4 groups x 2 clips: split 1 trains on 18 clips (5 shards of 4), tests on 6 (2 shards)
    root = write_ucf_fixture(folder / "fixtures" / "UCF-101", size=48, num_frames=8)
    corrupt = root / "Triangle" / "v_Triangle_g01_c01.avi"  # a test clip of split 1
    corrupt.write_bytes(b"RIFF" + b"\0" * 60)
    committed_checkpoint(folder / "checkpoint")  # the evaluation needs a checkpoint, not a pretraining sweep
    vitolaunch(home, "sweep", str(_eval_spec(folder, "ucf-eval", root)))
    (row,) = wait_until(home, "ucf-eval", all_ended, timeout=420, what="the evaluation to end")
    assert row["state"] == "COMPLETED", row
    return home, folder, root, corrupt


@pytest.mark.timeout(900)
def test_top1_and_clips_scored_are_logged_and_the_corrupt_clip_is_listed(evaluated):
    home, _, _, corrupt = evaluated
    client, run = _trial(home, "ucf-eval")
    metrics = run.data.metrics
    for suffix in ("", "_random_init"):
        assert metrics[f"eval/ucf/train_clips{suffix}"] == 18
        assert metrics[f"eval/ucf/clips_scored{suffix}"] == 5
        assert metrics[f"eval/ucf/skipped_clips{suffix}"] == 1
        assert 0.0 <= metrics[f"eval/ucf/linear_top1{suffix}"] <= 1.0
    with tempfile.TemporaryDirectory() as out:
        skipped = json.loads(Path(client.download_artifacts(run.info.run_id, "eval/ucf/skipped.json", out)).read_text())
        record = json.loads(Path(client.download_artifacts(run.info.run_id, "eval/ucf/results.json", out)).read_text())
        with open(client.download_artifacts(run.info.run_id, "eval/ucf/per_class.csv", out)) as handle:
            per_class = list(csv.DictReader(handle))
    assert skipped["count"] == 1 and skipped["images"][0]["path"] == str(corrupt), skipped
    assert skipped["images"][0]["reason"].startswith("cannot decode"), skipped
    assert (record["split"], record["frames_per_clip"], record["lists"]["test"]) == (1, FRAMES, "testlist01.txt")
    assert record["transform"] == "resize36-crop32-bilinear-antialias-draft"
    assert record["linear"]["linear_lr"] in (0.1, 1.0) and record["linear"]["linear_epochs"] == 5
    assert "held out whole" in record["linear"]["lr_chosen_on"]
    assert record["clips"] == {"train": 18, "test": 5} and record["metrics"]["eval/ucf/clips_scored"] == 5
    assert [row["class"] for row in per_class] == ["Circle", "Square", "Triangle"]
    assert [int(row["clips"]) for row in per_class] == [2, 2, 1]


@pytest.mark.timeout(900)
def test_the_two_ranks_split_the_shards_between_them(evaluated):
    by_rank = _shards_by_rank(evaluated[0], "ucf-eval")
    assert set(by_rank) == {0, 1}, by_rank
    # per network: train (5 shards: 0 2 4 | 1 3), then test (2 shards: 0 | 1)
    assert by_rank[0] == [[0, 2, 4], [0]] * 2 and by_rank[1] == [[1, 3], [1]] * 2, by_rank


@pytest.mark.timeout(900)
def test_a_later_evaluation_of_the_same_checkpoint_reuses_the_clip_features(evaluated):
    home, folder, root, _ = evaluated
    vitolaunch(home, "sweep", str(_eval_spec(folder, "ucf-again", root)))
    (row,) = wait_until(home, "ucf-again", all_ended, timeout=420, what="the second evaluation to end")
    assert row["state"] == "COMPLETED", row
    by_rank = _shards_by_rank(home, "ucf-again")
    assert set(by_rank) == {0, 1} and all(computed == [] for lists in by_rank.values() for computed in lists), by_rank
    _, first = _trial(home, "ucf-eval")
    _, again = _trial(home, "ucf-again")
    for key in ("eval/ucf/linear_top1", "eval/ucf/clips_scored", "eval/ucf/linear_top1_random_init"):
        assert again.data.metrics[key] == first.data.metrics[key], key
