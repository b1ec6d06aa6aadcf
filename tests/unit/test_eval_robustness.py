"""Robustness benchmarks: ImageNet-C/3DCC trees and mCE, ImageNet-A/R subsets, cue-conflict shape bias."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from tests.eval_images import write_jpeg
from vito.eval.datasets.class_subsets import read_class_subset, restricted_predictions, restricted_top1, subset_columns
from vito.eval.datasets.corruption_tree import (
    CORRUPTION_TRANSFORM,
    IMAGENET_3DCC,
    IMAGENET_C_BENCHMARK,
    IMAGENET_C_EXTRA,
    read_corruption_tree,
)
from vito.eval.datasets.image_folder import ImageFolderDataset, LayoutError
from vito.eval.datasets.shape_bias import (
    CATEGORIES,
    CATEGORY_INDICES,
    category_probabilities,
    decisions_16,
    parse_cue_conflict_name,
    read_cue_conflict,
    score_cue_conflict,
    shape_bias,
)
from vito.eval.fixtures.robustness import write_class_subset, write_corruption_tree, write_cue_conflict
from vito.eval.scoring.robustness_metrics import (
    ALEXNET_CLEAN_ERROR,
    ALEXNET_ERRORS,
    imagenet_3dcc_errors,
    imagenet_c_errors,
)

CLASSES = [f"n{i:08d}" for i in range(12)]  # a sorted wnid list standing in for the 1k readout's


def _val(root: Path, wnids=("n00000001", "n00000004"), per_class: int = 2) -> Path:
    val = root / "val"
    for c, wnid in enumerate(wnids):
        for i in range(per_class):
            write_jpeg(val / wnid / f"{wnid}_{i}.JPEG", seed=10 * c + i)
    return val


# -- mCE ---------------------------------------------------------------------------------------------------


def _constant_table(names, top1: float) -> dict:
    return {name: {s: top1 for s in range(1, 6)} for name in names}


def _table_at_alexnet() -> dict:
    """Every benchmark corruption at exactly AlexNet's error (CE_c = 1), gaussian_noise made up per severity."""
    table = {name: {s: 1.0 - ALEXNET_ERRORS[name] for s in range(1, 6)} for name in IMAGENET_C_BENCHMARK}
    table["gaussian_noise"] = {1: 0.8, 2: 0.7, 3: 0.6, 4: 0.5, 5: 0.4}  # errors 0.2 + 0.3 + 0.4 + 0.5 + 0.6 = 2.0
    return table


def test_mce_by_hand():
    table = _table_at_alexnet()
    table.update(_constant_table(IMAGENET_C_EXTRA, 0.0))  # extras at 100 % error must not move mCE
    result = imagenet_c_errors(table)
    # CE_gaussian_noise = sum of errors / (5 x AlexNet's mean error) = 2.0 / (5 x 0.886428) = 2.0 / 4.43214
    assert result.ce["gaussian_noise"] == pytest.approx(2.0 / 4.43214)
    assert result.ce["fog"] == pytest.approx(1.0)
    # mCE = (14 x 1 + 2.0 / 4.43214) / 15
    assert result.mce == pytest.approx((14 + 2.0 / 4.43214) / 15)
    assert result.missing == []
    assert set(result.ce) == set(IMAGENET_C_BENCHMARK)
    assert result.extra_errors == {name: pytest.approx(1.0) for name in IMAGENET_C_EXTRA}
    assert result.relative_mce is None and result.relative_ce is None  # no clean top-1 given
    without_extras = imagenet_c_errors(_table_at_alexnet())
    assert without_extras.mce == pytest.approx(result.mce)


