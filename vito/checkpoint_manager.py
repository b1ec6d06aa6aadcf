"""Saving and restoring a DeepSpeed training state through a CheckpointStore, on every rank.

DeepSpeed writes only to local paths and every rank must call save_checkpoint. So each rank saves into
its own local scratch folder, uploads its own files, and after a barrier rank 0 writes the COMMITTED
marker with every rank's file list. Scratch need not be shared between nodes.
"""

from __future__ import annotations

import logging
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from vito.checkpoint import CheckpointStore, step_name
from vito.distributed import DistInfo

log = logging.getLogger(__name__)


@dataclass
class RestoredState:
    step: int
    client_state: dict[str, Any]


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


class CheckpointManager:
    def __init__(self, store: CheckpointStore, engine, dist_info: DistInfo, scratch_dir: str | Path, keep_last: int):
        self.store = store
        self.engine = engine
        self.dist = dist_info
        self.scratch = Path(scratch_dir) / f"rank_{dist_info.rank}"
        self.keep_last = keep_last
        self.last_saved_step: int | None = None

    def save(self, step: int, client_state: dict[str, Any]) -> None:
        """Collective: every rank must call it with the same step."""
        tag = step_name(step)
        rank_dir = self.scratch / tag
        rank_dir.mkdir(parents=True, exist_ok=True)
        self.engine.save_checkpoint(str(self.scratch), tag=tag, client_state=client_state, save_latest=False)
        # Per-rank RNG: saving rank 0's only is a known exact-resume bug (Megatron-LM #6858).
        torch.save(_rng_state(), rank_dir / f"rng_rank{self.dist.rank}.pt")
        files = self.store.upload(step, rank_dir)
        every_rank_files: list[Any] = [None] * self.dist.world_size
        dist.all_gather_object(every_rank_files, files)
        if self.dist.is_main:
            all_files = [entry for rank_files in every_rank_files for entry in rank_files]
            self.store.commit(step, all_files, {"world_size": self.dist.world_size})
            pruned = self.store.prune(self.keep_last)
            if pruned:
                log.info("checkpoint retention removed steps %s", pruned)
        shutil.rmtree(rank_dir, ignore_errors=True)
        # Nobody leaves (for example to exit after a preemption) before the marker exists.
        dist.barrier()
        self.last_saved_step = step

    def restore(self) -> RestoredState | None:
        """Collective: load the newest committed, verified step on every rank; None for a fresh start."""
        chosen: list[Any] = [None]
        if self.dist.is_main:
            restored = self.store.restore_newest(self.scratch)
            chosen[0] = restored[0] if restored else None
        dist.broadcast_object_list(chosen, src=0)
        step = chosen[0]
        if step is None:
            return None
        tag = step_name(step)
        if not self.dist.is_main:
            self.store.download(step, self.scratch / tag)
        _, client_state = self.engine.load_checkpoint(
            str(self.scratch), tag=tag, load_optimizer_states=True, load_lr_scheduler_states=False
        )
        rng_file = self.scratch / tag / f"rng_rank{self.dist.rank}.pt"
        if rng_file.exists():
            _set_rng_state(torch.load(rng_file, weights_only=False))
        else:
            log.warning("no RNG state for rank %d in %s (world size changed?): resume is not bitwise exact",
                        self.dist.rank, tag)
        shutil.rmtree(self.scratch / tag, ignore_errors=True)
        self.last_saved_step = step
        log.info("resumed from %s/%s", self.store.root_uri, tag)
        return RestoredState(step=step, client_state=client_state or {})
