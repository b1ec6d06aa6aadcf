"""The sweep's parent run tells the story: its status follows its trials, and once they have all ended it
carries the best trial (run id, swept values), the objective's best value as a metric, and the comparison
table and plots as artifacts.

No process watches a sweep, so whoever sees trials end keeps the parent true: the last trial's job (from
MLflow's statuses alone), `vitolaunch status` (with the scheduler's view) and `vitolaunch resume` (back to
RUNNING). Every observer computes the same result from the same trials; a fingerprint of the trials'
outcomes on the parent makes a second observer a no-op, and a rewrite writes the same tags, metric and files.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from vitolaunch.results.benchmark_table import benchmark_table
from vitolaunch.results.ranking import (
    Ranking,
    as_records,
    best_row,
    rank,
    ranking_of,
    result_row,
    swept_keys,
    to_csv,
    to_markdown,
)
from vitolaunch.results.states import TrialState, merge_state
from vitolaunch.tracking.records import (
    SUMMARY_ARTIFACT_DIR,
    TAG_BEST_PARAM_PREFIX,
    TAG_BEST_RUN,
    TAG_BEST_RUN_NAME,
    TAG_BEST_VALUE,
    TAG_NOTE,
    TAG_OBJECTIVE_METRIC,
    TAG_OBJECTIVE_MODE,
    TAG_SUMMARY_OF,
    RunStatus,
)
from vitolaunch.tracking.store import RunQueries, RunRecord, RunStore

log = logging.getLogger(__name__)

LOSS_METRIC = "train/loss"
NOTE_ROWS = 20  # rows of the table in the parent's description (MLflow caps a tag's value at a few kB)
MAX_LOSS_CURVES = 30  # more lines than this make one chart unreadable: the best ones are drawn


def fold_status(states: Iterable[TrialState]) -> RunStatus | None:
    """The parent's status from its trials' states; None when it cannot be vouched for (a trial UNKNOWN, no trials).

    RUNNING while any trial is queued or running; once all have ended: FAILED if any failed, else KILLED if
    any was cancelled or stopped early, else FINISHED.
    """
    states = list(states)
    if not states:
        return None
    if any(s.is_active for s in states):
        return RunStatus.RUNNING
    if any(s is TrialState.UNKNOWN for s in states):
        return None
    if any(s is TrialState.FAILED for s in states):
        return RunStatus.FAILED
    if any(s is not TrialState.COMPLETED for s in states):
        return RunStatus.KILLED
    return RunStatus.FINISHED


def fingerprint(trials: Sequence[RunRecord], states: dict[str, TrialState], ranking: Ranking) -> str:
    """What the summary is made from: each trial's state and final metrics, and the objective."""
    content = [ranking.metric, ranking.mode] + sorted(
        [t.run_id, states[t.run_id].value, sorted(t.metrics.items())] for t in trials
    )
    return hashlib.sha256(json.dumps(content, default=str).encode()).hexdigest()[:16]


def needs_update(sweep: RunRecord, trials: Sequence[RunRecord], states: dict[str, TrialState]) -> bool:
    """Whether the parent's status or summary is out of date: cheap, so `status` imports MLflow only then."""
    wanted = fold_status(states[t.run_id] for t in trials)
    if wanted is None:
        return False
    if wanted is RunStatus.RUNNING:
        return sweep.status != RunStatus.RUNNING.value
    summarized = sweep.tags.get(TAG_SUMMARY_OF) == fingerprint(trials, states, ranking_of(sweep))
    return sweep.status != wanted.value or not summarized


@dataclass
class SweepUpdate:
    status: RunStatus | None  # what the parent's status is now (None: left alone)
    written: bool  # False: already up to date
    best_run_id: str | None = None
    best_value: float | None = None
    artifacts: list[str] = field(default_factory=list)


def mlflow_states(trials: Sequence[RunRecord]) -> dict[str, TrialState]:
    """Trial states from MLflow's statuses alone (what a job sees: no scheduler to ask)."""
    return {t.run_id: merge_state(t, None) for t in trials}


