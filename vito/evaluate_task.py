"""Evaluation as a task: load a pretrained checkpoint and run the whole frozen-feature suite.

An evaluation trial is a config whose `eval.checkpoint` names a trial's checkpoint root (vitolaunch sets it
from `task: evaluate` sweeps). `run(cfg, ctx)` is what the job calls instead of training. The suite:

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
run gets the metrics at the checkpoint's step, `eval/final.json`, and a link to the pretraining run.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from vito.checkpoint import CheckpointStore, CorruptCheckpoint, sha256_of, step_name
from vito.config import VitoConfig
from vito.data.augment import MEAN, STD, normalize
from vito.data.manifest import read_manifest
from vito.data.synthetic import ensure_synthetic_videos
from vito.evaluate import LinearProbe, clip_frames, evaluation_splits, extract_features, knn_accuracy
from vito.model import VitoModel
from vito.propagation import attention_on_object, evaluate_propagation, propagation_clips
from vito.robustness import corrupt

log = logging.getLogger(__name__)

MODEL_STATES = "mp_rank_00_model_states.pt"  # DeepSpeed's model file (rank 0 of model parallelism)
TAG_PRETRAIN_RUN = "vitolaunch.pretrain_run_id"
TAG_EVALUATED_STEP = "vitolaunch.evaluated_step"
TAG_EVALUATED_BY = "vitolaunch.evaluated_by."  # + the evaluation run id, set on the pretraining run


# ---------------------------------------------------------------------------------------- checkpoints


def load_checkpoint_state(uri: str, step: int | None, scratch: str | Path, storage_options: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
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
    marker = store.marker(step) or {}
    entry = next((e for e in marker.get("files", []) if Path(e["path"]).name == MODEL_STATES), None)
    if entry is None:
        raise CorruptCheckpoint(f"{uri}/{step_name(step)} lists no {MODEL_STATES}")
    target = Path(scratch) / step_name(step) / entry["path"]
    target.parent.mkdir(parents=True, exist_ok=True)
    store.fs.get_file(f"{store.root}/{step_name(step)}/{entry['path']}", str(target))
    if target.stat().st_size != entry["size"] or sha256_of(target) != entry["sha256"]:
        raise CorruptCheckpoint(f"{uri}/{step_name(step)}/{entry['path']} fails its checksum")
    state = torch.load(target, map_location="cpu", weights_only=False)
    target.unlink()
    return step, state


def load_pretrained_model(cfg: VitoConfig, scratch: str | Path, storage_options: dict[str, Any] | None = None) -> tuple[VitoModel, int, VitoConfig]:
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


# --------------------------------------------------------------------------------------------- suite


def _unnormalize(images: torch.Tensor) -> torch.Tensor:
    return (images * STD[:, None, None] + MEAN[:, None, None]).clamp(0, 1)


def _normalized(images: torch.Tensor) -> torch.Tensor:
    return torch.stack([normalize(image) for image in images])


def evaluate_suite(model: VitoModel, cfg: VitoConfig, data_root: str, device: torch.device, splits=None) -> dict[str, float]:
    """Every metric of the suite for one network (keys without the `eval/` prefix)."""
    ev = cfg.eval
    (train_images, train_y), (test_images, test_y) = splits or evaluation_splits(cfg, data_root)
    train_x = extract_features(model, train_images, device)
    test_x = extract_features(model, test_images, device)
    classes = int(max(train_y.max(), test_y.max())) + 1
    probe = LinearProbe(train_x, train_y, ev.probe_epochs, ev.seed, classes)
    clean = probe.accuracy(test_x, test_y)
    out = {"linear_probe_acc": clean, "knn_acc": knn_accuracy(train_x, train_y, test_x, test_y, ev.knn_k)}

    if ev.corruptions and ev.severities:
        raw = _unnormalize(test_images)
        accuracies = []
        for name in ev.corruptions:
            for severity in ev.severities:
                features = extract_features(model, _normalized(corrupt(raw, name, severity, ev.seed)), device)
                accuracy = probe.accuracy(features, test_y)
                out[f"robust/{name}_s{severity}_acc"] = accuracy
                accuracies.append(accuracy)
        out["robust/mean_corruption_acc"] = sum(accuracies) / len(accuracies)
        out["robust/relative_corruption_acc"] = out["robust/mean_corruption_acc"] / max(clean, 1e-6)

    synthetic_probes = ev.train_manifest is None
    if synthetic_probes:
        for scale in ev.deformation_motion_scales:
            records = read_manifest(ensure_synthetic_videos(
                data_root, cfg.data.synthetic, "deform_test", ev.test_clips, motion_scale=scale))
            images, labels = clip_frames(records, ev.frames_per_clip, cfg.data.crop_size)
            features = extract_features(model, images, device)
            out[f"deform/m{scale:g}_linear_probe_acc"] = probe.accuracy(features, labels)
            out[f"deform/m{scale:g}_knn_acc"] = knn_accuracy(train_x, train_y, features, labels, ev.knn_k)

    if ev.propagation and synthetic_probes:
        clips = propagation_clips(cfg.data.synthetic, ev.propagation_clips, ev.propagation_size, ev.seed)
        stage = min(ev.propagation_stage, model.backbone.last_stage)
        suite_cfg = ev.model_copy(update={"propagation_stage": stage})
        out.update({f"propagation/{k}": v for k, v in evaluate_propagation(model, clips, suite_cfg, device).items()})
        out.update({f"saliency/{k}": v for k, v in attention_on_object(model, clips, cfg.data.crop_size, device).items()})
    return out


def evaluate_with_baselines(model: VitoModel, cfg: VitoConfig, data_root: str, device: torch.device) -> dict[str, float]:
    """The suite for `model`, and (eval.random_init_baseline) for a random network: `eval/...` metrics."""
    splits = evaluation_splits(cfg, data_root)
    results = {f"eval/{k}": v for k, v in evaluate_suite(model, cfg, data_root, device, splits).items()}
    if cfg.eval.random_init_baseline:
        with torch.random.fork_rng():
            torch.manual_seed(cfg.train.seed)
            random_init = VitoModel(cfg.model, cfg.loss).to(device)
        baseline = evaluate_suite(random_init, cfg, data_root, device, splits)
        results.update({f"eval/{k}_random_init": v for k, v in baseline.items()})
    if cfg.eval.propagation and cfg.eval.train_manifest is None:
        clips = propagation_clips(cfg.data.synthetic, cfg.eval.propagation_clips, cfg.eval.propagation_size, cfg.eval.seed)
        copied = evaluate_propagation(None, clips, cfg.eval, device)
        results.update({f"eval/propagation/{k}_copy_first": v for k, v in copied.items()})
    return results


# ----------------------------------------------------------------------------------------- the task


def run(cfg: VitoConfig, ctx) -> Any:
    """Evaluate cfg.eval.checkpoint and log to the trial's MLflow run (ctx: vito.train.RunContext)."""
    from vito.metrics import MetricsLogger
    from vito.train import TrainResult

    if cfg.eval.checkpoint is None:
        raise ValueError("an evaluation trial needs eval.checkpoint (a pretraining trial's checkpoint root)")
    if int(os.environ.get("RANK", "0")) != 0:
        return TrainResult(True, 0, None, {})  # a single-process task: other ranks have nothing to do
    owns_metrics = ctx.metrics is None
    metrics = ctx.metrics or MetricsLogger(ctx.tracking_uri, ctx.run_id)
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    try:
        Path(ctx.scratch_dir).mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=ctx.scratch_dir) as scratch:
            model, step, trained_cfg = load_pretrained_model(cfg, scratch, ctx.storage_options)
        model.to(device)
        tags = {TAG_EVALUATED_STEP: str(step)}
        if cfg.eval.pretrain_run_id:
            tags[TAG_PRETRAIN_RUN] = cfg.eval.pretrain_run_id
        metrics.set_tags(tags)
        # The evaluation data are this trial's (probes of data.synthetic); the network is the checkpoint's.
        eval_cfg = cfg.model_copy(update={"model": trained_cfg.model, "loss": trained_cfg.loss})
        log.info("evaluating %s step %d", cfg.eval.checkpoint, step)
        results = evaluate_with_baselines(model, eval_cfg, ctx.data_root, device)
        metrics.log(step, {**results, "train/step": step})
        metrics.log_dict_artifact({**results, "checkpoint": cfg.eval.checkpoint, "step": step}, "eval/final.json")
        _link_back(ctx, cfg.eval.pretrain_run_id, step)
        for key in ("eval/linear_probe_acc", "eval/robust/mean_corruption_acc", "eval/propagation/JF"):
            if key in results:
                log.info("%s = %.4f", key, results[key])
        return TrainResult(True, step, None, results)
    finally:
        if owns_metrics:
            metrics.close()
        else:
            metrics.flush()


def _link_back(ctx, pretrain_run_id: str | None, step: int) -> None:
    """Tag the pretraining run with this evaluation (best effort: a link, not a result)."""
    if not (pretrain_run_id and ctx.run_id and ctx.tracking_uri):
        return
    try:
        from mlflow.tracking import MlflowClient

        MlflowClient(tracking_uri=ctx.tracking_uri).set_tag(pretrain_run_id, TAG_EVALUATED_BY + ctx.run_id, f"step {step}")
    except Exception as problem:  # noqa: BLE001
        log.warning("could not tag pretraining run %s with this evaluation: %s", pretrain_run_id, problem)
