"""The sweep's parent run and `vitolaunch compare` against a real MLflow sqlite store (no service needed).

The store holds one finished sweep of 6 trials with known accuracies (tests/unit/sweep_store.py).
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.unit import sweep_store
from vitolaunch.tracking.records import (
    SUMMARY_ARTIFACT_DIR,
    TAG_BEST_PARAM_PREFIX,
    TAG_BEST_RUN,
    TAG_BEST_VALUE,
    TAG_NOTE,
    TAG_SUMMARY_OF,
    RunStatus,
)

REPO = Path(__file__).resolve().parents[2]
BEST_INDEX = 5  # (temperature 0.3, seed 2): 0.60


def _cli(home: Path, *args: str, heavy_check: bool = False) -> subprocess.CompletedProcess:
    env = {**os.environ, "VITOLAUNCH_HOME": str(home), "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
    env.pop("MLFLOW_TRACKING_URI", None)
    code = (
        "import sys\nfrom vitolaunch.cli import main\n"
        f"sys.argv = {['vitolaunch', *args]!r}\n"
        "try:\n    main()\nexcept SystemExit as e:\n    code = e.code\nelse:\n    code = 0\n"
        "print('HEAVY=' + ','.join(m for m in ('torch', 'deepspeed', 'mlflow', 'matplotlib') if m in sys.modules),"
        " file=sys.stderr)\nsys.exit(code)\n"
    )
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO, timeout=120)


def _heavy(result: subprocess.CompletedProcess) -> list[str]:
    return [m for m in result.stderr.rsplit("HEAVY=", 1)[1].strip().split(",") if m]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    registry, sweep, run_ids = sweep_store.build(home)
    return home, registry, sweep, run_ids


def test_compare_ranks_the_trials_from_sqlite_without_importing_mlflow_or_matplotlib(store):
    home, _, _, run_ids = store
    result = _cli(home, "compare", sweep_store.SWEEP)
    assert result.returncode == 0, result.stderr
    assert _heavy(result) == []
    lines = [line for line in result.stdout.splitlines() if line.startswith("│")]
    assert [line.split("│")[2].strip() for line in lines] == ["005", "001", "002", "000", "004", "003"]
    assert "0.6000" in lines[0] and "COMPLETED" in lines[0]


def test_compare_json_and_csv_carry_every_trial_ranked(store):
    home, _, _, run_ids = store
    records = json.loads(_cli(home, "compare", sweep_store.SWEEP, "--json").stdout)
    assert [r["run_id"] for r in records] == [run_ids[i] for i in (5, 1, 2, 0, 4, 3)]
    assert records[0]["rank"] == 1 and records[0]["eval/linear_probe_acc"] == pytest.approx(0.60)
    assert records[0]["loss.temperature"] == 0.3 and records[0]["train.seed"] == 2
    rows = list(csv.DictReader(io.StringIO(_cli(home, "compare", sweep_store.SWEEP, "--csv").stdout)))
    assert [int(r["trial"]) for r in rows] == [5, 1, 2, 0, 4, 3]


def test_compare_group_by_seed_folds_into_mean_std_count(store):
    home = store[0]
    result = _cli(home, "compare", sweep_store.SWEEP, "--group-by", "train.seed", "--json")
    groups = json.loads(result.stdout)
    assert [g["loss.temperature"] for g in groups] == [0.1, 0.3]  # 0.52 beats 0.48 on average, not on its best seed
    assert groups[0]["eval/linear_probe_acc mean"] == pytest.approx(0.52)
    assert groups[0]["eval/linear_probe_acc std"] == pytest.approx(0.02)
    assert groups[1]["eval/linear_probe_acc std"] == pytest.approx(0.10583, abs=1e-4)
    assert [g["count"] for g in groups] == [3, 3] and groups[0]["train.seed values"] == [0, 1, 2]
    table = _cli(home, "compare", sweep_store.SWEEP, "--group-by", "seed").stdout
    assert "0.5200 ± 0.0200 (n=3)" in table and "mean ± std over train.seed" in table


def test_compare_plot_writes_a_png_and_a_bad_key_is_one_clear_error(store, tmp_path):
    home = store[0]
    plot = tmp_path / "acc.png"
    result = _cli(home, "compare", sweep_store.SWEEP, "--group-by", "seed", "--plot", str(plot))
    assert result.returncode == 0, result.stderr
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "vs loss.temperature" in result.stdout
    bad = _cli(home, "compare", sweep_store.SWEEP, "--group-by", "lr")
    assert bad.returncode == 2 and "--group-by lr: not a swept key" in bad.stderr and "Traceback" not in bad.stderr
    missing = _cli(home, "compare", "nosuch")
    assert missing.returncode == 2 and "no sweep or trial 'nosuch'" in missing.stderr


def test_status_brings_the_parent_up_to_date_once_and_the_summary_is_idempotent(store, tmp_path):
    home, registry, sweep, run_ids = store
    assert registry.get(sweep.run_id).status == RunStatus.RUNNING.value  # nobody has observed the trials end yet
    first = _cli(home, "status", sweep_store.SWEEP)
    assert first.returncode == 0, first.stderr
    assert "mlflow" in _heavy(first)  # the parent was out of date: written through MLflow
    parent = registry.get(sweep.run_id)
    assert parent.status == RunStatus.FINISHED.value
    assert parent.tags[TAG_BEST_RUN] == run_ids[BEST_INDEX]
    assert float(parent.tags[TAG_BEST_VALUE]) == pytest.approx(0.60)
    assert parent.tags[TAG_BEST_PARAM_PREFIX + "loss.temperature"] == "0.3"
    assert parent.tags[TAG_BEST_PARAM_PREFIX + "train.seed"] == "2"
    assert parent.metrics["eval/linear_probe_acc"] == pytest.approx(0.60)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(registry.tracking_uri)
    artifacts = sorted(a.path for a in client.list_artifacts(sweep.run_id, SUMMARY_ARTIFACT_DIR))
    assert artifacts == [f"{SUMMARY_ARTIFACT_DIR}/{n}" for n in (
        "comparison.csv", "comparison.md", "loss_curves.png", "objective_vs_loss.temperature.png",
        "objective_vs_train.seed.png")]
    table = Path(client.download_artifacts(sweep.run_id, f"{SUMMARY_ARTIFACT_DIR}/comparison.csv", str(tmp_path)))
    ranked = list(csv.DictReader(io.StringIO(table.read_text())))
    assert ranked[0]["run_id"] == run_ids[BEST_INDEX] and len(ranked) == 6
    note = parent.tags[TAG_NOTE]
    assert "**Best trial: abl-005** (loss.temperature=0.3, train.seed=2): eval/linear_probe_acc = 0.6 (max)" in note
    assert "Trials: 6 COMPLETED." in note and note.count("| COMPLETED |") == 6

    # A second observer finds it up to date: no MLflow import, nothing rewritten.
    second = _cli(home, "status", sweep_store.SWEEP)
    assert second.returncode == 0 and _heavy(second) == []
    assert registry.get(sweep.run_id).tags[TAG_SUMMARY_OF] == parent.tags[TAG_SUMMARY_OF]

    # A forced rewrite writes the same result: one point of the objective metric, the same tags.
    from vitolaunch.results.sweep_summary import update_sweep

    update = update_sweep(registry, registry.get(sweep.run_id), force=True)
    assert update.written and update.best_run_id == run_ids[BEST_INDEX]
    again = registry.get(sweep.run_id)
    assert {k: v for k, v in again.tags.items() if k.startswith("vitolaunch.")} == \
        {k: v for k, v in parent.tags.items() if k.startswith("vitolaunch.")}
    assert len(registry.metric_history(sweep.run_id, "eval/linear_probe_acc")) == 1
    assert again.end_time == parent.end_time == max(registry.get(run_id).end_time for run_id in run_ids)


def test_a_failed_trial_makes_the_parent_failed_and_resume_makes_it_running_again(tmp_path):
    from vitolaunch.results.sweep_summary import update_sweep

    registry, sweep, run_ids = sweep_store.build(tmp_path / "home", statuses={BEST_INDEX: RunStatus.FAILED})
    update = update_sweep(registry, sweep)
    assert update.status is RunStatus.FAILED and registry.get(sweep.run_id).status == "FAILED"
    assert update.best_run_id == run_ids[1]  # the failed trial's 0.60 does not count: the best completed one does
    # What `resume` does once the trial is queued again: the trial active, the parent RUNNING.
    registry.set_status(run_ids[BEST_INDEX], RunStatus.SCHEDULED)
    assert update_sweep(registry, registry.get(sweep.run_id)).status is RunStatus.RUNNING
    assert registry.get(sweep.run_id).status == "RUNNING"
