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


def test_a_narrow_terminal_squeezes_the_wide_columns_never_the_rank_trial_or_state() -> None:
    # an evaluate sweep's comparison at 180 columns (its ranking table lost "#" and cut COMPLETED below 210)
    sweep = RunRecord("s" * 32, "quickstart-eval", "RUNNING", 0.0, None, {"vitolaunch.sweep": "quickstart-eval"})
    ranking = Ranking("eval/imagenet/linear_top1", "max")
    names = ["imagenet/knn10_top1", "imagenet/knn20_top1", "imagenet_c/mce", "cue_conflict/shape_bias", "davis/jf"]
    rows = [ResultRow("quickstart-eval", f"{i}" * 32, f"trial-{i}", i,
                      {"pretrain.run": f"{i}" * 32, "pretrain.sweep": "quickstart", "pretrain.loss.temperature": t,
                       "pretrain.step": 600, "pretrain.weights": "torchvision-layout-random" if i else "-"},
                      "COMPLETED", 0.3, {"eval/imagenet/linear_top1": 0.3, **{f"eval/{n}": 0.5 for n in names}})
            for i, t in enumerate([0.05, 0.1])]
    console = Console(file=io.StringIO(), width=180, color_system=None)
    console.print(render_trials(Comparison([sweep], ranking, rows, [])))
    first = next(line for line in console.file.getvalue().splitlines() if line.startswith("│"))
    assert first.split("│")[1].strip() == "1" and first.split("│")[2].strip() == "000"
    assert "COMPLETED" in first
