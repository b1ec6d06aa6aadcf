"""An evaluation on the loopback SLURM cluster (2 nodes x 1 rank) SIGKILLed in the middle of its feature
extraction: SLURM's crash retry restarts it, the retry recomputes only the shards that were not committed, and
its metrics equal those of an uninterrupted evaluation of the same checkpoint."""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import pytest
import yaml

from tests.integration.checkpoints import committed_checkpoint
from tests.integration.local_sweeps import all_ended, vitolaunch, wait_until
from tests.integration.slurm_trials import rank_pid, run_ended, trial_runs, wait_for_run

pytestmark = pytest.mark.usefixtures("slurm_cluster", "job_environment")

SHARD = 4


def _eval_spec(folder: Path, name: str, checkpoint: str, root: Path, cache: Path, cluster: str) -> Path:
    resources = ({"cluster": "slurm", "nodes": 2, "tasks_per_node": 1, "cpus_per_task": 1, "mem_gb": 1,
                  "timeout_min": 20, "retries": {"crash": 1, "timeout": 0}}
                 if cluster == "slurm" else {"cluster": "local", "tasks_per_node": 1, "timeout_min": 20})
    spec = {
        "name": name, "task": "evaluate", "evaluate": {"checkpoints": [checkpoint]},
        "base": {"eval": {
            "synthetic_suite": False, "random_init_baseline": False, "feature_cache": str(cache),
            "extract_shard_size": SHARD, "extract_batch_size": 1, "loader_workers": 0,
            "benchmarks": {"imagenet": {"root": str(root), "resize": 160, "crop": 144, "knn_k": [5],
                                        "linear_epochs": 5, "linear_batch_size": 16, "linear_lr_grid": [0.1]}},
        }},
        "resources": resources,
        "tracking": {"experiment": "tests"},
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _committed_shards(cache: Path) -> set[Path]:
    return set(cache.rglob("shard-*.done"))


def _train_shards_logged(home: Path, sweep: str) -> tuple[set[int], set[int]]:
    """(computed, reused) train shards over the ranks, from the retry's log lines (the killed attempt never
    got to write one: it died inside the train split)."""
    computed: set[int] = set()
    reused: set[int] = set()
    for log in (home / "logs" / sweep).rglob("*_log.out"):
        found = re.findall(r"imagenet train: .*shards computed here \[([\d, ]*)\], reused \[([\d, ]*)\]", log.read_text())
        for mine, cached in found[:1]:
            computed |= {int(s) for s in mine.split(",") if s.strip()}
            reused |= {int(s) for s in cached.split(",") if s.strip()}
    return computed, reused


@pytest.mark.timeout(900)
def test_a_sigkilled_evaluation_is_retried_and_recomputes_only_the_missing_shards(tmp_path, cancel_on_exit):
    from vito.eval.fixtures.images import ImageFolderFixture, write_image_folder

    home = tmp_path / "home"
    root = tmp_path / "fixtures" / "imagenet"
    write_image_folder(root, ImageFolderFixture(4, 40, 5, size=48, image_size=160))
    checkpoint = str(committed_checkpoint(tmp_path / "checkpoint"))  # no pretraining sweep needed

    cache = tmp_path / "features-slurm"
    cancel_on_exit("it-eval-kill")
    vitolaunch(home, "sweep", str(_eval_spec(tmp_path, "it-eval-kill", checkpoint, root, cache, "slurm")))
    evaluation = next(r for r in trial_runs(home) if r.data.tags["vitolaunch.sweep"] == "it-eval-kill")
    run_id, job = evaluation.info.run_id, evaluation.data.tags["vitolaunch.job_id"]
    deadline = time.monotonic() + 300
    while len(_committed_shards(cache)) < 4:  # some train shards are in: kill mid-extraction
        assert time.monotonic() < deadline, "no feature shard was committed in time"
        time.sleep(0.1)
    pid = rank_pid(job, 0)
    assert pid is not None, "rank 0 is not running"
    os.kill(pid, signal.SIGKILL)
    before_retry = {p.name.removesuffix(".done") for p in _committed_shards(cache)}
    train_shards = 4 * 40 // SHARD
    assert len(before_retry) < train_shards, "the extraction finished before it could be killed: make it longer"

    done = wait_for_run(home, run_id, run_ended, 400, "the retried evaluation to end")
    assert done.info.status == "FINISHED", done.data.tags
    assert "crash" in done.data.tags.get("vitolaunch.last_requeue", ""), done.data.tags
    computed, reused = _train_shards_logged(home, "it-eval-kill")
    committed_before = {int(name.rsplit("-", 1)[1]) for name in before_retry}
    # what was committed before the kill is reused, never recomputed; together every train shard
    assert committed_before <= reused and not computed & committed_before, (computed, reused, committed_before)
    assert computed | reused == set(range(train_shards)) and computed, (computed, reused)

    # an uninterrupted evaluation of the same checkpoint (one process, a fresh cache) scores the same
    vitolaunch(home, "sweep", str(_eval_spec(tmp_path, "it-eval-whole", checkpoint, root, tmp_path / "fresh", "local")))
    (row,) = wait_until(home, "it-eval-whole", all_ended, timeout=420, what="the uninterrupted evaluation")
    whole = next(r for r in trial_runs(home) if r.data.tags["vitolaunch.sweep"] == "it-eval-whole")
    for key in ("eval/imagenet/knn5_top1", "eval/imagenet/linear_top1", "eval/imagenet/val_images_scored",
                "eval/imagenet/train_images"):
        assert done.data.metrics[key] == whole.data.metrics[key], key
