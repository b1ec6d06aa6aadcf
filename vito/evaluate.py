"""Frozen-feature evaluation of a network: linear probe and kNN, robustness, deformation, propagation.

Every evaluation goes through `evaluate_with_baselines`: the end of pretraining runs its probes, an evaluation
of a checkpoint its whole suite. Both can run the same measurements on a randomly initialised network of the
same architecture, so a run reports how much pretraining bought over chance-level features, not just a number
without a reference.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from vito.config import VitoConfig
from vito.data.augment import MEAN, STD, eval_view, normalize
from vito.data.manifest import VideoRecord, read_manifest
from vito.data.synthetic import ensure_synthetic_videos
from vito.data.video import decode_frames_at
from vito.model import VitoModel
from vito.propagation import attention_on_object, evaluate_propagation, propagation_clips
from vito.robustness import corrupt


def clip_frames(records: list[VideoRecord], frames_per_clip: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Evenly spaced frames of every clip, centre-cropped, with the clip's label."""
    images, labels = [], []
    for record in records:
        times = np.linspace(0, record.duration_s, frames_per_clip, endpoint=False) + 0.5 / record.fps
        for frame in decode_frames_at(record.uri, times.tolist()):
            tensor = torch.from_numpy(frame).permute(2, 0, 1).float().div_(255)
            images.append(eval_view(tensor, size))
            labels.append(record.label)
    return torch.stack(images), torch.tensor(labels)


@torch.no_grad()
def extract_features(model: VitoModel, images: torch.Tensor, device: torch.device, batch: int = 64) -> torch.Tensor:
    was_training = model.training
    model.eval()
    dtype = next(model.parameters()).dtype
    scale = max(model.scales)  # the deepest pooled feature, as the paper evaluates
    feats = [
        model.features(images[i : i + batch].to(device, dtype), scale).float().cpu()
        for i in range(0, len(images), batch)
    ]
    model.train(was_training)
    return torch.cat(feats)


class LinearProbe:
    """Softmax regression on standardised features, trained full batch (the sets are small).

    Fitted once on clean training features, it scores any test features: clean, corrupted or deformed.
    """

    def __init__(self, train_x: torch.Tensor, train_y: torch.Tensor, epochs: int, seed: int, num_classes: int | None = None):
        self.mean, self.std = train_x.mean(0), train_x.std(0) + 1e-6
        train_x = (train_x - self.mean) / self.std
        generator = torch.Generator().manual_seed(seed)
        classes = num_classes or int(train_y.max()) + 1
        weight = (torch.randn(train_x.shape[1], classes, generator=generator) * 0.01).requires_grad_()
        bias = torch.zeros(classes, requires_grad=True)
        optimizer = torch.optim.Adam([weight, bias], lr=0.01, weight_decay=1e-4)
        for _ in range(epochs):
            optimizer.zero_grad()
            F.cross_entropy(train_x @ weight + bias, train_y).backward()
            optimizer.step()
        self.weight, self.bias = weight.detach(), bias.detach()

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return (((x - self.mean) / self.std) @ self.weight + self.bias).argmax(1)

    def accuracy(self, x: torch.Tensor, y: torch.Tensor) -> float:
        return float((self.predict(x) == y).float().mean())


def knn_accuracy(train_x, train_y, test_x, test_y, k: int = 5) -> float:
    similarity = F.normalize(test_x, dim=1) @ F.normalize(train_x, dim=1).T
    neighbours = train_y[similarity.topk(min(k, len(train_y)), dim=1).indices]
    votes = torch.mode(neighbours, dim=1).values
    return float((votes == test_y).float().mean())


def probe_records(cfg: VitoConfig, data_root: str) -> tuple[list[VideoRecord], list[VideoRecord]]:
    """The labelled clips of the probes: eval.train/test_manifest, else synthetic probe splits."""
    if cfg.eval.train_manifest is not None:
        train, test = read_manifest(cfg.eval.train_manifest), read_manifest(cfg.eval.test_manifest)
        for name, records in (("eval.train_manifest", train), ("eval.test_manifest", test)):
            unlabelled = [r.uri for r in records if r.label is None]
            if unlabelled:
                raise ValueError(f"{name}: {len(unlabelled)} clips have no label (first: {unlabelled[0]})")
        return train, test
    synthetic = cfg.data.synthetic
    train = read_manifest(ensure_synthetic_videos(data_root, synthetic, "probe_train", cfg.eval.train_clips))
    test = read_manifest(ensure_synthetic_videos(data_root, synthetic, "probe_test", cfg.eval.test_clips))
    return train, test


def evaluation_splits(cfg: VitoConfig, data_root: str):
    train, test = probe_records(cfg, data_root)
    size = cfg.data.crop_size
    return clip_frames(train, cfg.eval.frames_per_clip, size), clip_frames(test, cfg.eval.frames_per_clip, size)


