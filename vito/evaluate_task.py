"""Evaluation as a task: load a pretrained checkpoint and run the whole frozen-feature suite.

An evaluation trial is a config whose `eval.checkpoint` names a trial's checkpoint root (and usually
`eval.checkpoint_step` the committed step); the caller runs `run(cfg, ctx)` instead of training. The suite
(`vito.evaluate.evaluate_suite`):

- linear probe and kNN on frozen features (the probe is fitted once, on clean training clips);
- robustness: the same probe on test images under each corruption and severity (`vito.robustness`), their
  mean, and that mean relative to clean accuracy;
- natural deformation: the probe on held-out synthetic clips rendered with stronger motion and deformation
  than training ever showed (`motion_scale` > 1);
- DAVIS-style label propagation of the object mask through synthetic clips: J, F, J&F (`vito.propagation`);
- where the attention pool looks: the share of its weight on the object, against the object's area (the
  share average pooling gives it), on the same clips (a saliency-alignment measure);

each also for a randomly initialised network of the same architecture (`eval.random_init_baseline`), and the
propagation for the no-motion baseline (the first mask copied to every frame). Only rank 0 works; the MLflow
run gets the metrics at the checkpoint's step and `eval/final.json`. Linking this run to the pretraining run
is the caller's business: the result says which step was evaluated.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from vito.checkpoint import CheckpointStore
from vito.config import READOUT_KINDS, VitoConfig
from vito.evaluate import evaluate_with_baselines
from vito.model import VitoModel

log = logging.getLogger(__name__)

MODEL_STATES = "mp_rank_00_model_states.pt"  # DeepSpeed's model file (rank 0 of model parallelism)


def load_checkpoint_state(
    uri: str, step: int | None, scratch: str | Path, storage_options: dict[str, Any] | None = None
) -> tuple[int, dict[str, Any]]:
    """(step, DeepSpeed model-states dict) of a committed step (newest when step is None), checksum verified.

    Only the model file is fetched, never the optimizer shards.
    """
    store = CheckpointStore(uri, storage_options)
    committed = store.committed_steps()
    if not committed:
        raise FileNotFoundError(f"no committed checkpoint under {uri}: has the pretraining trial saved one?")
    if step is None:
        step = committed[-1]
    elif step not in committed:
        raise FileNotFoundError(f"step {step} is not a committed checkpoint under {uri} (committed: {committed})")
    target = store.fetch_verified(step, MODEL_STATES, scratch)
    try:
        return step, torch.load(target, map_location="cpu", weights_only=False)
    finally:
        target.unlink()


def load_pretrained_model(
    cfg: VitoConfig, scratch: str | Path, storage_options: dict[str, Any] | None = None
) -> tuple[VitoModel, int, VitoConfig]:
    """The online+target network of cfg.eval.checkpoint, in fp32, with the config it was trained with.

    The architecture comes from the checkpoint's own config when it has one (an evaluation can never build a
    network the weights do not fit); it is compared with cfg.model and a difference is logged.
    """
    step, state = load_checkpoint_state(cfg.eval.checkpoint, cfg.eval.checkpoint_step, scratch, storage_options)
    trained_cfg = cfg
    if isinstance(state.get("config"), dict):
        trained_cfg = VitoConfig.model_validate(state["config"])
        if trained_cfg.model != cfg.model:
            log.warning("model config of %s differs from the trial's: using the checkpoint's (%s)",
                        cfg.eval.checkpoint, trained_cfg.model)
    model = VitoModel(trained_cfg.model, trained_cfg.loss)
    module_state = {k: v.float() if v.is_floating_point() else v for k, v in state["module"].items()}
    model.load_state_dict(module_state)
    return model, step, trained_cfg


def run(cfg: VitoConfig, ctx) -> Any:
    """Evaluate cfg.eval.checkpoint (or published weights, cfg.eval.weights) and log to the trial's MLflow run
    (ctx: vito.train.RunContext).

    The user's benchmarks (cfg.eval.benchmarks) run on every rank of the job, each extracting a share of the
    features; the synthetic suite runs on rank 0. The result's `step` is the evaluated checkpoint step (0 on
    the other ranks).
    """
    from vito.metrics import MetricsLogger
    from vito.train import TrainResult

    if cfg.eval.checkpoint is None and cfg.eval.weights is None:
        raise ValueError("an evaluation trial needs eval.checkpoint (a pretraining trial's checkpoint root) "
                         "or eval.weights (published weights)")
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    if rank != 0 and not cfg.eval.benchmarks:
        return TrainResult(True, 0, None, {})  # only the benchmarks are spread over ranks
    owns_metrics = ctx.metrics is None
    metrics = ctx.metrics or MetricsLogger(ctx.tracking_uri, ctx.run_id, enabled=rank == 0)
    try:
        with failure_tagged(metrics):
            evaluate = _evaluate_weights if cfg.eval.weights is not None else _evaluate_checkpoint
            return evaluate(cfg, ctx, metrics, rank, world)
    finally:
        if owns_metrics:
            metrics.close()
        else:
            metrics.flush()


def _evaluate_checkpoint(cfg: VitoConfig, ctx, metrics, rank: int, world: int) -> Any:
    from vito.train import TrainResult

    check_benchmark_layouts(cfg, ctx.storage_options, metrics)  # a wrong layout fails the trial first thing
    device, group = _device(world)
    Path(ctx.scratch_dir).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=ctx.scratch_dir) as scratch:
        model, step, trained_cfg = load_pretrained_model(cfg, scratch, ctx.storage_options)
        model.to(device)
        log.info("evaluating %s step %d", cfg.eval.checkpoint, step)
        benchmarks: dict[str, float] = {}  # logged by the suite as each benchmark finishes
        if cfg.eval.benchmarks:
            from vito.eval.suite import run_benchmarks

            benchmarks = run_benchmarks(cfg, trained_cfg, model, step, device=device, is_main=rank == 0,
                                        storage_options=ctx.storage_options, metrics=metrics,
                                        artifact_dir=ctx.scratch_dir, group=group,
                                        record={"head": "trained_readout"})
    if rank != 0:
        return TrainResult(True, 0, None, {})
    suite: dict[str, float] = {}
    if cfg.eval.synthetic_suite:
        # The evaluation data are this trial's (probes of data.synthetic); the network is the checkpoint's.
        eval_cfg = cfg.model_copy(update={"model": trained_cfg.model, "loss": trained_cfg.loss})
        suite = evaluate_with_baselines(model, eval_cfg, ctx.data_root, device, probes_only=False,
                                        random_init=cfg.eval.random_init_baseline)
    metrics.log(step, {**suite, "train/step": step})
    results = {**benchmarks, **suite}
    metrics.log_dict_artifact({**results, "checkpoint": cfg.eval.checkpoint, "step": step}, "eval/final.json")
    for key in ("eval/linear_probe_acc", "eval/robust/mean_corruption_acc", "eval/propagation/JF"):
        if key in results:
            log.info("%s = %.4f", key, results[key])
    return TrainResult(True, step, None, results)


def _evaluate_weights(cfg: VitoConfig, ctx, metrics, rank: int, world: int) -> Any:
    """Evaluate published weights (cfg.eval.weights, vito.eval.foreign_weights) on the user's benchmarks, at step 0.

    The weights are loaded strictly as the job's first act (with the layouts); a file that is missing or does
    not fit fails the trial with the reason tagged (`vito.eval_error`). Features: ForeignNetwork.features, cached
    under eval.feature_cache or `<file>.features/` by the weights' digest. The synthetic suite and the
    random-init baseline are the project network's and are skipped here. Every results.json says which head
    scores the benchmark's classes (`head`: `trained_readout`, the readout this evaluation trains, or `own_fc`,
    the file's 1000-way fc for `head: own`) and whether the file holds a classifier of its own (`own_fc_in_file`).
    """
    from vito.eval.suite import run_benchmarks
    from vito.train import TrainResult

    check_benchmark_layouts(cfg, ctx.storage_options, metrics)
    network = load_weights_checked(cfg, ctx.storage_options, metrics)
    own = own_head_benchmarks(cfg)
    if own and (problem := network.own_head_problem()):
        message = (f"eval.benchmarks.{own[0]}.head: own needs eval.weights with a 1000-way fc; "
                   f"{cfg.eval.weights}: {problem}")
        metrics.set_tags({EVAL_ERROR_TAG: message[:500]})
        raise ValueError(message)
    if cfg.eval.synthetic_suite or cfg.eval.random_init_baseline:
        log.info("published weights %s: the synthetic suite and the random-init baseline are the project "
                 "network's, skipped", cfg.eval.weights)
    device, group = _device(world)
    network.to(device)
    log.info("evaluating published weights %s (%s, %s)", cfg.eval.weights, network.kind, network.key())
    # A benchmark scores through the readout this evaluation trains unless it asks for the file's own fc
    # (`head: own`, its record then says head: own_fc); whether the file holds one is noted on every record.
    record = {"head": "trained_readout", "own_fc_in_file": network.has_fc,
              "weights": cfg.eval.weights, "weights_kind": network.kind, "weights_key": network.key()}
    own_head = None
    if own:
        from vito.eval.protocols.image_folder import OwnHead

        fc = network.module.fc
        own_head = OwnHead(fc.weight.detach().cpu(), fc.bias.detach().cpu(), cfg.eval.weights, device)
    benchmarks: dict[str, float] = {}
    if cfg.eval.benchmarks:
        Path(ctx.scratch_dir).mkdir(parents=True, exist_ok=True)
        benchmarks = run_benchmarks(cfg, cfg, None, 0, device=device, is_main=rank == 0,
                                    storage_options=ctx.storage_options, metrics=metrics,
                                    artifact_dir=ctx.scratch_dir, group=group,
                                    encoders=[(foreign_encoder(network, device), "")], record=record,
                                    own_head=own_head)
    if rank != 0:
        return TrainResult(True, 0, None, {})
    metrics.log(0, {"train/step": 0})
    metrics.log_dict_artifact({**benchmarks, **record, "step": 0}, "eval/final.json")
    return TrainResult(True, 0, None, benchmarks)


def own_head_benchmarks(cfg: VitoConfig) -> list[str]:
    """The readout kinds of cfg.eval.benchmarks that score through the weights' own fc (`head: own`)."""
    # only the readout kinds have a `head` (ucf101 and davis train or need no classifier)
    return [name for name, bench in cfg.eval.benchmarks.items()
            if bench.kind in READOUT_KINDS and bench.head == "own"]