def update_sweep(registry: RunStore, sweep: RunRecord, states: dict[str, TrialState] | None = None,
                 trials: Sequence[RunRecord] | None = None, force: bool = False) -> SweepUpdate:
    """Bring the parent run up to date with its trials."""
    trials = list(registry.trials(sweep) if trials is None else trials)
    states = mlflow_states(trials) if states is None else states
    wanted = fold_status(states[t.run_id] for t in trials)
    if wanted is None or (not force and not needs_update(sweep, trials, states)):
        return SweepUpdate(wanted, written=False)
    if wanted is RunStatus.RUNNING:
        registry.set_status(sweep.run_id, RunStatus.RUNNING)
        return SweepUpdate(wanted, written=True)
    ranking = ranking_of(sweep)
    rows = rank((result_row(sweep, t, states[t.run_id].value, ranking) for t in trials), ranking)
    best = best_row(rows, ranking)
    ended = max((t.end_time or 0.0) for t in trials) or None  # the sweep ended when its last trial did
    with tempfile.TemporaryDirectory() as tmp:
        names = write_summary_files(registry, Path(tmp), trials, rows, ranking, sweep.sweep)
        registry.log_artifacts(sweep.run_id, tmp, SUMMARY_ARTIFACT_DIR)
    tags = {TAG_OBJECTIVE_METRIC: ranking.metric, TAG_OBJECTIVE_MODE: ranking.mode}
    if best is not None:
        tags.update({TAG_BEST_RUN: best.run_id, TAG_BEST_RUN_NAME: best.name, TAG_BEST_VALUE: repr(best.objective)})
        tags.update({TAG_BEST_PARAM_PREFIX + k: json.dumps(v) if isinstance(v, (list, dict)) else str(v)
                     for k, v in best.params.items()})
        # The same key as the trials' metric, so the parent's row shows the answer in the objective's column;
        # a fixed timestamp and step make a second observer's write the same point, not a new one.
        registry.log_metric(sweep.run_id, ranking.metric, best.objective, step=0,
                            timestamp_ms=int(ended * 1000) if ended else None)
    tags[TAG_NOTE] = describe(sweep.tags.get(TAG_NOTE, ""), rows, best, ranking)
    registry.set_tags(sweep.run_id, tags)
    registry.set_status(sweep.run_id, wanted, end_time_s=ended)
    # Last: an observer cut short before this line leaves the summary to be redone by the next one.
    registry.set_tags(sweep.run_id, {TAG_SUMMARY_OF: fingerprint(trials, states, ranking)})
    return SweepUpdate(wanted, True, best.run_id if best else None, best.objective if best else None,
                       [f"{SUMMARY_ARTIFACT_DIR}/{n}" for n in names])


_RESULTS_HEADING = "\n\n### Results (vitolaunch)\n"


def describe(note: str, rows, best, ranking: Ranking) -> str:
    """The parent run's description in the MLflow UI: the spec's description, then the answer and the table
    (replacing the results an earlier observer wrote)."""
    own = note.split(_RESULTS_HEADING, 1)[0]
    if best is None:
        answer = f"No trial has {ranking.metric}."
    else:
        params = ", ".join(f"{k}={v}" for k, v in best.params.items())
        answer = f"**Best trial: {best.name}** ({params}): {ranking.metric} = {best.objective:.4g} ({ranking.mode})."
    counts: dict[str, int] = {}
    for row in rows:
        counts[row.state] = counts.get(row.state, 0) + 1
    states = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    # Narrow enough to read on the run's page (rank, trial, state, swept values, the objective and the loss):
    # the full table is the comparison.md artifact.
    keep = {"rank", "trial", "state", *swept_keys(rows), ranking.metric, LOSS_METRIC}
    records = [{k: v for k, v in r.items() if k in keep} for r in as_records(rows, ranking)]
    more = ""
    if len(records) > NOTE_ROWS:
        more = f"\n{len(records) - NOTE_ROWS} more in {SUMMARY_ARTIFACT_DIR}/comparison.md\n"
    return own + _RESULTS_HEADING + f"{answer} Trials: {states}.\n\n" + to_markdown(records[:NOTE_ROWS]) + more


