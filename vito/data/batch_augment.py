"""The photometric half of the augmentations, batched on the training device.

Loader workers return uint8 crops (already cropped, resized and flipped) with each view's remaining choices
as a float64 row (`ViewParams.to_row`), drawn from the sample's (seed, position) generator. Here a whole
batch goes to the device as uint8 (4x less to copy than float) and gets colour jitter, grayscale, blur,
solarize and normalisation there, each op on the rows that drew it. The result equals `augment_view` on the
same crop within float rounding (the tests hold it to that), and it is a pure function of the batch, so the
stream stays a pure function of (seed, position) and exact resume holds.

The choices stay on the host: which rows take which op is decided there, so nothing here waits on the GPU.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

from vito.data.augment import FROM_YIQ, LUMA, MEAN, PHOTOMETRIC_FIELDS, STD, TO_YIQ, blur_kernel

_COLUMN = {name: index for index, name in enumerate(PHOTOMETRIC_FIELDS)}


class PairCrops(NamedTuple):
    """One sample (or, collated, a batch) as a worker returns it: uint8 crops and their remaining choices."""

    crop_a: torch.Tensor  # uint8 (3, S, S), batched (B, 3, S, S)
    crop_b: torch.Tensor
    params_a: torch.Tensor  # float64 (len(PHOTOMETRIC_FIELDS),), batched (B, ...)
    params_b: torch.Tensor


def _per_row(values: torch.Tensor, device: torch.device) -> torch.Tensor:
    """float64 host values -> float32 (n, 1, 1, 1) on the device: what a Python float scalar becomes in the
    reference's float32 arithmetic."""
    return values.to(torch.float32).view(-1, 1, 1, 1).to(device, non_blocking=True)


def _grayscale(image: torch.Tensor) -> torch.Tensor:
    return (image * LUMA.to(image.device).view(1, 3, 1, 1)).sum(1, keepdim=True)


def _hue_matrices(turns: torch.Tensor) -> torch.Tensor:
    """(n, 3, 3) float32 YIQ rotations, each built exactly as augment's per-sample _hue_rotate builds it."""
    matrices = []
    for value in turns.tolist():
        angle = 2 * math.pi * value
        cos, sin = math.cos(angle), math.sin(angle)
        rotation = torch.tensor([[1.0, 0.0, 0.0], [0.0, cos, -sin], [0.0, sin, cos]])
        matrices.append(FROM_YIQ @ rotation @ TO_YIQ)
    return torch.stack(matrices)


