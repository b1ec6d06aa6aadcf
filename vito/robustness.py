"""Image corruptions for robustness evaluation, in the spirit of ImageNet-C, on small frames.

Each corruption maps float images (N, 3, H, W) in [0, 1] to corrupted ones at a severity 1-5; all are
deterministic given the generator. Parameters follow ImageNet-C where it has them (noise sigma, contrast
factor), blur is specified relative to the image size (ImageNet-C's absolute pixels at 224 px would vanish
at 40 px), and JPEG is the real codec: FFmpeg's MJPEG encoder through PyAV at a fixed quantiser scale, with
4:2:0 chroma subsampling, then decoded back. No PIL or OpenCV.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from fractions import Fraction

import av
import numpy as np
import torch
import torch.nn.functional as F

# severity 1..5
NOISE_SIGMA = (0.08, 0.12, 0.18, 0.26, 0.38)  # ImageNet-C gaussian_noise
BLUR_SIGMA_FRACTION = (0.0125, 0.019, 0.025, 0.0375, 0.05)  # of the image side: 0.5-2 px at 40 px
CONTRAST_FACTOR = (0.4, 0.3, 0.2, 0.1, 0.05)  # ImageNet-C contrast
JPEG_QSCALE = (6, 10, 16, 23, 31)  # FFmpeg's -q:v for mjpeg (2 best .. 31 worst)


def _check(severity: int) -> int:
    if not 1 <= severity <= 5:
        raise ValueError(f"severity must be 1..5, got {severity}")
    return severity - 1


def gaussian_noise(images: torch.Tensor, severity: int, generator: torch.Generator | None = None) -> torch.Tensor:
    sigma = NOISE_SIGMA[_check(severity)]
    noise = torch.randn(images.shape, generator=generator, dtype=images.dtype)
    return (images + sigma * noise).clamp(0, 1)


def gaussian_blur(images: torch.Tensor, severity: int, generator: torch.Generator | None = None) -> torch.Tensor:
    sigma = BLUR_SIGMA_FRACTION[_check(severity)] * max(images.shape[-2:])
    radius = max(1, math.ceil(3 * sigma))
    offsets = torch.arange(-radius, radius + 1, dtype=images.dtype)
    kernel = torch.exp(-(offsets**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    channels = images.shape[1]
    padded = F.pad(images, (radius, radius, radius, radius), mode="reflect")
    rows = F.conv2d(padded, kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
    return F.conv2d(rows, kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels).clamp(0, 1)


def contrast(images: torch.Tensor, severity: int, generator: torch.Generator | None = None) -> torch.Tensor:
    factor = CONTRAST_FACTOR[_check(severity)]
    mean = images.mean(dim=(1, 2, 3), keepdim=True)
    return ((images - mean) * factor + mean).clamp(0, 1)


def _jpeg_one(image: np.ndarray, qscale: int) -> np.ndarray:
    height, width, _ = image.shape
    pad_h, pad_w = height % 2, width % 2  # yuv420 wants even sides
    if pad_h or pad_w:
        image = np.pad(image, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    encoder = av.CodecContext.create("mjpeg", "w")
    encoder.width, encoder.height, encoder.pix_fmt = image.shape[1], image.shape[0], "yuvj420p"
    encoder.time_base = Fraction(1, 25)
    encoder.qmin = encoder.qmax = qscale
    encoder.thread_count = 1
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24").reformat(format="yuvj420p")
    packets = encoder.encode(frame) + encoder.encode(None)
    decoder = av.CodecContext.create("mjpeg", "r")
    decoded = [out for packet in packets for out in decoder.decode(packet)]
    return decoded[0].to_ndarray(format="rgb24")[:height, :width]


def jpeg(images: torch.Tensor, severity: int, generator: torch.Generator | None = None) -> torch.Tensor:
    qscale = JPEG_QSCALE[_check(severity)]
    as_uint8 = (images.clamp(0, 1) * 255 + 0.5).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    out = np.stack([_jpeg_one(image, qscale) for image in as_uint8])
    return torch.from_numpy(out).permute(0, 3, 1, 2).to(images.dtype).div_(255)


CORRUPTIONS: dict[str, Callable[..., torch.Tensor]] = {
    "gaussian_noise": gaussian_noise,
    "gaussian_blur": gaussian_blur,
    "contrast": contrast,
    "jpeg": jpeg,
}


def corrupt(images: torch.Tensor, name: str, severity: int, seed: int = 0) -> torch.Tensor:
    """`images` (N, 3, H, W) in [0, 1] under corruption `name` at `severity`; same seed, same result."""
    if name not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r}: expected one of {sorted(CORRUPTIONS)}")
    generator = torch.Generator().manual_seed(seed * 1000 + severity)
    return CORRUPTIONS[name](images, severity, generator)