def write_summary_files(registry, folder: Path, trials: Sequence[RunRecord], rows, ranking: Ranking,
                        sweep_name: str) -> list[str]:
    """comparison.csv / .md (ranked), objective_vs_<key>.png per swept key, loss_curves.png."""
    from vitolaunch.results.plots import loss_curves_plot, objective_plot

    records = as_records(rows, ranking)
    (folder / "comparison.csv").write_text(to_csv(records))
    better = "higher" if ranking.mode == "max" else "lower"
    (folder / "comparison.md").write_text(
        f"# {sweep_name}: trials ranked by {ranking.metric} ({better} is better)\n\n" + to_markdown(records))
    names = ["comparison.csv", "comparison.md"]
    table = benchmark_table(rows)
    if table:  # an evaluate sweep: the paper's table, checkpoints by benchmarks
        (folder / "benchmarks.csv").write_text(to_csv(table))
        (folder / "benchmarks.md").write_text(f"# {sweep_name}: top-1 by benchmark\n\n" + to_markdown(table))
        names += ["benchmarks.csv", "benchmarks.md"]
    # A swept seed is a repeat, not a setting: the other plots fold it into mean ± std (as `compare --group-by`).
    seeds = [k for k in swept_keys(rows) if k.split(".")[-1].endswith("seed")]
    for key in swept_keys(rows):
        name = f"objective_vs_{_file_part(key)}.png"
        fold = next((s for s in seeds if s != key), None)
        folded = f"; mean ± std over {fold}" if fold else ""
        objective_plot(rows, ranking, folder / name, key, fold=fold,
                       title=f"{sweep_name}: {ranking.metric} vs {key}{folded}")
        names.append(name)
    drawn = [r for r in rows][:MAX_LOSS_CURVES]
    curves = {f"{r.index:03d} " + " ".join(f"{k.split('.')[-1]}={v}" for k, v in r.params.items()):
              registry.metric_history(r.run_id, LOSS_METRIC) for r in drawn}
    shown = "" if len(rows) <= MAX_LOSS_CURVES else f" ({MAX_LOSS_CURVES} best of {len(rows)})"
    loss_curves_plot(curves, folder / "loss_curves.png", LOSS_METRIC, title=f"{sweep_name}: {LOSS_METRIC}{shown}")
    names.append("loss_curves.png")
    return names


def _file_part(key: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in key)


def after_trial(tracking_uri: str, run_id: str) -> None:
    """From a trial's job, once its own status is recorded: update its sweep's parent. Never raises: the
    parent is a summary, and the next observer (`vitolaunch status`) redoes what this one could not."""
    try:
        from vitolaunch.tracking.chooser import store_in_job

        registry = store_in_job(tracking_uri)
        trial = registry.get(run_id)
        if not trial.parent_run_id:
            return
        update = update_sweep(registry, registry.get(trial.parent_run_id))
        if update.written:
            log.info("sweep run %s is now %s", trial.parent_run_id, update.status.value if update.status else "-")
    except Exception as problem:  # noqa: BLE001 - best effort: a job's outcome never depends on its sweep's summary
        log.warning("could not update the sweep's run in MLflow (`vitolaunch status` will): %s", problem)


def update_observed(reader: RunQueries, observed: Sequence[tuple[RunRecord, Sequence[RunRecord]]],
                    states: dict[str, TrialState]) -> list[str]:
    """From `status`: the sweeps whose parents are out of date are brought up to date (MLflow is imported only
    then); returns a line per sweep that could not be, for the caller to show."""
    stale = [(s, t) for s, t in observed if needs_update(s, t, states)]
    if not stale:
        return []
    problems = []
    try:
        from vitolaunch.tracking.mlflow_store import Registry
        from vitolaunch.workspace import Workspace

        registry = reader
        if not isinstance(reader, Registry):
            registry = Registry(reader.tracking_uri, Workspace.from_env().artifact_root)
        for sweep, trials in stale:
            update_sweep(registry, sweep, {t.run_id: states[t.run_id] for t in trials}, trials)
    except Exception as problem:  # noqa: BLE001 - best effort: status shows the trials whatever happens here
        problems.append(f"could not update the sweep's run in MLflow: {type(problem).__name__}: {problem}")
    return problems
