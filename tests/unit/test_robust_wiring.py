"""The robustness benchmarks as entries of eval.benchmarks: the kind union, the readout check, and each readout
protocol's scoring on made-up logits (pure: no images, no network)."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from vito.config import (
    ClassSubsetBenchmark,
    CorruptionsBenchmark,
    CueConflictBenchmark,
    ImageFolderBenchmark,
    VitoConfig,
)
from vito.eval.datasets.corruption_tree import IMAGENET_3DCC, IMAGENET_C_BENCHMARK
from vito.eval.datasets.imagenet_classes import IMAGENET_WNIDS
from vito.eval.datasets.shape_bias import CATEGORY_INDICES, CueConflictSample, CueConflictSet
from vito.eval.protocols.class_subset import score_subset
from vito.eval.protocols.corruptions import corruption_top1, score_corruptions
from vito.eval.protocols.cue_conflict import as_imagenet_logits, score_shape_bias

IMAGENET = {"root": "/data/imagenet"}


def _cfg(**benchmarks) -> VitoConfig:
    return VitoConfig.model_validate({"eval": {"benchmarks": benchmarks}})


def test_kind_defaults_to_image_folder_and_the_fingerprint_is_unchanged() -> None:
    cfg = _cfg(imagenet=IMAGENET)
    assert isinstance(cfg.eval.benchmarks["imagenet"], ImageFolderBenchmark)
    assert cfg.fingerprint() == "624c76bb861b"  # computed by vito/config.py at 6f862c0, before the union
    assert _cfg(imagenet={**IMAGENET, "kind": "image_folder"}).fingerprint() == cfg.fingerprint()


def test_each_kind_parses_with_its_defaults() -> None:
    cfg = _cfg(imagenet=IMAGENET,
               c={"kind": "corruptions", "root": "/c", "readout": "imagenet"},
               r={"kind": "class_subset", "root": "/r", "readout": "imagenet"},
               cue={"kind": "cue_conflict", "root": "/cue", "readout": "imagenet"})
    c, r, cue = (cfg.eval.benchmarks[k] for k in ("c", "r", "cue"))
    assert isinstance(c, CorruptionsBenchmark) and (c.set, c.resize, c.crop) == ("imagenet-c", 0, 224)
    assert isinstance(r, ClassSubsetBenchmark) and (r.resize, r.crop) == (256, 224)
    assert isinstance(cue, CueConflictBenchmark) and cue.readout == "imagenet"
    assert VitoConfig.model_validate(cfg.to_dict()).fingerprint() == cfg.fingerprint()  # round trip


@pytest.mark.parametrize("benchmarks", [
    {"c": {"kind": "corruptions", "root": "/c", "readout": "imagenet"}},  # no such benchmark
    {"imagenet": {**IMAGENET, "linear": False}, "c": {"kind": "corruptions", "root": "/c", "readout": "imagenet"}},
    {"imagenet": IMAGENET, "r": {"kind": "class_subset", "root": "/r", "readout": "imagenet"},
     "c": {"kind": "corruptions", "root": "/c", "readout": "r"}},  # a readout kind is no readout
])
def test_a_readout_that_is_not_a_linear_image_folder_is_refused_naming_the_key(benchmarks) -> None:
    with pytest.raises(ValidationError, match=r"eval\.benchmarks\.c\.readout: '\w+' is not an image_folder benchmark "
                                              r"with linear: true"):
        _cfg(**benchmarks)


def test_an_unknown_kind_names_the_kinds() -> None:
    with pytest.raises(ValidationError, match="image_folder, corruptions, class_subset, cue_conflict"):
        _cfg(x={"kind": "imagenet_c", "root": "/c"})


def _table(names, top1=0.5):
    return {name: {s: top1 for s in range(1, 6)} for name in names}


def _images(table):
    return {name: {s: 10 for s in by} for name, by in table.items()}


def test_corruption_top1_is_the_unrestricted_argmax() -> None:
    logits = torch.tensor([[0.0, 2.0, 1.0], [3.0, 0.0, 0.0]])
    assert corruption_top1(logits, torch.tensor([1, 1])) == 0.5


def test_a_partial_imagenet_c_table_logs_ce_but_no_mce() -> None:
    bench = CorruptionsBenchmark(kind="corruptions", root="/c", readout="imagenet")
    table = _table(["gaussian_noise", "contrast", "gaussian_blur"])
    metrics, record, rows = score_corruptions("c", bench, table, _images(table), 0.7)
    assert "eval/c/mce" not in metrics and "eval/c/relative_mce" not in metrics
    assert metrics["eval/c/gaussian_noise_ce"] == pytest.approx(0.5 / 0.886428)
    assert "eval/c/gaussian_blur_ce" not in metrics  # an extra: CSV and record only
    assert record["partial"] and record["mce"] is None and len(record["missing"]) == 13
    assert len(rows) == 15 and {r["images"] for r in rows} == {10}
    assert metrics["eval/c/images_scored"] == 150


def test_a_complete_imagenet_c_table_logs_mce_and_relative_mce_with_a_suffix() -> None:
    bench = CorruptionsBenchmark(kind="corruptions", root="/c", readout="imagenet")
    table = _table(IMAGENET_C_BENCHMARK)
    metrics, record, _ = score_corruptions("c", bench, table, _images(table), 0.7, "_random_init")
    assert metrics["eval/c/mce_random_init"] == pytest.approx(record["mce"])
    assert "eval/c/relative_mce_random_init" in metrics and not record["partial"]


def test_3dcc_logs_the_mean_error_only_when_complete() -> None:
    bench = CorruptionsBenchmark(kind="corruptions", root="/c", readout="imagenet", set="imagenet-3dcc")
    table = _table(IMAGENET_3DCC, 0.75)
    metrics, _, rows = score_corruptions("d", bench, table, _images(table), None)
    assert metrics["eval/d/mean_error"] == pytest.approx(0.25) and len(rows) == 60
    assert metrics["eval/d/top1"] == pytest.approx(0.75)
    partial = _table(IMAGENET_3DCC[:2])
    metrics, record, _ = score_corruptions("d", bench, partial, _images(partial), None)
    assert "eval/d/mean_error" not in metrics and "eval/d/top1" not in metrics and record["partial"]
    assert metrics["eval/d/near_focus_error"] == pytest.approx(0.5)


def test_subset_top1_restricts_the_argmax_to_the_subset_columns() -> None:
    # column 3 is not in the subset and would win every row of an unrestricted argmax
    logits = torch.tensor([[1.0, 0.0, 0.0, 9.0], [0.0, 0.0, 1.0, 9.0], [1.0, 0.0, 0.0, 9.0]])
    labels = torch.tensor([0, 1, 1])  # subset classes: readout columns 0 and 2
    metrics, rows = score_subset("r", logits, labels, [0, 2], ["n0", "n2"])
    assert metrics["eval/r/top1"] == pytest.approx(2 / 3) and metrics["eval/r/images_scored"] == 3
    assert rows == [{"wnid": "n0", "readout_column": 0, "images": 1, "top1": 1.0},
                    {"wnid": "n2", "readout_column": 2, "images": 2, "top1": 0.5}]


def test_shape_bias_through_made_up_1000_way_logits() -> None:
    samples = [CueConflictSample("a", "cat", "dog"), CueConflictSample("b", "dog", "cat"),
               CueConflictSample("c", "car", "car"), CueConflictSample("d", "bear", "knife")]
    cue_set = CueConflictSet("/cue", samples)
    logits = torch.zeros(4, 1000)
    for row, category in enumerate(["cat", "cat", "car", "oven"]):  # shape hit, texture hit, excluded, neither
        logits[row, list(CATEGORY_INDICES[category])] = 20.0
    metrics, record, rows = score_shape_bias("cue", cue_set, logits, [0, 1, 2, 3], list(IMAGENET_WNIDS))
    assert metrics["eval/cue/shape_bias"] == 0.5
    assert metrics["eval/cue/shape_fraction"] == pytest.approx(1 / 3)
    assert metrics["eval/cue/texture_fraction"] == pytest.approx(1 / 3)
    assert metrics["eval/cue/images_scored"] == 3 and record["readout_is_imagenet_1k"]
    assert [r["category"] for r in rows] == ["bear", "cat", "dog"]


def test_a_readout_of_imagenet_wnids_is_placed_into_their_columns() -> None:
    classes = ["n02504013", "n02690373", "n03041632", "n04111531"]  # elephant, airplane, knife, oven
    placed, placement = as_imagenet_logits(torch.tensor([[1.0, 2.0, 3.0, 4.0]]), classes)
    assert placement == "by_wnid" and placed.shape == (1, 1000)
    assert placed[0, [385, 404, 499, 766]].tolist() == [1.0, 2.0, 3.0, 4.0]
    assert torch.isinf(placed).sum() == 996
    # shape airplane, texture knife: a readout following the shape (airplane column) or the texture (knife)
    cue_set = CueConflictSet("/cue", [CueConflictSample("a", "airplane", "knife")] * 2)
    logits = torch.tensor([[0.0, 5.0, 0.0, 0.0], [0.0, 0.0, 5.0, 0.0]])
    metrics, record, _ = score_shape_bias("cue", cue_set, logits, [0, 1], classes)
    assert metrics["eval/cue/shape_bias"] == 0.5 and metrics["eval/cue/shape_fraction"] == 0.5
    assert record["readout_is_imagenet_1k"] is False and record["readout_placement"] == "by_wnid"
    assert record["categories_decidable"] == ["airplane", "elephant", "knife", "oven"]


def test_a_readout_whose_classes_are_not_wnids_falls_back_to_the_first_columns() -> None:
    placed, placement = as_imagenet_logits(torch.ones(2, 4), ["a", "b", "c", "d"])
    assert placement == "first_columns" and torch.isinf(placed[:, 4:]).all() and (placed[:, :4] == 1).all()
    cue_set = CueConflictSet("/cue", [CueConflictSample("a", "cat", "dog")])
    _, record, _ = score_shape_bias("cue", cue_set, torch.ones(1, 4), [0], ["a", "b", "c", "d"])
    assert record["readout_is_imagenet_1k"] is False and record["categories_decidable"] == []


def test_head_own_needs_no_readout_stays_out_of_the_dump_at_default_and_refuses_a_checkpoint() -> None:
    cfg = _cfg(imagenet=IMAGENET, c={"kind": "corruptions", "root": "/c", "readout": "imagenet"})
    assert "head" not in cfg.to_dict()["eval"]["benchmarks"]["c"]  # trial keys of older specs unchanged
    own = _cfg(c={"kind": "corruptions", "root": "/c", "head": "own"})
    assert own.eval.benchmarks["c"].head == "own" and own.eval.benchmarks["c"].readout is None
    dumped = own.to_dict()["eval"]["benchmarks"]["c"]
    assert dumped["head"] == "own" and "readout" not in dumped
    assert VitoConfig.model_validate(own.to_dict()).fingerprint() == own.fingerprint()
    with pytest.raises(ValidationError, match="readout: name the image_folder benchmark"):
        _cfg(c={"kind": "corruptions", "root": "/c"})
    with pytest.raises(ValidationError, match="with head: own"):
        _cfg(imagenet=IMAGENET, c={"kind": "corruptions", "root": "/c", "head": "own", "readout": "imagenet"})
    with pytest.raises(ValidationError, match=r"eval\.benchmarks\.c\.head: own scores through the 1000-way fc"):
        VitoConfig.model_validate({"eval": {"checkpoint": "/ckpt", "benchmarks": {
            "c": {"kind": "cue_conflict", "root": "/c", "head": "own"}}}})
