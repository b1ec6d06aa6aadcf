"""Weighted k-nearest-neighbour classification on cached frozen features, as DINO defines it.

Bank (train features) and queries (val features) are L2-normalised; a query's similarity to a bank row is their
cosine; its top-k neighbours each vote for their class with weight exp(sim / T); the prediction is the argmax of
the summed votes. DINO reports k = 10, 20, 100, 200 and T = 0.07 (the defaults here); VISSL/lightly use k = 200,
T = 0.1 and SimSiam k = 200, T = 0.2, so k and T are parameters and come back with the result.

Memory. The bank stays in its own dtype (fp16: a 1.28M x 2048 bank is 5.2 GB; fp32 would be 10.5 GB) and is
never copied whole. The queries are processed `chunk_size` at a time and, for each chunk, the bank in blocks of
`bank_block_size` rows: a block is cast to the compute dtype and normalised (fp32 on CPU, where fp16 matmuls are
slow; the bank's dtype on CUDA), multiplied with the chunk, and its top max(k) merged into the chunk's running
top max(k). At once there are: one fp32 query chunk, one cast bank block and one chunk x block similarity
matrix, each bounded by `block_bytes` (default 256 MB) when the sizes are left to their defaults. Top-k runs once,
at max(k); smaller k are slices of that sorted list. Measured (benchmarks/knn_bank.py, 128k x 2048 fp16 bank, 10k
queries, 2 CPU threads): the defaults (chunk 4096, block 16384) add ~600 MiB of peak RSS over bank and queries
(similarities 256 + block 128 + query chunk and its normalised copy 64 + top-k workspace); chunk 512 adds ~450 MiB
but is ~1.6x slower, as it casts and normalises every bank block 8x as often.

Ties. Equal summed votes go to the lowest class index (a stable sort). Neighbours of equal similarity are kept
lower bank index first when they straddle two bank blocks; inside one block the choice among exactly equal
similarities at the k-th place is torch.topk's (it only matters when such neighbours have different classes).

Top-5 counts a hit only for a class that received votes (DINO's topk over the vote vector may also return
zero-vote classes when fewer than 5 classes voted; which ones is arbitrary). Accuracies are fractions in [0, 1].
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

DEFAULT_K_VALUES = (10, 20, 100, 200)
DEFAULT_TEMPERATURE = 0.07
# Bound on each of: a query chunk in the compute dtype, a cast bank block, a chunk x block similarity matrix.
DEFAULT_BLOCK_BYTES = 256 * 2**20
_TOP = 5  # the ranked classes knn_predict returns per query (top-1 and top-5 are read from them)


@dataclass
class KnnResult:
    """Top-1 / top-5 accuracy (fractions) per requested k, and the protocol constants they were measured with."""

    top1: dict[int, float]
    top5: dict[int, float]
    k_values: tuple[int, ...]
    temperature: float
    num_queries: int
    num_bank: int
    # k actually used per requested k (k larger than the bank is clamped to the bank's size)
    k_effective: dict[int, int] = field(default_factory=dict)
    chunk_size: int = 0
    bank_block_size: int = 0

    def as_dict(self) -> dict[str, float | int]:
        """Flat metrics and constants for logging beside each other (knn_top1_k20, knn_temperature, ...)."""
        row: dict[str, float | int] = {}
        for k in self.k_values:
            row[f"knn_top1_k{k}"] = self.top1[k]
            row[f"knn_top5_k{k}"] = self.top5[k]
            row[f"knn_k_effective_k{k}"] = self.k_effective.get(k, k)
        row.update(
            knn_temperature=self.temperature, knn_num_queries=self.num_queries, knn_num_bank=self.num_bank,
            knn_chunk_size=self.chunk_size, knn_bank_block_size=self.bank_block_size,
        )
        return row


def _compute_dtype(device: torch.device, bank_dtype: torch.dtype) -> torch.dtype:
    if device.type == "cuda" and bank_dtype in (torch.float16, torch.bfloat16, torch.float32):
        return bank_dtype
    return torch.float32


def default_sizes(num_queries: int, num_bank: int, dim: int, compute_dtype: torch.dtype = torch.float32,
                  block_bytes: int = DEFAULT_BLOCK_BYTES, chunk_size: int | None = None) -> tuple[int, int]:
    """(chunk_size, bank_block_size) so that a query chunk, a cast bank block and their similarity matrix each
    stay under `block_bytes`. The chunk (unless given) is as large as that allows, up to 4096 queries: each bank
    block is cast once per chunk, so larger chunks cast the bank fewer times. The block follows the chunk."""
    itemsize = torch.empty((), dtype=compute_dtype).element_size()
    chunk = int(chunk_size) if chunk_size else max(1, min(num_queries, 4096, block_bytes // (dim * itemsize)))
    block = max(1, min(num_bank, block_bytes // (dim * itemsize), block_bytes // (chunk * itemsize)))
    return chunk, block


def _validate(bank: Tensor, bank_labels: Tensor, queries: Tensor, num_classes: int, k_values, temperature: float) -> None:
    if bank.ndim != 2 or queries.ndim != 2 or bank.shape[1] != queries.shape[1]:
        raise ValueError(f"bank and queries must be N x D with the same D, got {tuple(bank.shape)} and {tuple(queries.shape)}")
    if bank_labels.shape != (bank.shape[0],):
        raise ValueError(f"bank_labels must have one label per bank row: {tuple(bank_labels.shape)} for {bank.shape[0]} rows")
    if bank.shape[0] == 0:
        raise ValueError("the bank is empty")
    if not k_values or any(int(k) < 1 for k in k_values):
        raise ValueError(f"k values must be >= 1, got {k_values}")
    if not (temperature > 0 and math.isfinite(temperature)):
        raise ValueError(f"temperature must be a positive number, got {temperature}")
    if bank_labels.numel() and (int(bank_labels.min()) < 0 or int(bank_labels.max()) >= num_classes):
        raise ValueError(f"bank labels must lie in [0, {num_classes})")


def _inverse_norms(bank: Tensor, block: int) -> Tensor:
    """1 / ||row|| in fp32 for every bank row, computed block by block (no full-size copy); zero rows give 0.
    At most 4096 rows at a time: the norm of an fp32 block allocates about the block's size again."""
    out = torch.empty(bank.shape[0], dtype=torch.float32, device=bank.device)
    block = min(block, 4096)
    for start in range(0, bank.shape[0], block):
        rows = bank[start:start + block].float()
        out[start:start + block] = rows.norm(dim=1)
    return torch.where(out > 0, out.reciprocal(), torch.zeros_like(out))