def foreign_encoder(network, device: torch.device):
    """The Encoder of a ForeignNetwork: its pooled layer4 feature, identified by kind and the weights' digest."""
    from vito.eval.protocols.image_folder import Encoder

    cuda = device.type == "cuda"
    if cuda:
        network.module.to(memory_format=torch.channels_last)

    def encode(images: torch.Tensor) -> torch.Tensor:
        return network.features(images).float()

    from vito.eval.suite import dense_maps

    # the trunk's SameConv2d (the VITO port) computes its padding from the changed stride at run time
    return Encoder(encode, network.key(), device, bf16_autocast=cuda, channels_last=cuda,
                   dense=dense_maps(network.module.backbone))


def load_weights_checked(cfg: VitoConfig, storage_options: dict[str, Any], metrics):
    """load_foreign(cfg.eval.weights) (a URL fetched first), or the trial fails with the reason tagged."""
    from vito.eval.foreign_weights import load_foreign

    try:
        source: Any = cfg.eval.weights
        if "://" in source:
            import io

            import fsspec

            with fsspec.open(source, "rb", **(storage_options or {})) as handle:
                source = torch.load(io.BytesIO(handle.read()), map_location="cpu", weights_only=True)
        return load_foreign(source, cfg.eval.weights_kind)
    except (ValueError, OSError) as problem:  # ForeignWeightsError is a ValueError; a missing file an OSError
        message = f"eval.weights {cfg.eval.weights}: {problem}"
        metrics.set_tags({EVAL_ERROR_TAG: message[:500]})
        raise (FileNotFoundError if isinstance(problem, OSError) else ValueError)(message) from None


