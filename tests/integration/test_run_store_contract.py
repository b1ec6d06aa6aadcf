"""The run-store contract: every method of `RunStore` (vitolaunch/tracking/store.py), which the launcher, the
sweep summary, cancel, resume and the job call, run against each transport and read back through MLflow's own
client. A transport that lacks a method, or writes something MLflow reads differently, fails here.

Transports: the standard-library sqlite writer, REST against the real MLflow server, MLflow's client against the
same server.
"""

from __future__ import annotations

import json
import math
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.integration import services
from vitolaunch.tracking.mlflow_store import Registry
from vitolaunch.tracking.records import CONFIG_ARTIFACT, KIND_SWEEP, TAG_KIND, TAG_PARENT
from vitolaunch.tracking.rest_store import RestRegistry
from vitolaunch.tracking.sqlite_store import SqliteRegistry
from vitolaunch.tracking.store import NewTrialRun, RunRecord, RunStore

TRANSPORTS = ["sqlite-stdlib", "rest", "mlflow-client"]
CONFIG = {"loss": {"temperature": 0.1}, "train": {"steps": 3}}

pytestmark = pytest.mark.timeout(240)


@dataclass
class Subject:
    store: RunStore
    client: MlflowClient  # MLflow's own reading of what the store wrote
    experiment: str
    sweep: RunRecord
    trials: list[str]


def _open(transport: str, tmp: Path) -> tuple[RunStore, MlflowClient]:
    if transport == "sqlite-stdlib":
        uri = f"sqlite:///{tmp / 'mlflow.db'}"
        Registry(uri, tmp / "artifacts").experiment_id("schema")  # MLflow creates the schema, as a first sweep does
        return SqliteRegistry(uri, tmp / "artifacts"), MlflowClient(uri)
    uri = services.services_env(s3=False, mlflow=True)["VITOLAUNCH_TEST_MLFLOW_URI"]
    store = RestRegistry(uri) if transport == "rest" else Registry(uri)
    return store, MlflowClient(uri)


@pytest.fixture(scope="module", params=TRANSPORTS)
def subject(request, tmp_path_factory) -> Subject:
    store, client = _open(request.param, tmp_path_factory.mktemp(request.param))
    experiment = store.experiment_id(f"contract-{request.param}-{uuid.uuid4().hex[:8]}")
    sweep = store.create_sweep(experiment, "contract", {"vitolaunch.spec_hash": "h"})
    trials = store.create_trials(sweep, [
        NewTrialRun(f"trial-{i}", {"loss.temperature": 0.1 * (i + 1)},
                    {"vitolaunch.sweep": "contract", "vitolaunch.trial_index": str(i), "vitolaunch.trial_key": f"k{i}"},
                    CONFIG) for i in range(3)])
    return Subject(store, client, experiment, sweep, trials)


def test_it_is_a_run_store(subject: Subject) -> None:
    assert isinstance(subject.store, RunStore)


def test_experiment_id_finds_or_creates_and_experiment_name(subject: Subject) -> None:
    store = subject.store
    assert store.experiment_id(subject.client.get_experiment(subject.experiment).name) == subject.experiment
    assert store.experiment_name(subject.experiment) == subject.client.get_experiment(subject.experiment).name


def test_create_sweep_and_create_trials(subject: Subject) -> None:
    sweep = subject.client.get_run(subject.sweep.run_id)
    assert (sweep.info.status, sweep.data.tags[TAG_KIND], sweep.info.run_name) == ("RUNNING", KIND_SWEEP, "contract")
    runs = [subject.client.get_run(r) for r in subject.trials]
    assert [r.info.run_name for r in runs] == ["trial-0", "trial-1", "trial-2"]
    assert {r.info.status for r in runs} == {"SCHEDULED"} and {r.data.tags[TAG_PARENT] for r in runs} == {sweep.info.run_id}
    assert runs[1].data.params == {"loss.temperature": "0.2"}


def test_queries(subject: Subject) -> None:
    store, sweep = subject.store, subject.sweep
    assert store.get(subject.trials[0]).name == "trial-0" and store.find_run(uuid.uuid4().hex) is None
    assert store.find_sweep(subject.experiment, "contract").run_id == sweep.run_id
    assert sweep.run_id in {s.run_id for s in store.sweeps()}
    assert set(subject.trials) <= {t.run_id for t in store.all_trials()}
    assert [t.run_id for t in store.trials(sweep)] == subject.trials  # in trial order
    assert store.sweep_of(store.get(subject.trials[2])).run_id == sweep.run_id
    assert store.resolve(subject.trials[1][:12]).run_id == subject.trials[1]
    assert {r.run_id for r in store.find_runs({"vitolaunch.trial_key": "k1"}, [subject.experiment])} == {subject.trials[1]}


