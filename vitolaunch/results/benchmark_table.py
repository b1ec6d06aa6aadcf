"""The paper's table of an evaluate sweep: one row per evaluated checkpoint, one column per benchmark metric.

Built from the trials' final metrics (`eval/<benchmark>/...`: the probes' top-1, mCE, A/R top-1, shape bias, DAVIS
J&F), so a benchmark added later is one more column, and the random-init baseline sits beside each number.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from vitolaunch.results.ranking import ResultRow

# The headline numbers of each benchmark kind (counts and per-corruption values stay in results.json and the CSVs):
# image folders' probes (cached and augmented linear, kNN), ImageNet-C's mCE, A/R's and 3DCC's top-1, cue-conflict's
# shape bias, DAVIS's J&F; `_random_init` after (and DAVIS's `_no_motion`).
_HEADLINE = re.compile(r"eval/(?P<bench>[a-z0-9_]+)/"
                       r"(?P<protocol>linear_top1|linear_augmented_top1|knn\d+_top1|mce|relative_mce|top1|shape_bias|jf)"
                       r"(?P<baseline>_random_init|_no_motion)?$")
_ORDER = ("linear_top1", "linear_augmented_top1", "knn", "top1", "mce", "relative_mce", "shape_bias", "jf")
_TITLES = {"linear_top1": "linear", "linear_augmented_top1": "linear (augmented)", "top1": "top-1", "mce": "mCE",
           "relative_mce": "relative mCE", "shape_bias": "shape bias", "jf": "J&F"}
_BASELINES = {None: "", "_random_init": " (random init)", "_no_motion": " (no motion)"}  # DAVIS's copies the 1st mask


def benchmark_columns(rows: Sequence[ResultRow]) -> list[str]:
    """The headline metrics any row has, by benchmark, then protocol (linear first, kNN by k), baseline after."""
    found = {key for row in rows for key in row.metrics if _HEADLINE.match(key)}

    def order(key: str) -> tuple:
        match = _HEADLINE.match(key)
        protocol = match["protocol"]
        knn = protocol.startswith("knn")
        return (match["bench"], _ORDER.index("knn" if knn else protocol), int(protocol[3:-5]) if knn else 0,
                list(_BASELINES).index(match["baseline"]))

    return sorted(found, key=order)


def column_title(key: str) -> str:
    match = _HEADLINE.match(key)
    protocol = match["protocol"]
    title = f"kNN k={protocol[3:-5]}" if protocol.startswith("knn") else _TITLES[protocol]
    return f"{match['bench']} {title}" + _BASELINES[match["baseline"]]


def checkpoint_label(params: dict[str, Any]) -> str:
    """What an evaluation evaluated, short: its swept values without the run id (`pretrain.` dropped)."""
    return " ".join(f"{k.removeprefix('pretrain.')}={v}" for k, v in params.items() if not k.endswith(".run"))


def benchmark_table(rows: Sequence[ResultRow]) -> list[dict[str, Any]]:
    """One record per trial: which checkpoint (the evaluation's swept values), then each headline top-1."""
    columns = benchmark_columns(rows)
    if not columns:
        return []
    table = []
    for row in sorted(rows, key=lambda r: r.index):
        label = checkpoint_label(row.params) or row.name
        record: dict[str, Any] = {"trial": f"{row.index:03d}", "checkpoint": label, "state": row.state}
        record.update({column_title(c): row.metrics.get(c) for c in columns})
        table.append(record)
    return table