def _unnormalize(images: torch.Tensor) -> torch.Tensor:
    return (images * STD[:, None, None] + MEAN[:, None, None]).clamp(0, 1)


def _normalized(images: torch.Tensor) -> torch.Tensor:
    return torch.stack([normalize(image) for image in images])


def evaluate_suite(model: VitoModel, cfg: VitoConfig, data_root: str, device: torch.device, splits=None,
                   probes_only: bool = False) -> dict[str, float]:
    """The metrics of one network (keys without the `eval/` prefix): the probes, then (unless probes_only) the
    robustness, deformation, propagation and saliency measurements of cfg.eval."""
    ev = cfg.eval
    (train_images, train_y), (test_images, test_y) = splits or evaluation_splits(cfg, data_root)
    train_x = extract_features(model, train_images, device)
    test_x = extract_features(model, test_images, device)
    classes = int(max(train_y.max(), test_y.max())) + 1
    probe = LinearProbe(train_x, train_y, ev.probe_epochs, ev.seed, classes)
    clean = probe.accuracy(test_x, test_y)
    out = {"linear_probe_acc": clean, "knn_acc": knn_accuracy(train_x, train_y, test_x, test_y, ev.knn_k)}
    if probes_only:
        return out

    if ev.corruptions and ev.severities:
        raw = _unnormalize(test_images)
        accuracies = []
        for name in ev.corruptions:
            for severity in ev.severities:
                features = extract_features(model, _normalized(corrupt(raw, name, severity, ev.seed)), device)
                accuracy = probe.accuracy(features, test_y)
                out[f"robust/{name}_s{severity}_acc"] = accuracy
                accuracies.append(accuracy)
        out["robust/mean_corruption_acc"] = sum(accuracies) / len(accuracies)
        out["robust/relative_corruption_acc"] = out["robust/mean_corruption_acc"] / max(clean, 1e-6)

    synthetic_probes = ev.train_manifest is None
    if synthetic_probes:
        for scale in ev.deformation_motion_scales:
            records = read_manifest(ensure_synthetic_videos(
                data_root, cfg.data.synthetic, "deform_test", ev.test_clips, motion_scale=scale))
            images, labels = clip_frames(records, ev.frames_per_clip, cfg.data.crop_size)
            features = extract_features(model, images, device)
            out[f"deform/m{scale:g}_linear_probe_acc"] = probe.accuracy(features, labels)
            out[f"deform/m{scale:g}_knn_acc"] = knn_accuracy(train_x, train_y, features, labels, ev.knn_k)

    if ev.propagation and synthetic_probes:
        clips = propagation_clips(cfg.data.synthetic, ev.propagation_clips, ev.propagation_size, ev.seed)
        stage = min(ev.propagation_stage, model.backbone.last_stage)
        suite_cfg = ev.model_copy(update={"propagation_stage": stage})
        out.update({f"propagation/{k}": v for k, v in evaluate_propagation(model, clips, suite_cfg, device).items()})
        out.update({f"saliency/{k}": v for k, v in attention_on_object(model, clips, cfg.data.crop_size, device).items()})
    return out


def evaluate_with_baselines(model: VitoModel, cfg: VitoConfig, data_root: str, device: torch.device, *,
                            probes_only: bool, random_init: bool) -> dict[str, float]:
    """`eval/...` metrics of `model` and, with random_init, `eval/..._random_init` of a network of the same
    architecture (cfg.model), freshly initialised from train.seed. The full suite also reports the propagation
    of the no-motion baseline (the first mask copied to every frame) as `eval/propagation/..._copy_first`.
    """
    splits = evaluation_splits(cfg, data_root)
    results = {f"eval/{k}": v for k, v in evaluate_suite(model, cfg, data_root, device, splits, probes_only).items()}
    if random_init:
        with torch.random.fork_rng():
            torch.manual_seed(cfg.train.seed)
            baseline_model = VitoModel(cfg.model, cfg.loss).to(device)
        baseline = evaluate_suite(baseline_model, cfg, data_root, device, splits, probes_only)
        results.update({f"eval/{k}_random_init": v for k, v in baseline.items()})
    if not probes_only and cfg.eval.propagation and cfg.eval.train_manifest is None:
        clips = propagation_clips(cfg.data.synthetic, cfg.eval.propagation_clips, cfg.eval.propagation_size, cfg.eval.seed)
        copied = evaluate_propagation(None, clips, cfg.eval, device)
        results.update({f"eval/propagation/{k}_copy_first": v for k, v in copied.items()})
    return results


def evaluate_frozen_features(model: VitoModel, cfg: VitoConfig, data_root: str, device: torch.device) -> dict[str, float]:
    """What the end of pretraining reports: the probes, for the trained and a random-init network.

    The baseline is not conditional on eval.random_init_baseline here: pretraining runs always reported it,
    and their metrics stay the same.
    """
    return evaluate_with_baselines(model, cfg, data_root, device, probes_only=True, random_init=True)