def _colour_jitter(image: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    device = image.device
    brightness = _per_row(params[:, _COLUMN["brightness"]], device)
    contrast = _per_row(params[:, _COLUMN["contrast"]], device)
    saturation = _per_row(params[:, _COLUMN["saturation"]], device)
    image = (image * brightness).clamp_(0, 1)
    mean = _grayscale(image).mean(dim=(1, 2, 3), keepdim=True)
    image = image.sub_(mean).mul_(contrast).add_(mean).clamp_(0, 1)
    gray = _grayscale(image)
    image = image.sub_(gray).mul_(saturation).add_(gray).clamp_(0, 1)
    turns = params[:, _COLUMN["hue_turns"]]
    hue_rows = torch.nonzero(turns != 0).flatten()
    if len(hue_rows):
        matrices = _hue_matrices(turns[hue_rows]).to(device, non_blocking=True)
        rows = hue_rows.to(device, non_blocking=True)
        rotated = torch.einsum("nij,njhw->nihw", matrices, image.index_select(0, rows)).clamp_(0, 1)
        image = image.index_copy(0, rows, rotated)
    return image


def _blur_taps(sigmas: torch.Tensor) -> torch.Tensor:
    """(n, 2R+1) Gaussian taps, each row augment's kernel for its sigma, zero-padded to the widest radius."""
    kernels = [torch.stack(blur_kernel(sigma, torch.float32)) for sigma in sigmas.tolist()]
    width = max(len(kernel) for kernel in kernels)
    return torch.stack([F.pad(kernel, ((width - len(kernel)) // 2,) * 2) for kernel in kernels])


def _blur_pass(padded: torch.Tensor, taps: torch.Tensor, dim: int) -> torch.Tensor:
    # As augment._blur_pass, with one tap per row. Zero taps (a narrower kernel than the widest) add exact
    # zeros, and reflect padding by the widest radius contains the narrower one, so each row's result is
    # its own kernel's.
    length = padded.shape[dim] - taps.shape[1] + 1
    column = lambda k: taps[:, k].view(-1, 1, 1, 1)  # noqa: E731
    out = padded.narrow(dim, 0, length) * column(0)
    for k in range(1, taps.shape[1]):
        out.addcmul_(padded.narrow(dim, k, length), column(k))
    return out


def gaussian_blur(image: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    taps = _blur_taps(sigmas).to(image.device, non_blocking=True)
    radius = taps.shape[1] // 2
    padded = F.pad(image, (radius, radius, radius, radius), mode="reflect")
    return _blur_pass(_blur_pass(padded, taps, 3), taps, 2)


def _rows(mask: torch.Tensor) -> torch.Tensor:
    return torch.nonzero(mask).flatten()


# On a CPU the whole batch is far larger than the caches and every op streams it through memory (measured:
# several times slower per view than one view at a time); chunks this size stay in cache. A GPU takes the
# batch in one piece. Rows are independent, so chunking changes no result.
CPU_CHUNK_ROWS = 2


def augment_batch(
    crops: torch.Tensor, params: torch.Tensor, device: torch.device | str | None = None, chunk_rows: int | None = None
) -> torch.Tensor:
    """uint8 (N, 3, S, S) crops and their (N, len(PHOTOMETRIC_FIELDS)) choices -> normalised float32 views
    on `device` (default: where the crops are). Colour jitter, grayscale, blur, solarize, in augment_view's
    order, each on the rows that drew it."""
    if crops.dtype != torch.uint8 or crops.dim() != 4 or crops.shape[1] != 3:
        raise ValueError(f"augment_batch takes uint8 (N, 3, S, S) crops, got {tuple(crops.shape)} {crops.dtype}")
    if params.shape != (crops.shape[0], len(PHOTOMETRIC_FIELDS)):
        raise ValueError(f"augment_batch: params {tuple(params.shape)} do not match {crops.shape[0]} crops")
    device = torch.device(device) if device is not None else crops.device
    params = params.cpu()
    crops = crops.to(device, non_blocking=True)
    rows = max(1, chunk_rows or (len(crops) if device.type == "cuda" else CPU_CHUNK_ROWS))
    out = torch.empty(crops.shape, dtype=torch.float32, device=device)
    for start in range(0, len(crops), rows):
        _augment_rows(crops[start : start + rows], params[start : start + rows], out[start : start + rows])
    return out


def _augment_rows(crops: torch.Tensor, params: torch.Tensor, out: torch.Tensor) -> None:
    image = torch.div(crops, 255, out=out)  # uint8 -> float32 in [0, 1], straight into the output

    def apply(mask: torch.Tensor, op) -> None:
        rows = _rows(mask)
        if len(rows) == len(image):
            image.copy_(op(image, rows))
        elif len(rows):
            on_device = rows.to(image.device, non_blocking=True)
            image.index_copy_(0, on_device, op(image.index_select(0, on_device), rows))

    apply(params[:, _COLUMN["jitter"]] > 0, lambda x, rows: _colour_jitter(x, params[rows]))
    apply(params[:, _COLUMN["grayscale"]] > 0, lambda x, rows: _grayscale(x).expand(-1, 3, -1, -1))
    apply(params[:, _COLUMN["blur_sigma"]] > 0, lambda x, rows: gaussian_blur(x, params[rows, _COLUMN["blur_sigma"]]))
    apply(params[:, _COLUMN["solarize"]] > 0, lambda x, rows: torch.where(x < 0.5, x, 1 - x))
    mean, std = _normalisation(image.device)
    image.sub_(mean).div_(std)


_NORMALISATION: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}


def _normalisation(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    if device not in _NORMALISATION:
        _NORMALISATION[device] = (MEAN.to(device).view(1, 3, 1, 1), STD.to(device).view(1, 3, 1, 1))
    return _NORMALISATION[device]


def augment_pairs(batch: PairCrops, device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """A collated batch of PairCrops -> (view_a, view_b), normalised float32 on `device`: one batched call."""
    device = torch.device(device) if device is not None else batch.crop_a.device
    # Each half leaves its (pinned) loader buffer for the device on its own; joined there, not on the host.
    crops = torch.cat([batch.crop_a.to(device, non_blocking=True), batch.crop_b.to(device, non_blocking=True)])
    views = augment_batch(crops, torch.cat([batch.params_a, batch.params_b]), device)
    return views[: len(batch.crop_a)], views[len(batch.crop_a) :]
