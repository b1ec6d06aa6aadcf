"""A sweep's results as data: one row per trial (swept values, state, final metrics), ranked by the sweep's
objective, optionally folded over a key (seeds) into mean ± std; and the CSV / Markdown / JSON of them.

Pure: no MLflow, no scheduler. `compare` and the sweep's summary (vitolaunch/results/sweep_summary.py) both build on it,
so the table a user gets in the terminal and the one on the parent run cannot disagree.
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from vitolaunch.errors import VitolaunchError
from vitolaunch.tracking.records import TAG_OBJECTIVE_METRIC, TAG_OBJECTIVE_MODE, TAG_TASK
from vitolaunch.tracking.store import RunRecord

# Final metrics shown beside the objective: the evaluation's, and the training loss. Rates and schedules
# (train/lr, train/pairs_per_s...) say how a run went, not what it found.
_SHOWN_PREFIXES = ("eval/",)
_SHOWN_KEYS = ("train/loss",)


@dataclass(frozen=True)
class Ranking:
    """The sweep's objective: which metric ranks its trials, and which way is better."""

    metric: str
    mode: str  # "max" or "min"

    def better_first(self, value: float) -> float:
        return -value if self.mode == "max" else value


def ranking_of(sweep: RunRecord) -> Ranking:
    """The objective recorded on a sweep's run; sweeps from before it was recorded get their task's default."""
    metric, mode = sweep.tags.get(TAG_OBJECTIVE_METRIC), sweep.tags.get(TAG_OBJECTIVE_MODE)
    if not metric:
        from vitolaunch.spec.schema import DEFAULT_OBJECTIVES

        metric, mode = DEFAULT_OBJECTIVES.get(sweep.tags.get(TAG_TASK, "pretrain"), DEFAULT_OBJECTIVES["pretrain"])
    return Ranking(metric, mode if mode in ("max", "min") else "max")


def parse_ranking(text: str) -> Ranking:
    """`METRIC` or `METRIC:min|max` (compare --by); without a mode, a loss is minimised and anything else maximised."""
    metric, _, mode = text.rpartition(":") if text.endswith((":min", ":max")) else (text, "", "")
    if not metric:
        raise VitolaunchError(f"--by {text!r}: give a metric name, e.g. eval/imagenet/linear_top1")
    return Ranking(metric, mode or ("min" if "loss" in metric.rsplit("/", 1)[-1] else "max"))


@dataclass
class ResultRow:
    sweep: str
    run_id: str
    name: str
    index: int
    params: dict[str, Any]  # the trial's swept values, in spec order
    state: str  # a TrialState value
    objective: float | None
    metrics: dict[str, float] = field(default_factory=dict)  # final values of the shown metrics


def result_row(sweep: RunRecord, trial: RunRecord, state: str, ranking: Ranking) -> ResultRow:
    shown = {k: v for k, v in trial.metrics.items() if k.startswith(_SHOWN_PREFIXES) or k in _SHOWN_KEYS}
    value = trial.metrics.get(ranking.metric)
    return ResultRow(
        sweep=sweep.sweep,
        run_id=trial.run_id,
        name=trial.name,
        index=trial.trial_index,
        params=trial.swept,
        state=state,
        objective=None if value is None or math.isnan(value) else value,
        metrics=dict(sorted(shown.items())),
    )


def rank(rows: Iterable[ResultRow], ranking: Ranking) -> list[ResultRow]:
    """Best first; trials without a value of the objective (still running, failed) last, in trial order."""
    return sorted(rows, key=lambda r: (r.objective is None, ranking.better_first(r.objective or 0.0), r.sweep, r.index))


def best_row(rows: Iterable[ResultRow], ranking: Ranking) -> ResultRow | None:
    """The best trial: among completed trials that have the objective (any trial that has it, if none completed)."""
    scored = [r for r in rows if r.objective is not None]
    completed = [r for r in scored if r.state == "COMPLETED"]
    ranked = rank(completed or scored, ranking)
    return ranked[0] if ranked else None


def swept_keys(rows: Sequence[ResultRow]) -> list[str]:
    """Every swept key of these rows, in the order the spec gave them (first appearance)."""
    keys: dict[str, None] = {}
    for row in rows:
        keys.update(dict.fromkeys(row.params))
    return list(keys)


def metric_keys(rows: Sequence[ResultRow], ranking: Ranking) -> list[str]:
    """The metric columns: the objective first, then the other shown metrics."""
    others = sorted({k for row in rows for k in row.metrics} - {ranking.metric})
    return [ranking.metric, *others]


def resolve_key(rows: Sequence[ResultRow], key: str) -> str:
    """A swept key by its full name or its unique last part (`seed` for `train.seed`)."""
    keys = swept_keys(rows)
    if key in keys:
        return key
    matches = [k for k in keys if k.split(".")[-1] == key or k.endswith("." + key)]
    if len(matches) == 1:
        return matches[0]
    listed = ", ".join(keys) or "none: these sweeps sweep nothing"
    raise VitolaunchError(f"--group-by {key}: not a swept key of these trials (swept keys: {listed})")


