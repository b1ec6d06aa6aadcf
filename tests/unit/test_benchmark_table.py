"""The paper-shaped table of an evaluate sweep: checkpoints by benchmarks, the baseline beside each number."""

from __future__ import annotations

from vitolaunch.results.benchmark_table import benchmark_columns, benchmark_table
from vitolaunch.results.ranking import ResultRow


def _row(index: int, metrics: dict[str, float]) -> ResultRow:
    return ResultRow("ev", f"run{index}", f"ev-{index}", index, {"pretrain.loss.temperature": 0.1 * (index + 1)},
                     "COMPLETED", None, metrics)


def test_columns_by_benchmark_then_protocol_with_the_baseline_after() -> None:
    rows = [_row(0, {"eval/imagenet/knn20_top1": 0.5, "eval/imagenet/knn10_top1": 0.4, "eval/imagenet/linear_top1": 0.6,
                     "eval/imagenet/linear_top1_random_init": 0.1, "eval/imagenet/val_images_scored": 48.0,
                     "eval/c/linear_top1": 0.3, "train/loss": 1.0})]
    assert benchmark_columns(rows) == ["eval/c/linear_top1", "eval/imagenet/linear_top1",
                                       "eval/imagenet/linear_top1_random_init", "eval/imagenet/knn10_top1",
                                       "eval/imagenet/knn20_top1"]


def test_the_augmented_linear_protocol_is_a_column_after_the_cached_probe() -> None:
    rows = [_row(0, {"eval/imagenet/knn20_top1": 0.5, "eval/imagenet/linear_augmented_top1": 0.62,
                     "eval/imagenet/linear_augmented_top1_random_init": 0.05, "eval/imagenet/linear_top1": 0.6,
                     "eval/imagenet/linear_augmented_top5": 0.9})]
    assert benchmark_columns(rows) == ["eval/imagenet/linear_top1", "eval/imagenet/linear_augmented_top1",
                                       "eval/imagenet/linear_augmented_top1_random_init", "eval/imagenet/knn20_top1"]
    (record,) = benchmark_table(rows)
    assert record["imagenet linear (augmented)"] == 0.62 and record["imagenet linear (augmented) (random init)"] == 0.05


def test_one_row_per_checkpoint_in_trial_order() -> None:
    rows = [_row(1, {"eval/imagenet/linear_top1": 0.7}), _row(0, {"eval/imagenet/linear_top1": 0.6})]
    table = benchmark_table(rows)
    assert [r["trial"] for r in table] == ["000", "001"]
    assert table[0] == {"trial": "000", "checkpoint": "loss.temperature=0.1", "state": "COMPLETED",
                        "imagenet linear": 0.6}


def test_a_sweep_without_benchmark_metrics_has_no_table() -> None:
    assert benchmark_table([_row(0, {"eval/linear_probe_acc": 0.3})]) == []


def test_compare_by_any_metric_parses_its_direction() -> None:
    from vitolaunch.results.ranking import Ranking, parse_ranking

    assert parse_ranking("eval/imagenet/knn20_top1") == Ranking("eval/imagenet/knn20_top1", "max")
    assert parse_ranking("train/loss") == Ranking("train/loss", "min")
    assert parse_ranking("eval/imagenet/linear_top1:min") == Ranking("eval/imagenet/linear_top1", "min")


def test_status_shows_where_an_evaluation_is_and_why_one_failed() -> None:
    import io

    from rich.console import Console

    from tests.unit.run_records import run_record
    from vitolaunch.results.states import TrialState
    from vitolaunch.results.status_table import TrialRow, _failure, _progress, render_table

    running = run_record("RUNNING", {"vito.eval_progress": "imagenet train 1200/5000"})
    assert _progress(running, TrialState.RUNNING) == "imagenet train 1200/5000"
    assert _progress(running, TrialState.COMPLETED) is None  # progress only while it runs
    failed = run_record("FAILED", {"vito.eval_error": "eval.benchmarks.imagenet.root /d: no train/ folder"})
    assert _failure(failed, TrialState.FAILED).endswith("no train/ folder")
    rows = [TrialRow("ev", "s", "r1", 0, "k", {}, "RUNNING", None, None, None, None, None, 3.0, "1_0",
                     progress="imagenet train 1200/5000"),
            TrialRow("ev", "s", "r2", 1, "k", {}, "FAILED", None, None, None, None, None, 1.0, "1_1",
                     note=_failure(failed, TrialState.FAILED))]
    console = Console(file=io.StringIO(), width=250, color_system=None)
    console.print(render_table(rows))
    text = console.file.getvalue()
    assert "imagenet train 1200/5000" in text and "no train/ folder" in text


def test_compare_shows_benchmark_numbers_compactly_and_counts_only_in_json() -> None:
    from vitolaunch.results.compare import _cell, _metric_columns, _short
    from vitolaunch.results.ranking import Ranking

    ranking = Ranking("eval/imagenet/linear_top1", "max")
    metrics = ["eval/imagenet/linear_top1", "eval/imagenet/knn20_top1_random_init", "eval/imagenet/val_images_scored",
               "eval/imagenet/skipped_images_random_init", "eval/imagenet/knn20_top1"]
    assert _metric_columns(metrics, ranking) == ["eval/imagenet/linear_top1", "eval/imagenet/knn20_top1",
                                                 "eval/imagenet/knn20_top1_random_init"]
    assert _short("eval/imagenet/knn20_top1_random_init") == "imagenet\nknn20 (rand)"
    assert _short("eval/linear_probe_acc") == "linear_probe_acc"
    assert _cell("7fffce1c928448299468aa368d09a799") == "7fffce1c9284" and _cell(0.05) == "0.05"


