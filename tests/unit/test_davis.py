"""DAVIS 2017: the official J/F metric on hand-computed cases, the reader's refusals, the results writer."""

from __future__ import annotations

import csv
import math
import shutil

import numpy as np
import pytest
from PIL import Image

from vito.eval.datasets.davis import PALETTE, LayoutError, load_frame, load_mask, read_davis, write_mask, write_results
from vito.eval.fixtures.davis import write_davis_fixture
from vito.eval.scoring.davis_metric import (
    GLOBAL_COLUMNS,
    ObjectScore,
    boundary_tolerance,
    contour_accuracy,
    dilate,
    disk,
    global_scores,
    no_motion,
    region_similarity,
    score_sequence,
    seg2bmap,
    statistics,
    write_csvs,
)


def square(shape, top, left, side):
    mask = np.zeros(shape, bool)
    mask[top : top + side, left : left + side] = True
    return mask


# -- J ---------------------------------------------------------------------------------------------------


def test_identical_masks_score_one():
    mask = square((40, 40), 10, 10, 10)
    assert region_similarity(mask, mask) == 1.0
    assert contour_accuracy(mask, mask) == 1.0


def test_j_of_a_shifted_square_is_its_iou():
    truth = square((40, 40), 10, 10, 10)
    predicted = square((40, 40), 10, 13, 10)  # 3 px right: overlap 10 x 7 = 70, union 100 + 100 - 70 = 130
    assert region_similarity(predicted, truth) == pytest.approx(70 / 130)


def test_empty_prediction_truth_and_both():
    mask, empty = square((40, 40), 10, 10, 10), np.zeros((40, 40), bool)
    assert region_similarity(empty, mask) == 0.0 and contour_accuracy(empty, mask) == 0.0
    assert region_similarity(mask, empty) == 0.0 and contour_accuracy(mask, empty) == 0.0
    assert region_similarity(empty, empty) == 1.0 and contour_accuracy(empty, empty) == 1.0


def test_void_pixels_count_in_neither_intersection_nor_union():
    truth = square((40, 40), 10, 10, 10)
    void = np.zeros((40, 40), bool)
    void[10:20, 20:25] = True  # the prediction's 5 extra columns lie in void
    predicted = square((40, 40), 10, 10, 10) | void
    assert region_similarity(predicted, truth, void) == 1.0
    assert region_similarity(predicted, truth, void=None) == pytest.approx(100 / 150)


# -- F ---------------------------------------------------------------------------------------------------


def test_seg2bmap_marks_pixels_differing_from_right_bottom_or_bottom_right():
    mask = np.zeros((6, 6), bool)
    mask[3, 3] = True
    expected = np.zeros((6, 6), bool)
    expected[2:4, 2:4] = True  # itself, its left, upper and upper-left neighbours
    np.testing.assert_array_equal(seg2bmap(mask), expected)
    # a full-width stripe: only the background row above it (last row/column compare right/bottom only)
    stripe = np.zeros((6, 6), bool)
    stripe[3:] = True
    expected = np.zeros((6, 6), bool)
    expected[2] = True
    np.testing.assert_array_equal(seg2bmap(stripe), expected)


def test_tolerance_is_ceil_of_0_008_times_the_diagonal():
    # 120 x 160: diagonal sqrt(120^2 + 160^2) = 200, 0.008 x 200 = 1.6 -> 2 pixels
    assert boundary_tolerance((120, 160)) == 2
    # 60 x 80: diagonal 100 -> 0.8 -> 1 pixel; 480 x 854: 979.6 -> 7.84 -> 8
    assert boundary_tolerance((60, 80)) == 1 and boundary_tolerance((480, 854)) == 8


