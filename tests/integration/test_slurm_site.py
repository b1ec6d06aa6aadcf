"""Site settings on the real loopback cluster of scripts/slurm-up.sh, which enforces accounting as a site does
(AccountingStorageEnforce=associations,limits,qos): the test user may use account `vitolaunch` with QOS
`normal` or `express`, account `vitolaunch-other` exists without them, and node n2 has the feature `bigmem`.

Tiny jobs through the backend where no training is needed; one real trial through the CLI and a cluster
profile file for the account/QOS path. Without a cluster these tests skip, except under CI, where they fail.
"""

from __future__ import annotations

import functools
import json
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from tests.integration.local_sweeps import TINY_BASE, vitolaunch
from vitolaunch.tracking.records import TAG_JOB_ID

pytestmark = pytest.mark.usefixtures("slurm_cluster")

# What one rank reports about itself, run with the rank's own environment (stdlib only: the pickle must load
# in the job without this test module).
RANK_FACTS = ('printf "%s|%s|%s|%s|%s|%s\\n" "$SLURM_PROCID" "$SLURMD_NODENAME" "$SLURM_CPUS_PER_TASK" '
              '"$VITO_SITE_GREETING" "$VITO_SETUP_MARK" "$(nproc)"')


def _wait_done(backend, handles, timeout: float = 120) -> None:
    from vitolaunch.backends import SchedulerState

    deadline = time.monotonic() + timeout
    states = {}
    while time.monotonic() < deadline:
        states = backend.states(handles)
        if all(s is SchedulerState.COMPLETED for s in states.values()):
            return
        assert not any(s in (SchedulerState.FAILED, SchedulerState.CANCELLED) for s in states.values()), states
        time.sleep(1)
    raise AssertionError(f"jobs not completed after {timeout:.0f} s: {states}")


def _result(handle, rank: int):
    from submitit.core.utils import JobPaths, pickle_load

    outcome, value = pickle_load(JobPaths(handle.log_dir, handle.job_id, rank).result_pickle)
    assert outcome == "success", value
    return value


def _sacct(job: str, fields: str) -> list[str]:
    """The job's accounting fields; polled (sacct lags the controller by seconds)."""
    deadline = time.monotonic() + 40
    while True:
        out = subprocess.run(["sacct", "-n", "-X", "-P", "-j", job, "-o", f"JobID,{fields}"], capture_output=True,
                             text=True, timeout=30).stdout
        rows = [line.split("|") for line in out.splitlines() if line.split("|")[0] == job]
        if rows and all(rows[0][1:]):
            return rows[0][1:]
        assert time.monotonic() < deadline, f"sacct has no {fields} for {job}: {out!r}"
        time.sleep(0.5)


@pytest.mark.timeout(180)
def test_setup_and_env_reach_every_rank_of_a_two_node_job_and_srun_gives_each_its_cpus(tmp_path, cancel_on_exit):
    from vitolaunch.backends.slurm import SlurmBackend
    from vitolaunch.spec.resources import Resources

    cancel_on_exit("it-site-env")
    resources = Resources(
        nodes=2, tasks_per_node=1, cpus_per_task=2, mem_gb=0.5, timeout_min=5,
        setup=["export VITO_SETUP_MARK=set-by-setup-in-job-$SLURM_JOB_ID"],
        env={"VITO_SITE_GREETING": "hello from the site profile"},
    )
    backend = SlurmBackend()
    backend.check(resources)
    job = functools.partial(subprocess.check_output, ["bash", "-c", RANK_FACTS], text=True)
    (handle,) = backend.submit([job], ["it-site-env.000.abcdef12"], resources, tmp_path)
    _wait_done(backend, [handle])
    script = next(tmp_path.glob("array_*.sbatch.sh")).read_text()
    srun = next(line for line in script.splitlines() if line.startswith("srun "))
    assert "--cpus-per-task=2" in srun, srun
    array = handle.job_id.split("_")[0]
    ranks = sorted(_result(handle, rank).strip().split("|") for rank in (0, 1))
    assert [(r[0], r[1]) for r in ranks] == [("0", "n1"), ("1", "n2")], ranks
    for _rank, _node, cpus_per_task, greeting, mark, nproc in ranks:
        assert greeting == "hello from the site profile"
        assert mark == f"set-by-setup-in-job-{array}"  # the setup line ran in the batch script, before srun
        assert cpus_per_task == "2" and int(nproc) >= 1


