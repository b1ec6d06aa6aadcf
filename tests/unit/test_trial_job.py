"""A trial job does what its `task` field says, whatever its config holds."""

from __future__ import annotations

import pytest

from vito.config import VitoConfig
from vito.train import RunContext
from vitolaunch.job.trial import TrialJob


def _job(task: str, tmp_path, config: dict | None = None) -> TrialJob:
    return TrialJob(run_id="r1", tracking_uri="", config=config or {}, checkpoint_uri=str(tmp_path / "ckpt"),
                    data_root=str(tmp_path / "data"), scratch_root=str(tmp_path / "scratch"), task=task)


def test_an_unknown_task_is_refused(tmp_path) -> None:
    with pytest.raises(ValueError, match="TrialJob.task is 'train'"):
        _job("train", tmp_path)


def test_the_task_field_not_the_config_chooses_what_runs(tmp_path) -> None:
    from vito.evaluate_task import run as evaluate
    from vito.train import train

    names_a_checkpoint = {"eval": {"checkpoint": str(tmp_path / "pretrained")}}
    assert _job("pretrain", tmp_path, names_a_checkpoint).entry_point() is train
    assert _job("evaluate", tmp_path).entry_point() is evaluate
    # The evaluation refuses a config that names nothing to evaluate, rather than train it.
    context = RunContext(checkpoint_uri=str(tmp_path / "ckpt"), data_root=str(tmp_path / "data"),
                         scratch_dir=str(tmp_path / "scratch"))
    with pytest.raises(ValueError, match="an evaluation trial needs eval.checkpoint"):
        _job("evaluate", tmp_path).entry_point()(VitoConfig(), context)


def test_an_unresolvable_master_is_loopback_only_for_a_one_node_job(monkeypatch):
    from vitolaunch.job.trial import master_address

    assert master_address("localhost", 4) == "localhost"
    assert master_address("no-such-node.invalid", 1) == "127.0.0.1"
    monkeypatch.setenv("SLURM_JOB_NODELIST", "no-such-node[1-4]")
    with pytest.raises(RuntimeError, match=r"'no-such-node.invalid' \(SLURM_JOB_NODELIST=no-such-node\[1-4\]\).*4 nodes"):
        master_address("no-such-node.invalid", 4)


def test_scratch_is_node_local_unless_configured(monkeypatch, tmp_path):
    from vitolaunch.job.trial import node_scratch

    monkeypatch.setenv("SLURM_TMPDIR", str(tmp_path / "slurm"))
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    assert node_scratch(None) == str(tmp_path / "slurm" / "vitolaunch-scratch")
    monkeypatch.delenv("SLURM_TMPDIR")
    assert node_scratch(None) == str(tmp_path / "tmp" / "vitolaunch-scratch")
    monkeypatch.setenv("LOCAL_DISK", "/local")
    assert node_scratch("$LOCAL_DISK/me") == "/local/me"  # expanded on the node, not where vitolaunch ran


def test_the_rendezvous_port_is_per_job_and_below_the_ephemeral_range():
    from vitolaunch.job.trial import rendezvous_port

    ports = {rendezvous_port(f"549_{task}") for task in range(200)}
    assert all(20000 <= port < 32768 for port in ports)  # Linux hands out 32768-60999 to outgoing connections
    assert len(ports) > 190  # tasks of one array (one node on the loopback cluster) rarely share a port
    assert rendezvous_port("549_1") == rendezvous_port("549_1")  # every rank and a requeued attempt agree


def test_a_run_that_goes_on_loses_the_tags_of_the_stop_it_came_back_from(tmp_path, monkeypatch) -> None:
    """Terminated, requeued, then completed: the run kept `vitolaunch.terminated_at_step` (and a stale
    `stopped_at_step` would make a later cancel read INTERRUPTED). A job that starts clears them."""
    from types import SimpleNamespace

    from mlflow.tracking import MlflowClient

    from vitolaunch.tracking.records import TAG_NOT_REQUEUED, TAG_STOPPED_AT_STEP, TAG_TERMINATED_AT_STEP

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    run = client.create_run(client.create_experiment("t"), tags={
        TAG_TERMINATED_AT_STEP: "40", TAG_STOPPED_AT_STEP: "20", TAG_NOT_REQUEUED: "no retries left", "keep": "me"})
    job = TrialJob(run_id=run.info.run_id, tracking_uri=uri, config={}, checkpoint_uri=str(tmp_path / "ckpt"),
                   data_root=str(tmp_path / "data"), scratch_root=str(tmp_path / "scratch"), task="pretrain")
    monkeypatch.setattr(TrialJob, "_export_distributed_environment", lambda self: 0)
    monkeypatch.setattr(TrialJob, "entry_point",
                        lambda self: lambda cfg, ctx: SimpleNamespace(completed=True, step=80, evaluation={}))
    monkeypatch.setattr("vitolaunch.results.sweep_summary.after_trial", lambda *a, **k: None)
    assert job()["completed"]
    after = client.get_run(run.info.run_id)
    assert after.info.status == "FINISHED"
    stale = {TAG_TERMINATED_AT_STEP, TAG_STOPPED_AT_STEP, TAG_NOT_REQUEUED} & set(after.data.tags)
    assert not stale, after.data.tags
    assert after.data.tags["keep"] == "me"
