"""Every trial state has one colour, used by status and compare alike (compare once crashed on PRUNED)."""

from __future__ import annotations

import io

from rich.console import Console

from vitolaunch.results.compare import Comparison, render_groups, render_trials
from vitolaunch.results.ranking import Ranking, ResultRow, group
from vitolaunch.results.states import STATE_STYLE, TrialState, state_markup
from vitolaunch.tracking.store import RunRecord


def _text(renderable) -> str:
    console = Console(file=io.StringIO(), width=200, color_system=None)
    console.print(renderable)
    return console.file.getvalue()


def test_every_state_has_a_style_and_renders_as_its_name() -> None:
    assert set(STATE_STYLE) == set(TrialState)
    for state in TrialState:
        assert _text(state_markup(state.value)).strip() == state.value


def test_an_unknown_word_renders_plainly_instead_of_breaking_the_markup() -> None:
    assert _text(state_markup("SOMETHING")).strip() == "SOMETHING"


def test_compare_renders_a_sweep_with_a_pruned_trial() -> None:
    sweep = RunRecord("s" * 32, "prune", "RUNNING", 0.0, None, {"vitolaunch.sweep": "prune"})
    ranking = Ranking("eval/acc", "max")
    rows = [ResultRow("prune", "a" * 32, "trial-0", 0, {"train.seed": 0}, "COMPLETED", 0.9, {"eval/acc": 0.9}),
            ResultRow("prune", "b" * 32, "trial-1", 1, {"train.seed": 1}, "PRUNED", None, {})]
    comparison = Comparison([sweep], ranking, rows, [])
    assert "PRUNED" in _text(render_trials(comparison))
    assert "1 PRUNED" in _text(render_groups(comparison, group(rows, "train.seed", ranking)))
