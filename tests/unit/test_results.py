"""The pure parts of a sweep's results: ranking, the best trial, folding seeds, the parent's status, outputs."""

from __future__ import annotations

import csv
import io
import json

import pytest

from tests.unit.fake_registry import OneSweepStore
from tests.unit.run_records import run_record
from vitolaunch.errors import SpecError, VitolaunchError
from vitolaunch.results.mlflow_ui import experiment_tags, runs_page, shared_view, view_key
from vitolaunch.results.ranking import (
    Ranking,
    ResultRow,
    as_records,
    best_row,
    group,
    group_records,
    rank,
    ranking_of,
    resolve_key,
    to_csv,
    to_markdown,
)
from vitolaunch.results.states import TrialState
from vitolaunch.results.sweep_summary import fingerprint, fold_status, needs_update
from vitolaunch.tracking.records import (
    EXPERIMENT_KIND_TRAINING,
    TAG_EXPERIMENT_KIND,
    TAG_OBJECTIVE_METRIC,
    TAG_OBJECTIVE_MODE,
    TAG_SHARED_VIEW_PREFIX,
    TAG_SUMMARY_OF,
    TAG_TASK,
    RunStatus,
)
from vitolaunch.tracking.store import RunRecord

MAX = Ranking("eval/acc", "max")
MIN = Ranking("train/loss", "min")


def _row(index: int, acc: float | None, state: str = "COMPLETED", **params) -> ResultRow:
    metrics = {"train/loss": 5.0 - index} | ({"eval/acc": acc} if acc is not None else {})
    return ResultRow("s", f"run{index}", f"s-{index}", index, params or {"t": index}, state, acc, metrics)


def test_rank_puts_the_best_first_each_way_and_trials_without_a_value_last():
    rows = [_row(0, 0.5), _row(1, None, "RUNNING"), _row(2, 0.7), _row(3, 0.6)]
    assert [r.index for r in rank(rows, MAX)] == [2, 3, 0, 1]
    assert [r.index for r in rank(rows, Ranking("eval/acc", "min"))] == [0, 3, 2, 1]


def test_best_row_prefers_completed_trials_and_is_none_without_values():
    rows = [_row(0, 0.9, "FAILED"), _row(1, 0.6), _row(2, 0.7, "CANCELLED")]
    assert best_row(rows, MAX).index == 1
    assert best_row([_row(0, 0.9, "FAILED"), _row(1, 0.6, "INTERRUPTED")], MAX).index == 0
    assert best_row([_row(0, None, "RUNNING")], MAX) is None


def test_group_folds_seeds_into_mean_std_and_count():
    rows = [
        _row(0, 0.50, t=0.1, seed=0), _row(1, 0.54, t=0.1, seed=1), _row(2, 0.52, t=0.1, seed=2),
        _row(3, 0.40, t=0.3, seed=0), _row(4, None, "RUNNING", t=0.3, seed=1),
    ]
    groups = group(rows, "seed", MAX)
    assert [g.params for g in groups] == [{"t": 0.1}, {"t": 0.3}]
    first, second = groups
    assert first.count == 3 and first.objective.count == 3
    assert first.objective.mean == pytest.approx(0.52) and first.objective.std == pytest.approx(0.02)
    assert first.folded == "seed" and first.folded_values == [0, 1, 2]
    assert second.count == 2 and second.objective.count == 1 and second.objective.std is None
    assert second.states == {"COMPLETED": 1, "RUNNING": 1}
    record = group_records(groups, MAX)[0]
    assert record["eval/acc mean"] == pytest.approx(0.52) and record["eval/acc n"] == 3 and record["t"] == 0.1


def test_group_by_names_a_swept_key_fully_or_by_its_last_part():
    rows = [_row(0, 0.5, **{"train.seed": 0, "loss.temperature": 0.1})]
    assert resolve_key(rows, "seed") == "train.seed"
    assert resolve_key(rows, "loss.temperature") == "loss.temperature"
    with pytest.raises(VitolaunchError, match="not a swept key.*train.seed, loss.temperature"):
        resolve_key(rows, "lr")


