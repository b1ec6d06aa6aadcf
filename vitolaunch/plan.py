"""What `vitolaunch sweep --dry-run` shows: the trials and resources, computed without any service."""

from __future__ import annotations

from collections.abc import Sequence

from vitolaunch.spec import SweepSpec, Trial


def render_plan(spec: SweepSpec, trials: Sequence[Trial], cluster: str):
    from rich.table import Table

    r = spec.resources
    ranks = f"{r.nodes} node(s) x {r.tasks_per_node} task(s)" + (f", {r.gpus_per_node} GPU/node" if r.gpus_per_node else "")
    title = f"{spec.name}: {len(trials)} {spec.task} trials on {cluster} ({ranks}, {r.timeout_min} min)"
    table = Table(title=title, header_style="bold")
    swept = list(trials[0].params) if trials else []
    table.add_column("trial")
    table.add_column("key")
    for name in swept:
        table.add_column(name)
    table.add_column("steps")
    table.add_column("batch")
    for trial in trials:
        values = [str(trial.params[name]) for name in swept]
        cfg = trial.config
        table.add_row(f"{trial.index:03d}", trial.key, *values, str(cfg.train.steps), str(cfg.data.batch_size))
    return table