def test_relative_mce_by_hand():
    result = imagenet_c_errors(_table_at_alexnet(), clean_top1=0.75)  # clean error 0.25
    # gaussian_noise: (2.0 - 5 x 0.25) / (5 x (0.886428 - 0.4348)) = 0.75 / 2.25814
    assert ALEXNET_CLEAN_ERROR == 0.4348
    assert result.relative_ce["gaussian_noise"] == pytest.approx(0.75 / 2.25814)
    # fog: (5 x 0.819324 - 5 x 0.25) / (5 x (0.819324 - 0.4348)) = 0.569324 / 0.384524
    assert result.relative_ce["fog"] == pytest.approx(0.569324 / 0.384524)
    expected = [0.75 / 2.25814] + [(ALEXNET_ERRORS[n] - 0.25) / (ALEXNET_ERRORS[n] - 0.4348)
                                   for n in IMAGENET_C_BENCHMARK if n != "gaussian_noise"]
    assert result.relative_mce == pytest.approx(sum(expected) / 15)
    record = result.as_record()
    assert record["alexnet_clean_error"] == 0.4348 and record["alexnet_clean_error_verified"] is False


def test_partial_table_is_not_an_mce():
    table = _table_at_alexnet()
    del table["fog"], table["snow"]
    result = imagenet_c_errors(table, clean_top1=0.75)
    assert result.mce is None and result.relative_mce is None
    assert result.missing == ["snow", "fog"]
    assert len(result.ce) == 13  # the CE_c present are still reported


def test_mce_rows_and_refusals():
    table = _table_at_alexnet()
    table["saturate"] = {s: 0.5 for s in range(1, 6)}
    rows = imagenet_c_errors(table).as_rows()
    assert len(rows) == 16 * 5
    saturate = [row for row in rows if row["corruption"] == "saturate"]
    assert all(not row["in_mce"] and row["ce"] is None and row["error"] == 0.5 for row in saturate)
    with pytest.raises(ValueError, match="unknown corruption"):
        imagenet_c_errors({"my_blur": {s: 0.5 for s in range(1, 6)}})
    with pytest.raises(ValueError, match="severities"):
        imagenet_c_errors({"fog": {1: 0.5, 2: 0.5}})
    with pytest.raises(ValueError, match="fraction"):
        imagenet_c_errors({"fog": {s: 55.0 for s in range(1, 6)}})  # a percentage, not a fraction


def test_3dcc_errors():
    table = _constant_table(IMAGENET_3DCC, 0.6)
    table["flash"] = {1: 0.9, 2: 0.8, 3: 0.7, 4: 0.6, 5: 0.5}  # mean error (0.1+0.2+0.3+0.4+0.5)/5 = 0.3
    result = imagenet_3dcc_errors(table)
    assert result.mean_error["flash"] == pytest.approx(0.3)
    assert result.overall_error == pytest.approx((11 * 0.4 + 0.3) / 12)
    assert len(result.as_rows()) == 60
    del table["fog_3d"]
    partial = imagenet_3dcc_errors(table)
    assert partial.overall_error is None and partial.missing == ["fog_3d"]
    from_json = {name: {str(s): top1 for s, top1 in by_severity.items()} for name, by_severity in table.items()}
    assert imagenet_3dcc_errors(from_json).mean_error == partial.mean_error
    with pytest.raises(ValueError, match="unknown corruption"):
        imagenet_3dcc_errors({"fog": {s: 0.5 for s in range(1, 6)}})


# -- corruption trees --------------------------------------------------------------------------------------


