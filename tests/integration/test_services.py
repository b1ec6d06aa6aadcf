"""The real local services answer like the real thing: SeaweedFS as S3 (SigV4 keys enforced) and an MLflow
tracking server whose artifacts land in the `mlflow` bucket.

Start them with scripts/services-up.sh; without them these tests skip (fail under CI).
"""

from __future__ import annotations

import os
import uuid

import pytest

from tests.integration import services

MiB = 2**20


@pytest.fixture
def s3_env():
    return services.services_env(s3=True, mlflow=False)


@pytest.fixture
def all_env():
    return services.services_env(s3=True, mlflow=True)


@pytest.fixture
def s3_prefix(s3_env):
    """A fresh prefix under VITOLAUNCH_TEST_S3_ROOT, removed afterwards."""
    root = s3_env["VITOLAUNCH_TEST_S3_ROOT"].rstrip("/")
    prefix = f"{root}/_integration-tests/test_services-{uuid.uuid4().hex[:12]}"
    yield prefix
    services.remove_tree(s3_env, prefix)


@pytest.mark.timeout(60)
def test_s3_put_get_round_trip_is_byte_identical(s3_env, s3_prefix, tmp_path):
    fs = services.s3_filesystem(s3_env)
    data = os.urandom(6 * MiB + 12345)
    src = tmp_path / "src.bin"
    src.write_bytes(data)

    # put/get of a local file
    fs.put(str(src), f"{s3_prefix}/put.bin")
    fs.get(f"{s3_prefix}/put.bin", str(tmp_path / "got.bin"))
    assert (tmp_path / "got.bin").read_bytes() == data

    # a multipart upload (5 MiB parts) through a file object, read back whole and by range
    with fs.open(f"{s3_prefix}/multipart.bin", "wb", block_size=5 * MiB) as f:
        for i in range(0, len(data), MiB):
            f.write(data[i : i + MiB])
    info = fs.info(f"{s3_prefix}/multipart.bin")
    assert info["size"] == len(data)
    assert "-" in info["ETag"], f"expected a multipart ETag, got {info['ETag']}"
    assert fs.cat(f"{s3_prefix}/multipart.bin") == data
    lo, hi = 5 * MiB - 100, 5 * MiB + 100  # across the part boundary
    assert fs.cat_file(f"{s3_prefix}/multipart.bin", start=lo, end=hi) == data[lo:hi]

    assert sorted(p.rsplit("/", 1)[-1] for p in fs.ls(s3_prefix)) == ["multipart.bin", "put.bin"]


@pytest.mark.timeout(60)
def test_s3_rejects_a_wrong_secret_key(s3_env, s3_prefix):
    good = services.s3_filesystem(s3_env)
    good.pipe(f"{s3_prefix}/private.txt", b"only for the right key")

    secret = s3_env["AWS_SECRET_ACCESS_KEY"]
    wrong = secret[:-1] + ("A" if secret[-1] != "A" else "B")
    bad = services.s3_filesystem(s3_env, secret=wrong)
    with pytest.raises(PermissionError):
        bad.cat(f"{s3_prefix}/private.txt")
    with pytest.raises(PermissionError):
        bad.pipe(f"{s3_prefix}/intruder.txt", b"should not land")
    with pytest.raises(PermissionError):
        bad.ls(s3_prefix)
    unknown = services.s3_filesystem(s3_env, key="VLUNKNOWNACCESSKEY00")
    with pytest.raises(PermissionError):
        unknown.cat(f"{s3_prefix}/private.txt")

    # the rejected write did not happen; the right key still works
    assert [p.rsplit("/", 1)[-1] for p in good.ls(s3_prefix)] == ["private.txt"]
    assert good.cat(f"{s3_prefix}/private.txt") == b"only for the right key"


@pytest.mark.timeout(120)
def test_mlflow_server_tracks_a_run_with_artifacts_in_seaweedfs(all_env, tmp_path):
    from mlflow import MlflowClient
    from mlflow.entities import RunStatus

    client = MlflowClient(tracking_uri=all_env["VITOLAUNCH_TEST_MLFLOW_URI"])
    fs = services.s3_filesystem(all_env)
    bucket = all_env.get("VITOLAUNCH_TEST_MLFLOW_ARTIFACTS", "s3://mlflow").removeprefix("s3://").strip("/")

    exp_id = client.create_experiment(f"integration-test_services-{uuid.uuid4().hex[:12]}")
    try:
        run_id = client.create_run(exp_id, run_name="services-check", tags={"vitolaunch.test": "services"}).info.run_id
        for step, loss in enumerate([0.9, 0.5, 0.25]):
            client.log_metric(run_id, "loss", loss, step=step)
        client.log_param(run_id, "temperature", "0.1")
        payload = os.urandom(64 * 1024)
        (tmp_path / "probe.bin").write_bytes(payload)
        client.log_artifact(run_id, str(tmp_path / "probe.bin"), artifact_path="reports")
        client.set_terminated(run_id)

        # read everything back through the server
        run = client.get_run(run_id)
        assert run.info.status == RunStatus.to_string(RunStatus.FINISHED)
        assert run.info.experiment_id == exp_id
        assert run.data.metrics == {"loss": 0.25}
        assert run.data.params == {"temperature": "0.1"}
        assert run.data.tags["vitolaunch.test"] == "services"
        history = client.get_metric_history(run_id, "loss")
        assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == [(0, 0.9), (1, 0.5), (2, 0.25)]
        assert [a.path for a in client.list_artifacts(run_id, "reports")] == ["reports/probe.bin"]
        downloaded = client.download_artifacts(run_id, "reports/probe.bin", dst_path=str(tmp_path / "dl"))
        assert open(downloaded, "rb").read() == payload

        # the server proxied the artifact into the mlflow bucket on SeaweedFS
        keys = [k for k in fs.find(f"{bucket}/{exp_id}") if f"/{run_id}/" in k]
        assert [k for k in keys if k.endswith("/reports/probe.bin")], (
            f"artifact not found under s3://{bucket}/{exp_id}/ (found {keys})"
        )
        (key,) = [k for k in keys if k.endswith("/reports/probe.bin")]
        assert fs.cat(key) == payload
    finally:
        services.remove_tree(all_env, f"{bucket}/{exp_id}")
        client.delete_experiment(exp_id)
