"""What the MLflow web UI (3.17) shows when a user opens a sweep: set up through the experiment's tags.

What the UI allows, read from its bundle (mlflow/server/js) and checked in headless Chromium:
- `mlflow.experimentKind`: "custom_model_development" opens the experiment on its runs, not on the GenAI
  overview (traces, latency, tokens) that an experiment of no kind gets.
- A shared view: the experiment tag `mlflow.sharedViewState.<key>` holds a JSON view (search filter, sort,
  selected columns) and `#/experiments/<id>/runs?viewStateShareKey=<key>` opens the runs table in it. The
  UI drops runsExpanded/runsPinned from a shared view, so the view filters on the trials themselves: with
  their parent filtered out they are listed flat, no row to expand by hand. URL search parameters would
  override the shared view, so the URL carries none.
- `workflowType=machine_learning` in the URL puts the sidebar in "Model training" mode; without it a new
  browser starts in GenAI mode, where a run's page is filed under "Evaluations".
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from vitolaunch.results.ranking import Ranking
from vitolaunch.tracking.records import (
    EXPERIMENT_KIND_TRAINING,
    KIND_TRIAL,
    TAG_EXPERIMENT_KIND,
    TAG_KIND,
    TAG_SHARED_VIEW_PREFIX,
    TAG_SWEEP,
)

# Shown beside the swept params and the objective: the training loss, and the linear probe's random-init
# baseline that the README compares against.
_EXTRA_METRICS = ("train/loss", "eval/linear_probe_acc_random_init")
WORKFLOW_PARAM = "workflowType=machine_learning"


def view_key(sweep_name: str) -> str:
    return f"vitolaunch-{sweep_name}"


def runs_page(base_url: str, experiment_id: str, sweep_name: str) -> str:
    """The URL of the sweep's trials in the MLflow UI served at `base_url`."""
    return (f"{base_url.rstrip('/')}/#/experiments/{experiment_id}/runs"
            f"?viewStateShareKey={view_key(sweep_name)}&{WORKFLOW_PARAM}")


def run_page(base_url: str, experiment_id: str, run_id: str) -> str:
    """The URL of one run (e.g. the sweep's parent) in the MLflow UI, in "Model training" mode."""
    return f"{base_url.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}?{WORKFLOW_PARAM}"


def _column(kind: str, key: str) -> str:
    return f"{kind}.`{key}`"  # the UI's canonical column key


def shared_view(sweep_name: str, swept: Sequence[str], ranking: Ranking) -> dict:
    metrics = [ranking.metric, *[m for m in _EXTRA_METRICS if m != ranking.metric]]
    columns = [*(_column("params", k) for k in swept), *(_column("metrics", m) for m in metrics)]
    return {
        "searchFilter": f"tags.`{TAG_SWEEP}` = '{sweep_name}' and tags.`{TAG_KIND}` = '{KIND_TRIAL}'",
        "orderByKey": _column("metrics", ranking.metric),
        "orderByAsc": ranking.mode == "min",
        "selectedColumns": columns,
        # Swept values, then the objective, right after the run name (the UI puts params last otherwise);
        # the objective wide enough for a name like eval/linear_probe_acc, the rest narrow enough to fit.
        "columnOrder": columns,
        "columnWidths": {column: 175 if column == columns[len(swept)] else 120 for column in columns},
    }


def experiment_tags(sweep_name: str, swept: Sequence[str], ranking: Ranking) -> dict[str, str]:
    return {
        TAG_EXPERIMENT_KIND: EXPERIMENT_KIND_TRAINING,
        TAG_SHARED_VIEW_PREFIX + view_key(sweep_name): json.dumps(shared_view(sweep_name, swept, ranking)),
    }