def test_the_robustness_benchmarks_are_columns_of_the_same_table() -> None:
    rows = [_row(0, {"eval/imagenet/linear_top1": 0.6, "eval/imagenet_c/mce": 0.8, "eval/imagenet_c/ce_gaussian_noise": 0.9,
                     "eval/imagenet_r/top1": 0.2, "eval/cue_conflict/shape_bias": 0.4,
                     "eval/cue_conflict/shape_fraction": 0.1, "eval/imagenet_c/mce_random_init": 1.0})]
    assert benchmark_columns(rows) == ["eval/cue_conflict/shape_bias", "eval/imagenet/linear_top1",
                                       "eval/imagenet_c/mce", "eval/imagenet_c/mce_random_init", "eval/imagenet_r/top1"]
    (record,) = benchmark_table(rows)
    assert record["imagenet_c mCE"] == 0.8 and record["imagenet_c mCE (random init)"] == 1.0
    assert record["imagenet_r top-1"] == 0.2 and record["cue_conflict shape bias"] == 0.4


def test_davis_jf_is_a_column_with_its_no_motion_and_random_init_baselines_after() -> None:
    rows = [_row(0, {"eval/davis/jf": 0.5, "eval/davis/jf_random_init": 0.3, "eval/davis/jf_no_motion": 0.4,
                     "eval/davis/j_mean": 0.45, "eval/davis/objects_scored": 6.0})]
    assert benchmark_columns(rows) == ["eval/davis/jf", "eval/davis/jf_random_init", "eval/davis/jf_no_motion"]
    (record,) = benchmark_table(rows)
    assert record["davis J&F"] == 0.5 and record["davis J&F (random init)"] == 0.3
    assert record["davis J&F (no motion)"] == 0.4


def test_compare_puts_each_benchmarks_headline_before_its_rarer_metrics_and_the_baselines_last() -> None:
    from vitolaunch.results.compare import _metric_columns
    from vitolaunch.results.ranking import Ranking

    ranking = Ranking("eval/imagenet/linear_top1", "max")
    metrics = sorted(["eval/imagenet/linear_top1", "eval/cue_conflict/shape_fraction", "eval/cue_conflict/shape_bias",
                      "eval/davis/f_decay", "eval/davis/jf", "eval/davis/jf_no_motion", "eval/davis/jf_random_init",
                      "eval/davis/sequences_scored", "eval/davis/objects_scored", "eval/davis/j_mean"])
    assert _metric_columns(metrics, ranking) == ["eval/imagenet/linear_top1", "eval/cue_conflict/shape_bias",
                                                 "eval/davis/jf", "eval/cue_conflict/shape_fraction",
                                                 "eval/davis/f_decay", "eval/davis/j_mean"]
    assert _metric_columns(metrics, ranking, limit=9)[-3:] == ["eval/davis/j_mean", "eval/davis/jf_no_motion",
                                                               "eval/davis/jf_random_init"]


def test_compare_prints_the_paper_table_on_its_side_every_benchmark_a_row_every_checkpoint_a_column() -> None:
    import io

    from rich.console import Console

    from vitolaunch.results.compare import Comparison, render_benchmarks
    from vitolaunch.results.ranking import Ranking
    from vitolaunch.tracking.store import RunRecord

    sweep = RunRecord("s" * 32, "ev", "FINISHED", 0.0, None, {"vitolaunch.sweep": "ev"})
    rows = [_row(0, {"eval/imagenet/linear_top1": 0.61, "eval/imagenet_c/mce": 0.83, "eval/davis/jf": 0.52,
                     "eval/davis/jf_no_motion": 0.41, "eval/ucf101/linear_top1": 0.33}),
            _row(1, {"eval/imagenet/linear_top1": 0.64, "eval/imagenet_c/mce": 0.79})]
    comparison = Comparison([sweep], Ranking("eval/imagenet/linear_top1", "max"), rows, [])
    console = Console(file=io.StringIO(), width=200, color_system=None)
    console.print(render_benchmarks(comparison))
    lines = {line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:-1]]
             for line in console.file.getvalue().splitlines() if line.startswith("│")}
    assert lines["imagenet linear"] == ["0.6100", "0.6400"] and lines["imagenet_c mCE"] == ["0.8300", "0.7900"]
    assert lines["davis J&F"] == ["0.5200", "-"] and lines["davis J&F (no motion)"] == ["0.4100", "-"]
    assert lines["ucf101 linear"] == ["0.3300", "-"]
    assert "loss.temperature=0.2" in console.file.getvalue()  # each column names its checkpoint
    assert render_benchmarks(Comparison([sweep], comparison.ranking, [_row(0, {"eval/acc": 1.0})], [])) is None
