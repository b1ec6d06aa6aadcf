"""Errors in the order a user can act on them, through the real CLI on the loopback cluster (2 nodes; partition
`short` has MaxTime 10): the cluster's refusal comes before the batch split it makes moot, and names the
spec's file, line and key like every other spec error. Nothing is recorded or queued."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from tests.integration.local_sweeps import vitolaunch, write_spec


def _slurm_spec(folder: Path, name: str, **resources) -> tuple[Path, dict[str, int]]:
    """A 2-trial slurm spec whose batch (7) splits over no rank count but 1 and 7; the line of each resource key."""
    path = write_spec(folder, name, {"loss.temperature": [0.1, 0.2]}, tasks_per_node=1, data={"batch_size": 7})
    spec = yaml.safe_load(path.read_text())
    spec["resources"] = {"cluster": "slurm", "tasks_per_node": 1, "cpus_per_task": 1, "mem_gb": 1,
                         "timeout_min": 5, **resources}
    text = yaml.safe_dump(spec, sort_keys=False)
    path.write_text(text)
    lines = {}
    in_resources = False
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.startswith(" "):
            in_resources = line.startswith("resources:")
        elif in_resources:
            lines[line.strip().split(":")[0]] = number
    return path, lines


def _nothing_queued(name: str) -> None:
    out = subprocess.run(["squeue", "-h", "-n", name, "-o", "%i"], capture_output=True, text=True, timeout=30).stdout
    assert out.strip() == ""


@pytest.mark.timeout(300)
def test_too_many_nodes_is_reported_first_and_located(slurm_cluster, tmp_path):
    home = tmp_path / "home"
    path, lines = _slurm_spec(tmp_path, "errs-nodes", nodes=99)
    for dry in ([], ["--dry-run"]):
        result = vitolaunch(home, "sweep", str(path), *dry, check=False)
        assert result.returncode == 2, result.stdout + result.stderr
        assert f"{path}:{lines['nodes']}: key 'resources.nodes':" in result.stderr, result.stderr
        assert "has 2 node(s)" in result.stderr and "batch_size" not in result.stderr, result.stderr
    _nothing_queued("errs-nodes")

    # Fixing the nodes (here by -o) leaves the batch split: now that is what is said, and where.
    result = vitolaunch(home, "sweep", str(path), "-o", "resources.nodes=2", check=False)
    assert result.returncode == 2 and "key 'data.batch_size'" in result.stderr and "over 2 ranks" in result.stderr, result.stderr

    # An override at fault is named as the override.
    result = vitolaunch(home, "sweep", str(path), "-o", "resources.nodes=3", check=False)
    assert result.returncode == 2, result.stderr
    assert f"{path} (-o resources.nodes=3): key 'resources.nodes':" in result.stderr, result.stderr
    _nothing_queued("errs-nodes")
    # no run was recorded: a store, if the refused sweeps made one, holds no sweep
    if (home / "mlflow.db").exists():
        assert "no sweeps" in vitolaunch(home, "status").stdout


@pytest.mark.timeout(300)
def test_partition_and_time_limit_refusals_are_located(slurm_cluster, tmp_path):
    home = tmp_path / "home"
    path, lines = _slurm_spec(tmp_path, "errs-time", partition="short", nodes=1, timeout_min=20)
    result = vitolaunch(home, "sweep", str(path), check=False)
    assert result.returncode == 2
    assert f"{path}:{lines['timeout_min']}: key 'resources.timeout_min': " in result.stderr, result.stderr
    assert "MaxTime" in result.stderr and "batch_size" not in result.stderr

    path, lines = _slurm_spec(tmp_path, "errs-part", partition="gpu")
    result = vitolaunch(home, "sweep", str(path), "--dry-run", check=False)
    assert result.returncode == 2
    assert f"{path}:{lines['partition']}: key 'resources.partition': " in result.stderr, result.stderr
    assert "partitions: debug, short" in result.stderr
    _nothing_queued("errs-time")


@pytest.mark.timeout(300)
def test_account_and_qos_refusals_are_located_like_every_other_resource_error(slurm_cluster, tmp_path):
    """The account/QOS refusal carried no origin (`error: resources.account 'x' is not an account ...`): it now
    names the spec line, the `-o` override, or the cluster profile's line that gave the value."""
    home = tmp_path / "home"
    path, lines = _slurm_spec(tmp_path, "errs-account", nodes=1, account="vitolaunch-other")
    result = vitolaunch(home, "sweep", str(path), "--dry-run", check=False)
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"{path}:{lines['account']}: key 'resources.account': resources.account 'vitolaunch-other' is not an " \
           "account user" in result.stderr, result.stderr
    assert "nothing was submitted" in result.stderr

    result = vitolaunch(home, "sweep", str(path), "-o", "resources.account=nosuch", check=False)
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"{path} (-o resources.account=nosuch): key 'resources.account':" in result.stderr, result.stderr

    # A value the cluster profile gave is located at the profile's line.
    profiles = tmp_path / "clusters.yaml"
    profiles.write_text("default: site\nprofiles:\n  site:\n    account: root\n    qos: express\n")
    path, lines = _slurm_spec(tmp_path, "errs-qos", nodes=1)
    result = vitolaunch(home, "sweep", str(path), "--dry-run", check=False, env={"VITOLAUNCH_CLUSTERS": str(profiles)})
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"{profiles}:5: key 'resources.qos': resources.qos 'express' is not a QOS user" in result.stderr, result.stderr
    _nothing_queued("errs-account")
    _nothing_queued("errs-qos")
