"""DAVIS-style semi-supervised video object segmentation by label propagation on frozen features.

The object's mask in the first frame is given; every later frame's mask is predicted from feature affinities
alone (no training), as in the DAVIS evaluations of VITO, CRW and DINO: each position of frame t attends to
the positions of a context (the first frame and the previous `context` frames) within a local radius, keeps
its top-k most similar positions, and takes their softmax-weighted labels. Scores are DAVIS's J (region
similarity, the IoU) and F (contour accuracy, the boundary F-measure with a tolerance of 0.8% of the image
diagonal), averaged over every frame after the first and then over clips.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from vito.config import EvalConfig, SyntheticConfig
from vito.data.augment import normalize
from vito.data.synthetic import render_clip
from vito.eval.scoring.label_propagation import context_frames, dense_trunk, propagate_frame
from vito.model import VitoModel

_PROPAGATION_SPLIT_SEED = 0x5EED_DA715  # clips for this eval never coincide with training/probe clips


@dataclass
class PropagationClips:
    frames: torch.Tensor  # (N, T, 3, S, S) float in [0, 1]
    masks: torch.Tensor  # (N, T, S, S) bool


def propagation_clips(synthetic: SyntheticConfig, count: int, size: int, seed: int = 0) -> PropagationClips:
    """`count` held-out synthetic clips, resized to size x size, with the ground-truth object masks."""
    frames, masks = [], []
    for index in range(count):
        rng = np.random.default_rng(np.random.SeedSequence([synthetic.seed, _PROPAGATION_SPLIT_SEED, seed, index]))
        clip, mask = render_clip(index % synthetic.num_classes, synthetic, rng, return_mask=True)
        video = torch.from_numpy(clip).permute(0, 3, 1, 2).float().div_(255)
        mask_t = torch.from_numpy(mask).float()[:, None]
        if video.shape[-1] != size:
            video = F.interpolate(video, size=(size, size), mode="bilinear", align_corners=False).clamp_(0, 1)
            mask_t = F.interpolate(mask_t, size=(size, size), mode="bilinear", align_corners=False)
        frames.append(video)
        masks.append(mask_t[:, 0] >= 0.5)
    return PropagationClips(torch.stack(frames), torch.stack(masks))


def dense_backbone(model: VitoModel, stage: int) -> torch.nn.Module:
    """The online backbone with its `stage` map at half the usual stride (label_propagation.dense_trunk), so tiny
    frames still give a usable grid."""
    return dense_trunk(model.backbone, stage)


@torch.no_grad()
def _feature_maps(backbone: torch.nn.Module, video: torch.Tensor, stage: int, device: torch.device) -> torch.Tensor:
    """(T, C, h, w) L2-normalised maps of one clip."""
    dtype = next(backbone.parameters()).dtype
    maps = backbone(torch.stack([normalize(f) for f in video]).to(device, dtype))[stage].float().cpu()
    return F.normalize(maps, dim=1)


def propagate(features: torch.Tensor, first_mask: torch.Tensor, cfg: EvalConfig) -> torch.Tensor:
    """Soft foreground probability (T, h, w) on the feature grid, from the first frame's mask (h0, w0)."""
    steps, _, h, w = features.shape
    labels = torch.zeros(steps, 2, h, w)
    fg = F.adaptive_avg_pool2d(first_mask.float()[None, None], (h, w))[0, 0]
    labels[0] = torch.stack([1 - fg, fg])
    channel_last = features.permute(0, 2, 3, 1).contiguous()
    for t in range(1, steps):
        context = context_frames(t, cfg.propagation_context)
        labels[t] = propagate_frame(channel_last[t], channel_last[context], labels[context], topk=cfg.propagation_topk,
                                    temperature=cfg.propagation_temperature, radius=cfg.propagation_radius)
    return labels[:, 1] / labels.sum(1).clamp_min(1e-6)


def _boundary(mask: torch.Tensor) -> torch.Tensor:
    """Pixels of the mask with a 4-neighbour outside it (DAVIS seg2bmap up to its thinning)."""
    padded = F.pad(mask.float()[None, None], (1, 1, 1, 1), value=0)[0, 0]
    interior = (padded[1:-1, :-2] > 0) & (padded[1:-1, 2:] > 0) & (padded[:-2, 1:-1] > 0) & (padded[2:, 1:-1] > 0)
    return mask & ~interior