def _neighbours(
    queries: Tensor, bank: Tensor, inv_norm: Tensor, kmax: int, block: int, compute_dtype: torch.dtype
) -> tuple[Tensor, Tensor]:
    """(similarities, bank indices) of the top `kmax` neighbours of each (already normalised) query, sorted
    descending, merged over bank blocks."""
    best_sim = torch.empty(queries.shape[0], 0, dtype=torch.float32, device=queries.device)
    best_idx = torch.empty(queries.shape[0], 0, dtype=torch.int64, device=queries.device)
    for start in range(0, bank.shape[0], block):
        rows = bank[start:start + block].to(device=queries.device, dtype=torch.float32)
        rows.mul_(inv_norm[start:start + block].to(queries.device).unsqueeze(1))
        sims = queries @ rows.to(compute_dtype).T
        del rows
        take = min(kmax, sims.shape[1])
        sim, idx = sims.topk(take, dim=1, largest=True, sorted=True)
        del sims
        # Running best first, so a stable sort keeps the lower bank index among equal similarities.
        merged_sim = torch.cat([best_sim, sim.float()], dim=1)
        merged_idx = torch.cat([best_idx, idx + start], dim=1)
        order = torch.sort(merged_sim, dim=1, descending=True, stable=True).indices[:, :kmax]
        best_sim, best_idx = merged_sim.gather(1, order), merged_idx.gather(1, order)
    return best_sim, best_idx


