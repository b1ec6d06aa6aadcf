"""The ucf101 kind of eval.benchmarks: its config (defaults, errors naming the key), the launcher's layout check,
the protocol's pure parts (frame-counted batching, groups, the group-disjoint holdout, per-class rows) and its
column in the paper table. The extraction and scoring on real clips: tests/integration/test_ucf101_*.py."""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from vito.config import ImageFolderBenchmark, Ucf101Benchmark, VitoConfig
from vito.eval.protocols.ucf101 import clip_batching, clip_group, group_holdout, per_class_rows
from vitolaunch.errors import SpecError
from vitolaunch.launch.benchmark_check import check_benchmark_roots
from vitolaunch.spec import expand, load_spec

UCF = {"kind": "ucf101", "root": "/data/UCF-101"}


def _cfg(**benchmarks) -> VitoConfig:
    return VitoConfig.model_validate({"eval": {"benchmarks": benchmarks}})


# -- config ------------------------------------------------------------------------------------------------


def test_defaults_and_no_readout_needed_beside_an_image_folder() -> None:
    cfg = _cfg(ucf101=UCF, imagenet={"root": "/in1k"})
    bench = cfg.eval.benchmarks["ucf101"]
    assert isinstance(bench, Ucf101Benchmark) and isinstance(cfg.eval.benchmarks["imagenet"], ImageFolderBenchmark)
    assert (bench.split, bench.splits_dir, bench.frames_per_clip) == (1, None, 8)
    assert (bench.resize, bench.crop, bench.interpolation, bench.antialias) == (256, 224, "bilinear", True)
    assert (bench.linear, bench.linear_epochs, bench.linear_batch_size, bench.linear_holdout) == (True, 100, 256, 0.1)
    assert bench.linear_lr_grid == [0.01, 0.03, 0.1, 0.3, 1.0] and not bench.knn
    assert VitoConfig.model_validate(cfg.to_dict()).fingerprint() == cfg.fingerprint()  # round trip
    alone = _cfg(u={**UCF, "split": 3, "splits_dir": "~/lists"}).eval.benchmarks["u"]
    assert alone.split == 3 and alone.splits_dir == str(Path.home() / "lists")


@pytest.mark.parametrize(("update", "key", "says"), [
    ({"split": 4}, "split", "less than or equal to 3"),
    ({"split": 0}, "split", "greater than or equal to 1"),
    ({"split": True}, "split", "split is 1, 2 or 3"),
    ({"frames_per_clip": 0}, "frames_per_clip", "greater than or equal to 1"),
    ({"linear_holdout": 1.0}, "linear_holdout", "less than 1"),
    ({"knn": True, "knn_k": [0]}, "knn_k", "every k is at least 1"),
    ({"readout": "imagenet"}, "readout", "Extra inputs are not permitted"),
    ({"linear": False}, None, "linear and knn are both false"),
])
def test_bad_values_are_refused_naming_the_key(update, key, says) -> None:
    with pytest.raises(ValidationError) as refusal:
        _cfg(ucf={**UCF, **update})
    (error,) = refusal.value.errors()
    assert error["loc"][:4] == ("eval", "benchmarks", "ucf", "ucf101") and error["loc"][4:] == ((key,) if key else ())
    assert says in error["msg"]


def test_the_unknown_kind_message_lists_ucf101() -> None:
    with pytest.raises(ValidationError, match="image_folder, corruptions, class_subset, cue_conflict, ucf101"):
        _cfg(x={"kind": "ucf", "root": "/u"})


def _spec(folder: Path, ucf: str) -> Path:
    path = folder / "eval.yaml"
    path.write_text(textwrap.dedent(f"""\
        name: ev
        task: evaluate
        evaluate: {{checkpoints: [{folder / 'ckpt'}]}}
        base:
          eval:
            benchmarks:
              ucf:
                kind: ucf101
        """) + textwrap.indent(ucf, " " * 8) + "resources: {cluster: local}\n")
    return path


def test_the_spec_names_the_key_and_its_line_without_the_kind(tmp_path: Path) -> None:
    with pytest.raises(SpecError) as refusal:
        load_spec(_spec(tmp_path, "root: /u\nsplit: 4\n"))
    assert str(refusal.value).startswith(f"{tmp_path / 'eval.yaml'}:10: key 'base.eval.benchmarks.ucf.split': "), refusal.value
    with pytest.raises(SpecError) as refusal:
        load_spec(_spec(tmp_path, "root: /u\nlinear: false\n"))
    assert "key 'base.eval.benchmarks.ucf': linear and knn are both false" in str(refusal.value)


# -- the launcher's check of a visible root ------------------------------------------------------------------


@pytest.fixture(scope="module")
def ucf_root(tmp_path_factory) -> Path:
    from vito.eval.fixtures.ucf101 import write_ucf_fixture

    return write_ucf_fixture(tmp_path_factory.mktemp("ucf") / "UCF-101", num_frames=4, size=16)


def test_a_visible_root_in_the_layout_passes_and_a_hidden_one_is_left_to_the_job(tmp_path: Path, ucf_root) -> None:
    for root in (ucf_root, "/only/on/the/compute/nodes"):
        spec = load_spec(_spec(tmp_path, f"root: {root}\nsplit: 2\n"))
        check_benchmark_roots(spec, expand(spec))


