"""A real sweep tracked on the MLflow server: its parent run tells the story, and `compare` ranks it.

Four tiny trials (temperature x seed) on the local backend, ranked by a spec-given objective (the final
training loss, lowest first). Nothing but the trials' own jobs observes them end here (the test polls MLflow
directly, never `vitolaunch status`), so the parent's summary checked below is the last job's work.
"""

from __future__ import annotations

import csv
import io
import json
import time
import uuid

import pytest
import yaml

from tests.integration.local_sweeps import vitolaunch, write_spec
from tests.integration.services import services_env
from vitolaunch.results.mlflow_ui import runs_page, view_key
from vitolaunch.tracking.records import (
    EXPERIMENT_KIND_TRAINING,
    SUMMARY_ARTIFACT_DIR,
    TAG_BEST_PARAM_PREFIX,
    TAG_BEST_RUN,
    TAG_EXPERIMENT_KIND,
    TAG_OBJECTIVE_METRIC,
    TAG_OBJECTIVE_MODE,
    TAG_SHARED_VIEW_PREFIX,
    TAG_SUMMARY_OF,
    TAG_SWEPT,
)

OBJECTIVE = {"metric": "train/loss", "mode": "min"}


@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory):
    env = services_env(s3=False, mlflow=True)
    uri = env["VITOLAUNCH_TEST_MLFLOW_URI"]
    tmp = tmp_path_factory.mktemp("results")
    sweep = f"results-{uuid.uuid4().hex[:6]}"  # the server outlives test runs: names must not repeat
    experiment = f"tests-{uuid.uuid4().hex[:6]}"
    path = write_spec(tmp, sweep, {"loss.temperature": [0.05, 0.3], "train.seed": [0, 1]}, tasks_per_node=1,
                      tracking={"uri": uri, "experiment": experiment})
    spec = yaml.safe_load(path.read_text())
    spec["objective"] = OBJECTIVE
    spec["resources"]["array_parallelism"] = 2
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    home = tmp / "home"
    submitted = vitolaunch(home, "sweep", str(path))

    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp_id = client.get_experiment_by_name(experiment).experiment_id
    of_sweep = f"tags.`vitolaunch.sweep` = '{sweep}'"
    parent = client.search_runs([exp_id], f"tags.`vitolaunch.kind` = 'sweep' and {of_sweep}")[0]
    deadline = time.monotonic() + 600
    while True:  # the last job brings the parent up to date after recording its own status
        parent = client.get_run(parent.info.run_id)
        if parent.info.status != "RUNNING" and TAG_SUMMARY_OF in parent.data.tags:
            break
        if time.monotonic() > deadline:
            logs = "\n".join(p.read_text()[-2000:] for p in (home / "logs").rglob("*.err"))
            raise AssertionError(f"the parent never left RUNNING: {parent.info.status}\n{logs}")
        time.sleep(2)
    trials = client.search_runs([exp_id], f"tags.`vitolaunch.kind` = 'trial' and {of_sweep}")
    return {"client": client, "uri": uri, "experiment_id": exp_id, "sweep": sweep, "parent": parent, "trials": trials,
            "home": home, "tmp": tmp, "output": submitted.stdout}


@pytest.mark.timeout(900)
def test_the_last_trials_job_leaves_the_parent_finished_with_the_best_trial_metric_and_artifacts(finished_sweep):
    client, parent, trials = finished_sweep["client"], finished_sweep["parent"], finished_sweep["trials"]
    assert len(trials) == 4 and all(t.info.status == "FINISHED" for t in trials)
    assert parent.info.status == "FINISHED"
    tags = parent.data.tags
    assert (tags[TAG_OBJECTIVE_METRIC], tags[TAG_OBJECTIVE_MODE]) == ("train/loss", "min")
    best = min(trials, key=lambda t: t.data.metrics["train/loss"])
    assert tags[TAG_BEST_RUN] == best.info.run_id
    for key, value in json.loads(best.data.tags[TAG_SWEPT]).items():
        assert tags[TAG_BEST_PARAM_PREFIX + key] == str(value)
    assert parent.data.metrics["train/loss"] == pytest.approx(best.data.metrics["train/loss"])

    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, SUMMARY_ARTIFACT_DIR)}
    assert artifacts == {f"{SUMMARY_ARTIFACT_DIR}/{name}" for name in (
        "comparison.csv", "comparison.md", "loss_curves.png", "objective_vs_loss.temperature.png",
        "objective_vs_train.seed.png")}
    local = client.download_artifacts(parent.info.run_id, SUMMARY_ARTIFACT_DIR, str(finished_sweep["tmp"] / "dl"))
    rows = list(csv.DictReader(io.StringIO(open(f"{local}/comparison.csv").read())))
    losses = [float(r["train/loss"]) for r in rows]
    assert losses == sorted(losses) and rows[0]["run_id"] == best.info.run_id
    assert {"eval/linear_probe_acc", "loss.temperature", "train.seed", "state"} <= set(rows[0])
    assert all(r["state"] == "COMPLETED" for r in rows)
    for name in ("loss_curves.png", "objective_vs_loss.temperature.png"):
        assert open(f"{local}/{name}", "rb").read(8) == b"\x89PNG\r\n\x1a\n"