def test_csv_and_markdown_have_one_ranked_line_per_trial_and_every_column():
    rows = rank([_row(0, 0.5), _row(1, 0.7), _row(2, None, "FAILED")], MAX)
    records = as_records(rows, MAX)
    parsed = list(csv.DictReader(io.StringIO(to_csv(records))))
    assert [p["trial"] for p in parsed] == ["1", "0", "2"]
    assert [p["rank"] for p in parsed] == ["1", "2", ""]
    assert list(parsed[0]) == ["rank", "sweep", "trial", "run_id", "state", "t", "eval/acc", "train/loss"]
    assert parsed[2]["eval/acc"] == "" and parsed[2]["state"] == "FAILED"
    lines = to_markdown(records).splitlines()
    assert lines[0].startswith("| rank | sweep | trial |") and len(lines) == 2 + 3
    assert "| 1 | s | 1 | run1 | COMPLETED | 1 | 0.7 | 4 |" == lines[2]


@pytest.mark.parametrize("states, expected", [
    (["COMPLETED", "RUNNING"], RunStatus.RUNNING),
    (["COMPLETED", "QUEUED"], RunStatus.RUNNING),
    (["FAILED", "STALLED"], RunStatus.RUNNING),
    (["COMPLETED", "COMPLETED"], RunStatus.FINISHED),
    (["COMPLETED", "FAILED", "CANCELLED"], RunStatus.FAILED),
    (["COMPLETED", "CANCELLED"], RunStatus.KILLED),
    (["COMPLETED", "INTERRUPTED"], RunStatus.KILLED),
    (["COMPLETED", "UNKNOWN"], None),  # cannot vouch: the parent is left as it is
    ([], None),
])
def test_parent_status_follows_its_trials(states, expected):
    assert fold_status(TrialState(s) for s in states) is expected


def test_needs_update_only_when_the_parent_disagrees_with_its_trials():
    sweep = run_record("RUNNING", {TAG_OBJECTIVE_METRIC: "eval/acc", TAG_OBJECTIVE_MODE: "max"}, run_id="p")
    trials = [run_record("FINISHED", run_id="a", metrics={"eval/acc": 0.5}), run_record("RUNNING", run_id="b")]
    running = {"a": TrialState.COMPLETED, "b": TrialState.RUNNING}
    assert not needs_update(sweep, trials, running)
    ended = {"a": TrialState.COMPLETED, "b": TrialState.FAILED}
    assert needs_update(sweep, trials, ended)
    summarized = run_record("FAILED", {**sweep.tags, TAG_SUMMARY_OF: fingerprint(trials, ended, ranking_of(sweep))}, run_id="p")
    assert not needs_update(summarized, trials, ended)
    # A resumed trial runs again: the FAILED parent is out of date, and so is its summary once it ends anew.
    assert needs_update(summarized, trials, running)
    assert needs_update(summarized, trials, {"a": TrialState.COMPLETED, "b": TrialState.COMPLETED})


def test_ranking_comes_from_the_sweep_tags_else_the_task_default():
    assert ranking_of(run_record(tags={TAG_OBJECTIVE_METRIC: "train/loss", TAG_OBJECTIVE_MODE: "min"}, run_id="p")) == MIN
    assert ranking_of(run_record(tags={TAG_TASK: "evaluate"}, run_id="p")) == Ranking("eval/linear_probe_acc", "max")


def test_shared_view_filters_the_sweeps_trials_sorts_by_the_objective_and_shows_swept_columns():
    tags = experiment_tags("quick", ["loss.temperature"], MIN)
    assert tags[TAG_EXPERIMENT_KIND] == EXPERIMENT_KIND_TRAINING
    view = json.loads(tags[TAG_SHARED_VIEW_PREFIX + view_key("quick")])
    assert view == shared_view("quick", ["loss.temperature"], MIN)
    assert view["searchFilter"] == "tags.`vitolaunch.sweep` = 'quick' and tags.`vitolaunch.kind` = 'trial'"
    assert view["orderByKey"] == "metrics.`train/loss`" and view["orderByAsc"] is True
    assert view["selectedColumns"][:2] == ["params.`loss.temperature`", "metrics.`train/loss`"]
    assert runs_page("http://h:5000/", "7", "quick") == \
        "http://h:5000/#/experiments/7/runs?viewStateShareKey=vitolaunch-quick&workflowType=machine_learning"


