"""What `vitolaunch sweep --dry-run` shows: the trials and resources, computed without any service."""

from __future__ import annotations

import json
from collections.abc import Sequence

from vitolaunch.spec import SweepSpec, Trial
from vitolaunch.spec.resources import Resources


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


def resource_lines(resources: Resources, sources: dict[str, str]) -> list[str]:
    """The merged `resources` a sweep runs with, one value a line, each with where it came from: the spec,
    a cluster profile, an `-o` override, or the default. Empty defaults are left out."""
    lines = []
    for key, value in resources.model_dump().items():
        if isinstance(value, dict):
            items = [(f"{key}.{sub}", subvalue) for sub, subvalue in value.items()]
        else:
            items = [(key, value)]
        for name, item in items:
            origin = sources.get(name)
            if origin is None and item in (None, [], {}, False):
                continue
            if origin is None:
                origin = "derived from the checkpoint size class" if name == "signal_delay_s" else "default"
            lines.append(f"  {name} = {json.dumps(item)}  ({origin})")
    return lines