@contextlib.contextmanager
def failure_tagged(metrics):
    """Whatever stops an evaluation is tagged on its run, so `vitolaunch status` can say why it FAILED."""
    try:
        yield
    except Exception as problem:
        metrics.set_tags({EVAL_ERROR_TAG: f"{type(problem).__name__}: {problem}"[:500]})
        raise


EVAL_ERROR_TAG = "vito.eval_error"  # why an evaluation could not start; read by vitolaunch (records.TAG_EVAL_ERROR)


def check_benchmark_layouts(cfg: VitoConfig, storage_options: dict[str, Any], metrics) -> None:
    """Every benchmark root in its expected layout, before any work; the refusal is tagged on the run."""
    if not cfg.eval.benchmarks:
        return
    from vito.eval.datasets.image_folder import LayoutError
    from vito.eval.layouts import check_benchmark_layout

    # The image folders first (a readout kind's classes come from its readout's train split).
    ordered = sorted(cfg.eval.benchmarks.items(), key=lambda item: item[1].kind != "image_folder")
    for name, bench in ordered:
        try:
            check_benchmark_layout(bench, cfg.eval.benchmarks, storage_options)
        except LayoutError as problem:
            message = f"eval.benchmarks.{name}.root {problem}"
            metrics.set_tags({EVAL_ERROR_TAG: message[:500]})
            raise LayoutError(message) from None


def _device(world: int) -> tuple[torch.device, Any]:
    """The rank's device and, when the benchmarks are spread over several ranks, the job's gloo control group."""
    if world > 1:
        from vito.distributed import init_distributed

        dist = init_distributed()
        return dist.device, dist.control_group
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu"), None