@pytest.mark.parametrize(("remove", "expected"), [
    ("ucfTrainTestlist/testlist02.txt", "testlist02.txt: missing (expected testlist02.txt with '<Class>/<clip>.avi' lines)"),
    ("ucfTrainTestlist/classInd.txt", "classInd.txt: missing (expected classInd.txt"),
    ("Square", "does not exist (expected every listed clip under the root)"),
])
def test_a_visible_root_missing_a_file_of_the_split_is_refused_at_its_line(tmp_path: Path, ucf_root, remove, expected) -> None:
    root = shutil.copytree(ucf_root, tmp_path / "UCF-101")
    target = root / remove
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    spec = load_spec(_spec(tmp_path, f"root: {root}\nsplit: 2\n"))
    with pytest.raises(SpecError) as refusal:
        check_benchmark_roots(spec, expand(spec))
    message = str(refusal.value)
    assert message.startswith(f"{spec.source_file}:9: key 'eval.benchmarks.ucf.root': {root}"), message
    assert expected in message


# -- the protocol's pure parts -------------------------------------------------------------------------------


def test_shard_and_batch_sizes_count_frames() -> None:
    assert clip_batching(4096, 64, 8) == (512, 8)
    assert clip_batching(4096, 64, 1) == (4096, 64)
    assert clip_batching(4, 3, 8) == (1, 1)  # never 0 clips


def test_groups_from_official_names() -> None:
    assert clip_group("/d/ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi") == 8
    assert clip_group("s3://b/UCF-101/YoYo/v_YoYo_g25_c04.avi") == 25
    assert clip_group("/d/x/my_clip.avi") is None and clip_group("/d/v_A_g08_c01.avi.bak") is None


def test_the_holdout_takes_whole_groups_across_classes() -> None:
    groups = [g for g in range(8, 26) for _ in range(3)]  # split 1's train groups, 3 clips each
    fit, held = group_holdout(groups, 0.1, seed=0)
    held_groups = {groups[i] for i in held.tolist()}
    assert len(held_groups) == 2  # round(0.1 x 18)
    assert not held_groups & {groups[i] for i in fit.tolist()}  # group-disjoint
    assert sorted(fit.tolist() + held.tolist()) == list(range(len(groups)))
    again = group_holdout(groups, 0.1, seed=0)
    assert torch.equal(again[1], held) and not torch.equal(group_holdout(groups, 0.1, seed=1)[1], held)
    assert len({groups[i] for i in group_holdout([2, 3, 4], 0.1, seed=0)[1].tolist()}) == 1  # at least one
    assert len({groups[i] for i in group_holdout([2, 3], 0.9, seed=0)[0].tolist()}) == 1  # at most all but one
    assert group_holdout([5, 5, 5], 0.1, seed=0) is None
    with pytest.raises(ValueError, match="holdout fraction"):
        group_holdout(groups, 0.0, seed=0)


def test_per_class_rows_count_each_class_of_class_ind() -> None:
    rows = per_class_rows(torch.tensor([0, 1, 1, 0]), torch.tensor([0, 1, 0, 0]), ["A", "B", "C"])
    assert rows == [{"class": "A", "clips": 3, "correct": 2, "top1": 2 / 3}, {"class": "B", "clips": 1, "correct": 1, "top1": 1.0},
                    {"class": "C", "clips": 0, "correct": 0, "top1": None}]


def test_the_chosen_holdout_is_the_one_the_probe_uses() -> None:
    from vito.eval.scoring.linear import fit_linear_probe

    x = torch.randn(24, 5, generator=torch.Generator().manual_seed(0))
    y = torch.arange(24) % 3
    groups = [i // 6 for i in range(24)]
    holdout = group_holdout(groups, 0.25, seed=0)
    chosen = fit_linear_probe(x, y, 3, lr_grid=(0.1, 1.0), epochs=2, batch_size=8, seed=0, holdout=holdout)
    stratified = fit_linear_probe(x, y, 3, lr_grid=(0.1, 1.0), epochs=2, batch_size=8, seed=0)
    assert chosen.lr_grid != stratified.lr_grid  # scored on other held-out rows


# -- the paper table ------------------------------------------------------------------------------------------


def test_the_paper_table_has_a_ucf101_top1_column_beside_its_baseline() -> None:
    from vitolaunch.results.benchmark_table import benchmark_table
    from vitolaunch.results.ranking import ResultRow

    metrics = {"eval/ucf101/linear_top1": 0.5, "eval/ucf101/linear_top1_random_init": 0.1,
               "eval/ucf101/clips_scored": 3783.0, "eval/ucf101/train_clips": 9537.0, "eval/ucf101/skipped_clips": 0.0}
    (row,) = benchmark_table([ResultRow("ev", "r", "ev-0", 0, {}, "COMPLETED", None, metrics)])
    assert row["ucf101 linear"] == 0.5 and row["ucf101 linear (random init)"] == 0.1
    assert not any("clips" in column for column in row)  # counts stay in results.json


def test_the_job_checks_the_layout_first_and_tags_the_reason(tmp_path: Path, ucf_root) -> None:
    from vito.eval.datasets.image_folder import LayoutError
    from vito.evaluate_task import EVAL_ERROR_TAG, check_benchmark_layouts

    class Tags:  # the metrics logger's one method this uses
        def __init__(self) -> None:
            self.tags: dict[str, str] = {}

        def set_tags(self, tags: dict[str, str]) -> None:
            self.tags.update(tags)

    root = shutil.copytree(ucf_root, tmp_path / "UCF-101")
    cfg = _cfg(ucf={**UCF, "root": str(root), "split": 3})
    tags = Tags()
    check_benchmark_layouts(cfg, {}, tags)
    assert tags.tags == {}
    (root / "ucfTrainTestlist" / "trainlist03.txt").unlink()
    with pytest.raises(LayoutError, match=r"^eval\.benchmarks\.ucf\.root .*trainlist03\.txt: missing"):
        check_benchmark_layouts(cfg, {}, tags)
    assert "trainlist03.txt: missing" in tags.tags[EVAL_ERROR_TAG]
