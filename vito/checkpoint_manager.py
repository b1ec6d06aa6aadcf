"""Saving and restoring a DeepSpeed training state through a CheckpointStore, on every rank.

DeepSpeed writes only to local paths and every rank must call save_checkpoint. So each rank saves into
its own local scratch folder and uploads its own files; once every rank has, rank 0 writes the COMMITTED
marker with every rank's file list. Scratch need not be shared between nodes.
"""

from __future__ import annotations

import logging
import random
import re
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from vito.checkpoint import MARKER_CONFIG, CheckpointStore, CorruptCheckpoint, step_name, with_retries
from vito.distributed import DistInfo

log = logging.getLogger(__name__)

# Files of one rank in a DeepSpeed checkpoint: its ZeRO optimizer shard, and the RNG state saved here.
_RANK_FILE = re.compile(r"^(?:zero_pp_rank_|rng_rank)(?P<rank>\d+)(?:_|\.pt$)")


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
    """Saves are collective and local; uploads run in a background thread, overlapped with training.

    A save stalls training only for DeepSpeed's write to local scratch. Each rank then uploads its own files
    and leaves a per-rank note in the store; rank 0 waits for every rank's note, then writes COMMITTED and
    `latest`. A rank that dies, or a store that stays down, leaves the step uncommitted and so invisible.
    At most one upload is in flight per rank: the next save waits for the previous one.
    """

    def __init__(
        self,
        store: CheckpointStore,
        engine,
        dist_info: DistInfo,
        scratch_dir: str | Path,
        keep_last: int,
        background: bool = True,
        commit_timeout_s: float = 1800.0,
        on_event: Callable[[str, dict[str, Any]], None] | None = None,
    ):
        self.store = store
        self.engine = engine
        self.dist = dist_info
        self.scratch = Path(scratch_dir) / f"rank_{dist_info.rank}"
        self.keep_last = keep_last
        self.background = background
        self.commit_timeout_s = commit_timeout_s
        self.on_event = on_event or (lambda kind, details: None)
        self.last_saved_step: int | None = None
        self.last_committed_step: int | None = None
        self.failed_steps: list[int] = []
        self._pending: threading.Thread | None = None

    def upload_in_flight(self) -> bool:
        return self._pending is not None and self._pending.is_alive()

    def save(self, step: int, client_state: dict[str, Any]) -> None:
        """Collective: every rank must call it with the same step.

        `client_state["config"]` (the resolved config, when given) is also written into the COMMITTED marker, so
        a reader can learn what a step was trained with from the marker alone, without loading the weights.
        """
        self.wait()
        tag = step_name(step)
        rank_dir = self.scratch / tag
        rank_dir.mkdir(parents=True, exist_ok=True)
        self.engine.save_checkpoint(str(self.scratch), tag=tag, client_state=client_state, save_latest=False)
        # Per-rank RNG: saving rank 0's only is a known exact-resume bug (Megatron-LM #6858).
        torch.save(_rng_state(), rank_dir / f"rng_rank{self.dist.rank}.pt")
        self.last_saved_step = step
        if self.background:
            self._pending = threading.Thread(target=self._publish, args=(step, rank_dir, client_state.get("config")),
                                             name=f"upload-{tag}", daemon=True)
            self._pending.start()
        else:
            self._publish(step, rank_dir, client_state.get("config"))

    def wait(self) -> None:
        """Block until this rank's previous upload (and, on rank 0, its commit) has finished."""
        if self._pending is not None:
            self._pending.join()
            self._pending = None

    def _publish(self, step: int, rank_dir: Path, config: dict[str, Any] | None) -> None:
        started = time.monotonic()
        try:
            files = self.store.upload(step, rank_dir)
            self.store.mark_rank_uploaded(step, self.dist.rank, files)
            if self.dist.is_main:
                self._commit_when_all_ranks_uploaded(step, config)
        except Exception as problem:  # noqa: BLE001 - a failed background save must not stop training
            self.failed_steps.append(step)
            log.error("checkpoint %s was NOT saved (%s: %s); training continues, the previous committed step stays "
                      "the resume point", step_name(step), type(problem).__name__, str(problem).splitlines()[0][:300])
            self.on_event("checkpoint_failed", {"step": step, "error": type(problem).__name__})
        else:
            if self.dist.is_main:
                self.on_event("checkpoint_committed", {"step": step, "seconds": time.monotonic() - started})
        finally:
            shutil.rmtree(rank_dir, ignore_errors=True)

    def _commit_when_all_ranks_uploaded(self, step: int, config: dict[str, Any] | None) -> None:
        deadline = time.monotonic() + self.commit_timeout_s
        delay = 0.05
        while True:
            uploaded = with_retries(lambda: self.store.uploaded_ranks(step), "listing rank markers")
            if len(uploaded) == self.dist.world_size:
                break
            if time.monotonic() > deadline:
                missing = sorted(set(range(self.dist.world_size)) - set(uploaded))
                raise TimeoutError(f"ranks {missing} never finished uploading {step_name(step)}")
            time.sleep(delay)
            delay = min(delay * 1.5, 2.0)
        all_files = [entry for rank in sorted(uploaded) for entry in uploaded[rank]]
        metadata: dict[str, Any] = {"world_size": self.dist.world_size}
        if config is not None:
            metadata[MARKER_CONFIG] = config
        self.store.commit(step, all_files, metadata)
        self.last_committed_step = step
        pruned = self.store.prune(self.keep_last)
        if pruned:
            log.info("checkpoint retention removed steps %s", pruned)

    def restore(self) -> RestoredState | None:
        """Collective: load the newest committed step that every rank verified; None for a fresh start.

        Each rank fetches only the files it loads (the model states, its own optimizer shard and RNG state)
        into its own scratch, so restoring costs a rank its share, not the whole checkpoint, and scratch can
        be node-local. A step that fails verification on any rank is skipped by all of them.
        """
        committed: list[Any] = [None]
        if self.dist.is_main:
            committed[0] = self.store.committed_steps()
            self.store.warn_about_unfinished_saves(committed[0])
        dist.broadcast_object_list(committed, src=0, group=self.dist.control_group)
        for step in reversed(committed[0]):
            tag = step_name(step)
            problem = self.fetch_rank_files(step)
            verdicts: list[Any] = [None] * self.dist.world_size
            dist.all_gather_object(verdicts, problem, group=self.dist.control_group)
            failures = [v for v in verdicts if v]
            if failures:
                shutil.rmtree(self.scratch / tag, ignore_errors=True)
                log.warning("skipping checkpoint %s (%s); falling back to the previous committed step", tag, failures[0])
                continue
            return self._load(step)
        return None

    def fetch_rank_files(self, step: int) -> str | None:
        """Fetch this rank's files of `step`; the reason it could not, or None."""
        marker = self.store.committed_marker(step)
        saved_by = (marker.get("metadata") or {}).get("world_size")
        stage = self.engine.zero_optimization_stage()
        if saved_by not in (None, self.dist.world_size) and stage > 0:
            # Every rank reads the same marker, so every rank stops here with the same message.
            raise ValueError(
                f"{self.store.root_uri}/{step_name(step)} was saved by {saved_by} ranks with ZeRO stage {stage}, and this "
                f"run has {self.dist.world_size}: ZeRO 1-2 optimizer shards belong to their ranks. Resume with "
                f"{saved_by} ranks (resources.nodes x tasks_per_node), or train with train.zero_stage: 0, which resumes "
                "on any number of ranks."
            )
        try:
            self.store.download(step, self.scratch / step_name(step), wanted=self._loads)
        except CorruptCheckpoint as problem:
            return f"rank {self.dist.rank}: {problem}"
        return None

    def _loads(self, path: str) -> bool:
        """Whether this rank loads `path` of a checkpoint: everything but other ranks' shards and RNG states."""
        owner = _RANK_FILE.match(Path(path).name)
        return owner is None or int(owner.group("rank")) == self.dist.rank

    def _load(self, step: int) -> RestoredState:
        tag = step_name(step)
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
