"""The VITO training loop, assembled from named components (data, engine, checkpoints, metrics).

Resume order: build everything from the config, then restore model + EMA target + optimizer (DeepSpeed),
then per-rank RNG, then the step; the data stream and the learning-rate / EMA schedules are pure functions
of the step, so restoring the step restores them. An interrupted run therefore ends with the same weights
as an uninterrupted one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from vito.checkpoint import CheckpointStore
from vito.checkpoint_manager import CheckpointManager
from vito.config import VitoConfig
from vito.data.batch_augment import augment_pairs
from vito.data.health import SkipReporter
from vito.data.loader_plan import apply_main_threads, plan_loader
from vito.data.manifest import VideoRecord, read_manifest
from vito.data.pairs import build_pair_loader
from vito.data.synthetic import ensure_synthetic_videos
from vito.distributed import DistInfo, all_agree, control_barrier, init_distributed, mean_across_ranks
from vito.engine import COMPILE_WARMUP_STEPS, autocast, build_engine, to_device
from vito.metrics import TAG_CHECKPOINT_FAILED_STEP, TAG_RESUMED_FROM_STEP, MetricsLogger
from vito.model import VitoModel, ema_momentum
from vito.optim import learning_rate

log = logging.getLogger(__name__)


@dataclass
class RunContext:
    """Where a run keeps its things, and how the launcher asks it to stop. No SLURM or sweep in here."""

    checkpoint_uri: str
    data_root: str
    scratch_dir: str
    tracking_uri: str | None = None
    run_id: str | None = None
    # Polled at every step boundary; True on any rank makes all ranks save and return (preemption).
    stop_requested: Callable[[], bool] = field(default=lambda: False)
    storage_options: dict[str, Any] = field(default_factory=dict)  # fsspec options, e.g. an S3 endpoint
    # The caller's MLflow logger (it owns the run's status); None: the trainer makes and closes its own.
    metrics: MetricsLogger | None = None
    # Steps at which the trainer asks `consult(step)` (rank 0 only, after that step's metrics are logged) whether
    # to stop there; a True stops every rank through the same agreement and save as a stop request. What the
    # answer means (e.g. early stopping) is the caller's business.
    consult_at: frozenset[int] = frozenset()
    consult: Callable[[int], bool] = field(default=lambda step: False)


@dataclass
class TrainResult:
    completed: bool  # False when stopped early on request (the caller requeues)
    step: int
    resumed_from: int | None
    evaluation: dict[str, float]
    timing: dict[str, float] = field(default_factory=dict)  # steps_per_s, data_wait_frac of this process


class _LoopClock:
    """Wall time of a stretch of training steps, and the part of it spent waiting for data."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.data_wait = 0.0
        self.steps = 0

    @contextmanager
    def waiting_for_data(self) -> Iterator[None]:
        began = time.perf_counter()
        yield
        self.data_wait += time.perf_counter() - began

    def summary(self) -> dict[str, float]:
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        return {"steps_per_s": self.steps / elapsed, "data_wait_frac": self.data_wait / elapsed, "steps_timed": self.steps}


def load_training_videos(cfg: VitoConfig, data_root: str, dist_info: DistInfo) -> list[VideoRecord]:
    if cfg.data.source != "synthetic":
        return read_manifest(cfg.data.source)
    # Rank 0 renders the clips once; the others wait rather than render the same files in parallel.
    if dist_info.is_main:
        manifest = ensure_synthetic_videos(data_root, cfg.data.synthetic, split="train")
    control_barrier(dist_info)
    if not dist_info.is_main:
        manifest = ensure_synthetic_videos(data_root, cfg.data.synthetic, split="train")
    return read_manifest(manifest)


