"""Checkpoints in real S3 (SeaweedFS) and metrics on a real MLflow server, including their outages.

Started by scripts/services-up.sh; skipped with a reason when absent, failed under CI.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from tests.integration.local_sweeps import all_ended, status_rows, vitolaunch, wait_until, write_spec
from tests.integration.services import remove_tree, s3_filesystem, services_env
from vitolaunch.results.mlflow_ui import runs_page

REPO = Path(__file__).resolve().parents[2]


def _services_script(name: str, which: str) -> None:
    subprocess.run(["bash", str(REPO / "scripts" / name), which], check=True, capture_output=True, timeout=180)


@pytest.fixture
def s3_env(monkeypatch):
    env = services_env(s3=True, mlflow=False)
    prefix = f"{env['VITOLAUNCH_TEST_S3_ROOT']}/tests-{uuid.uuid4().hex[:8]}"
    job_env = {k: env[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL_S3")}
    # The processes of this test (and the jobs they start) see the same credentials.
    for key, value in job_env.items():
        monkeypatch.setenv(key, value)
    yield env, prefix, job_env
    remove_tree(env, prefix)


def _trial_tags(home: Path, tracking_uri: str | None = None):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri or f"sqlite:///{home / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tests")
    (trial,) = client.search_runs([experiment.experiment_id], "tags.`vitolaunch.kind` = 'trial'")
    return client, trial


# -- the store alone, against real S3 ----------------------------------------------------------------
def _save_step(store, tmp_path: Path, step: int, commit: bool = True) -> None:
    local = tmp_path / f"local_{step}"
    local.mkdir()
    (local / "shard_0.pt").write_bytes(os.urandom(300_000))
    (local / "shard_1.pt").write_bytes(os.urandom(200_000))
    files = store.upload(step, local)
    if commit:
        store.commit(step, files)


@pytest.mark.timeout(120)
def test_half_uploaded_step_is_ignored_and_a_corrupt_shard_falls_back(s3_env, tmp_path, caplog):
    from vito.checkpoint import CheckpointStore, step_name

    env, prefix, _ = s3_env
    store = CheckpointStore(f"{prefix}/store")
    for step in (10, 20):
        _save_step(store, tmp_path, step)
    _save_step(store, tmp_path, 30, commit=False)  # killed between shards and marker

    restored = store.restore_newest(tmp_path / "r1")
    assert restored is not None and restored[0] == 20
    assert f"ignoring {prefix}/store/{step_name(30)}" in caplog.text
    assert store.latest_pointer() == 20

    fs = s3_filesystem(env)
    shard = f"{prefix}/store/{step_name(20)}/shard_0.pt".removeprefix("s3://")
    fs.pipe_file(shard, os.urandom(300_000))  # same size, other bytes
    caplog.clear()
    restored = store.restore_newest(tmp_path / "r2")
    assert restored is not None and restored[0] == 10
    assert "fails its checksum" in caplog.text and "falling back" in caplog.text


@pytest.mark.timeout(60)
def test_wrong_credentials_give_one_clear_error_naming_endpoint_and_bucket(s3_env, tmp_path):
    env, prefix, job_env = s3_env
    spec = write_spec(tmp_path, "badkeys", {"loss.temperature": [0.1]}, storage={"checkpoint_root": prefix})
    wrong = {**job_env, "AWS_SECRET_ACCESS_KEY": "not-the-secret-0000000000000000000000000"}
    result = vitolaunch(tmp_path / "home", "sweep", str(spec), env=wrong, check=False)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "refused the credentials" in result.stderr
    assert "bucket 'vitolaunch'" in result.stderr and env["AWS_ENDPOINT_URL_S3"] in result.stderr
    assert "Traceback" not in result.stderr
    assert wrong["AWS_SECRET_ACCESS_KEY"] not in result.stderr + result.stdout


@pytest.mark.timeout(900)
def test_two_rank_trial_killed_and_resumed_from_s3_matches_an_uninterrupted_run(s3_env, tmp_path):
    import torch

    from tests.checkpoints import final_weights
    from vito.checkpoint import CheckpointStore

    _, prefix, job_env = s3_env
    train = {"steps": 80, "log_every": 2}
    reference, interrupted = tmp_path / "reference", tmp_path / "interrupted"
    grid = {"loss.temperature": [0.2]}
    vitolaunch(reference, "sweep", str(write_spec(tmp_path / "a", "s3resume", grid, train=train)))
    spec = write_spec(tmp_path / "b", "s3resume", grid, train=train, storage={"checkpoint_root": prefix})
    vitolaunch(interrupted, "sweep", str(spec), env=job_env)
    (row,) = status_rows(interrupted, "s3resume")
    client, trial = _trial_tags(interrupted)
    uri = trial.data.tags["vitolaunch.checkpoint_uri"]
    assert uri.startswith("s3://")
    store = CheckpointStore(uri)

    deadline = time.monotonic() + 300
    while not [s for s in store.committed_steps() if s >= 8]:
        assert time.monotonic() < deadline, "no checkpoint committed to S3 in time"
        time.sleep(0.3)
    os.killpg(int(row["job_id"]), signal.SIGKILL)
    killed_at = store.committed_steps()[-1]
    assert killed_at < 80

    wait_until(interrupted, "s3resume", lambda rows: rows[0]["state"] == "INTERRUPTED", 60, "INTERRUPTED")
    vitolaunch(interrupted, "resume", row["run_id"], env=job_env)
    for home in (reference, interrupted):
        (done,) = wait_until(home, "s3resume", all_ended, 600, "the trial to end")
        assert done["state"] == "COMPLETED", done

    expected = final_weights(_trial_tags(reference)[1].data.tags["vitolaunch.checkpoint_uri"], tmp_path / "sa")
    resumed = final_weights(uri, tmp_path / "sb")
    assert [k for k in expected if not torch.equal(expected[k], resumed[k])] == []
    _, trial = _trial_tags(interrupted)
    assert trial.data.tags["vito.resumed_from_step"] == str(killed_at)
    assert {m.step for m in client.get_metric_history(trial.info.run_id, "train/loss")} == set(range(2, 81, 2))


@pytest.mark.timeout(900)
def test_s3_outage_during_saves_loses_no_committed_step_and_the_run_completes(s3_env, tmp_path):
    from vito.checkpoint import CheckpointStore

    _, prefix, job_env = s3_env
    home = tmp_path / "home"
    spec = write_spec(tmp_path, "s3outage", {"loss.temperature": [0.2]}, tasks_per_node=1,
                      storage={"checkpoint_root": prefix}, train={"steps": 60, "log_every": 2},
                      checkpoint={"every_steps": 3, "keep_last": 50})
    vitolaunch(home, "sweep", str(spec), env=job_env)
    _, trial = _trial_tags(home)
    store = CheckpointStore(trial.data.tags["vitolaunch.checkpoint_uri"])
    deadline = time.monotonic() + 300
    while not store.committed_steps():
        assert time.monotonic() < deadline, "no checkpoint before the outage"
        time.sleep(0.3)
    before_outage = store.committed_steps()

    _services_script("services-down.sh", "s3")
    try:
        time.sleep(8)
    finally:
        _services_script("services-up.sh", "s3")

    (done,) = wait_until(home, "s3outage", all_ended, 600, "the trial to end")
    assert done["state"] == "COMPLETED", done
    committed = store.committed_steps()
    assert set(before_outage) <= set(committed), "a committed step was lost"
    assert committed[-1] == 60 and store.latest_pointer() == 60
    for step in committed:  # every committed step is complete and verifies
        store.download(step, tmp_path / "verify" / str(step))
    log_text = "".join(p.read_text() for p in (home / "logs").rglob("*_0_log.out"))
    assert "retry" in log_text or "skipped" in log_text, "the outage left no trace in the log"


# -- a sweep against the MLflow server, with an outage; then a scan for leaked secrets --------------
@pytest.fixture(scope="module")
def server_sweep(tmp_path_factory):
    env = services_env(s3=True, mlflow=True)
    tmp_path = tmp_path_factory.mktemp("server")
    prefix = f"{env['VITOLAUNCH_TEST_S3_ROOT']}/tests-{uuid.uuid4().hex[:8]}"
    uri = env["VITOLAUNCH_TEST_MLFLOW_URI"]
    job_env = {k: env[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL_S3")}
    job_env["MLFLOW_TRACKING_URI"] = uri
    experiment = f"tests-{uuid.uuid4().hex[:6]}"
    sweep = f"serversweep-{uuid.uuid4().hex[:6]}"  # the server outlives test runs: names must not repeat
    home = tmp_path / "home"
    spec = write_spec(tmp_path, sweep, {"loss.temperature": [0.1, 0.2]}, storage={"checkpoint_root": prefix},
                      tracking={"uri": uri, "experiment": experiment}, train={"steps": 40, "log_every": 2})
    # The spec names the server; the shell that submits does not (what the printed commands must carry).
    submitted = vitolaunch(home, "sweep", str(spec), env={k: v for k, v in job_env.items() if k != "MLFLOW_TRACKING_URI"})

    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp_id = client.get_experiment_by_name(experiment).experiment_id
    deadline = time.monotonic() + 300
    while True:  # take the server down while both trials are logging
        runs = client.search_runs([exp_id], "tags.`vitolaunch.kind` = 'trial'")
        if runs and all(r.data.metrics.get("train/step", 0) >= 6 for r in runs):
            break
        assert time.monotonic() < deadline, "trials never started logging"
        time.sleep(0.5)
    _services_script("services-down.sh", "mlflow")
    try:
        outage = vitolaunch(home, "status", env=job_env, check=False)
        time.sleep(10)
    finally:
        _services_script("services-up.sh", "mlflow")
    rows = wait_until(home, sweep, all_ended, 600, "both trials to end", env=job_env)
    yield {"env": env, "client": client, "experiment_id": exp_id, "rows": rows, "home": home,
           "outage_status": outage, "tmp": tmp_path, "sweep_output": submitted.stdout, "sweep": sweep, "uri": uri}
    remove_tree(env, prefix)


@pytest.mark.timeout(1200)
def test_mlflow_server_outage_mid_run_loses_no_metric(server_sweep):
    assert [r["state"] for r in server_sweep["rows"]] == ["COMPLETED", "COMPLETED"]
    outage = server_sweep["outage_status"]
    assert outage.returncode == 2 and "unreachable" in outage.stderr and "Traceback" not in outage.stderr
    client = server_sweep["client"]
    for run in client.search_runs([server_sweep["experiment_id"]], "tags.`vitolaunch.kind` = 'trial'"):
        assert run.info.status == "FINISHED"
        steps = {m.step for m in client.get_metric_history(run.info.run_id, "train/loss")}
        assert steps == set(range(2, 41, 2)), sorted(steps)
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"config.json", "loss_curve.png", "eval"} <= artifacts, artifacts


@pytest.mark.timeout(600)
def test_no_secret_reaches_mlflow_logs_or_job_files(server_sweep):
    env, client = server_sweep["env"], server_sweep["client"]
    secrets = {env["AWS_SECRET_ACCESS_KEY"].encode(), env["AWS_ACCESS_KEY_ID"].encode()}

    def leaks(blob: bytes) -> bool:
        return any(secret in blob for secret in secrets)

    runs = client.search_runs([server_sweep["experiment_id"]])
    assert len(runs) == 3  # the sweep and its two trials
    for run in runs:
        for value in [*run.data.params.values(), *run.data.tags.values(), *run.data.params, *run.data.tags]:
            assert not leaks(str(value).encode()), f"secret in run {run.info.run_id}"
        local = Path(client.download_artifacts(run.info.run_id, "", str(server_sweep["tmp"] / run.info.run_id)))
        for path in [p for p in local.rglob("*") if p.is_file()]:
            assert not leaks(path.read_bytes()), f"secret in artifact {path}"
    scanned = 0
    for path in (server_sweep["home"]).rglob("*"):  # logs, submitit pickles, scratch
        if path.is_file() and path.stat().st_size < 50_000_000:
            scanned += 1
            assert not leaks(path.read_bytes()), f"secret in {path}"
    assert scanned > 4


@pytest.mark.timeout(300)
def test_commands_printed_after_a_sweep_on_a_server_work_verbatim(server_sweep):
    """The spec named the server (tracking.uri); the shell that runs the printed lines knows nothing of it."""
    lines = server_sweep["sweep_output"].splitlines()
    watch = next(line for line in lines if line.startswith("watch:")).removeprefix("watch:").strip()
    compare = next(line for line in lines if line.startswith("compare:")).removeprefix("compare:").strip()
    assert compare == f"open {runs_page(server_sweep['uri'], server_sweep['experiment_id'], server_sweep['sweep'])}"
    assert watch.startswith("vitolaunch status ") and f"--tracking-uri {server_sweep['uri']}" in watch
    # Verbatim, in a shell without MLFLOW_TRACKING_URI (the trials have ended, so --watch draws once and returns).
    result = vitolaunch(server_sweep["home"], *shlex.split(watch)[1:], timeout=60)
    assert server_sweep["sweep"] in result.stdout and result.stdout.count("COMPLETED") == 2