@pytest.mark.parametrize("families", [False, True])
def test_corruption_tree_fixture(tmp_path, families):
    val = _val(tmp_path)
    tree_root = tmp_path / "imagenet-c"
    partial = ["gaussian_noise", "contrast", "jpeg_compression", "gaussian_blur"]
    counts = write_corruption_tree(val, tree_root, image_size=32, families=families, corruptions=partial)
    assert counts == {"gaussian_noise": 4, "contrast": 4, "jpeg_compression": 4, "gaussian_blur": 4}
    tree = read_corruption_tree(str(tree_root), CLASSES)
    assert tree.corruptions == partial
    assert tree.unknown == []
    assert tree.folders["gaussian_noise"] == ("noise/gaussian_noise" if families else "gaussian_noise")
    assert len(tree.sets) == 4 * 5
    image_set = tree.sets["contrast", 3]
    assert sorted({s.label for s in image_set.samples}) == [1, 4]  # positions of n00000001, n00000004 in CLASSES
    assert image_set.relative_path(image_set.samples[0]).startswith(f"{'digital/' if families else ''}contrast/3/")
    assert tree.as_record()["images"]["contrast"] == {s: 4 for s in range(1, 6)}
    index, tensor, error = ImageFolderDataset(image_set, CORRUPTION_TRANSFORM)[0]
    assert error is None and tensor.shape == (3, 224, 224)
    # Scored through the same metrics, the fixture's 3 benchmark corruptions are a partial table.
    table = {name: {s: 0.5 for s in range(1, 6)} for name in tree.corruptions}
    result = imagenet_c_errors(table)
    assert result.mce is None and len(result.missing) == 12 and set(result.extra_errors) == {"gaussian_blur"}


def test_the_default_corruption_tree_is_complete_and_gives_an_mce(tmp_path):
    tree_root = tmp_path / "imagenet-c"
    counts = write_corruption_tree(_val(tmp_path), tree_root, image_size=32, families=True)
    assert list(counts) == list(IMAGENET_C_BENCHMARK + IMAGENET_C_EXTRA) and set(counts.values()) == {4}
    tree = read_corruption_tree(str(tree_root), CLASSES)
    assert tree.missing == [] and tree.unknown == [] and len(tree.sets) == 19 * 5
    assert tree.folders["spatter"] == "extra/spatter" and tree.folders["frost"] == "weather/frost"
    result = imagenet_c_errors({name: {s: 0.5 for s in range(1, 6)} for name in tree.corruptions})
    assert result.mce is not None and result.missing == [] and set(result.extra_errors) == set(IMAGENET_C_EXTRA)


def test_corruption_tree_unknown_folders_are_reported_not_scored(tmp_path):
    tree_root = tmp_path / "imagenet-c"
    write_corruption_tree(_val(tmp_path), tree_root, image_size=32, corruptions=["contrast"], families=True)
    write_jpeg(tree_root / "my_blur" / "1" / "n00000001" / "a.JPEG", seed=1)
    (tree_root / "noise" / "my_noise").mkdir(parents=True)
    tree = read_corruption_tree(str(tree_root), CLASSES)
    assert tree.unknown == ["my_blur", "noise/my_noise"]
    assert tree.corruptions == ["contrast"] and {name for name, _ in tree.sets} == {"contrast"}
    assert tree.as_record()["unknown_folders"] == ["my_blur", "noise/my_noise"]
    with pytest.raises(LayoutError, match="no imagenet-3dcc corruption folder"):
        read_corruption_tree(str(tree_root), CLASSES, benchmark="imagenet-3dcc")


def test_corruption_tree_severities_and_wnids_refused(tmp_path):
    tree_root = tmp_path / "imagenet-c"
    write_corruption_tree(_val(tmp_path), tree_root, image_size=32, corruptions=["contrast"])
    shutil.move(tree_root / "contrast" / "3", tmp_path / "held")
    with pytest.raises(LayoutError, match=r"contrast: severity folder\(s\) 3 missing"):
        read_corruption_tree(str(tree_root), CLASSES)
    shutil.move(tmp_path / "held", tree_root / "contrast" / "3")
    shutil.copytree(tree_root / "contrast" / "5", tree_root / "contrast" / "6")
    with pytest.raises(LayoutError, match=r"severity folder\(s\) 6 outside 1..5"):
        read_corruption_tree(str(tree_root), CLASSES)
    shutil.rmtree(tree_root / "contrast" / "6")
    read_corruption_tree(str(tree_root), CLASSES)
    without = [c for c in CLASSES if c != "n00000004"]
    with pytest.raises(LayoutError, match="n00000004"):
        read_corruption_tree(str(tree_root), without)
    with pytest.raises(ValueError, match="sorted"):
        read_corruption_tree(str(tree_root), list(reversed(CLASSES)))