@pytest.mark.parametrize(("shift", "f"), [(0, 1.0), (1, 1.0), (2, 1.0), (3, 0.0), (4, 0.0)])
def test_a_boundary_within_the_tolerance_matches_and_one_just_outside_does_not(shift, f):
    # 120 x 160 -> tolerance 2. A full-width stripe's boundary is the one row above it, so shifting the stripe
    # down by `shift` puts every boundary pixel exactly `shift` rows from the other's: all match up to 2, none at 3.
    truth = np.zeros((120, 160), bool)
    truth[60:] = True
    predicted = np.zeros((120, 160), bool)
    predicted[60 + shift :] = True
    assert contour_accuracy(predicted, truth) == f
    assert region_similarity(predicted, truth) == pytest.approx((60 - shift) / 60)


def test_matching_uses_a_disk_not_a_square():
    # single pixels: boundaries are 2 x 2 blocks (rows r-1..r, cols c-1..c). Truth at (50, 50), prediction at
    # (53, 52): the closest boundary pixels are (50, 50) and (52, 51), offset (2, 1): 4 + 1 = 5 > 2^2, outside
    # the disk of radius 2 (a 5 x 5 square window would match them).
    truth, predicted = np.zeros((120, 160), bool), np.zeros((120, 160), bool)
    truth[50, 50], predicted[53, 52] = True, True
    assert contour_accuracy(predicted, truth) == 0.0
    predicted[:] = False
    predicted[52, 50] = True  # offset (2, 0): every boundary pixel within 2
    assert contour_accuracy(predicted, truth) == 1.0


def test_disk_and_dilation_are_exact():
    assert disk(2).sum() == 13 and disk(1).sum() == 5
    rng = np.random.default_rng(0)
    mask = rng.random((30, 40)) > 0.97
    radius = 3
    brute = np.zeros_like(mask)
    for y, x in zip(*np.nonzero(mask)):
        yy, xx = np.mgrid[:30, :40]
        brute |= (yy - y) ** 2 + (xx - x) ** 2 <= radius**2
    np.testing.assert_array_equal(dilate(mask, radius), brute)


# -- statistics and aggregation -------------------------------------------------------------------------


def test_recall_and_decay_by_hand():
    values = [1.0, 1.0, 0.4, 0.4, 0.4, 0.4, 0.1, 0.1]
    mean, recall, decay = statistics(values)
    assert mean == pytest.approx(3.8 / 8)
    assert recall == pytest.approx(2 / 8)  # frames > 0.5
    # official bins: edges round(linspace(1, 8, 5)) - 1 = [0, 2, 4, 5, 7], bin i = frames edge[i]..edge[i+1];
    # first = frames 0-2 (1, 1, 0.4) -> 0.8, last = frames 5-7 (0.4, 0.1, 0.1) -> 0.2 (array_split would say 0.9)
    assert decay == pytest.approx(0.6)


def _sequence(num_objects, num_frames=5, shape=(40, 60)):
    ids = np.zeros(shape, np.uint8)
    for obj in range(1, num_objects + 1):
        ids[5:15, 5 + 15 * (obj - 1) : 15 + 15 * (obj - 1)] = obj
    return [ids.copy() for _ in range(num_frames)]


def test_first_and_last_frames_are_not_scored():
    truth = _sequence(2)
    predicted = [m.copy() for m in truth]
    predicted[0][:] = 0
    predicted[-1][:] = 2
    scores = score_sequence("s", predicted, truth, [1, 2])
    assert all(s.j_frames == (1.0, 1.0, 1.0) and s.f_frames == (1.0, 1.0, 1.0) for s in scores)
    predicted[2][:] = 0
    assert score_sequence("s", predicted, truth, [1, 2])[0].j_frames == (1.0, 0.0, 1.0)


