"""Run-wide data-health metrics: unreadable videos skipped by every rank's loader, for MLflow."""

from __future__ import annotations

import torch

from vito.data.pairs import SkipCounter


class SkipReporter:
    """Turns each rank's `SkipCounter` into two run-wide metrics. Collective: call on every rank at once.

    `data/skipped_videos` is the number of distinct manifest entries found unreadable so far (rank 0 keeps the
    union of every rank's finds; ranks send only what is new since their last report), `data/skipped_samples`
    how many samples had to fall back to another video. Both count from the start of this process: a resumed
    run finds its unreadable videos again.
    """

    def __init__(self) -> None:
        self.seen: set[int] = set()
        self._sent: set[int] = set()

    def metrics(self, counter: SkipCounter | None) -> dict[str, float]:
        local = counter.skipped_videos() if counter is not None else set()
        samples = counter.skipped_samples() if counter is not None else 0
        new = sorted(local - self._sent)
        self._sent |= set(new)
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            total = torch.tensor([float(samples)], dtype=torch.float64)
            if dist.get_backend() == "nccl":
                total = total.cuda()
            dist.all_reduce(total)
            samples = int(total.item())
            gathered: list[list[int] | None] = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, new)
            for part in gathered:
                self.seen.update(part or ())
        else:
            self.seen.update(new)
        return {"data/skipped_videos": float(len(self.seen)), "data/skipped_samples": float(samples)}
