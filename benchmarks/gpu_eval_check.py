"""The `eval` section of benchmarks/gpu_check.py: the evaluation engine's CUDA paths against its CPU float32 path.

On fixture sets written by the project's own writers (vito/eval/fixtures), with the project's network at random
(seeded) weights, the device runs what an evaluation job runs there, and the CPU runs the same inputs in fp32:

* image_folder: extraction through `extract_features` with the CUDA settings of `suite.model_encoder` (bf16
  autocast, channels_last), kNN and the cached linear probe on the device (`run_image_folder`); checks: every
  sample exactly once (no padding), per-sample cosine of device and CPU features >= 0.99, kNN top-1 of the same
  features on the device (fp16 matmuls) and on the CPU equal within one sample, likewise end to end, and the
  probe fitted on the device against the CPU's on the same features;
* davis: the fixture propagated on both (`run_davis`) at full size and at short side 128 (where the random
  network's stride-8 grid sees the objects), masks compared by object (mean IoU >= 0.9); one 480p sequence
  (854 x 480, the fixture upscaled) at context 20 timed (frames/s) with its peak CUDA memory, its first frames
  compared with the CPU's, and at context 5 and 0 when time allows;
* augmented: a few steps of the augmented linear protocol (`run_image_folder_augmented`) interrupted after a
  mid-epoch commit and resumed, against an uninterrupted run;
* ucf101: the clip extraction (5-D batches, channels_last per frame) and its probe, against the CPU.

Imports only what the GPU bundle provides (torch, numpy, pillow, pydantic, av): no mlflow, submitit or s3fs.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import shutil
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

COSINE_MIN = 0.99  # bf16 autocast against fp32, per sample
MASK_IOU_MIN = 0.9  # device masks against CPU masks, mean over sequences x frames x labels
# Weights of the augmented probe after interrupt + resume against uninterrupted: bitwise on the CPU; on CUDA the
# frozen backbone's kernels are not promised bitwise across calls, so a small bound.
RESUME_TOLERANCE = {"cpu": 0.0, "cuda": 1e-4}


@dataclass(frozen=True)
class Sizes:
    train_per_class: int
    val_per_class: int
    image_size: int  # fixture JPEGs (square)
    resize: int
    crop: int
    shard_size: int  # not a divisor of the split sizes, nor is batch_size: partial shards and batches
    batch_size: int
    workers: int
    linear_epochs: int  # of the cached probes (image folder, UCF-101)
    davis_short_sides: tuple[int | None, ...]  # the fixture's frames: None at full size (the protocol's)
    large: tuple[int, int]  # (height, width) of the "480p" sequence
    large_frames: int
    ucf_size: int
    needs_s: dict[str, float]  # a part starts only with this much left before the deadline


FULL = Sizes(train_per_class=96, val_per_class=24, image_size=128, resize=256, crop=224, shard_size=100, batch_size=48,
             workers=8, linear_epochs=30, davis_short_sides=(None, 128), large=(480, 854), large_frames=24, ucf_size=64,
             needs_s={"image_folder": 40, "davis": 10, "davis_480p": 20, "augmented": 15, "ucf101": 10,
                      "davis_480p_contexts": 15, "davis_480p_cpu": 15})
# The code paths only, in seconds on a CPU: the tiny network has the small stem (stage 4 at stride 2, a 16x finer
# grid than the real network's), so its DAVIS frames are downscaled to short side 32 and its "480p" is 48 x 80.
TINY = Sizes(train_per_class=16, val_per_class=8, image_size=64, resize=72, crop=64, shard_size=20, batch_size=12,
             workers=0, linear_epochs=10, davis_short_sides=(32,), large=(48, 80), large_frames=6, ucf_size=32,
             needs_s={name: 2 for name in FULL.needs_s})
OPTIONAL = {"davis_480p_contexts", "davis_480p_cpu"}  # run when time is left; the others' skip fails the section


def section_eval(args, device, work: Path, model_cfg, loss_cfg, time_left: Callable[[], float]) -> dict[str, Any]:
    import torch

    sizes = TINY if args.tiny else FULL
    cudnn_benchmark = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = False  # as in an evaluation job (vito/evaluate_task.py leaves the default)
    try:
        return _run(args, device, work, model_cfg, loss_cfg, time_left, sizes)
    finally:
        torch.backends.cudnn.benchmark = cudnn_benchmark


def _run(args, device, work: Path, model_cfg, loss_cfg, time_left, sizes: Sizes) -> dict[str, Any]:
    import torch

    began = time.perf_counter()
    roots = _write_fixtures(work / "eval-fixtures", sizes)
    result: dict[str, Any] = {"fixtures_s": time.perf_counter() - began, "arch": model_cfg.arch,
                              "stem": model_cfg.stem, "cpu_threads": torch.get_num_threads()}
    on_device, on_cpu = _encoders(model_cfg, loss_cfg, device)
    ctx = _Context(device, on_device, on_cpu, sizes, work, roots, torch.cuda.is_available() and device.type == "cuda")
    parts: dict[str, Callable[[], dict[str, Any]]] = {
        "image_folder": ctx.image_folder, "davis": ctx.davis, "davis_480p": lambda: ctx.davis_large((20,)),
        "augmented": ctx.augmented, "ucf101": ctx.ucf101,
        "davis_480p_cpu": ctx.davis_large_cpu, "davis_480p_contexts": lambda: ctx.davis_large((5, 0)),
    }
    failed: list[str] = []
    for name, call in parts.items():
        if time_left() < sizes.needs_s[name]:
            result[name] = {"skipped": f"{time_left():.0f} s left, needs ~{sizes.needs_s[name]:.0f} s"}
            if name not in OPTIONAL:
                failed.append(f"{name}: skipped ({result[name]['skipped']})")
            continue
        started = time.perf_counter()
        try:
            values = call()
        except Exception as problem:  # noqa: BLE001 - recorded; the other parts still run on the lent minutes
            values = {"error": f"{type(problem).__name__}: {problem}"[:1500], "traceback": traceback.format_exc()[-3000:]}
            failed.append(f"{name}: {values['error']}")
        values["seconds"] = time.perf_counter() - started
        failed += [f"{name}.{check}" for check in values.get("failed_checks", [])]
        result[name] = values
    result.update(ctx.headline)
    result["checks_passed"] = ctx.passed
    if failed:
        result["ok"] = False
        result["error"] = "failed: " + "; ".join(failed)
    return result


def _write_fixtures(root: Path, sizes: Sizes) -> dict[str, Path]:
    from vito.eval.fixtures.davis import write_davis_fixture
    from vito.eval.fixtures.images import ImageFolderFixture, write_image_folder
    from vito.eval.fixtures.ucf101 import write_ucf_fixture

    roots = {"images": root / "images", "davis": root / "davis", "large": root / "davis_large", "ucf": root / "ucf"}
    write_image_folder(roots["images"], ImageFolderFixture(num_classes=4, train_per_class=sizes.train_per_class,
                                                           val_per_class=sizes.val_per_class,
                                                           image_size=sizes.image_size))
    write_davis_fixture(roots["davis"])  # three sequences, 64 px high, 96-128 wide, 6 frames
    _write_large_sequence(roots["large"], sizes)
    write_ucf_fixture(roots["ucf"], num_classes=3, size=sizes.ucf_size)
    return roots


def _write_large_sequence(root: Path, sizes: Sizes) -> None:
    """One sequence at `sizes.large`: the DAVIS fixture rendered at a quarter of the size and upscaled (rendering
    854 x 480 frames directly takes seconds per frame; the propagation's cost does not depend on what they show)."""
    import numpy as np
    from PIL import Image

    from vito.eval.datasets.davis import load_mask, write_mask
    from vito.eval.fixtures.davis import write_davis_fixture

    height, width = sizes.large
    small = write_davis_fixture(root.with_name(root.name + "_small"), widths=(max(16, width // 4),),
                                height=max(16, height // 4), num_frames=sizes.large_frames, seed=1)
    for frame in sorted((small / "JPEGImages" / "480p" / "synth00").glob("*.jpg")):
        out = root / "JPEGImages" / "480p" / "synth00" / frame.name
        out.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(frame) as image:
            image.convert("RGB").resize((width, height), Image.Resampling.BILINEAR).save(out, quality=90)
    for mask in sorted((small / "Annotations" / "480p" / "synth00").glob("*.png")):
        ids = Image.fromarray(load_mask(mask)).resize((width, height), Image.Resampling.NEAREST)
        write_mask(np.asarray(ids), root / "Annotations" / "480p" / "synth00" / mask.name)
    (root / "ImageSets" / "2017").mkdir(parents=True, exist_ok=True)
    (root / "ImageSets" / "2017" / "val.txt").write_text("synth00\n")


def _encoders(model_cfg, loss_cfg, device):
    """The network as `suite.model_encoder` hands it to the protocols: on the device (CUDA: bf16 autocast,
    channels_last) and a copy of the same weights on the CPU (fp32, contiguous)."""
    import torch

    from vito.eval.suite import model_encoder
    from vito.model import VitoModel

    torch.manual_seed(0)
    model = VitoModel(model_cfg, loss_cfg)
    reference = copy.deepcopy(model)
    return (model_encoder(model, f"gpu-check:{device.type}", device),
            model_encoder(reference, "gpu-check:cpu", torch.device("cpu")))


def _settings(root: Path, sizes: Sizes, progress=None):
    from vito.eval.protocols.image_folder import ExtractionSettings

    return ExtractionSettings(str(root), sizes.shard_size, sizes.batch_size, sizes.workers, {}, progress)


def _cosines(a, b) -> Any:
    import torch

    return torch.nn.functional.cosine_similarity(a.float(), b.float(), dim=1)


def _exactly_once(extracted, size: int) -> bool:
    import torch

    return (extracted.num_samples == size and not extracted.skipped and extracted.features.shape[0] == size
            and torch.equal(extracted.indices, torch.arange(size)))


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _mask_agreement(pairs) -> dict[str, Any]:
    """IoU of device and CPU id maps for each object label (not the background) either predicts, frame by frame;
    the share of pixels each gives to objects."""
    import numpy as np

    ious = [float(np.logical_and(a == label, b == label).sum() / np.logical_or(a == label, b == label).sum())
            for a, b in pairs for label in np.union1d(np.unique(a), np.unique(b)) if label != 0]
    return {"ious": ious, "object_share": {"device": float(np.mean([(a > 0).mean() for a, _ in pairs])),
                                           "cpu": float(np.mean([(b > 0).mean() for _, b in pairs]))}}


def _summary(ious: list[float]) -> dict[str, Any]:
    return {"mask_iou_mean": float(sum(ious) / len(ious)) if ious else None, "mask_iou_min": min(ious, default=None),
            "object_label_frames": len(ious)}


class _Preempted(Exception):
    """Raised from the progress callback: the job stops as a preempted one does, its memory lost."""


class _Context:
    def __init__(self, device, on_device, on_cpu, sizes: Sizes, work: Path, roots: dict[str, Path], cuda: bool):
        self.device, self.on_device, self.on_cpu, self.sizes, self.roots, self.cuda = (
            device, on_device, on_cpu, sizes, roots, cuda)
        self.device_settings = _settings(work / "eval-cache-device", sizes)
        self.cpu_settings = _settings(work / "eval-cache-cpu", sizes)
        self.headline: dict[str, Any] = {}
        self.passed: list[str] = []

    def _check(self, values: dict[str, Any], name: str, ok: bool) -> None:
        (self.passed if ok else values.setdefault("failed_checks", [])).append(name)

    def _bench(self):
        from vito.config import ImageFolderBenchmark

        return ImageFolderBenchmark(root=str(self.roots["images"]), resize=self.sizes.resize, crop=self.sizes.crop,
                                    knn_k=[10, 20, 100], linear_epochs=self.sizes.linear_epochs,
                                    linear_batch_size=256)

    # ------------------------------------------------------------------------------------------ image folder

    def image_folder(self) -> dict[str, Any]:
        import torch

        from vito.eval.datasets.image_folder import read_image_folder
        from vito.eval.protocols.image_folder import extract_split, run_image_folder
        from vito.eval.scoring.knn import knn_evaluate
        from vito.eval.scoring.linear import fit_linear_probe

        bench, sizes, values = self._bench(), self.sizes, {}
        values["encode_img_per_s"] = self._encode_rate()
        n = {split: len(read_image_folder(bench.root, split, {})) for split in ("train", "val")}
        began = time.perf_counter()
        device_split = {split: extract_split(bench, split, self.on_device, self.device_settings, "gpu")[1]
                        for split in ("train", "val")}
        extraction_s = time.perf_counter() - began
        values.update(images=n, extraction_s=extraction_s, extraction_img_per_s=sum(n.values()) / extraction_s,
                      workers=sizes.workers, batch_size=sizes.batch_size, shard_size=sizes.shard_size)
        began = time.perf_counter()
        device_outcome = run_image_folder("gpu", bench, self.on_device, self.device_settings, seed=0, is_main=True)
        values["scoring_s"] = time.perf_counter() - began  # the shards are reused: kNN and the probe on the device
        began = time.perf_counter()
        cpu_outcome = run_image_folder("gpu", bench, self.on_cpu, self.cpu_settings, seed=0, is_main=True)
        values["cpu_protocol_s"] = time.perf_counter() - began
        cpu_split = {split: extract_split(bench, split, self.on_cpu, self.cpu_settings, "gpu")[1]
                     for split in ("train", "val")}

        once = all(_exactly_once(part[split], n[split]) for part in (device_split, cpu_split) for split in n)
        values["exactly_once"] = once
        self._check(values, "image_exactly_once", once)
        cosine = torch.cat([_cosines(device_split[s].features, cpu_split[s].features) for s in n])
        values.update(cosine_min=float(cosine.min()), cosine_mean=float(cosine.mean()))
        self._check(values, "image_feature_cosine", values["cosine_min"] >= COSINE_MIN)

        train, val = cpu_split["train"], cpu_split["val"]
        ks = tuple(bench.knn_k)
        places = {"device": self.device, "cpu": torch.device("cpu")}
        same = {where: knn_evaluate(train.features, train.labels, val.features, val.labels, 4, k_values=ks,
                                    temperature=bench.knn_temperature, device=place).top1
                for where, place in places.items()}
        values["knn_same_features_diff_samples"] = {k: round(abs(same["device"][k] - same["cpu"][k]) * n["val"])
                                                    for k in ks}
        self._check(values, "knn_same_features", max(values["knn_same_features_diff_samples"].values()) <= 1)
        top1 = {where: {k: outcome.metrics[f"eval/gpu/knn{k}_top1"] for k in ks}
                for where, outcome in (("device", device_outcome), ("cpu", cpu_outcome))}
        values["knn_top1"] = top1
        values["knn_end_to_end_diff_samples"] = {k: round(abs(top1["device"][k] - top1["cpu"][k]) * n["val"]) for k in ks}
        self._check(values, "knn_end_to_end", max(values["knn_end_to_end_diff_samples"].values()) <= 1)

        probes = {}
        for where, place in places.items():
            began = time.perf_counter()
            probes[where] = fit_linear_probe(train.features.float(), train.labels, 4, lr_grid=tuple(bench.linear_lr_grid),
                                             epochs=bench.linear_epochs, batch_size=bench.linear_batch_size, seed=0,
                                             device=place)
            values[f"probe_fit_s_{where}"] = time.perf_counter() - began
        x = val.features.float()
        probe_top1 = {where: probe.top1(x, val.labels) for where, probe in probes.items()}
        device_probe, cpu_probe = probes["device"], probes["cpu"]
        values.update(
            probe_top1_same_features=probe_top1, probe_lr={"device": device_probe.lr, "cpu": cpu_probe.lr},
            probe_weight_max_abs_diff=float((device_probe.weight - cpu_probe.weight).abs().max()),
            linear_top1={"device": device_outcome.metrics["eval/gpu/linear_top1"],
                         "cpu": cpu_outcome.metrics["eval/gpu/linear_top1"]})
        probe_diff = round(abs(probe_top1["device"] - probe_top1["cpu"]) * n["val"])
        self._check(values, "probe_same_features", device_probe.lr == cpu_probe.lr and probe_diff <= 1)
        self.headline.update(extraction_img_per_s=values["extraction_img_per_s"],
                             encode_img_per_s=values["encode_img_per_s"], feature_cosine_min=values["cosine_min"])
        return values

    def _encode_rate(self) -> float:
        """Images/s of the encoder alone (random images, the batch of the extraction), as the extraction calls it."""
        import contextlib

        import torch

        batch = torch.randn(max(self.sizes.batch_size, 32), 3, self.sizes.crop, self.sizes.crop, device=self.device)
        if self.cuda:
            batch = batch.contiguous(memory_format=torch.channels_last)
        autocast = torch.autocast("cuda", dtype=torch.bfloat16) if self.cuda else contextlib.nullcontext()
        warmup, timed = (3, 10) if self.cuda else (1, 2)
        with torch.inference_mode(), autocast:
            for _ in range(warmup):
                self.on_device.encode(batch)
            _sync(self.device)
            began = time.perf_counter()
            for _ in range(timed):
                self.on_device.encode(batch)
            _sync(self.device)
        return batch.shape[0] * timed / (time.perf_counter() - began)

    # ------------------------------------------------------------------------------------------------ DAVIS

    def davis(self) -> dict[str, Any]:
        """`run_davis` of the fixture on both sides, at each of `davis_short_sides`; masks compared by object."""
        from vito.config import DavisBenchmark
        from vito.eval.datasets.davis import read_davis
        from vito.eval.mask_store import MaskStore
        from vito.eval.protocols.davis import run_davis

        davis = read_davis(self.roots["davis"])
        values: dict[str, Any] = {"sequences": len(davis.sequences), "frames": sum(len(s.frames) for s in davis.sequences)}
        ious, once = [], True
        for short_side in self.sizes.davis_short_sides:
            bench = DavisBenchmark(kind="davis", root=str(self.roots["davis"]), short_side=short_side)
            row: dict[str, Any] = {"context_frames": bench.context_frames}
            outcomes = {}
            for where, encoder, settings in (("device", self.on_device, self.device_settings),
                                             ("cpu", self.on_cpu, self.cpu_settings)):
                began = time.perf_counter()
                outcomes[where] = run_davis("davis", bench, encoder, settings, is_main=True)
                row[f"{where}_s"] = time.perf_counter() - began
            row["jf"] = {where: outcome.metrics["eval/davis/jf"] for where, outcome in outcomes.items()}
            once = once and all(outcome.metrics["eval/davis/sequences_scored"] == len(davis.sequences)
                                and len(outcome.record["sequences"]["computed"]) == len(davis.sequences)
                                for outcome in outcomes.values())
            stores = {where: MaskStore(outcome.record["masks"]) for where, outcome in outcomes.items()}
            pairs = [(a, b) for sequence in davis.sequences  # frame 0 is the given mask
                     for a, b in zip(stores["device"].load(sequence)[1:], stores["cpu"].load(sequence)[1:])]
            row.update(_mask_agreement(pairs))
            ious += row.pop("ious")
            values["full_size" if short_side is None else f"short_side_{short_side}"] = row
        self._check(values, "davis_sequences_once", once)
        values.update(_summary(ious))
        # With random weights the real network's stride-8 grid of a 64 px frame (8 x 12 cells) predicts no object:
        # agreement on background alone would be vacuous, hence the upscaled run beside the protocol's full size.
        self._check(values, "davis_masks_hold_objects", bool(ious))
        self._check(values, "davis_mask_iou", bool(ious) and values["mask_iou_mean"] >= MASK_IOU_MIN)
        self.headline["davis_mask_iou_mean"] = values["mask_iou_mean"]
        return values

    def _large_sequence(self):
        from vito.eval.datasets.davis import read_davis

        return read_davis(self.roots["large"]).sequences[0]

    def davis_large(self, contexts: tuple[int, ...]) -> dict[str, Any]:
        """Frames/s and peak memory of the propagation of the 480p sequence (trunk, affinities, upsampling, PNG-ready
        id maps; not the mask commit), after a 3-frame warm-up."""
        import torch

        from vito.config import DavisBenchmark
        from vito.eval.protocols.davis import propagate_sequence

        sequence = self._large_sequence()
        height, width = sequence.size
        values: dict[str, Any] = {"frame": f"{width}x{height}", "frames": len(sequence.frames)}
        warmup = dataclasses.replace(sequence, frames=sequence.frames[:3], annotations=sequence.annotations[:3])
        propagate_sequence(warmup, self.on_device, DavisBenchmark(kind="davis", root=".", context_frames=2))
        for context in contexts:
            bench = DavisBenchmark(kind="davis", root=".", context_frames=context)
            if self.cuda:
                torch.cuda.synchronize(self.device)
                torch.cuda.reset_peak_memory_stats(self.device)
                before = torch.cuda.memory_allocated(self.device)
            began = time.perf_counter()
            masks = propagate_sequence(sequence, self.on_device, bench)
            _sync(self.device)
            seconds = time.perf_counter() - began
            row = {"seconds": seconds, "frames_per_s": (len(sequence.frames) - 1) / seconds}
            if self.cuda:
                row["peak_memory_gib"] = torch.cuda.max_memory_allocated(self.device) / 2**30
                row["peak_over_start_gib"] = row["peak_memory_gib"] - before / 2**30
            values[f"context_{context}"] = row
            self._check(values, f"davis_480p_context_{context}_masks",
                        len(masks) == len(sequence.frames) and all(m.shape == (height, width) for m in masks))
        if 20 in contexts:
            self.headline["davis_480p_frames_per_s"] = values["context_20"]["frames_per_s"]
            self.headline["davis_480p_peak_memory_gib"] = values["context_20"].get("peak_memory_gib")
        return values

    def davis_large_cpu(self) -> dict[str, Any]:
        """The first 3 frames of the 480p sequence on the device and on the CPU: masks compared."""
        from vito.config import DavisBenchmark
        from vito.eval.protocols.davis import propagate_sequence

        sequence = self._large_sequence()
        short = dataclasses.replace(sequence, frames=sequence.frames[:3], annotations=sequence.annotations[:3])
        bench = DavisBenchmark(kind="davis", root=".")
        device_masks = propagate_sequence(short, self.on_device, bench)
        cpu_masks = propagate_sequence(short, self.on_cpu, bench)
        values: dict[str, Any] = {"frames": 3, **_mask_agreement(list(zip(device_masks[1:], cpu_masks[1:])))}
        values.update(_summary(values.pop("ious")))
        self._check(values, "davis_480p_mask_iou", values["mask_iou_mean"] is not None
                    and values["mask_iou_mean"] >= MASK_IOU_MIN)
        return values

    # -------------------------------------------------------------------------------------- augmented linear

    def augmented(self) -> dict[str, Any]:
        """2 epochs of 3 steps, a commit every 2 steps and at each epoch's end: stopped at step 5 before its commit,
        so the rerun resumes mid-epoch from step 4; its final layer against an uninterrupted run's."""
        import torch

        from vito.eval.protocols.augmented_linear import run_image_folder_augmented

        train = int(self.sizes.train_per_class * 4)
        bench = self._bench().model_copy(update={"linear_augmented": True, "augmented_epochs": 2,
                                                 "augmented_batch_size": math.ceil(train / 3),
                                                 "augmented_checkpoint_steps": 2})
        folder = Path(self.device_settings.cache_root) / "augmented_linear"

        def run(settings):
            outcome = run_image_folder_augmented("gpu", bench, self.on_device, settings, seed=0, is_main=True)
            return outcome, outcome.record["linear_augmented"]

        values: dict[str, Any] = {"epochs": 2, "batch_size": bench.augmented_batch_size, "train_images": train}
        began = time.perf_counter()
        whole, whole_record = run(self.device_settings)
        values.update(uninterrupted_s=time.perf_counter() - began, images_per_s=whole_record["rank0_images_per_s"])
        shutil.rmtree(folder)
        steps: list[int] = []

        def preempt(what: str, done: int, total: int) -> None:
            if "linear_augmented" in what:
                steps.append(done)
                if len(steps) == 5:  # step 5 is taken, its commit not yet made: the last commit is step 4
                    raise _Preempted

        try:
            run(dataclasses.replace(self.device_settings, progress=preempt))
            values["preempted"] = False
        except _Preempted:
            values["preempted"] = True
        resumed, resumed_record = run(self.device_settings)
        weights = {"whole": whole.extra_readouts["readout_augmented"], "resumed": resumed.extra_readouts["readout_augmented"]}
        difference = max(float((weights["whole"][key] - weights["resumed"][key]).abs().max()) for key in ("weight", "bias"))
        values.update(
            steps=resumed_record["steps"], resumed_from_step=resumed_record["resumed_from_step"],
            trained_steps_after_resume=resumed_record["trained_steps_this_run"],
            bitwise_equal=all(torch.equal(weights["whole"][k], weights["resumed"][k]) for k in ("weight", "bias")),
            max_abs_diff=difference, top1={"uninterrupted": whole.metrics["eval/gpu/linear_augmented_top1"],
                                           "resumed": resumed.metrics["eval/gpu/linear_augmented_top1"]})
        self._check(values, "augmented_resume", values["preempted"] and values["resumed_from_step"] == 4
                    and values["steps"] == 6 and values["trained_steps_after_resume"] == 2)
        tolerance = RESUME_TOLERANCE["cuda" if self.cuda else "cpu"]
        self._check(values, "augmented_resume_weights", difference <= tolerance)
        values["weights_tolerance"] = tolerance
        self.headline["augmented_images_per_s"] = values["images_per_s"]
        return values

    # ------------------------------------------------------------------------------------------------ UCF-101

    def ucf101(self) -> dict[str, Any]:
        from vito.config import Ucf101Benchmark
        from vito.eval.datasets.ucf101 import read_ucf101
        from vito.eval.protocols.ucf101 import extract_clips, run_ucf101

        sizes = self.sizes
        bench = Ucf101Benchmark(kind="ucf101", root=str(self.roots["ucf"]), frames_per_clip=4, resize=sizes.resize,
                                crop=sizes.crop, linear_epochs=sizes.linear_epochs, knn=True)
        clips = {subset: len(read_ucf101(bench.root, 1, subset)) for subset in ("train", "test")}
        values: dict[str, Any] = {"clips": clips, "frames_per_clip": 4}
        features, top1 = {}, {}
        for where, encoder, settings in (("device", self.on_device, self.device_settings),
                                         ("cpu", self.on_cpu, self.cpu_settings)):
            began = time.perf_counter()
            outcome = run_ucf101("ucf", bench, encoder, settings, seed=0, is_main=True)
            values[f"{where}_s"] = time.perf_counter() - began
            top1[where] = outcome.metrics["eval/ucf/linear_top1"]
            features[where] = {subset: extract_clips(bench, subset, encoder, settings, "ucf")[1] for subset in clips}
        values["linear_top1"] = top1
        once = all(_exactly_once(part[subset], clips[subset]) for part in features.values() for subset in clips)
        values["exactly_once"] = once
        self._check(values, "ucf_exactly_once", once)
        import torch

        cosine = torch.cat([_cosines(features["device"][s].features, features["cpu"][s].features) for s in clips])
        values["cosine_min"] = float(cosine.min())
        self._check(values, "ucf_feature_cosine", values["cosine_min"] >= COSINE_MIN)
        return values