def test_global_means_average_over_objects_not_sequences(tmp_path):
    one = _sequence(1)
    two = _sequence(2)
    objects = score_sequence("a", one, one, [1])  # perfect: J = F = 1
    objects += score_sequence("b", [np.zeros_like(m) for m in two], two, [1, 2])  # nothing: J = F = 0, twice
    scores = global_scores(objects)
    # objects: (1 + 0 + 0) / 3 = 1/3; a mean over sequences would give (1 + 0) / 2 = 1/2
    assert scores["J-Mean"] == pytest.approx(1 / 3) and scores["F-Mean"] == pytest.approx(1 / 3)
    assert scores["J&F-Mean"] == pytest.approx(1 / 3) and scores["J-Recall"] == pytest.approx(1 / 3)
    global_path, per_path = write_csvs(objects, tmp_path)
    rows = list(csv.reader(global_path.open()))
    assert tuple(rows[0]) == GLOBAL_COLUMNS and rows[1][0] == "0.333"
    rows = list(csv.reader(per_path.open()))
    assert rows == [["Sequence", "J-Mean", "F-Mean"], ["a_1", "1.000", "1.000"], ["b_1", "0.000", "0.000"],
                    ["b_2", "0.000", "0.000"]]


def test_no_motion_copies_the_first_mask():
    truth = _sequence(2)
    baseline = no_motion(truth[0], len(truth))
    assert len(baseline) == 5 and all(np.array_equal(m, truth[0]) for m in baseline)
    assert baseline[1] is not baseline[2]


def test_object_score_names_follow_the_official_csv():
    assert ObjectScore("bike", 2, (1.0,), (1.0,)).name == "bike_2"


# -- reader ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fixture_root(tmp_path_factory):
    return write_davis_fixture(tmp_path_factory.mktemp("davis"))


@pytest.fixture
def copy(fixture_root, tmp_path):
    return shutil.copytree(fixture_root, tmp_path / "davis")


def test_reader_round_trip_on_the_fixture(fixture_root):
    davis = read_davis(fixture_root)
    assert [s.name for s in davis.sequences] == ["synth00", "synth01", "synth02"]
    assert [s.size for s in davis.sequences] == [(64, 96), (64, 128), (64, 96)]
    for seq in davis.sequences:
        assert seq.objects == [1, 2] and len(seq.frames) == len(seq.annotations) == 6
        frame, mask = load_frame(seq.frames[0]), load_mask(seq.annotations[0])
        assert frame.dtype == np.uint8 and frame.shape == (*seq.size, 3)
        assert mask.dtype == np.uint8 and set(np.unique(mask).tolist()) == {0, 1, 2}
        truth = [load_mask(a) for a in seq.annotations]
        objects = score_sequence(seq.name, no_motion(truth[0], len(truth)), truth, seq.objects)
        assert all(0.0 <= o.j[0] <= 1.0 for o in objects)
        assert score_sequence(seq.name, truth, truth, seq.objects)[0].j[0] == 1.0


def test_refuses_a_missing_split_file(copy):
    with pytest.raises(LayoutError, match=r"ImageSets/2017/test\.txt: missing"):
        read_davis(copy, split="test")


def test_refuses_a_listed_sequence_that_is_absent(copy):
    (copy / "ImageSets/2017/val.txt").write_text("synth00\nghost\n")
    with pytest.raises(LayoutError, match=r"JPEGImages/480p/ghost: missing"):
        read_davis(copy)


def test_refuses_a_sequence_without_annotations(copy):
    shutil.rmtree(copy / "Annotations/480p/synth01")
    with pytest.raises(LayoutError, match=r"Annotations/480p/synth01: missing"):
        read_davis(copy)


def test_refuses_frames_and_annotations_that_do_not_match(copy):
    (copy / "Annotations/480p/synth02/00003.png").unlink()
    with pytest.raises(LayoutError, match=r"synth02: annotations do not match.*00003"):
        read_davis(copy)


def test_refuses_an_id_not_among_the_first_frames_objects(copy):
    path = copy / "Annotations/480p/synth00/00002.png"
    mask = load_mask(path)
    mask[0, 0] = 3
    write_mask(mask, path)
    with pytest.raises(LayoutError, match=r"synth00/00002\.png: object id\(s\) \[3\]"):
        read_davis(copy)