def test_config_of(subject: Subject) -> None:
    assert subject.store.config_of(subject.store.get(subject.trials[0])) == CONFIG


def test_set_tags_and_set_tags_many(subject: Subject) -> None:
    store, client, (a, b, _) = subject.store, subject.client, subject.trials
    store.set_tags(a, {"contract.one": "1"})
    store.set_tags_many({a: {"contract.many": "x"}, b: {"contract.many": "y"}}, status="RUNNING")
    assert client.get_run(a).data.tags["contract.one"] == "1"
    assert [(client.get_run(r).data.tags["contract.many"], client.get_run(r).info.status) for r in (a, b)] == [
        ("x", "RUNNING"), ("y", "RUNNING")]


def test_set_status_stamps_the_end_time_given_or_now(subject: Subject) -> None:
    store, client, run = subject.store, subject.client, subject.trials[2]
    store.set_status(run, "KILLED", end_time_s=1_700_000_000.5)
    info = client.get_run(run).info
    assert (info.status, info.end_time) == ("KILLED", 1_700_000_000_500)
    store.set_status(run, "FAILED")
    assert client.get_run(run).info.end_time > 1_700_000_000_500


def test_set_experiment_tags(subject: Subject) -> None:
    subject.store.set_experiment_tags(subject.experiment, {"contract.view": "v1"})
    assert subject.client.get_experiment(subject.experiment).tags["contract.view"] == "v1"


def test_log_artifact_and_log_artifacts(subject: Subject, tmp_path: Path) -> None:
    store, client, run = subject.store, subject.client, subject.sweep.run_id
    (tmp_path / "one.txt").write_text("one")
    store.log_artifact(run, str(tmp_path / "one.txt"))
    tree = tmp_path / "tree"
    (tree / "plots").mkdir(parents=True)
    (tree / "table.csv").write_text("a,b\n")
    (tree / "plots" / "loss.png").write_bytes(b"\x89PNG")
    store.log_artifacts(run, str(tree), "summary")
    with tempfile.TemporaryDirectory() as out:
        assert Path(client.download_artifacts(run, "one.txt", out)).read_text() == "one"
        folder = Path(client.download_artifacts(run, "summary", out))
        assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) == [
            "plots/loss.png", "table.csv"]
    assert CONFIG_ARTIFACT in {f.path for f in client.list_artifacts(subject.trials[0])}


def test_log_metric_and_metric_history(subject: Subject) -> None:
    store, client, run = subject.store, subject.client, subject.trials[0]
    store.log_metric(run, "train/loss", 2.0, step=1, timestamp_ms=1_000)
    store.log_metric(run, "train/loss", 1.5, step=2, timestamp_ms=2_000)
    store.log_metric(run, "train/loss", 1.5, step=2, timestamp_ms=2_000)  # the same point twice is one point
    store.log_metric(run, "train/loss", 9.0, step=0)  # an older step never becomes the latest value
    store.log_metric(run, "eval/nan", math.nan, step=1)
    assert store.metric_history(run, "train/loss") == [(0, 9.0), (1, 2.0), (2, 1.5)]
    assert sorted((m.step, m.value) for m in client.get_metric_history(run, "train/loss")) == [(0, 9.0), (1, 2.0), (2, 1.5)]
    assert client.get_run(run).data.metrics["train/loss"] == 1.5 == store.get(run).metrics["train/loss"]
    assert math.isnan(store.metric_history(run, "eval/nan")[0][1])
    assert store.metric_history(run, "never/logged") == []


def test_the_table_of_methods_is_the_protocol() -> None:
    """Every method of RunStore has a test above: a method added to the protocol needs its contract test."""
    methods = {n for n in dir(RunStore) if not n.startswith("_")} - {"tracking_uri"}
    source = Path(__file__).read_text()
    untested = sorted(m for m in methods if f"store.{m}(" not in source and f".{m}(" not in source)
    assert not untested, f"methods of RunStore without a contract test: {untested}"
    assert json.dumps(sorted(methods))  # the table printed in the closing note is this list