@pytest.mark.timeout(180)
def test_a_constraint_lands_on_the_node_with_that_feature_and_an_unknown_one_is_refused(tmp_path, cancel_on_exit):
    from vitolaunch.backends.slurm import SlurmBackend
    from vitolaunch.errors import VitolaunchError
    from vitolaunch.spec.resources import Resources

    cancel_on_exit("it-site-feature")
    backend = SlurmBackend()
    with pytest.raises(VitolaunchError, match=r"names feature\(s\) gpu80g that no node of partition 'debug' has "
                                              r"\(features there: bigmem\)"):
        backend.check(Resources(constraint="bigmem&gpu80g", mem_gb=0.5, timeout_min=5))
    resources = Resources(constraint="bigmem", mem_gb=0.5, timeout_min=5)
    backend.check(resources)
    job = functools.partial(subprocess.check_output, ["bash", "-c", 'echo "$SLURMD_NODENAME"'], text=True)
    handles = backend.submit([job, job], ["it-site-feature.000.abcdef12", "it-site-feature.001.abcdef12"], resources,
                             tmp_path)
    _wait_done(backend, handles)
    for handle in handles:
        assert _result(handle, 0).strip() == "n2"
        assert _sacct(handle.job_id, "NodeList") == ["n2"]


def _profile(folder: Path, **settings) -> Path:
    path = folder / "clusters.yaml"
    # Jobs reach their peers over loopback here: a site's NCCL/GLOO interface is exactly what env is for.
    profile = {"mem_gb": 1, "env": {"GLOO_SOCKET_IFNAME": "lo", "VITO_DIST_TIMEOUT_S": "60"}, **settings}
    path.write_text(yaml.safe_dump({"default": "loopback", "profiles": {"loopback": profile}}))
    return path


def _spec(folder: Path, name: str) -> Path:
    base = json.loads(json.dumps(TINY_BASE))
    base["train"].update(steps=4, log_every=2)
    base["checkpoint"] = {"every_steps": 4, "keep_last": 1}
    base["eval"] = {"linear_probe": False}
    spec = {"name": name, "base": base, "parameters": {"loss.temperature": [0.1]},
            "resources": {"cluster": "slurm", "nodes": 1, "tasks_per_node": 1, "timeout_min": 10},
            "tracking": {"experiment": "tests"}}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _trial_runs(home: Path) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{home / 'mlflow.db'}")
    experiments = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(experiments, "tags.`vitolaunch.kind` = 'trial'") if experiments else []


@pytest.mark.timeout(300)
def test_a_wrong_account_or_qos_is_refused_before_queueing_and_the_right_ones_run(tmp_path, cancel_on_exit):
    home = tmp_path / "home"
    cancel_on_exit("it-site-account")
    spec = _spec(tmp_path, "it-site-account")
    cases = {
        "resources.account 'vitolaunch-other' is not an account user": {"account": "vitolaunch-other"},
        "resources.account 'nosuch' is not an account user": {"account": "nosuch"},
        "resources.qos 'express' is not a QOS user": {"account": "root", "qos": "express"},
    }
    for expected, settings in cases.items():
        clusters = {"VITOLAUNCH_CLUSTERS": str(_profile(tmp_path, **settings))}
        for extra in (("--dry-run",), ()):
            result = vitolaunch(home, "sweep", str(spec), *extra, check=False, env=clusters)
            assert result.returncode == 2, (settings, extra, result.stdout, result.stderr)
            assert expected in result.stderr and "nothing was submitted" in result.stderr, result.stderr
            assert "yours: root, vitolaunch" in result.stderr or "allowed: normal" in result.stderr, result.stderr
    queued = subprocess.run(["squeue", "-h", "--name", "it-site-account"], capture_output=True, text=True, timeout=30)
    assert queued.stdout.strip() == "", f"a refused sweep queued jobs: {queued.stdout}"
    assert not _trial_runs(home), "a refused sweep recorded trial runs"

    clusters = {"VITOLAUNCH_CLUSTERS": str(_profile(tmp_path, account="vitolaunch", qos="express"))}
    dry = vitolaunch(home, "sweep", str(spec), "--dry-run", env=clusters).stdout
    assert "#SBATCH --account=vitolaunch" in dry and "#SBATCH --qos=express" in dry, dry
    assert f'account = "vitolaunch"  ({tmp_path / "clusters.yaml"}:' in dry, dry
    vitolaunch(home, "sweep", str(spec), env=clusters)
    deadline = time.monotonic() + 240
    while True:
        (run,) = _trial_runs(home)
        if run.info.status in ("FINISHED", "FAILED", "KILLED"):
            break
        assert time.monotonic() < deadline, f"trial still {run.info.status} after 240 s"
        time.sleep(1)
    assert run.info.status == "FINISHED", run.data.tags
    job = run.data.tags[TAG_JOB_ID]
    assert _sacct(job, "Account,QOS") == ["vitolaunch", "express"]
