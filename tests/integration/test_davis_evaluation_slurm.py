"""A DAVIS + UCF-101 evaluation on the loopback SLURM cluster (2 nodes x 1 rank) SIGKILLed in the middle of its
label propagation: SLURM's crash retry restarts it, the retry propagates only the sequences whose masks were not
committed, and its J&F and UCF-101 top-1 equal those of an uninterrupted evaluation of the same checkpoint."""

from __future__ import annotations

import json
import os
import signal
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from tests.integration.checkpoints import committed_checkpoint
from tests.integration.local_sweeps import all_ended, mlflow_client, vitolaunch, wait_until
from tests.integration.slurm_trials import rank_pid, run_ended, trial_runs, wait_for_run

pytestmark = pytest.mark.usefixtures("slurm_cluster", "job_environment")

SEQUENCES = 6
SHORT_SIDE = 256  # a 32 x 48 grid at stride 8: about a second a sequence here, long enough to kill between them


def _eval_spec(folder: Path, name: str, checkpoint: str, root: Path, ucf: Path, cache: Path, cluster: str) -> Path:
    resources = ({"cluster": "slurm", "nodes": 2, "tasks_per_node": 1, "cpus_per_task": 1, "mem_gb": 1,
                  "timeout_min": 20, "retries": {"crash": 1, "timeout": 0}}
                 if cluster == "slurm" else {"cluster": "local", "tasks_per_node": 1, "cpus_per_task": 1,
                                             "timeout_min": 20})
    spec = {
        "name": name, "task": "evaluate", "evaluate": {"checkpoints": [checkpoint]},
        "base": {"eval": {"synthetic_suite": False, "random_init_baseline": False, "feature_cache": str(cache),
                          "extract_shard_size": 16, "extract_batch_size": 8, "loader_workers": 0,
                          "benchmarks": {"davis": {"kind": "davis", "root": str(root), "short_side": SHORT_SIDE},
                                         "ucf101": {"kind": "ucf101", "root": str(ucf), "frames_per_clip": 4,
                                                    "resize": 44, "crop": 40, "linear_epochs": 20,
                                                    "linear_batch_size": 16}}}},
        "resources": resources,
        "tracking": {"experiment": "tests"},
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _committed(cache: Path) -> set[str]:
    return {p.name.removesuffix(".done") for p in cache.rglob("synth*.done")}


def _results(home: Path, run) -> dict:
    with tempfile.TemporaryDirectory() as out:
        return json.loads(Path(mlflow_client(home).download_artifacts(run.info.run_id, "eval/davis/results.json",
                                                                      out)).read_text())


@pytest.mark.timeout(900)
def test_a_sigkilled_davis_evaluation_is_retried_and_propagates_only_the_uncommitted_sequences(tmp_path, cancel_on_exit):
    from vito.eval.fixtures.davis import write_davis_fixture
    from vito.eval.fixtures.ucf101 import write_ucf_fixture

    home = tmp_path / "home"
    root = write_davis_fixture(tmp_path / "davis", widths=(96, 128) * (SEQUENCES // 2), num_frames=8)
    ucf = write_ucf_fixture(tmp_path / "UCF-101", size=48, num_frames=8)
    checkpoint = str(committed_checkpoint(tmp_path / "checkpoint"))  # no pretraining sweep needed

    cache = tmp_path / "cache-slurm"
    cancel_on_exit("it-davis-kill")
    vitolaunch(home, "sweep", str(_eval_spec(tmp_path, "it-davis-kill", checkpoint, root, ucf, cache, "slurm")))
    evaluation = next(r for r in trial_runs(home) if r.data.tags["vitolaunch.sweep"] == "it-davis-kill")
    run_id, job = evaluation.info.run_id, evaluation.data.tags["vitolaunch.job_id"]
    deadline = time.monotonic() + 300
    while not _committed(cache):  # a sequence is in: kill mid-propagation
        assert time.monotonic() < deadline, "no sequence was committed in time"
        time.sleep(0.05)
    pid = rank_pid(job, 0)
    assert pid is not None, "rank 0 is not running"
    os.kill(pid, signal.SIGKILL)
    before_retry = _committed(cache)
    assert len(before_retry) < SEQUENCES, "the propagation finished before it could be killed: make it longer"

    done = wait_for_run(home, run_id, run_ended, 400, "the retried evaluation to end")
    assert done.info.status == "FINISHED", done.data.tags
    assert "crash" in done.data.tags.get("vitolaunch.last_requeue", ""), done.data.tags
    sequences = _results(home, done)["sequences"]
    computed, reused = set(sequences["computed"]), set(sequences["reused"])
    # what was committed before the kill is reused, never recomputed; together every sequence, each once
    assert before_retry <= reused and not computed & before_retry, (computed, reused, before_retry)
    assert computed | reused == {f"synth{i:02d}" for i in range(SEQUENCES)} and computed, (computed, reused)
    assert not computed & reused

    # an uninterrupted evaluation of the same checkpoint (one process, a fresh cache) scores the same
    vitolaunch(home, "sweep", str(_eval_spec(tmp_path, "it-davis-whole", checkpoint, root, ucf, tmp_path / "fresh", "local")))
    (row,) = wait_until(home, "it-davis-whole", all_ended, timeout=420, what="the uninterrupted evaluation")
    whole = next(r for r in trial_runs(home) if r.data.tags["vitolaunch.sweep"] == "it-davis-whole")
    assert _results(home, whole)["sequences"]["reused"] == []
    for key in ("jf", "j_mean", "f_mean", "j_recall", "j_decay", "f_recall", "f_decay", "jf_no_motion",
                "sequences_scored", "objects_scored"):
        assert done.data.metrics[f"eval/davis/{key}"] == whole.data.metrics[f"eval/davis/{key}"], key
    # UCF-101, after DAVIS in the same job: its clips over both ranks (2 SLURM tasks) score as one process does
    assert done.data.metrics["eval/ucf101/clips_scored"] == whole.data.metrics["eval/ucf101/clips_scored"] > 0
    assert done.data.metrics["eval/ucf101/linear_top1"] == whole.data.metrics["eval/ucf101/linear_top1"]