# -- ImageNet-A/R --------------------------------------------------------------------------------------------


def test_subset_columns_follow_sorted_wnids(tmp_path):
    root = tmp_path / "imagenet-a"
    for k, wnid in enumerate(["n00000007", "n00000002", "n00000010", "n00000000", "n00000005"]):  # 5 of 12
        write_jpeg(root / wnid / f"x{k}.JPEG", seed=k)
    subset = read_class_subset(str(root), CLASSES)
    # column i = index in CLASSES of the i-th sorted folder: n00, n02, n05, n07, n10
    assert subset.wnids == ["n00000000", "n00000002", "n00000005", "n00000007", "n00000010"]
    assert subset.columns == [0, 2, 5, 7, 10]
    assert subset_columns(["n00000010", "n00000002"], CLASSES) == [2, 10]
    labels = {Path(s.path).parent.name: s.label for s in subset.image_set.samples}
    assert labels == {"n00000000": 0, "n00000002": 1, "n00000005": 2, "n00000007": 3, "n00000010": 4}
    write_jpeg(root / "n00000099" / "y.JPEG", seed=9)
    with pytest.raises(LayoutError, match="n00000099"):
        read_class_subset(str(root), CLASSES)


def test_restricted_argmax_ignores_other_columns():
    logits = torch.zeros(3, 12)
    logits[:, 3] = 100.0  # the global argmax, but column 3 is not in the subset
    logits[0, 5], logits[1, 0], logits[2, 7] = 2.0, 1.0, 3.0
    columns = [0, 2, 5, 7, 10]
    assert restricted_predictions(logits, columns).tolist() == [2, 0, 3]  # positions in columns
    assert restricted_top1(logits, torch.tensor([2, 0, 1]), columns) == pytest.approx(2 / 3)
    assert logits.argmax(dim=1).tolist() == [3, 3, 3]


def test_class_subset_fixture(tmp_path):
    val = _val(tmp_path, wnids=("n00000001", "n00000003", "n00000006"))
    assert write_class_subset(val, tmp_path / "subset", ["n00000006", "n00000001"]) == 4
    subset = read_class_subset(str(tmp_path / "subset"), CLASSES)
    assert subset.columns == [1, 6] and len(subset.image_set) == 4
    with pytest.raises(LayoutError, match="n00000001"):
        read_class_subset(str(tmp_path / "subset"), [c for c in CLASSES if c != "n00000001"])


# -- shape bias ----------------------------------------------------------------------------------------------


def test_category_indices_expand_the_notes_ranges():
    assert len(CATEGORY_INDICES["dog"]) == 40 + 11 + 22 + 14 + 8 + 6 + 1 + 3 + 4  # 152-191, 193-203, ... 265-268
    assert len(CATEGORY_INDICES["bird"]) == 1 + 7 + 3 + 3 + 4 + 10 + 3 + 7 + 11
    assert CATEGORY_INDICES["bear"] == (294, 295, 296, 297) and CATEGORY_INDICES["knife"] == (499,)
    every = [i for indices in CATEGORY_INDICES.values() for i in indices]
    assert len(every) == len(set(every)) and max(every) < 1000


