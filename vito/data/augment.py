"""Per-frame image augmentations (BYOL/MoCLR recipe) in plain torch, driven by an explicit generator.

Training draws a view's choices here (`draw_view_params`) and applies them split: geometry on the uint8 frame
in the loader worker, colour/blur/solarize/normalise batched on the device (vito/data/batch_augment.py).
`augment_view` is the per-sample float reference of the same recipe.

Every random draw comes from the `torch.Generator` passed in, never the global RNG, so a view is a pure
function of (frame, config, generator state): that is what makes data order and exact resume reproducible.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from vito.config import AugmentConfig

MEAN = torch.tensor([0.485, 0.456, 0.406])
STD = torch.tensor([0.229, 0.224, 0.225])
LUMA = torch.tensor([0.299, 0.587, 0.114])
# Broadcastable (3, 1, 1) views, made once: per-call indexing costs more than the arithmetic on small views.
_MEAN_CHW = MEAN[:, None, None]
_STD_CHW = STD[:, None, None]
_LUMA_CHW = LUMA[:, None, None]
_RATIO_RANGE = (3 / 4, 4 / 3)
# BYOL blurs 224-px images with sigma in [0.1, 2.0] px; scale by image size to keep the same relative blur.
_BLUR_SIGMA_AT_224 = (0.1, 2.0)


def normalize(image: torch.Tensor) -> torch.Tensor:
    return (image - _MEAN_CHW).div_(_STD_CHW)


def _uniform(gen: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * torch.rand((), generator=gen).item()


def _coin(gen: torch.Generator, p: float) -> bool:
    return torch.rand((), generator=gen).item() < p


def _randint(gen: torch.Generator, high: int) -> int:
    return int(torch.randint(high, (), generator=gen).item())


def resize_square(image: torch.Tensor, out_size: int) -> torch.Tensor:
    resized = F.interpolate(image[None], size=(out_size, out_size), mode="bilinear", align_corners=False, antialias=False)
    return resized[0]


def _crop_box(height: int, width: int, scale_min: float, gen: torch.Generator) -> tuple[int, int, int, int]:
    """(top, left, h, w) as torchvision's RandomResizedCrop: 10 tries, then the largest centred crop."""
    area = height * width
    log_lo, log_hi = math.log(_RATIO_RANGE[0]), math.log(_RATIO_RANGE[1])
    for _ in range(10):
        target_area = area * _uniform(gen, scale_min, 1.0)
        ratio = math.exp(_uniform(gen, log_lo, log_hi))
        w = round(math.sqrt(target_area * ratio))
        h = round(math.sqrt(target_area / ratio))
        if 0 < w <= width and 0 < h <= height:
            return _randint(gen, height - h + 1), _randint(gen, width - w + 1), h, w
    side = min(height, width)
    return (height - side) // 2, (width - side) // 2, side, side


def _grayscale(image: torch.Tensor) -> torch.Tensor:
    return (image * _LUMA_CHW).sum(0, keepdim=True)


# RGB <-> YIQ: a hue rotation is a rotation of the (I, Q) chroma plane.
TO_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
FROM_YIQ = torch.linalg.inv(TO_YIQ)


def _hue_rotate(image: torch.Tensor, turns: float) -> torch.Tensor:
    angle = 2 * math.pi * turns
    cos, sin = math.cos(angle), math.sin(angle)
    rotation = torch.tensor([[1.0, 0.0, 0.0], [0.0, cos, -sin], [0.0, sin, cos]])
    matrix = FROM_YIQ @ rotation @ TO_YIQ
    return torch.einsum("ij,jhw->ihw", matrix, image).clamp_(0, 1)


def _colour_jitter(image: torch.Tensor, strength: float, gen: torch.Generator, hue: float = 0.0) -> torch.Tensor:
    # BYOL's ratios: brightness and contrast at full strength, saturation at half.
    brightness = _uniform(gen, max(0.0, 1 - strength), 1 + strength)
    contrast = _uniform(gen, max(0.0, 1 - strength), 1 + strength)
    saturation = _uniform(gen, max(0.0, 1 - strength / 2), 1 + strength / 2)
    turns = _uniform(gen, -hue, hue) if hue > 0 else 0.0
    # In-place steps on fresh intermediates: the same float32 operations in the same order as the
    # out-of-place formula ((x - m) * c + m).clamp(0, 1), without allocating a tensor per step.
    image = (image * brightness).clamp_(0, 1)
    mean = _grayscale(image).mean()
    image = (image - mean).mul_(contrast).add_(mean).clamp_(0, 1)
    gray = _grayscale(image)
    image = image.sub_(gray).mul_(saturation).add_(gray).clamp_(0, 1)
    return _hue_rotate(image, turns) if turns else image


def blur_kernel(sigma: float, dtype: torch.dtype) -> list[torch.Tensor]:
    """The normalised 1-D Gaussian taps, each a 0-dim tensor (a multiplier for one shifted slice)."""
    radius = max(1, math.ceil(3 * sigma))
    offsets = torch.arange(-radius, radius + 1, dtype=dtype)
    kernel = torch.exp(-(offsets**2) / (2 * sigma**2))
    return list((kernel / kernel.sum()).unbind())


def _blur_pass(padded: torch.Tensor, taps: list[torch.Tensor], dim: int) -> torch.Tensor:
    """One separable pass: sum_k taps[k] * padded shifted by k along dim (the padding is consumed)."""
    length = padded.shape[dim] - len(taps) + 1
    out = padded.narrow(dim, 0, length) * taps[0]
    for k in range(1, len(taps)):
        out.addcmul_(padded.narrow(dim, k, length), taps[k])
    return out


