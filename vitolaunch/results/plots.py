"""PNG plots of a sweep's results: the objective against a swept parameter, and the loss curves of its trials.

matplotlib is imported here only (its import costs ~0.5 s): `compare` loads this module for --plot alone.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from vitolaunch.errors import VitolaunchError
from vitolaunch.results.ranking import Ranking, ResultRow, swept_keys


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display on a login node or in a job
    import matplotlib.pyplot as plt

    return plt


def _numeric(values: Sequence[Any]) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def choose_x(rows: Sequence[ResultRow], fold: str | None = None) -> str:
    """The natural x axis: the first swept key (spec order) that varies and is not a seed nor the folded key."""
    keys = [k for k in swept_keys(rows) if k != fold]
    if not keys:
        raise VitolaunchError("--plot needs a swept parameter to put on the x axis: these trials sweep none"
                              + (f" besides {fold}" if fold else ""))
    varying = [k for k in keys if len({json.dumps(r.params.get(k), default=str) for r in rows}) > 1]
    preferred = [k for k in varying if not k.split(".")[-1].endswith("seed")]
    return (preferred or varying or keys)[0]


def objective_plot(
    rows: Sequence[ResultRow], ranking: Ranking, path: str | Path, x_key: str, fold: str | None = None,
    title: str | None = None,
) -> Path:
    """The objective against `x_key`: one line per combination of the other swept values; where several trials
    share a point (the folded key, e.g. seeds), the mean with the standard deviation as error bars."""
    plt = _pyplot()
    others = [k for k in swept_keys(rows) if k not in (x_key, fold)]
    lines: dict[str, dict[str, list[float]]] = {}
    x_values: dict[str, Any] = {}
    for row in rows:
        if row.objective is None or x_key not in row.params:
            continue
        label = ", ".join(f"{k.split('.')[-1]}={row.params.get(k)}" for k in others) or "trials"
        if len({r.sweep for r in rows}) > 1:
            label = f"{row.sweep}: {label}"
        x = json.dumps(row.params[x_key], default=str)
        x_values[x] = row.params[x_key]
        lines.setdefault(label, {}).setdefault(x, []).append(row.objective)
    numeric = _numeric(list(x_values.values()))
    order = sorted(x_values, key=lambda x: x_values[x] if numeric else str(x_values[x]))
    position = {x: (x_values[x] if numeric else i) for i, x in enumerate(order)}
    figure, axes = plt.subplots(figsize=(7, 4.5), dpi=110)
    for label, points in sorted(lines.items()):
        xs = sorted(points, key=lambda x: order.index(x))
        means = [statistics.fmean(points[x]) for x in xs]
        errors = [statistics.stdev(points[x]) if len(points[x]) > 1 else 0.0 for x in xs]
        axes.errorbar([position[x] for x in xs], means, yerr=errors if any(errors) else None,
                      marker="o", capsize=4, label=label)
    if numeric and len(order) > 1:
        low, high = min(x_values.values()), max(x_values.values())
        if low > 0 and high / low >= 10:  # learning rates and temperatures are compared on ratios
            axes.set_xscale("log")
    else:
        axes.set_xticks(range(len(order)), [str(x_values[x]) for x in order])
    better = "higher is better" if ranking.mode == "max" else "lower is better"
    axes.set_xlabel(x_key)
    axes.set_ylabel(f"{ranking.metric} ({better})")
    folded = f"; mean ± std over {fold}" if fold else ""
    axes.set_title(title or f"{ranking.metric} vs {x_key}{folded}", fontsize=10)
    axes.grid(alpha=0.3)
    if not lines:
        axes.text(0.5, 0.5, f"no trial has {ranking.metric} yet", ha="center", va="center", transform=axes.transAxes)
    elif len(lines) > 1 or others:
        axes.legend(fontsize=8)
    return _save(plt, figure, path)


def loss_curves_plot(curves: Mapping[str, Sequence[tuple[int, float]]], path: str | Path, metric: str = "train/loss",
                     title: str | None = None) -> Path:
    """Every trial's `metric` against the step, on one chart."""
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(7, 4.5), dpi=110)
    for label, points in curves.items():
        points = [(s, v) for s, v in sorted(points) if not math.isnan(v)]
        if points:
            axes.plot([s for s, _ in points], [v for _, v in points], label=label, linewidth=1.2)
    axes.set_xlabel("step")
    axes.set_ylabel(metric)
    axes.set_title(title or f"{metric} of every trial", fontsize=10)
    axes.grid(alpha=0.3)
    if any(curves.values()):  # an evaluate sweep's trials log no loss: no line, no legend (and no warning)
        axes.legend(fontsize=7)
    return _save(plt, figure, path)


def _save(plt, figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, format="png")
    plt.close(figure)
    return path