def test_sixteen_class_aggregation_by_hand():
    p = torch.full((1, 1000), 0.0)
    p[0, 404] = 0.3  # airplane: one index -> mean 0.3
    p[0, 294:298] = 0.1  # bear: 0.4 in all over 4 indices -> mean 0.1
    p[0, 152] = 0.3  # dog: 0.3 over its 109 indices -> mean 0.3 / 109
    aggregated = category_probabilities(p)[0]
    assert aggregated[CATEGORIES.index("airplane")] == pytest.approx(0.3)
    assert aggregated[CATEGORIES.index("bear")] == pytest.approx(0.1)
    assert aggregated[CATEGORIES.index("dog")] == pytest.approx(0.3 / 109)
    assert aggregated[CATEGORIES.index("cat")] == 0.0
    # The decision follows the mean, not the mass: bear holds more probability than airplane.
    logits = torch.log(p + 1e-9)
    assert decisions_16(logits) == ["airplane"]


def test_shape_bias_by_hand():
    responses = [  # shape, texture, decision
        ("cat", "dog", "cat"),  # shape hit
        ("cat", "dog", "dog"),  # texture hit
        ("cat", "cat", "cat"),  # shape == texture: excluded
        ("bear", "knife", "bear"),  # shape hit
        ("bear", "knife", "oven"),  # neither
        ("bear", "cat", "bear"),  # shape hit
        ("car", "clock", "clock"),  # texture hit
        ("car", "car", "truck"),  # excluded
    ]
    shapes, textures, decisions = zip(*responses, strict=True)
    result = shape_bias(shapes, textures, decisions)
    assert (result.images, result.excluded, result.shape_hits, result.texture_hits) == (6, 2, 3, 2)
    assert result.shape_bias == pytest.approx(3 / (3 + 2))
    assert result.shape_fraction == pytest.approx(3 / 6) and result.texture_fraction == pytest.approx(2 / 6)
    rows = {row["category"]: row for row in result.as_rows()}
    assert rows["cat"] == {"category": "cat", "images": 2, "shape_hits": 1, "texture_hits": 1, "shape_bias": 0.5}
    assert rows["bear"]["shape_bias"] == 1.0 and rows["car"]["shape_bias"] == 0.0
    assert list(rows) == ["bear", "car", "cat"]  # in category order


def test_cue_conflict_fixture_and_refusals(tmp_path):
    root = tmp_path / "cue-conflict"
    assert write_cue_conflict(root, size=16, repeats=2) == 4 * 4 * 2 + 12  # 4 covered categories, 12 placeholders
    cue = read_cue_conflict(str(root))
    assert len(cue) == 44 and sum(not s.conflict for s in cue.samples) == 4 * 2 + 12
    assert parse_cue_conflict_name("airplane1-bicycle2.png") == ("airplane", "bicycle")
    # A readout that always answers the texture: shape bias 0.
    logits = torch.full((len(cue), 1000), -10.0)
    for row, sample in enumerate(cue.samples):
        logits[row, list(CATEGORY_INDICES[sample.texture])] = 10.0
    result = score_cue_conflict(cue, logits)
    assert (result.shape_bias, result.texture_fraction, result.images, result.excluded) == (0.0, 1.0, 24, 20)
    index, tensor, error = ImageFolderDataset(cue.image_set())[0]
    assert error is None and tensor.shape == (3, 224, 224)

    (root / "cat" / "cat-dog.png").write_bytes(b"")
    with pytest.raises(LayoutError, match="cat-dog.png"):
        read_cue_conflict(str(root))
    (root / "cat" / "cat-dog.png").unlink()
    (root / "cat" / "dog1-cat2.png").write_bytes(b"")
    with pytest.raises(LayoutError, match="shape dog in the cat/ folder"):
        read_cue_conflict(str(root))
    (root / "cat" / "dog1-cat2.png").unlink()
    (root / "cat" / "cat1-zebra2.png").write_bytes(b"")
    with pytest.raises(LayoutError, match="'zebra' is not one of the 16"):
        read_cue_conflict(str(root))
    (root / "cat" / "cat1-zebra2.png").unlink()
    shutil.rmtree(root / "oven")
    with pytest.raises(LayoutError, match="oven missing"):
        read_cue_conflict(str(root))