class Trainer:
    def __init__(self, cfg: VitoConfig, ctx: RunContext):
        self.cfg = cfg
        self.ctx = ctx
        self.dist = init_distributed()
        torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank
        self.videos = load_training_videos(cfg, ctx.data_root, self.dist)
        self.engine, self.optimizer = build_engine(cfg, self.dist)
        torch.manual_seed(cfg.train.seed + 1 + self.dist.rank)
        store = CheckpointStore(ctx.checkpoint_uri, ctx.storage_options)
        if self.dist.is_main:
            store.check_writable()  # wrong credentials: one clear error now, not a failed save an hour in
        self._owns_metrics = ctx.metrics is None
        self._skip_reporter = SkipReporter()
        self.metrics = ctx.metrics or MetricsLogger(ctx.tracking_uri, ctx.run_id, enabled=self.dist.is_main)
        self.checkpoints = CheckpointManager(
            store,
            self.engine,
            self.dist,
            ctx.scratch_dir,
            cfg.checkpoint.keep_last,
            background=cfg.checkpoint.background_upload,
            on_event=self._on_checkpoint_event,
        )

    @property
    def model(self) -> VitoModel:
        return self.engine.module

    def _set_learning_rate(self, step: int) -> float:
        lr = learning_rate(step, self.cfg.train.steps, self.cfg.optim, self.cfg.data.batch_size)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def _train_step(self, step: int, view_a: torch.Tensor, view_b: torch.Tensor) -> dict[str, torch.Tensor]:
        lr = self._set_learning_rate(step)
        view_a = to_device(view_a, self.dist.device)
        view_b = to_device(view_b, self.dist.device)
        with autocast(self.cfg, self.dist.device):  # forward only: backward follows the forward's dtypes
            losses = self.engine(view_a, view_b)
        self.engine.backward(losses["loss"])
        self.engine.step()
        momentum = ema_momentum(step, self.cfg.train.steps, self.cfg.ema)
        self.model.update_target(momentum)
        return {**losses, "lr": lr, "ema_momentum": momentum}

    def batches(self, start_step: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The (view_a, view_b) batches of this rank from `start_step` on: a pure function of the step."""
        cfg = self.cfg
        plan = plan_loader(cfg.data, self.dist.device.type)
        apply_main_threads(plan)
        loader = build_pair_loader(
            self.videos, cfg.data, cfg.train.seed, self.dist.rank, self.dist.world_size, start_step, cfg.train.steps,
            plan=plan,
        )
        self.data_skips = loader.dataset.skips  # unreadable videos skipped by the loader's workers
        # Workers hand over uint8 crops; colour, blur, solarize and normalisation run batched on the device.
        return (augment_pairs(batch, self.dist.device) for batch in loader)

    def run(self) -> TrainResult:
        cfg = self.cfg
        restored = self.checkpoints.restore()
        start = restored.step if restored else 0
        resumed_from = start if restored else None
        if restored and self.dist.is_main:
            self.metrics.set_tags({TAG_RESUMED_FROM_STEP: str(start)})
        batches = self.batches(start)
        window, total = _LoopClock(), _LoopClock()
        self._warmup_left = COMPILE_WARMUP_STEPS if cfg.train.compile else 0
        stop_every = cfg.train.stop_check_every or (10 if self.dist.device.type == "cuda" else 1)
        step = start
        while step < cfg.train.steps:
            with window.waiting_for_data(), total.waiting_for_data():
                view_a, view_b = next(batches)
            out = self._train_step(step, view_a, view_b)
            step += 1
            window.steps += 1
            total.steps += 1
            if self._warmup_left:
                self._warmup_left -= 1
                if not self._warmup_left:  # compilation done: throughput counts from here
                    window, total = _LoopClock(), _LoopClock()
            if step % cfg.train.log_every == 0 or step == cfg.train.steps:
                self._log_progress(step, out, window)
                window = _LoopClock()
            # The agreement is a collective plus a host sync that drains the GPU's queue: every
            # train.stop_check_every steps (and at the end), the same steps on every rank.
            consulted = step in self.ctx.consult_at  # the same steps on every rank, like the checks below
            check_stop = step % stop_every == 0 or step == cfg.train.steps or consulted
            stop = check_stop and all_agree(
                self.ctx.stop_requested() or (consulted and self.dist.is_main and self.ctx.consult(step)), self.dist.device
            )
            if step == cfg.train.steps or stop:
                self.checkpoints.save(step, {"step": step, "config": cfg.to_dict()})
            elif step % cfg.checkpoint.every_steps == 0:
                self._periodic_save(step)
            if stop:
                log.info("stop requested: saving step %d and stopping", step)
                self._finish()
                return TrainResult(False, step, resumed_from, {}, total.summary())
        timing = total.summary()
        evaluation = self._evaluate()  # overlaps the final checkpoint's upload
        self.metrics.log_loss_curve()
        self._finish()
        return TrainResult(True, step, resumed_from, evaluation, timing)

    def _periodic_save(self, step: int) -> None:
        """Save unless the previous upload is still going (storage slow or down): training never waits on it.

        Ranks agree first, so that all of them skip or all of them save (the save is collective).
        """
        busy = all_agree(self.checkpoints.upload_in_flight(), self.dist.device)
        if busy:
            log.warning("checkpoint at step %d skipped: the previous upload is still in flight", step)
            self.metrics.log(step, {"checkpoint/skipped_step": step})
            return
        self.checkpoints.save(step, {"step": step, "config": self.cfg.to_dict()})

    def _finish(self) -> None:
        """Every rank's uploads done and (rank 0) committed before anyone returns."""
        self.checkpoints.wait()
        control_barrier(self.dist)  # rank 0 may still be committing a slow upload: not a step's collective
        if self._owns_metrics:
            self.metrics.close()
        else:
            self.metrics.flush()

    def _on_checkpoint_event(self, kind: str, details: dict[str, Any]) -> None:
        # Runs in the upload thread: metrics calls only queue.
        if kind == "checkpoint_committed":
            self.metrics.log(details["step"], {"checkpoint/committed_step": details["step"],
                                               "checkpoint/upload_s": details["seconds"]})
        elif kind == "checkpoint_failed":
            self.metrics.log(details["step"], {"checkpoint/failed_saves": len(self.checkpoints.failed_steps)})
            self.metrics.set_tags({TAG_CHECKPOINT_FAILED_STEP: str(details["step"])})

    def _log_progress(self, step: int, out: dict[str, Any], clock: "_LoopClock") -> None:
        losses = {
            k: mean_across_ranks(float(v.detach()), self.dist.device) for k, v in out.items() if k.startswith("loss")
        }
        skips = self._skip_reporter.metrics(getattr(self, "data_skips", None))  # collective, like the means above
        if not self.dist.is_main:
            return
        values = {f"train/{k.replace('/', '_')}": v for k, v in losses.items()}
        values.update(skips)  # data/skipped_videos, data/skipped_samples
        values.update({"train/lr": out["lr"], "train/ema_momentum": out["ema_momentum"], "train/step": step})
        if not getattr(self, "_warmup_left", 0) and clock.steps:  # no throughput from compilation steps
            timing = clock.summary()
            values.update({
                "train/pairs_per_s": timing["steps_per_s"] * self.cfg.data.batch_size,
                "train/data_wait_frac": timing["data_wait_frac"],
            })
        self.metrics.log(step, values)
        self.metrics.flush()
        log.info("step %d/%d loss %.4f", step, self.cfg.train.steps, values["train/loss"])

    def _evaluate(self) -> dict[str, float]:
        results: dict[str, float] = {}
        if self.dist.is_main and self.cfg.eval.linear_probe:
            from vito.evaluate import evaluate_frozen_features

            results = evaluate_frozen_features(self.model, self.cfg, self.ctx.data_root, self.dist.device)
            self.metrics.log(self.cfg.train.steps, results)
            self.metrics.log_dict_artifact(results, "eval/final.json")
        return results


def train(cfg: VitoConfig, ctx: RunContext) -> TrainResult:
    return Trainer(cfg, ctx).run()

