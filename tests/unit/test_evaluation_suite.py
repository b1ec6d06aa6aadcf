"""The evaluation suite's parts: corruptions, object masks, label propagation and its J/F scores, the suite."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vito.config import EvalConfig, SyntheticConfig, VitoConfig
from vito.data.synthetic import render_clip
from vito.model import VitoModel
from vito.propagation import contour_accuracy, evaluate_propagation, propagate, propagation_clips, region_similarity
from vito.robustness import CORRUPTIONS, corrupt

torch.set_num_threads(1)

SYN = SyntheticConfig(num_videos=4, num_frames=10, fps=8, size=32, num_classes=4, seed=1)


def smooth_images(n: int = 4, size: int = 24) -> torch.Tensor:
    ys, xs = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    base = torch.stack([torch.sin(6 * xs) * 0.4 + 0.5, torch.cos(5 * ys) * 0.4 + 0.5, xs * ys])
    return torch.stack([base.roll(k, dims=2) for k in range(n)])


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_corruptions_are_deterministic_and_grow_with_severity(name: str) -> None:
    images = smooth_images()
    errors = []
    for severity in (1, 3, 5):
        out = corrupt(images, name, severity, seed=0)
        assert out.shape == images.shape and out.dtype == images.dtype
        assert out.min() >= 0 and out.max() <= 1
        assert torch.equal(out, corrupt(images, name, severity, seed=0))
        errors.append((out - images).pow(2).mean().item())
    assert errors[0] > 0 and errors[0] < errors[1] < errors[2], errors
    with pytest.raises(ValueError):
        corrupt(images, name, 6)


def test_jpeg_is_the_real_codec_with_chroma_subsampling() -> None:
    images = torch.zeros(1, 3, 16, 16)
    images[0, 0, :, ::2] = 1.0  # one-pixel red stripes: 4:2:0 chroma cannot hold them
    out = corrupt(images, "jpeg", 1)
    assert (out[0, 0, :, ::2] - out[0, 0, :, 1::2]).abs().mean() < 0.8


def test_render_clip_mask_marks_the_object() -> None:
    frames, mask = render_clip(2, SYN, np.random.default_rng(0), return_mask=True)
    again = render_clip(2, SYN, np.random.default_rng(0))
    np.testing.assert_array_equal(frames, again)  # the mask changes nothing about the frames
    assert mask.shape == frames.shape[:3] and mask.dtype == bool
    area = mask.mean(axis=(1, 2))
    assert (area > 0.02).all() and (area < 0.6).all()
    # Object pixels differ from the clip's background far more than background pixels do.
    background = np.median(frames[0][~mask[0]], axis=0)
    inside = np.abs(frames[0][mask[0]].astype(float) - background).mean()
    outside = np.abs(frames[0][~mask[0]].astype(float) - background).mean()
    assert inside > 2 * outside


def test_region_and_contour_scores() -> None:
    truth = torch.zeros(20, 20, dtype=torch.bool)
    truth[5:15, 5:15] = True
    assert region_similarity(truth, truth) == 1.0 and contour_accuracy(truth, truth) == 1.0
    shifted = truth.roll(1, dims=1)
    assert region_similarity(shifted, truth) == pytest.approx(90 / 110)
    assert contour_accuracy(shifted, truth) == 1.0  # within the 1-pixel DAVIS tolerance at this size
    far = truth.roll(4, dims=1)
    assert contour_accuracy(far, truth) < 0.5
    empty = torch.zeros_like(truth)
    assert region_similarity(empty, empty) == 1.0 and region_similarity(empty, truth) == 0.0
    assert contour_accuracy(empty, truth) == 0.0


def test_propagation_with_ideal_features_recovers_the_masks() -> None:
    """Features that are the mask itself (one-hot fg/bg): propagation must return the true masks."""
    clips = propagation_clips(SYN, 2, 32)
    cfg = EvalConfig(propagation_radius=40, propagation_context=2, propagation_topk=5)
    for masks in clips.masks:
        features = torch.stack([masks.float(), (~masks).float()], dim=1)  # (T, 2, H, W)
        soft = propagate(torch.nn.functional.normalize(features, dim=1), masks[0], cfg)
        predicted = soft >= 0.5
        js = [region_similarity(p, t) for p, t in zip(predicted[1:], masks[1:])]
        assert np.mean(js) > 0.99


def test_propagation_baselines_and_a_random_network_give_sane_scores() -> None:
    clips = propagation_clips(SYN, 2, 32)
    cfg = EvalConfig(propagation_size=32)
    copied = evaluate_propagation(None, clips, cfg, torch.device("cpu"))
    assert 0 < copied["J"] < 1 and copied["JF"] == pytest.approx((copied["J"] + copied["F"]) / 2)
    model = VitoModel(VitoConfig().model.model_copy(update={"width": 8, "pool_hidden": 8, "proj_hidden": 8,
                                                             "proj_dim": 8, "pred_hidden": 8}), VitoConfig().loss)
    scores = evaluate_propagation(model, clips, cfg, torch.device("cpu"))
    assert all(0 <= scores[k] <= 1 for k in ("J", "F", "JF"))
    assert model.training, "the evaluation must not leave the model in eval mode"


def test_suite_reports_every_metric(tmp_path) -> None:
    from vito.evaluate import evaluate_with_baselines

    cfg = VitoConfig.model_validate({
        "data": {"synthetic": SYN.model_dump(), "crop_size": 24},
        "model": {"width": 8, "pool_hidden": 8, "proj_hidden": 8, "proj_dim": 8, "pred_hidden": 8},
        "eval": {"train_clips": 4, "test_clips": 4, "frames_per_clip": 2, "probe_epochs": 5, "severities": [2],
                 "corruptions": ["contrast", "jpeg"], "deformation_motion_scales": [2.5], "propagation_clips": 1,
                 "propagation_size": 32},
    })
    model = VitoModel(cfg.model, cfg.loss)
    results = evaluate_with_baselines(model, cfg, str(tmp_path), torch.device("cpu"), probes_only=False, random_init=True)
    expected = {
        "eval/linear_probe_acc", "eval/knn_acc", "eval/robust/contrast_s2_acc", "eval/robust/jpeg_s2_acc",
        "eval/robust/mean_corruption_acc", "eval/robust/relative_corruption_acc", "eval/deform/m2.5_linear_probe_acc",
        "eval/deform/m2.5_knn_acc", "eval/propagation/J", "eval/propagation/F", "eval/propagation/JF",
        "eval/saliency/attention_on_object", "eval/saliency/object_area", "eval/saliency/attention_lift",
    }
    assert expected <= set(results)
    assert {f"{key}_random_init" for key in expected} <= set(results)
    assert {"eval/propagation/J_copy_first", "eval/propagation/JF_copy_first"} <= set(results)
    assert all(0 <= value <= 1 for key, value in results.items() if "relative" not in key and "lift" not in key)
    assert results["eval/saliency/attention_lift"] > 0


def test_end_of_training_probes_share_the_suite_and_its_random_init_baseline(tmp_path) -> None:
    from vito.evaluate import evaluate_frozen_features, evaluate_with_baselines

    cfg = VitoConfig.model_validate({
        "data": {"synthetic": SYN.model_dump(), "crop_size": 24},
        "model": {"width": 8, "pool_hidden": 8, "proj_hidden": 8, "proj_dim": 8, "pred_hidden": 8},
        "eval": {"train_clips": 4, "test_clips": 4, "frames_per_clip": 2, "probe_epochs": 5, "propagation_clips": 1,
                 "propagation_size": 32, "random_init_baseline": False},
    })
    torch.manual_seed(5)
    model = VitoModel(cfg.model, cfg.loss)
    probes = evaluate_frozen_features(model, cfg, str(tmp_path), torch.device("cpu"))
    assert set(probes) == {"eval/linear_probe_acc", "eval/knn_acc", "eval/linear_probe_acc_random_init",
                           "eval/knn_acc_random_init"}, "pretraining always reports its random-init baseline"
    suite = evaluate_with_baselines(model, cfg, str(tmp_path), torch.device("cpu"), probes_only=False,
                                    random_init=cfg.eval.random_init_baseline)
    assert not any(key.endswith("_random_init") for key in suite), "an evaluation without the baseline asked"
    assert "eval/robust/mean_corruption_acc" in suite and "eval/propagation/JF_copy_first" in suite
    # One path: the probes of the full suite are the end-of-training probes, to the bit.
    assert suite["eval/linear_probe_acc"] == probes["eval/linear_probe_acc"]
    assert suite["eval/knn_acc"] == probes["eval/knn_acc"]


def test_attention_lift_is_one_for_average_pooling_and_follows_where_attention_looks() -> None:
    from vito.propagation import attention_on_object

    clips = propagation_clips(SYN, 2, 32)
    small = dict(width=8, pool_hidden=8, proj_hidden=8, proj_dim=8, pred_hidden=8)
    average = VitoModel(VitoConfig().model.model_copy(update={**small, "pooling": "average"}), VitoConfig().loss)
    scores = attention_on_object(average, clips, 32, torch.device("cpu"))
    assert scores["attention_lift"] == pytest.approx(1.0)
    assert scores["attention_on_object"] == pytest.approx(scores["object_area"])

    attention = VitoModel(VitoConfig().model.model_copy(update=small), VitoConfig().loss)

    class Oracle(torch.nn.Module):  # attends exactly where the object is
        def attention(self, maps):
            cells = torch.nn.functional.adaptive_avg_pool2d(current_masks.float()[:, None], maps.shape[-2:])
            weights = cells.flatten(1) + 1e-6
            return weights / weights.sum(1, keepdim=True)

    attention.pools["s5"] = Oracle()
    lifts = []
    for index in range(2):
        current_masks = clips.masks[index]
        one = type(clips)(clips.frames[index : index + 1], clips.masks[index : index + 1])
        lifts.append(attention_on_object(attention, one, 128, torch.device("cpu"))["attention_lift"])  # a 4x4 grid
    assert min(lifts) > 1.5
