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
