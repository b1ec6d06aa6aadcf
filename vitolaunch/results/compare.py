"""`vitolaunch compare`: the trials of one or more sweeps, ranked by the objective, as a rich table.

Reads through any RunQueries (the sqlite reader without MLflow, or the Registry for a tracking server) and
asks the scheduler for the states of trials MLflow still calls active, like `status`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from vitolaunch.errors import VitolaunchError
from vitolaunch.results.ranking import GroupRow, Ranking, ResultRow, rank, ranking_of, result_row, swept_keys
from vitolaunch.results.states import observe_trials, state_markup
from vitolaunch.tracking.store import RunQueries, RunRecord


@dataclass
class Comparison:
    sweeps: list[RunRecord]
    ranking: Ranking
    rows: list[ResultRow]  # ranked, best first
    problems: list[str]  # what kept the scheduler from vouching for a state


def collect(reader: RunQueries, names: Sequence[str], by: Ranking | None = None) -> Comparison:
    """The trials of the named sweeps, ranked by their objective, or by `by` (any metric the trials log)."""
    sweeps = []
    for name in names:
        sweep = reader.sweep_of(reader.resolve(name))
        if sweep.run_id not in {s.run_id for s in sweeps}:
            sweeps.append(sweep)
    rankings = {ranking_of(s) for s in sweeps} if by is None else {by}
    ranking = by or ranking_of(sweeps[0])
    if len(rankings) > 1:
        listed = ", ".join(f"{s.sweep}: {ranking_of(s).metric} {ranking_of(s).mode}" for s in sweeps)
        raise VitolaunchError(f"these sweeps rank their trials differently ({listed}): compare them one at a time, "
                              "or rank them all by one metric with --by METRIC")
    trials_of = {s.run_id: reader.trials(s) for s in sweeps}
    observed = observe_trials([t for trials in trials_of.values() for t in trials])
    rows = [result_row(s, t, observed.states[t.run_id].value, ranking) for s in sweeps for t in trials_of[s.run_id]]
    return Comparison(sweeps, ranking, rank(rows, ranking), observed.problems)


def _short(metric: str) -> str:
    """A column header: `eval/` dropped; a benchmark's metric on two lines (benchmark, then protocol)."""
    name = metric.removeprefix("eval/")
    bench, _, rest = name.partition("/")
    if not rest:
        return name
    return f"{bench}\n{rest.removesuffix('_top1').replace('_top1_random_init', ' (rand)')}"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _metric_columns(metrics: Sequence[str], ranking: Ranking, limit: int = 6) -> list[str]:
    """The objective, then the others: the baselines (random init, DAVIS's no motion) after the rest, and each
    benchmark's headline numbers (the paper table's: top-1, mCE, shape bias, J&F) before its rarer metrics."""
    from vitolaunch.results.benchmark_table import _HEADLINE

    shown = [m for m in metrics if m != ranking.metric and not _is_count(m)]
    others = sorted(shown, key=lambda m: ("random_init" in m or "no_motion" in m, not _HEADLINE.match(m), m))
    return [ranking.metric, *others[: limit - 1]]


def _is_count(metric: str) -> bool:
    """How many images (sequences, objects) a benchmark scored or skipped: beside the numbers in --json and results.json, not a column."""
    counts = ("train_images", "val_images_scored", "images_scored", "skipped_images", "sequences_scored",
              "objects_scored")
    return metric.split("/")[-1].split("_random_init")[0] in counts


def _cell(value) -> str:
    """A swept value as a table cell; a run id (32 hex digits) as the 12 characters `status` shows."""
    text = str(value)
    return text[:12] if len(text) == 32 and all(c in "0123456789abcdef" for c in text) else text


def _title(comparison: Comparison, grouped: str | None) -> str:
    names = ", ".join(s.sweep for s in comparison.sweeps)
    better = "higher" if comparison.ranking.mode == "max" else "lower"
    folded = f"; mean ± std over {grouped}" if grouped else ""
    return f"{names}: ranked by {comparison.ranking.metric} ({better} is better){folded}"