@dataclass
class Stat:
    mean: float | None
    std: float | None  # sample standard deviation; None under 2 values
    count: int  # how many values the mean is over


def _stat(values: Sequence[float | None]) -> Stat:
    present = [v for v in values if v is not None and not math.isnan(v)]
    if not present:
        return Stat(None, None, 0)
    return Stat(statistics.fmean(present), statistics.stdev(present) if len(present) > 1 else None, len(present))


@dataclass
class GroupRow:
    """Trials that differ only in the folded key (e.g. seeds), as one row."""

    sweep: str
    params: dict[str, Any]  # the swept values they share (the folded key left out)
    count: int  # trials in the group
    states: dict[str, int]  # how many trials are in each state
    objective: Stat
    metrics: dict[str, Stat]
    run_ids: list[str]
    folded: str  # the key folded over
    folded_values: list[Any] = field(default_factory=list)


def group(rows: Sequence[ResultRow], key: str, ranking: Ranking) -> list[GroupRow]:
    """Fold `key` (a swept key) into mean ± std and count; groups ranked by their mean objective."""
    key = resolve_key(rows, key)
    buckets: dict[tuple[str, str], list[ResultRow]] = {}
    for row in rows:
        shared = {k: v for k, v in row.params.items() if k != key}
        buckets.setdefault((row.sweep, json.dumps(shared, sort_keys=True, default=str)), []).append(row)
    groups = []
    for (sweep, _), members in buckets.items():
        members = sorted(members, key=lambda m: m.index)
        states: dict[str, int] = {}
        for member in members:
            states[member.state] = states.get(member.state, 0) + 1
        names = sorted({k for m in members for k in m.metrics})
        groups.append(GroupRow(
            sweep=sweep,
            params={k: v for k, v in members[0].params.items() if k != key},
            count=len(members),
            states=states,
            objective=_stat([m.objective for m in members]),
            metrics={name: _stat([m.metrics.get(name) for m in members]) for name in names},
            run_ids=[m.run_id for m in members],
            folded=key,
            folded_values=[m.params.get(key) for m in members],
        ))
    return sorted(groups, key=lambda g: (g.objective.mean is None, ranking.better_first(g.objective.mean or 0.0),
                                         g.sweep))


# -- output -------------------------------------------------------------------------------------------------
def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def table_columns(rows: Sequence[ResultRow], ranking: Ranking) -> tuple[list[str], list[str]]:
    return swept_keys(rows), metric_keys(rows, ranking)


def as_records(rows: Sequence[ResultRow], ranking: Ranking) -> list[dict[str, Any]]:
    """Flat dicts, one per trial: rank, sweep, trial, run id, state, each swept key, each metric."""
    params, metrics = table_columns(rows, ranking)
    records = []
    for position, row in enumerate(rows, 1):
        record: dict[str, Any] = {"rank": position if row.objective is not None else None, "sweep": row.sweep,
                                  "trial": row.index, "run_id": row.run_id, "state": row.state}
        record.update({k: row.params.get(k) for k in params})
        record.update({k: row.metrics.get(k) for k in metrics})
        records.append(record)
    return records


def group_records(groups: Sequence[GroupRow], ranking: Ranking) -> list[dict[str, Any]]:
    params = list(dict.fromkeys(k for g in groups for k in g.params))
    metrics = [ranking.metric, *sorted({k for g in groups for k in g.metrics} - {ranking.metric})]
    records = []
    for g in groups:
        record: dict[str, Any] = {"sweep": g.sweep, "count": g.count, "states": g.states}
        record.update({k: g.params.get(k) for k in params})
        for name in metrics:
            stat = g.objective if name == ranking.metric else g.metrics.get(name, Stat(None, None, 0))
            record[f"{name} mean"] = stat.mean
            record[f"{name} std"] = stat.std
            record[f"{name} n"] = stat.count
        record[f"{g.folded} values"] = g.folded_values
        records.append(record)
    return records


def to_csv(records: Sequence[dict[str, Any]]) -> str:
    if not records:
        return ""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(records[0]), lineterminator="\n")
    writer.writeheader()
    for record in records:
        writer.writerow({k: json.dumps(v) if isinstance(v, (list, dict)) else ("" if v is None else v)
                         for k, v in record.items()})
    return out.getvalue()


def to_markdown(records: Sequence[dict[str, Any]]) -> str:
    if not records:
        return "_no trials_\n"
    header = list(records[0])
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for record in records:
        cells = [_fmt(record.get(k)).replace("|", "\\|") for k in header]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def to_json(records: Sequence[dict[str, Any]] | Sequence[Any]) -> str:
    return json.dumps([asdict(r) if hasattr(r, "__dataclass_fields__") else r for r in records], indent=2, default=str)