@pytest.mark.timeout(300)
def test_status_finds_the_parent_up_to_date_and_rewrites_nothing(finished_sweep):
    client, parent = finished_sweep["client"], finished_sweep["parent"]
    vitolaunch(finished_sweep["home"], "status", finished_sweep["sweep"], "--tracking-uri", finished_sweep["uri"])
    again = client.get_run(parent.info.run_id)
    assert again.info.status == "FINISHED" and again.info.end_time == parent.info.end_time
    assert again.data.tags[TAG_SUMMARY_OF] == parent.data.tags[TAG_SUMMARY_OF]
    assert len(client.get_metric_history(parent.info.run_id, "train/loss")) == 1


@pytest.mark.timeout(300)
def test_compare_against_the_server_ranks_groups_and_prints_json(finished_sweep):
    home, sweep, uri = finished_sweep["home"], finished_sweep["sweep"], finished_sweep["uri"]
    trials = finished_sweep["trials"]
    ranked = sorted(trials, key=lambda t: t.data.metrics["train/loss"])
    records = json.loads(vitolaunch(home, "compare", sweep, "--tracking-uri", uri, "--json").stdout)
    assert [r["run_id"] for r in records] == [t.info.run_id for t in ranked]
    assert [r["rank"] for r in records] == [1, 2, 3, 4]
    table = vitolaunch(home, "compare", sweep, "--tracking-uri", uri).stdout
    assert f"{sweep}: ranked by train/loss (lower is better)" in table and table.count("COMPLETED") == 4
    grouped = vitolaunch(home, "compare", sweep, "--tracking-uri", uri, "--group-by", "seed", "--json")
    groups = json.loads(grouped.stdout)
    assert sorted(g["loss.temperature"] for g in groups) == [0.05, 0.3]
    assert [g["count"] for g in groups] == [2, 2] and all(g["train/loss n"] == 2 for g in groups)
    means = [g["train/loss mean"] for g in groups]
    assert means == sorted(means)
    for g in groups:
        members = [t.data.metrics["train/loss"] for t in trials
                   if json.loads(t.data.tags[TAG_SWEPT])["loss.temperature"] == g["loss.temperature"]]
        assert g["train/loss mean"] == pytest.approx(sum(members) / 2)


@pytest.mark.timeout(120)
def test_the_printed_compare_url_opens_the_shared_view_of_the_trials(finished_sweep):
    lines = finished_sweep["output"].splitlines()
    compare = next(line for line in lines if line.startswith("compare:")).removeprefix("compare:").strip()
    page = runs_page(finished_sweep["uri"], finished_sweep["experiment_id"], finished_sweep["sweep"])
    assert compare == f"open {page}"
    answer = next(line for line in lines if line.startswith("answer:")).removeprefix("answer:").strip()
    assert answer == f"vitolaunch compare {finished_sweep['sweep']} --tracking-uri {finished_sweep['uri']}"
    tags = finished_sweep["client"].get_experiment(finished_sweep["experiment_id"]).tags
    assert tags[TAG_EXPERIMENT_KIND] == EXPERIMENT_KIND_TRAINING
    view = json.loads(tags[TAG_SHARED_VIEW_PREFIX + view_key(finished_sweep["sweep"])])
    matching = finished_sweep["client"].search_runs([finished_sweep["experiment_id"]], view["searchFilter"])
    assert sorted(r.info.run_id for r in matching) == sorted(t.info.run_id for t in finished_sweep["trials"])
    assert view["orderByKey"] == "metrics.`train/loss`" and view["orderByAsc"] is True