def render_trials(comparison: Comparison):
    from rich.table import Table

    rows, ranking = comparison.rows, comparison.ranking
    params = swept_keys(rows)
    metrics = _metric_columns(sorted({k for r in rows for k in r.metrics} | {ranking.metric}), ranking)
    several = len(comparison.sweeps) > 1
    table = Table(title=_title(comparison, None), header_style="bold", caption=_caption(comparison),
                  caption_justify="left")
    for column in ["#", *(["sweep"] if several else []), "trial", "run id", *params, "state", *map(_short, metrics)]:
        # min_width: on a narrow terminal rich squeezes the widest columns, never the rank, trial or state away
        table.add_column(column, no_wrap=True, justify="right" if column in map(_short, metrics) else "left",
                         min_width={"#": 2, "trial": 5, "state": 9}.get(column))
    for position, row in enumerate(rows, 1):
        cells = [str(position) if row.objective is not None else "-", *([row.sweep] if several else []),
                 f"{row.index:03d}", row.run_id[:12], *(_cell(row.params.get(k, "-")) for k in params),
                 state_markup(row.state),
                 *(_num(row.objective if m == ranking.metric else row.metrics.get(m)) for m in metrics)]
        if position == 1 and row.objective is not None:
            cells[0] = "[bold green]1[/]"
        table.add_row(*cells)
    return table


def render_benchmarks(comparison: Comparison):
    """The paper's table of an evaluate sweep (the parent run's summary/benchmarks.md) turned on its side for a
    terminal: one row per benchmark number, one column per evaluated checkpoint; None when no trial has one."""
    from rich.table import Table

    from vitolaunch.results.benchmark_table import benchmark_table

    records = benchmark_table(comparison.rows)
    if not records:
        return None
    numbers = [key for key in records[0] if key not in ("trial", "checkpoint", "state")]
    table = Table(title="benchmarks: checkpoints side by side (the random-init and no-motion baselines as their own rows)",
                  header_style="bold", title_justify="left")
    table.add_column("benchmark", no_wrap=True)
    for record in records:
        table.add_column(f"{record['trial']}\n" + "\n".join(record["checkpoint"].split()), justify="right")
    for number in numbers:
        table.add_row(number, *(_num(record[number]) for record in records))
    return table


def render_groups(comparison: Comparison, groups: Sequence[GroupRow]):
    from rich.table import Table

    ranking = comparison.ranking
    params = list(dict.fromkeys(k for g in groups for k in g.params))
    metrics = _metric_columns(sorted({k for g in groups for k in g.metrics} | {ranking.metric}), ranking, limit=4)
    several = len(comparison.sweeps) > 1
    folded = groups[0].folded if groups else None
    table = Table(title=_title(comparison, folded), header_style="bold", caption=_caption(comparison),
                  caption_justify="left")
    for column in ["#", *(["sweep"] if several else []), *params, "n", "states", *map(_short, metrics)]:
        table.add_column(column, no_wrap=True)
    for position, g in enumerate(groups, 1):
        stats = [g.objective if m == ranking.metric else g.metrics.get(m) for m in metrics]
        table.add_row(
            str(position) if g.objective.mean is not None else "-", *([g.sweep] if several else []),
            *(str(g.params.get(k, "-")) for k in params), str(g.count),
            " ".join(state_markup(s, f"{n} {s}") for s, n in sorted(g.states.items())),
            *(_stat_text(s) for s in stats),
        )
    return table


def _stat_text(stat) -> str:
    if stat is None or stat.mean is None:
        return "-"
    spread = f" ± {stat.std:.4f}" if stat.std is not None else ""
    return f"{stat.mean:.4f}{spread} (n={stat.count})"


def _caption(comparison: Comparison) -> str | None:
    lines = [f"[yellow]{p}: states it cannot vouch for show as UNKNOWN[/]" for p in comparison.problems]
    waiting = sum(1 for r in comparison.rows if r.objective is None)
    if waiting:
        lines.append(f"{waiting} trial(s) have no {comparison.ranking.metric} yet "
                     "(still running, or ended before the evaluation)")
    return "\n".join(lines) or None