def _spec(tmp_path, body: str):
    from vitolaunch.spec import load_spec

    path = tmp_path / "s.yaml"
    path.write_text("name: s\nparameters:\n  loss.temperature: [0.1, 0.3]\n" + body)
    return load_spec(str(path))


def test_objective_is_a_spec_key_with_a_default_per_task_that_does_not_change_the_spec_hash(tmp_path):
    default = _spec(tmp_path, "")
    assert (default.resolved_objective().metric, default.resolved_objective().mode) == ("eval/linear_probe_acc", "max")
    chosen = _spec(tmp_path, "objective: {metric: train/loss, mode: min}\n")
    assert (chosen.resolved_objective().metric, chosen.resolved_objective().mode) == ("train/loss", "min")
    assert chosen.spec_hash() == default.spec_hash()


@pytest.mark.parametrize("body, where", [
    ("objective: {metric: eval/linear_probe_acc, mode: maximize}\n", "key 'objective.mode'"),
    ("objective: {metric: eval/linear_probe_acc, direction: max}\n", "objective.direction"),
    ("objective: {mode: max}\n", "objective.metric"),
])
def test_a_bad_objective_is_named_with_its_line(tmp_path, body, where):
    with pytest.raises(SpecError, match=rf"s.yaml:4: .*{where}"):
        _spec(tmp_path, body)




def test_elapsed_is_the_running_time_and_queue_time_is_reported_apart(monkeypatch):
    """A 21 s trial that waited 190 s in the queue showed 3:31, and a cancelled trial that never started 0:57."""
    from vitolaunch.results import status_table
    from vitolaunch.results.status_table import collect_rows, render_table
    from vitolaunch.tracking.records import TAG_JOB_STARTED_AT, TAG_LAST_REQUEUE

    monkeypatch.setattr(status_table.time, "time", lambda: 1000.0 + 600)
    submitted = 1000.0
    trials = [
        RunRecord("ran", "ran", "FINISHED", submitted, submitted + 211, {TAG_JOB_STARTED_AT: str(submitted + 190)}),
        RunRecord("never", "never", "KILLED", submitted, submitted + 57, {}),
        RunRecord("waiting", "waiting", "SCHEDULED", submitted, None, {}),  # no job id yet: QUEUED, never asked
        RunRecord("requeued", "requeued", "FINISHED", submitted, submitted + 500,
                  {TAG_JOB_STARTED_AT: str(submitted + 400), TAG_LAST_REQUEUE: "timeout at step 10"}),
    ]
    rows = {row.run_id: row for row in collect_rows(OneSweepStore(trials)).rows}
    assert [rows[k].elapsed_s for k in ("ran", "never", "waiting")] == [21.0, None, None]
    assert (rows["ran"].state, rows["ran"].elapsed_s, rows["ran"].queued_s) == ("COMPLETED", 21.0, 190.0)
    assert (rows["never"].state, rows["never"].elapsed_s, rows["never"].queued_s) == ("CANCELLED", None, 57.0)
    assert (rows["waiting"].state, rows["waiting"].elapsed_s, rows["waiting"].queued_s) == ("QUEUED", None, 600.0)
    # Requeued: its last attempt's running time; the time from submission to that start was not one wait.
    assert (rows["requeued"].elapsed_s, rows["requeued"].queued_s) == (100.0, None)

    from rich.console import Console

    console = Console(width=200, record=True)
    console.print(render_table(list(rows.values())))
    lines = {line.split("│")[3].strip(): line for line in console.export_text().splitlines() if line.count("│") > 5}
    assert lines["ran"].rstrip(" │").endswith("0:21") and lines["never"].rstrip(" │").endswith("-"), lines
    assert lines["waiting"].rstrip(" │").endswith("queued 10:00"), lines