def gaussian_blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    # Separable Gaussian as multiply-adds of shifted slices. A depthwise conv2d computes the same sums,
    # but at these sizes oneDNN spends ~60 us per call on setup against ~3 us per tap here. The taps are
    # accumulated in order k = 0..2r, one fused multiply-add each, as the previous depthwise conv2d did:
    # outputs were bit-identical to it on the AVX-512 machine this was written on, and the tests hold
    # them to within float rounding of it anywhere.
    taps = blur_kernel(sigma, image.dtype)
    radius = len(taps) // 2
    padded = F.pad(image, (radius, radius, radius, radius), mode="reflect")
    return _blur_pass(_blur_pass(padded, taps, 2), taps, 1)


@dataclass(frozen=True)
class ViewParams:
    """Every random choice of one view, drawn by `draw_view_params` in the order `augment_view` draws them.

    A worker applies the geometric part (crop, resize, flip) to the uint8 frame; the rest travels with the
    crop as `to_row()` and is applied to the whole batch on the training device (vito/data/batch_augment.py).
    """

    top: int
    left: int
    height: int
    width: int
    flip: bool
    jitter: bool
    brightness: float = 1.0
    contrast: float = 1.0
    saturation: float = 1.0
    hue_turns: float = 0.0
    grayscale: bool = False
    blur_sigma: float = 0.0  # 0: no blur
    solarize: bool = False

    def to_row(self) -> torch.Tensor:
        """The photometric choices as float64 (PHOTOMETRIC_FIELDS order): exact for every Python float."""
        return torch.tensor([float(getattr(self, name)) for name in PHOTOMETRIC_FIELDS], dtype=torch.float64)


PHOTOMETRIC_FIELDS = (
    "jitter", "brightness", "contrast", "saturation", "hue_turns", "grayscale", "blur_sigma", "solarize"
)


def draw_view_params(height: int, width: int, cfg: AugmentConfig, out_size: int, gen: torch.Generator) -> ViewParams:
    """The random choices of one view of an (height, width) frame; consumes `gen` exactly as augment_view."""
    top, left, h, w = _crop_box(height, width, cfg.crop_scale_min, gen)
    flip = _coin(gen, cfg.flip_p)
    jitter = {}
    if _coin(gen, cfg.color_jitter_p):
        strength = cfg.color_jitter_strength
        jitter = {
            "brightness": _uniform(gen, max(0.0, 1 - strength), 1 + strength),
            "contrast": _uniform(gen, max(0.0, 1 - strength), 1 + strength),
            "saturation": _uniform(gen, max(0.0, 1 - strength / 2), 1 + strength / 2),
            "hue_turns": _uniform(gen, -cfg.hue, cfg.hue) if cfg.hue > 0 else 0.0,
        }
    grayscale = _coin(gen, cfg.grayscale_p)
    sigma = 0.0
    if _coin(gen, cfg.blur_p):
        low, high = _BLUR_SIGMA_AT_224
        sigma = _uniform(gen, low, high) * out_size / 224
    solarize = _coin(gen, cfg.solarize_p)
    return ViewParams(top, left, h, w, flip, bool(jitter), grayscale=grayscale, blur_sigma=sigma, solarize=solarize,
                      **jitter)


def crop_uint8(frame: np.ndarray, params: ViewParams, out_size: int) -> torch.Tensor:
    """The geometric part of a view on the uint8 (H, W, 3) frame: crop, resize, flip -> uint8 (3, S, S).

    Cropping before any conversion: a worker never turns a whole frame into floats. torch's uint8 bilinear
    resize (fixed-point weights, one rounding) stays within about one grey level of the float path.
    """
    crop = torch.from_numpy(frame[params.top : params.top + params.height, params.left : params.left + params.width])
    image = crop.permute(2, 0, 1)[None]  # channels-last strides: torch's fast uint8 resize path
    image = F.interpolate(image, size=(out_size, out_size), mode="bilinear", align_corners=False, antialias=False)[0]
    if params.flip:
        image = image.flip(-1)
    return image.contiguous()


def augment_view(frame: torch.Tensor, cfg: AugmentConfig, out_size: int, gen: torch.Generator) -> torch.Tensor:
    """One random view of a float (3, H, W) frame in [0, 1]: normalised float (3, out_size, out_size).

    The per-sample reference of the training path (uint8 crop in the worker + `augment_batch` on the device),
    which draws the same choices from the same generator."""
    _, height, width = frame.shape
    top, left, h, w = _crop_box(height, width, cfg.crop_scale_min, gen)
    image = resize_square(frame[:, top : top + h, left : left + w], out_size).clamp(0, 1)
    if _coin(gen, cfg.flip_p):
        image = image.flip(-1)
    if _coin(gen, cfg.color_jitter_p):
        image = _colour_jitter(image, cfg.color_jitter_strength, gen, cfg.hue)
    if _coin(gen, cfg.grayscale_p):
        image = _grayscale(image).expand(3, -1, -1)
    if _coin(gen, cfg.blur_p):
        low, high = _BLUR_SIGMA_AT_224
        sigma = _uniform(gen, low, high) * out_size / 224
        image = gaussian_blur(image, sigma)
    if _coin(gen, cfg.solarize_p):
        image = torch.where(image < 0.5, image, 1 - image)
    return normalize(image.contiguous())


def eval_view(frame: torch.Tensor, out_size: int) -> torch.Tensor:
    """Deterministic view for evaluation: largest centred square, resized, normalised."""
    _, height, width = frame.shape
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    return normalize(resize_square(frame[:, top : top + side, left : left + side], out_size).clamp(0, 1))
