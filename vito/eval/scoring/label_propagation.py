"""Label propagation with frozen features (CRW's and VFS's inference for ResNets), the core of the DAVIS protocol.

A query position of frame t looks at every key position of its context (the first frame and the last
`context` frames before t) within `radius` feature cells (Euclidean), keeps its `topk` most similar keys over
the whole context, and takes their labels weighted by softmax(similarity / temperature). Features are
L2-normalised, similarity is their dot product. The affinity is computed a band of query rows at a time, so
memory holds the context's features and one block, never the full (hw x n*hw) matrix.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F

DEFAULT_BLOCK_ELEMENTS = 1 << 24  # affinity entries per query chunk (64 MB in fp32)


def dense_trunk(backbone: torch.nn.Module, stage: int = 4) -> torch.nn.Module:
    """A copy of a ResNet trunk (vito.model.ResNet), in eval mode, whose `stage` map has half the usual stride.

    The first block of that stage keeps its weights but strides 1 instead of 2 (the DAVIS protocol of CRW and
    VFS for ResNets: res4 at stride 8), and for stage 4 the later stage is removed. A SameConv2d computes its
    TF "SAME" padding from its current stride at run time, so the released VITO weights follow the change.
    """
    trunk = copy.deepcopy(backbone).eval()
    layer = trunk.layer3 if stage == 4 else trunk.layer4
    for module in layer[0].modules():
        if isinstance(module, torch.nn.Conv2d) and module.stride == (2, 2):
            module.stride = (1, 1)
    if stage == 4:
        trunk.layer4 = None  # ResNet.forward then returns the stage-4 map only
    return trunk


def context_frames(t: int, context: int) -> list[int]:
    """The frames frame t propagates from: the first, then the last `context` before t (never twice)."""
    if t < 1:
        raise ValueError("frame 0 is given, not propagated")
    return [0] + list(range(max(1, t - context), t))


def _band_distances(y0: int, y1: int, ky0: int, ky1: int, w: int, device: torch.device) -> torch.Tensor:
    """(qn, m) Euclidean distance in feature cells from each query position of rows y0..y1-1 to each key
    position of rows ky0..ky1-1 (row-major within the band)."""
    def coords(a: int, b: int) -> torch.Tensor:
        ys, xs = torch.meshgrid(torch.arange(a, b, device=device), torch.arange(w, device=device), indexing="ij")
        return torch.stack([ys.flatten(), xs.flatten()], 1).float()

    return torch.cdist(coords(y0, y1), coords(ky0, ky1))


def _band_rows(n: int, h: int, w: int, reach: int, block_elements: int) -> int:
    """Query rows per band: as many as keep (band*w queries) x (n * key rows * w keys) under the budget."""
    band = 1
    while band < h and (band + 1) * w * n * min(h, band + 1 + 2 * reach) * w <= block_elements:
        band += 1
    return band


def propagate_frame(query: torch.Tensor, keys: torch.Tensor, key_labels: torch.Tensor, *, topk: int,
                    temperature: float, radius: float, block_elements: int = DEFAULT_BLOCK_ELEMENTS) -> torch.Tensor:
    """Soft labels (K, h, w) of one frame from its context.

    Channel-last features, L2-normalised: query (h, w, C), keys (n, h, w, C); key_labels (n, K, h, w). Queries
    go a band of rows at a time, each against only the key rows within the radius (the others could never be
    picked), so memory holds one (band x n x reach) block. A query with no key in reach gets all-zero labels.
    """
    h, w, channels = query.shape
    n, labels_k = keys.shape[0], key_labels.shape[1]
    reach = int(radius)  # rows farther than floor(radius) are out of reach
    out = torch.empty(labels_k, h, w, dtype=key_labels.dtype, device=key_labels.device)
    band = _band_rows(n, h, w, reach, block_elements)
    for y0 in range(0, h, band):
        y1 = min(y0 + band, h)
        ky0, ky1 = max(0, y0 - reach), min(h, y1 + reach)
        q = query[y0:y1].reshape(-1, channels)  # (qn, C), a view
        ks = keys[:, ky0:ky1].reshape(n, -1, channels)  # (n, m, C), a view: rows are contiguous per frame
        m = ks.shape[1]
        affinity = torch.matmul(q, ks.transpose(1, 2))  # (n, qn, m)
        far = _band_distances(y0, y1, ky0, ky1, w, query.device) > radius
        affinity.masked_fill_(far, float("-inf"))  # the mask broadcasts over frames
        # the top k over all frames are among each frame's own top k: two small top-k's, no (qn, n*m) copy
        per_frame, where = affinity.topk(min(topk, m), dim=2)  # (n, qn, k')
        where = where + (torch.arange(n, device=where.device) * m)[:, None, None]
        per_frame = per_frame.permute(1, 0, 2).reshape(q.shape[0], -1)
        where = where.permute(1, 0, 2).reshape(q.shape[0], -1)
        top, pick = per_frame.topk(min(topk, per_frame.shape[1]), dim=1)
        index = where.gather(1, pick)  # (qn, k): positions in the (n * m) keys of the band
        weights = torch.nan_to_num(torch.softmax(top / temperature, dim=1))  # all -inf: no label
        labels = key_labels[:, :, ky0:ky1].reshape(n, labels_k, -1).permute(1, 0, 2).reshape(labels_k, -1)
        out[:, y0:y1] = torch.einsum("qk,lqk->lq", weights, labels[:, index]).view(labels_k, y1 - y0, w)
    return out


def labels_on_grid(ids: np.ndarray, num_labels: int, grid: tuple[int, int], stride: int) -> torch.Tensor:
    """(K, h, w) soft labels of an id map (H, W) on a stride-`stride` grid: the one-hot map zero-padded to
    (h*stride, w*stride) (the cells a SAME-padded trunk adds at the right and bottom) and averaged per cell."""
    h, w = grid
    onehot = F.one_hot(torch.from_numpy(ids.astype(np.int64)), num_labels).permute(2, 0, 1).float()
    pad_h, pad_w = max(h * stride - ids.shape[0], 0), max(w * stride - ids.shape[1], 0)
    onehot = F.pad(onehot, (0, pad_w, 0, pad_h))[:, : h * stride, : w * stride]
    return F.avg_pool2d(onehot[None], stride)[0]


def ids_from_labels(soft: torch.Tensor, stride: int, frame_size: tuple[int, int], out_size: tuple[int, int]) -> np.ndarray:
    """An id map (out_size) from soft labels (K, h, w): upsampled by `stride` (bilinear), cropped to the frame the
    network saw, resized to the annotation's size when the frame was downscaled, argmax over labels."""
    h, w = soft.shape[-2:]
    full = F.interpolate(soft[None].float(), size=(h * stride, w * stride), mode="bilinear", align_corners=False)
    full = full[..., : frame_size[0], : frame_size[1]]
    if tuple(frame_size) != tuple(out_size):
        full = F.interpolate(full, size=out_size, mode="bilinear", align_corners=False)
    return full[0].argmax(0).numpy().astype(np.uint8)