def _dilate(mask: torch.Tensor, radius: int) -> torch.Tensor:
    if radius <= 0:
        return mask
    return F.max_pool2d(mask.float()[None, None], 2 * radius + 1, stride=1, padding=radius)[0, 0] > 0


def region_similarity(predicted: torch.Tensor, truth: torch.Tensor) -> float:
    """J: intersection over union; 1 when both are empty."""
    union = (predicted | truth).sum().item()
    return 1.0 if union == 0 else (predicted & truth).sum().item() / union


def contour_accuracy(predicted: torch.Tensor, truth: torch.Tensor, bound_th: float = 0.008) -> float:
    """F: boundary F-measure, boundaries matched within ceil(bound_th * image diagonal) pixels (DAVIS)."""
    tolerance = math.ceil(bound_th * math.hypot(*truth.shape))
    pred_b, true_b = _boundary(predicted), _boundary(truth)
    n_pred, n_true = pred_b.sum().item(), true_b.sum().item()
    if n_pred == 0 and n_true == 0:
        return 1.0
    if n_pred == 0 or n_true == 0:
        return 0.0
    precision = (pred_b & _dilate(true_b, tolerance)).sum().item() / n_pred
    recall = (true_b & _dilate(pred_b, tolerance)).sum().item() / n_true
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def score_masks(predicted: torch.Tensor, truth: torch.Tensor) -> tuple[float, float]:
    """Mean (J, F) over frames 1.. of one clip, (T, H, W) bool each."""
    js = [region_similarity(p, t) for p, t in zip(predicted[1:], truth[1:])]
    fs = [contour_accuracy(p, t) for p, t in zip(predicted[1:], truth[1:])]
    return float(np.mean(js)), float(np.mean(fs))


def evaluate_propagation(model: VitoModel | None, clips: PropagationClips, cfg: EvalConfig, device: torch.device) -> dict[str, float]:
    """J, F and their mean over the clips. model None: the no-motion baseline (first mask copied forward)."""
    js, fs = [], []
    backbone = dense_backbone(model, cfg.propagation_stage) if model is not None else None
    for video, masks in zip(clips.frames, clips.masks):
        if backbone is None:
            predicted = masks[:1].expand_as(masks).clone()
        else:
            features = _feature_maps(backbone, video, cfg.propagation_stage, device)
            soft = propagate(features, masks[0], cfg)
            full = F.interpolate(soft[:, None], size=masks.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
            predicted = full >= 0.5
            predicted[0] = masks[0]
        j, f = score_masks(predicted, masks)
        js.append(j)
        fs.append(f)
    j_mean, f_mean = float(np.mean(js)), float(np.mean(fs))
    return {"J": j_mean, "F": f_mean, "JF": (j_mean + f_mean) / 2}


@torch.no_grad()
def attention_on_object(model: VitoModel, clips: PropagationClips, size: int, device: torch.device) -> dict[str, float]:
    """Where the pooling looks: the share of the deepest pool's weights that falls on the object.

    Frames are resized to `size` (the training crop) and pooled as for the probes; the object mask is averaged
    onto the pool's grid. `object_area` is the share a uniform pool (average pooling) gives the object, so
    `attention_lift` = on_object / object_area is 1 for average pooling, above 1 for a pool that looks at the
    object (a saliency-alignment measure, after the paper's human-alignment claim), below 1 for one that
    looks at the background.
    """
    scale = max(model.scales)
    pool = model.pools[f"s{scale}"]
    modes = (model.backbone.training, pool.training)
    model.backbone.eval()
    pool.eval()
    dtype = next(model.backbone.parameters()).dtype
    on_object, area = [], []
    try:
        for video, masks in zip(clips.frames, clips.masks):
            frames = F.interpolate(video, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)
            maps = model.backbone(torch.stack([normalize(f) for f in frames]).to(device, dtype))[scale]
            weights = pool.attention(maps).float().cpu()  # (T, h*w), rows sum to 1
            cells = F.adaptive_avg_pool2d(masks.float()[:, None], maps.shape[-2:])[:, 0].flatten(1)
            on_object.append((weights * cells).sum(1).mean().item())
            area.append(cells.mean(1).mean().item())
    finally:
        model.backbone.train(modes[0])
        pool.train(modes[1])
    mass, share = float(np.mean(on_object)), float(np.mean(area))
    return {"attention_on_object": mass, "object_area": share, "attention_lift": mass / max(share, 1e-6)}
