"""The user's benchmarks of one checkpoint, run by every rank of an evaluation job.

Each benchmark kind is one protocol file of protocols/: image_folder.py (ImageNet or any labelled image folder),
corruptions.py (ImageNet-C / 3DCC), class_subset.py (ImageNet-A / R), cue_conflict.py (shape
bias), ucf101.py (its own probe), davis.py (DAVIS 2017 label propagation). The image folders run first: their
linear readouts score the kinds that name a `readout`. Every rank
extracts its share of the features; the main rank scores them and logs, per benchmark as it finishes, the
metrics (`eval/<name>/...`), the protocol record (`eval/<name>/results.json`), the unreadable files
(`eval/<name>/skipped.json`), the linear readout (`eval/<name>/readout.pt`; the augmented protocol's
`readout_augmented.pt`) and the readout kinds' CSV tables
(`eval/<name>/per_corruption.csv`, `per_class.csv`, `per_category.csv`). The random-init baseline, when asked for,
scores the same way through its own readout and logs the same names with `_random_init`.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from vito.config import READOUT_KINDS, VitoConfig
from vito.eval.protocols.image_folder import (
    BenchmarkOutcome,
    Encoder,
    ExtractionSettings,
    OwnHead,
    Readout,
    run_image_folder,
)
from vito.model import VitoModel

log = logging.getLogger(__name__)

PROGRESS_TAG = "vito.eval_progress"  # "<benchmark> <split> <done>/<total>"; read by vitolaunch (records.TAG_EVAL_PROGRESS)
PROGRESS_EVERY_S = 10.0


def model_encoder(model: VitoModel, key: str, device: torch.device) -> Encoder:
    """The deepest pooled feature of the online network, as the paper evaluates (and the synthetic suite does)."""
    model.eval().to(device)
    scale = max(model.scales)
    cuda = device.type == "cuda"
    if cuda:
        model.to(memory_format=torch.channels_last)

    @torch.no_grad()
    def encode(images: torch.Tensor) -> torch.Tensor:
        return model.features(images, scale).float()

    return Encoder(encode, key, device, bf16_autocast=cuda, channels_last=cuda, dense=dense_maps(model.backbone))


def dense_maps(backbone: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """Stage-4 maps at stride 8 of a ResNet trunk (Encoder.dense); the strided copy is made on first use, so
    evaluations without a video benchmark never hold it."""
    trunk: list[torch.nn.Module] = []

    @torch.no_grad()
    def dense(images: torch.Tensor) -> torch.Tensor:
        if not trunk:
            from vito.eval.scoring.label_propagation import dense_trunk

            trunk.append(dense_trunk(backbone, 4))
        return trunk[0](images)[4]

    return dense


def encoder_key(checkpoint: str, step: int, cfg: VitoConfig) -> str:
    architecture = hashlib.sha256(cfg.model.model_dump_json().encode()).hexdigest()[:12]
    return f"{checkpoint.rstrip('/')}@{step}:{architecture}"


def feature_cache_root(cfg: VitoConfig) -> str:
    """By default beside the evaluated checkpoint: every later evaluation of it finds the features there."""
    if cfg.eval.weights is not None and not cfg.eval.feature_cache:  # published weights: beside their file
        return f"{cfg.eval.weights}.features"
    return cfg.eval.feature_cache or f"{cfg.eval.checkpoint.rstrip('/')}/features"


def run_benchmarks(cfg: VitoConfig, trained_cfg: VitoConfig, model: VitoModel, step: int, *, device: torch.device,
                   is_main: bool, storage_options: dict[str, Any], metrics, artifact_dir: str, group: Any = None,
                   encoders: list[tuple[Encoder, str]] | None = None, record: dict[str, Any] | None = None,
                   own_head: OwnHead | None = None) -> dict[str, float]:
    """Every benchmark of cfg.eval.benchmarks on `model` (and on a random-init network when asked); the main
    rank returns the metrics, the others an empty dict. Files to upload are written under `artifact_dir`, which
    must outlive the metrics logger's queue (uploads happen in its background thread). `encoders` (with their
    metric suffixes) replace `model` and its random-init baseline (published weights); `record` is added to
    every results.json where the benchmark's own record does not say otherwise; `own_head` (the 1000-way fc of
    published weights) scores the readout kinds with `head: own`."""
    settings = ExtractionSettings(feature_cache_root(cfg), cfg.eval.extract_shard_size, cfg.eval.extract_batch_size,
                                  cfg.eval.loader_workers, storage_options, _progress_reporter(metrics), group)
    networks = encoders or [(model_encoder(model, encoder_key(cfg.eval.checkpoint, step, trained_cfg), device), "")]
    if encoders is None and cfg.eval.random_init_baseline:
        torch.manual_seed(cfg.eval.seed)
        baseline = VitoModel(trained_cfg.model, trained_cfg.loss)
        key = f"random-init:{cfg.eval.seed}:{encoder_key('', 0, trained_cfg)}"
        networks.append((model_encoder(baseline, key, device), "_random_init"))
    results: dict[str, float] = {}
    readouts: dict[tuple[str, str], Readout | None] = {}  # (image_folder benchmark, suffix) -> its readout
    classes: dict[str, list[str]] = {}  # image_folder benchmark -> its readout's columns (every rank)
    ordered = sorted(cfg.eval.benchmarks.items(), key=lambda item: item[1].kind != "image_folder")  # stable
    for name, bench in ordered:
        for encoder, suffix in networks:
            if bench.kind == "image_folder":
                outcome = run_image_folder(name, bench, encoder, settings, seed=cfg.eval.seed, is_main=is_main,
                                           suffix=suffix)
                if outcome is not None:
                    readouts[name, suffix] = Readout.from_outcome(name, outcome, suffix)
            elif bench.kind not in READOUT_KINDS:  # a kind with its own classifier (ucf101, davis)
                outcome = _runners()[bench.kind](name, bench, encoder, settings, seed=cfg.eval.seed, is_main=is_main,
                                               suffix=suffix)
            elif bench.head == "own":
                if own_head is None:
                    raise ValueError(f"eval.benchmarks.{name}.head: own needs published weights whose file holds a "
                                     "1000-way fc (eval.weights); this evaluation has none")
                outcome = _runners()[bench.kind](name, bench, own_head, own_head.classes, encoder, settings,
                                               is_main=is_main, suffix=suffix)
            else:
                if bench.readout not in classes:
                    classes[bench.readout] = _readout_classes(cfg.eval.benchmarks[bench.readout], settings)
                outcome = _runners()[bench.kind](name, bench, readouts.get((bench.readout, suffix)),
                                               classes[bench.readout], encoder, settings, is_main=is_main,
                                               suffix=suffix)
            _publish(outcome, metrics, step, name, suffix, artifact_dir, record, results)
    # The augmented linear protocol takes hours where the others take minutes: it runs last, once every other
    # metric of every network is logged.
    for name, bench in ordered:
        if bench.kind != "image_folder" or not bench.linear_augmented:
            continue
        from vito.eval.protocols.augmented_linear import run_image_folder_augmented

        for encoder, suffix in networks:
            outcome = run_image_folder_augmented(name, bench, encoder, settings, seed=cfg.eval.seed, is_main=is_main,
                                                 suffix=suffix)
            _publish(outcome, metrics, step, name, suffix, artifact_dir, record, results, "results_augmented")
    if is_main:
        metrics.set_tags({PROGRESS_TAG: "done"})
    return results


def _publish(outcome: BenchmarkOutcome | None, metrics, step: int, name: str, suffix: str, artifact_dir: str,
             record: dict[str, Any] | None, results: dict[str, float], record_stem: str = "results") -> None:
    if outcome is None:
        return
    for key, value in (record or {}).items():  # the benchmark's own facts (its `head`) win
        outcome.record.setdefault(key, value)
    results.update(outcome.metrics)
    metrics.log(step, outcome.metrics)  # each benchmark's metrics appear as soon as it finishes
    _log_artifacts(metrics, name, suffix, outcome, artifact_dir, record_stem)
    for key, value in outcome.metrics.items():
        log.info("%s = %.4f", key, value)


def _readout_classes(bench, settings: ExtractionSettings) -> list[str]:
    """The readout's columns on every rank: the class folders of its benchmark's train split, sorted."""
    from vito.eval.datasets.image_folder import read_image_folder

    return read_image_folder(bench.root, bench.train_split, settings.storage_options).classes


def _runners() -> dict[str, Callable[..., BenchmarkOutcome | None]]:
    from vito.eval.protocols.class_subset import run_class_subset
    from vito.eval.protocols.corruptions import run_corruptions
    from vito.eval.protocols.cue_conflict import run_cue_conflict
    from vito.eval.protocols.davis import run_davis
    from vito.eval.protocols.ucf101 import run_ucf101

    return {"corruptions": run_corruptions, "class_subset": run_class_subset, "cue_conflict": run_cue_conflict,
            "ucf101": run_ucf101, "davis": run_davis}


def _csv(rows: list[dict[str, Any]]) -> str:
    import csv
    import io

    out = io.StringIO()
    columns = list(dict.fromkeys(key for row in rows for key in row))
    writer = csv.DictWriter(out, columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def _log_artifacts(metrics, name: str, suffix: str, outcome: BenchmarkOutcome, artifact_dir: str,
                   record_stem: str = "results") -> None:
    folder = f"eval/{name}"
    metrics.log_dict_artifact(outcome.record, f"{folder}/{record_stem}{suffix}.json")
    if record_stem == "results":  # a later protocol of the same benchmark read the same images
        metrics.log_dict_artifact({"count": len(outcome.skipped), "images": outcome.skipped},
                                  f"{folder}/skipped{suffix}.json")
    for file_name, rows in outcome.tables.items():
        stem, dot, ext = file_name.rpartition(".")
        path = Path(tempfile.mkdtemp(dir=artifact_dir)) / f"{stem}{suffix}{dot}{ext}"
        path.write_text(_csv(rows))
        metrics.log_artifact(str(path), folder)
    readouts = {"readout": outcome.readout, **outcome.extra_readouts} if not suffix else {}
    for stem, state in readouts.items():
        if state is not None:
            path = Path(tempfile.mkdtemp(dir=artifact_dir)) / f"{stem}.pt"
            torch.save(state, path)
            metrics.log_artifact(str(path), folder)


def _progress_reporter(metrics) -> Callable[[str, int, int], None]:
    """Progress as a tag on the run (what `vitolaunch status` shows), at most every PROGRESS_EVERY_S."""
    last = [0.0]

    def report(what: str, done: int, total: int) -> None:
        now = time.monotonic()
        if done < total and now - last[0] < PROGRESS_EVERY_S:
            return
        last[0] = now
        metrics.set_tags({PROGRESS_TAG: f"{what} {done}/{total}"})

    return report
