"""Evaluation chained to pretraining, end to end: one `vitolaunch sweep` of a pretraining spec with `then:`
queues both sweeps; each evaluation waits for its pretraining trial and evaluates its final step, or ends
CANCELLED with the reason tagged when that trial never finishes. Local backend here; on the loopback SLURM
cluster the evaluation array task also waits through `--dependency=afterok:<array>_<task>`."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from tests.integration.local_sweeps import all_ended, vitolaunch, wait_until, write_spec

EVAL_BASE = {"eval": {"train_clips": 12, "test_clips": 8, "frames_per_clip": 2, "probe_epochs": 10, "severities": [3],
                      "corruptions": ["gaussian_noise"], "deformation_motion_scales": [2.0], "propagation_clips": 2,
                      "propagation_size": 64}}


def _chained_specs(folder: Path, name: str, temperatures: list[float], resources: dict) -> Path:
    evaluation = {"name": f"{name}-eval", "task": "evaluate", "evaluate": {"runs": [name]}, "base": EVAL_BASE,
                  "resources": resources}
    (folder / "evals").mkdir(parents=True, exist_ok=True)
    (folder / "evals" / "eval.yaml").write_text(yaml.safe_dump(evaluation, sort_keys=False))
    path = write_spec(folder, name, {"loss.temperature": temperatures}, tasks_per_node=1)
    spec = yaml.safe_load(path.read_text())
    spec["resources"] = {**spec["resources"], **resources}
    spec["then"] = "evals/eval.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _trials(home: Path, sweep: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{home / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tests")
    return client.search_runs([experiment.experiment_id], f"tags.`vitolaunch.sweep` = '{sweep}' and tags.`vitolaunch.kind` = 'trial'")


@pytest.mark.timeout(700)
def test_one_sweep_queues_pretraining_and_its_evaluations_which_wait_for_their_targets(tmp_path):
    home = tmp_path / "home"
    spec = _chained_specs(tmp_path, "chain", [0.1, 0.2], {"cluster": "local", "tasks_per_node": 1, "array_parallelism": 2})
    pretraining = yaml.safe_load(spec.read_text())
    pretraining["resources"]["array_parallelism"] = 1  # 0.2 waits for 0.1's slot: cancelled before it can finish
    spec.write_text(yaml.safe_dump(pretraining, sort_keys=False))
    out = vitolaunch(home, "sweep", str(spec)).stdout
    assert "sweep chain " in out and "sweep chain-eval " in out and out.count("2 submitted") == 2, out

    pre = {float(r.data.params["loss.temperature"]): r for r in _trials(home, "chain")}
    evaluations = {r.data.tags["vitolaunch.pretrain_run_id"]: r for r in _trials(home, "chain-eval")}
    assert set(evaluations) == {r.info.run_id for r in pre.values()}
    for run in evaluations.values():  # the final step: the same trial key as an evaluation after the end
        assert run.data.tags["vitolaunch.waits_for_run"] == run.data.tags["vitolaunch.pretrain_run_id"]
    vitolaunch(home, "cancel", pre[0.2].info.run_id)  # this target never finishes

    rows = wait_until(home, "chain-eval", all_ended, timeout=600, what="both evaluations to end")
    by_target = {r.data.tags["vitolaunch.pretrain_run_id"]: r for r in _trials(home, "chain-eval")}
    done, orphan = by_target[pre[0.1].info.run_id], by_target[pre[0.2].info.run_id]
    states = {r["run_id"]: r["state"] for r in rows}
    assert states[done.info.run_id] == "COMPLETED" and done.data.tags["vitolaunch.evaluated_step"] == "12"
    assert states[orphan.info.run_id] == "CANCELLED", (rows, orphan.data.tags)
    reason = orphan.data.tags["vitolaunch.target_ended"]
    assert pre[0.2].info.run_id in reason and "cancelled" in reason, reason
    assert "eval/linear_probe_acc" not in orphan.data.metrics
    # Swept again once the pretraining has ended, the evaluation spec resolves to the same trial keys.
    evaluation = yaml.safe_load((tmp_path / "evals" / "eval.yaml").read_text())
    evaluation["evaluate"]["runs"] = [pre[0.1].info.run_id]
    (tmp_path / "evals" / "again.yaml").write_text(yaml.safe_dump(evaluation))
    again = vitolaunch(home, "sweep", str(tmp_path / "evals" / "again.yaml")).stdout
    assert "1 finished" in again and "submitted" not in again, again


def test_then_must_name_an_evaluate_spec_of_this_sweep_and_is_checked_before_anything_is_queued(tmp_path):
    home = tmp_path / "home"
    spec = _chained_specs(tmp_path, "chain", [0.1], {"cluster": "local"})
    evaluation = yaml.safe_load((tmp_path / "evals" / "eval.yaml").read_text())
    evaluation["evaluate"]["runs"] = ["some-other-sweep"]
    (tmp_path / "evals" / "eval.yaml").write_text(yaml.safe_dump(evaluation))
    result = vitolaunch(home, "sweep", str(spec), check=False)
    assert result.returncode == 2 and "key 'then'" in result.stderr and "evaluate.runs names this sweep" in result.stderr
    assert not (home / "mlflow.db").exists(), "nothing may be recorded before the spec is refused"


@pytest.mark.timeout(600)
def test_on_slurm_the_evaluation_array_task_depends_on_its_pretraining_task(tmp_path, slurm_cluster, monkeypatch):
    monkeypatch.setenv("GLOO_SOCKET_IFNAME", "lo")
    home = tmp_path / "home"
    resources = {"cluster": "slurm", "nodes": 1, "tasks_per_node": 1, "cpus_per_task": 1, "mem_gb": 1, "timeout_min": 20}
    spec = _chained_specs(tmp_path, "it-chain", [0.1], resources)
    try:
        vitolaunch(home, "sweep", str(spec))
        (pre,) = _trials(home, "it-chain")
        (evaluation,) = _trials(home, "it-chain-eval")
        job = evaluation.data.tags["vitolaunch.job_id"]
        shown = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True, timeout=30).stdout
        assert f"Dependency=afterok:{pre.data.tags['vitolaunch.job_id']}" in shown or "Dependency=(null)" in shown, shown
        script = next((home / "logs" / "it-chain-eval").glob("array_*.sbatch.sh")).read_text()
        assert f"--dependency=afterok:{pre.data.tags['vitolaunch.job_id']}" in script and "--kill-on-invalid-dep=yes" in script
        (row,) = wait_until(home, "it-chain-eval", all_ended, timeout=480, what="the evaluation to end")
        assert row["state"] == "COMPLETED", row
        (evaluation,) = _trials(home, "it-chain-eval")
        assert evaluation.data.tags["vitolaunch.evaluated_step"] == "12"
        times = {}
        for task in (pre.data.tags["vitolaunch.job_id"], job):
            out = subprocess.run(["sacct", "-n", "-X", "-P", "-o", "Start,End", "-j", task], capture_output=True, text=True,
                                 timeout=30).stdout.split()
            times[task] = out[0].split("|")
        assert times[job][0] >= times[pre.data.tags["vitolaunch.job_id"]][1], f"evaluation started before its target ended: {times}"
    finally:
        for name in ("it-chain", "it-chain-eval"):
            subprocess.run(["scancel", "--name", name], capture_output=True, timeout=30)