def knn_predict(
    bank: Tensor,
    bank_labels: Tensor,
    queries: Tensor,
    num_classes: int,
    k_values=DEFAULT_K_VALUES,
    temperature: float = DEFAULT_TEMPERATURE,
    chunk_size: int | None = None,
    device=None,
    *,
    bank_block_size: int | None = None,
    return_scores: bool = False,
) -> dict[int, Tensor]:
    """Per requested k: the classes ranked by summed vote, best first (N x min(5, C) int64, ties to the lower
    class index), or with `return_scores` the summed votes themselves (N x C float32). On CPU.

    k larger than the bank is clamped to the bank's size (knn_evaluate records the clamped value). `device`:
    where the similarity is computed (default: the bank's device); a CPU bank used with a CUDA device is moved
    there once, whole, in its own dtype.
    """
    _validate(bank, bank_labels, queries, num_classes, k_values, temperature)
    device = torch.device(device) if device is not None else bank.device
    bank = bank.to(device)
    compute_dtype = _compute_dtype(device, bank.dtype)
    chunk, default_block = default_sizes(queries.shape[0], bank.shape[0], bank.shape[1], compute_dtype, chunk_size=chunk_size)
    block = int(bank_block_size) if bank_block_size else default_block
    if chunk < 1 or block < 1:
        raise ValueError(f"chunk_size and bank_block_size must be >= 1, got {chunk}, {block}")

    ks = sorted({int(k) for k in k_values})
    effective = {k: min(k, bank.shape[0]) for k in ks}
    kmax = max(effective.values())
    inv_norm = _inverse_norms(bank, block)
    labels = bank_labels.to(device=device, dtype=torch.int64)
    top = min(_TOP, num_classes)
    out: dict[int, list[Tensor]] = {k: [] for k in ks}

    for start in range(0, queries.shape[0], chunk):
        q = queries[start:start + chunk].to(device=device, dtype=torch.float32)
        q = torch.nn.functional.normalize(q, dim=1).to(compute_dtype)
        sim, idx = _neighbours(q, bank, inv_norm, kmax, block, compute_dtype)
        weights = (sim / temperature).exp()
        votes = labels[idx]
        scores = torch.zeros(q.shape[0], num_classes, dtype=torch.float32, device=device)
        done = 0
        for k in ks:  # ascending: each k adds the votes of neighbours done..k-1 to the previous k's scores
            kk = effective[k]
            scores.scatter_add_(1, votes[:, done:kk], weights[:, done:kk])
            done = kk
            if return_scores:
                out[k].append(scores.clone().cpu())
            else:
                ranked = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :top]
                # A class without votes is no prediction: mark it -1 so it never counts as a hit.
                voted = scores.gather(1, ranked) > 0
                out[k].append(torch.where(voted, ranked, torch.full_like(ranked, -1)).cpu())
    empty = torch.empty(0, num_classes if return_scores else top, dtype=torch.float32 if return_scores else torch.int64)
    return {k: torch.cat(parts) if parts else empty for k, parts in out.items()}


def knn_evaluate(
    bank: Tensor,
    bank_labels: Tensor,
    queries: Tensor,
    query_labels: Tensor,
    num_classes: int,
    k_values=DEFAULT_K_VALUES,
    temperature: float = DEFAULT_TEMPERATURE,
    chunk_size: int | None = None,
    device=None,
    *,
    bank_block_size: int | None = None,
) -> KnnResult:
    """Weighted kNN top-1 and top-5 accuracy (fractions) of `queries` against `bank`, for every k in `k_values`."""
    if query_labels.shape != (queries.shape[0],):
        raise ValueError(f"query_labels must have one label per query: {tuple(query_labels.shape)} for {queries.shape[0]} queries")
    k_values = tuple(int(k) for k in k_values)
    dev = torch.device(device) if device is not None else bank.device
    chunk, default_block = default_sizes(
        queries.shape[0], bank.shape[0], bank.shape[1], _compute_dtype(dev, bank.dtype), chunk_size=chunk_size
    )
    block = int(bank_block_size) if bank_block_size else default_block
    ranked = knn_predict(bank, bank_labels, queries, num_classes, k_values, temperature, chunk, device, bank_block_size=block)
    y = query_labels.to(torch.int64).cpu().unsqueeze(1)
    n = max(1, queries.shape[0])
    top1 = {k: float((ranked[k][:, :1] == y).any(dim=1).sum()) / n for k in k_values}
    top5 = {k: float((ranked[k] == y).any(dim=1).sum()) / n for k in k_values}
    return KnnResult(
        top1=top1, top5=top5, k_values=k_values, temperature=float(temperature), num_queries=int(queries.shape[0]),
        num_bank=int(bank.shape[0]), k_effective={k: min(k, int(bank.shape[0])) for k in k_values},
        chunk_size=chunk, bank_block_size=block,
    )
