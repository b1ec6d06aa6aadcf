"""Frozen-feature evaluation: a linear probe and a kNN classifier on held-out labelled clips.

The same probe runs on a randomly initialised network of the same architecture, so every run reports
how much pretraining bought over chance-level features, not just a number without a reference.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from vito.config import VitoConfig
from vito.data.augment import eval_view
from vito.data.manifest import VideoRecord, read_manifest
from vito.data.synthetic import ensure_synthetic_videos
from vito.data.video import decode_frames_at
from vito.model import VitoModel


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


def linear_probe_accuracy(train_x, train_y, test_x, test_y, epochs: int, seed: int) -> float:
    """Softmax regression on standardised features, full batch (the sets are small)."""
    classes = int(max(train_y.max(), test_y.max())) + 1
    return LinearProbe(train_x, train_y, epochs, seed, classes).accuracy(test_x, test_y)


def knn_accuracy(train_x, train_y, test_x, test_y, k: int = 5) -> float:
    similarity = F.normalize(test_x, dim=1) @ F.normalize(train_x, dim=1).T
    neighbours = train_y[similarity.topk(min(k, len(train_y)), dim=1).indices]
    votes = torch.mode(neighbours, dim=1).values
    return float((votes == test_y).float().mean())


def probe(model: VitoModel, splits, cfg: VitoConfig, device: torch.device) -> dict[str, float]:
    (train_images, train_y), (test_images, test_y) = splits
    train_x = extract_features(model, train_images, device)
    test_x = extract_features(model, test_images, device)
    return {
        "linear_probe_acc": linear_probe_accuracy(train_x, train_y, test_x, test_y, cfg.eval.probe_epochs, cfg.eval.seed),
        "knn_acc": knn_accuracy(train_x, train_y, test_x, test_y, cfg.eval.knn_k),
    }


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


def evaluate_frozen_features(model: VitoModel, cfg: VitoConfig, data_root: str, device: torch.device) -> dict[str, float]:
    splits = evaluation_splits(cfg, data_root)
    results = {f"eval/{k}": v for k, v in probe(model, splits, cfg, device).items()}
    with torch.random.fork_rng():
        torch.manual_seed(cfg.train.seed)
        random_init = VitoModel(cfg.model, cfg.loss).to(device)
    results.update({f"eval/{k}_random_init": v for k, v in probe(random_init, splits, cfg, device).items()})
    return results