def test_refuses_an_annotation_of_another_size(copy):
    write_mask(np.zeros((64, 90), np.uint8), copy / "Annotations/480p/synth01/00004.png")
    with pytest.raises(LayoutError, match=r"synth01/00004\.png: 90x64 annotation; expected 128x64"):
        read_davis(copy)


def test_refuses_an_rgb_annotation(copy):
    Image.new("RGB", (96, 64)).save(copy / "Annotations/480p/synth00/00001.png")
    with pytest.raises(LayoutError, match=r"00001\.png: a RGB image"):
        read_davis(copy)


# -- writer ----------------------------------------------------------------------------------------------


def test_results_writer_round_trip_keeps_palette_and_ids(fixture_root, tmp_path):
    seq = read_davis(fixture_root).sequences[1]
    masks = [load_mask(a) for a in seq.annotations]
    masks[2][0, :4] = 255
    paths = write_results(tmp_path / "results", seq, masks)
    assert [p.relative_to(tmp_path) for p in paths] == [
        tmp_path.joinpath("results", "synth01", f"{t:05d}.png").relative_to(tmp_path) for t in range(6)]
    for path, mask in zip(paths, masks):
        with Image.open(path) as image:
            assert image.mode == "P" and image.getpalette()[: 3 * 256] == PALETTE
        np.testing.assert_array_equal(load_mask(path), mask)
    assert PALETTE[3:9] == [128, 0, 0, 0, 128, 0] and PALETTE[-3:] == [224, 224, 192]  # VOC: 1 red, 2 green, void
    assert math.isclose(len(PALETTE), 768)


def _reference_f(predicted, truth, radius):
    """F from squared distances between boundary pixels on the whole frame (no dilation, no crop)."""
    pred_b, true_b = np.argwhere(seg2bmap(predicted)), np.argwhere(seg2bmap(truth))
    if len(pred_b) == 0 or len(true_b) == 0:
        return float(len(pred_b) == len(true_b))
    d2 = ((pred_b[:, None, :] - true_b[None, :, :]) ** 2).sum(-1)
    precision, recall = (d2.min(1) <= radius**2).mean(), (d2.min(0) <= radius**2).mean()
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


@pytest.mark.parametrize("seed", range(4))
def test_f_equals_a_brute_force_reference_on_random_blobs(seed):
    # 60 x 80: tolerance 1 (diagonal 100); blobs touching the image border exercise seg2bmap's last row/column
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:60, :80]

    def blob():
        cy, cx, ry, rx = rng.uniform(0, 60), rng.uniform(0, 80), rng.uniform(5, 30), rng.uniform(5, 40)
        return (yy - cy) ** 2 / ry**2 + (xx - cx) ** 2 / rx**2 < 1

    predicted, truth = blob(), blob()
    assert contour_accuracy(predicted, truth) == pytest.approx(_reference_f(predicted, truth, 1))
    assert contour_accuracy(predicted, truth, bound_th=3) == pytest.approx(_reference_f(predicted, truth, 3))


def test_sequence_scoring_treats_truth_void_as_background_and_refuses_unknown_ids():
    # the official semi-supervised evaluation passes no void mask: a prediction covering void pixels is penalised
    truth = _sequence(1)
    for mask in truth:
        mask[5:15, 15:20] = 255  # 10 x 5 void beside the 10 x 10 object
    predicted = [np.where(m == 255, 1, m).astype(np.uint8) for m in truth]
    assert score_sequence("v", predicted, truth, [1])[0].j_frames == pytest.approx((100 / 150,) * 3)
    predicted[2][0, 0] = 2
    with pytest.raises(ValueError, match="v: frame 2 predicts id 2; the sequence's objects are \\[1\\]"):
        score_sequence("v", predicted, truth, [1])
