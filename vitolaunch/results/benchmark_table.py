"""The paper's table of an evaluate sweep: one row per evaluated checkpoint, one column per benchmark metric.

Built from the trials' final metrics (`eval/<benchmark>/<protocol>_top1`), so a benchmark added later is one
more column, and the random-init baseline sits beside each number.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from vitolaunch.results.ranking import ResultRow

# eval/<benchmark>/<protocol>_top1[_random_init]: the headline numbers (counts and the like stay in results.json)
_HEADLINE = re.compile(r"eval/(?P<bench>[a-z0-9_]+)/(?P<protocol>linear|knn\d+)_top1(?P<baseline>_random_init)?$")


def benchmark_columns(rows: Sequence[ResultRow]) -> list[str]:
    """The headline metrics any row has, by benchmark, then protocol (linear first, kNN by k), baseline after."""
    found = {key for row in rows for key in row.metrics if _HEADLINE.match(key)}

    def order(key: str) -> tuple:
        match = _HEADLINE.match(key)
        protocol = match["protocol"]
        k = int(protocol[3:]) if protocol.startswith("knn") else 0
        return match["bench"], protocol != "linear", k, bool(match["baseline"])

    return sorted(found, key=order)


def column_title(key: str) -> str:
    match = _HEADLINE.match(key)
    protocol = "linear" if match["protocol"] == "linear" else f"kNN k={match['protocol'][3:]}"
    return f"{match['bench']} {protocol}" + (" (random init)" if match["baseline"] else "")


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
