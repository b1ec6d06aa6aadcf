"""One run that shows, on one GPU, how close the VITO step comes to the hardware's limit, and that the real
trainer, its data workers and exact resume work there.

    python benchmarks/gpu_check.py --out gpu_check.json            # one H100/H200, no network, < 8 min
    python benchmarks/gpu_check.py --cpu --tiny --out check.json   # the same code paths on a CPU, in seconds

Sections, each in its own try/except (a failure is recorded and the next section runs, so GPU minutes are
never lost to one bug), each skipped when the overall deadline (--timeout) would not leave it room:

* reference:  supervised ResNet-50 (this project's network code) fwd+bwd+SGD img/s, 224 px, batch 256, bf16;
* vito_step:  the cluster spec's model (sweeps/temperature_ablation.yaml) at batch 128 pairs through the real
              Trainer's step and engine: pairs/s, and pairs/s over the reference's img/s against the FLOP
              limits, 3/8 (backbone only) and the pool-adjusted limit from FLOPs counted on this model;
* trainer:    the real Trainer on nccl (one rank) for a few hundred steps on synthetic clips at 256 px with
              real data workers: pairs/s, data-wait fraction, checkpoint save time, finite losses;
* resume:     train.deterministic on, a run stopped mid-way and resumed against an uninterrupted one:
              bitwise-equal weights, or the largest difference;
* compile:    (when time is left) the vito_step with train.compile, after its warm-up;
* eval:       the evaluation engine's CUDA paths (extraction in bf16/channels_last, kNN, the linear probe, DAVIS
              label propagation at 480p, the augmented protocol's resume, UCF-101 clips) against the CPU's fp32
              on fixture sets: benchmarks/gpu_eval_check.py.

A watchdog writes whatever was measured and exits when --timeout is reached.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SPEC = REPO / "sweeps" / "temperature_ablation.yaml"
# Lines of the "aims" in issue 11.
AIM_FRACTION_OF_POOL_LIMIT = 0.9
AIM_DATA_WAIT = 0.05


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("gpu_check.json"))
    parser.add_argument("--cpu", action="store_true", help="run on the CPU (gloo), even where a GPU exists")
    parser.add_argument("--tiny", action="store_true", help="tiny model, few steps: checks the code paths only")
    parser.add_argument("--timeout", type=float, default=450.0, help="overall seconds; sections that would not fit are skipped")
    parser.add_argument("--trainer-steps", type=int, default=None, help="default 300 (tiny: 6)")
    parser.add_argument("--workers", type=int, default=None, help="data workers of the trainer section (default 8, tiny 2)")
    parser.add_argument("--sections", nargs="*", default=["reference", "vito_step", "trainer", "resume", "compile", "eval"])
    parser.add_argument("--work-dir", type=Path, default=None, help="default: a temporary folder")
    return parser.parse_args(argv)


class Report:
    """The results so far, written as JSON after every section and by the watchdog."""

    def __init__(self, out: Path, mode: dict[str, Any]):
        self.out = out
        self.data: dict[str, Any] = {"mode": mode, "sections": {}, "started_unix": time.time()}
        self.lock = threading.Lock()

    def section(self, name: str, values: dict[str, Any]) -> None:
        with self.lock:
            self.data["sections"][name] = values
            self.write()

    def write(self) -> None:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=2, default=str))
        os.replace(tmp, self.out)


class Deadline:
    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()


def _start_watchdog(report: Report, deadline: Deadline) -> None:
    def watch() -> None:
        while deadline.left() > 0:
            time.sleep(min(1.0, max(deadline.left(), 0.01)))
        with report.lock:
            report.data["timed_out"] = True
            report.write()
        print(f"gpu_check: overall timeout reached; partial results in {report.out}", flush=True)
        print_report(report.data)
        os._exit(3)

    threading.Thread(target=watch, name="gpu-check-watchdog", daemon=True).start()


# ------------------------------------------------------------------------------------------------ configs


def cluster_config(tiny: bool, batch: int, crop: int, steps: int):
    """The cluster spec's base config (or a tiny model of the same shape) for one rank on this machine."""
    from vito.config import VitoConfig
    from vitolaunch.spec import load_spec

    base = load_spec(SPEC).base_config_dict()
    base["data"].update(source="synthetic", crop_size=crop, batch_size=batch, num_workers=0)
    if tiny:
        base["model"].update(arch="resnet18", width=8, stem="small", pool_hidden=32, proj_hidden=64, proj_dim=32,
                             pred_hidden=64)
        base["data"]["synthetic"] = {"num_videos": 8, "num_frames": 12, "size": 48}
    else:
        base["data"]["synthetic"] = {"num_videos": 24, "num_frames": 16, "size": 256}
    base["train"].update(steps=steps, log_every=10**6, stop_check_every=10)
    base["optim"]["warmup_steps"] = min(base["optim"]["warmup_steps"], max(steps // 10, 1))
    base["checkpoint"].update(every_steps=10**6, keep_last=1)
    base["eval"]["linear_probe"] = False
    return VitoConfig.model_validate(base)


def make_trainer(cfg, work: Path, name: str, stop_requested: Callable[[], bool] = lambda: False):
    from vito.train import RunContext, Trainer

    run = work / name
    ctx = RunContext(checkpoint_uri=str(run / "ckpt"), data_root=str(work / "data"), scratch_dir=str(run / "scratch"),
                     stop_requested=stop_requested)
    return Trainer(cfg, ctx)


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _device_views(cfg, device, seed: int = 0):
    import torch

    generator = torch.Generator().manual_seed(seed)
    shape = (cfg.data.batch_size, 3, cfg.data.crop_size, cfg.data.crop_size)
    return torch.randn(shape, generator=generator).to(device), torch.randn(shape, generator=generator).to(device)


# ----------------------------------------------------------------------------------------------- sections


def section_reference(args, device) -> dict[str, Any]:
    """Supervised ResNet-50 training step (fwd + bwd + SGD) on random images: the img/s every VITO figure is read against."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    from vito.model import ResNet

    arch, width, size, batch, warmup, timed = ("resnet18", 8, 32, 8, 2, 3) if args.tiny else ("resnet50", 64, 224, 256, 15, 40)
    channels_last = torch.channels_last if device.type == "cuda" else torch.preserve_format
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    backbone = ResNet(arch, width)
    classifier = nn.Linear(backbone.channels[5], 1000)
    model = nn.ModuleDict({"backbone": backbone, "classifier": classifier}).to(device, memory_format=channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4, foreach=True)
    images = torch.randn(batch, 3, size, size, device=device).to(memory_format=channels_last)
    labels = torch.randint(0, 1000, (batch,), device=device)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            features = backbone(images)[5].mean(dim=(2, 3))
            loss = F.cross_entropy(classifier(features), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(warmup):
        step()
    _sync(device)
    started = time.perf_counter()
    for _ in range(timed):
        step()
    _sync(device)
    seconds = time.perf_counter() - started
    return {"arch": arch, "size": size, "batch": batch, "steps_timed": timed, "img_per_s": batch * timed / seconds}


def count_flop_limits(cfg) -> dict[str, float]:
    """FLOPs of one supervised image and one VITO pair (fwd + bwd, target fwd), counted on this model's code.

    The FLOP limit of pairs/s over supervised img/s is their ratio: 3/8 for the backbone alone (a pair is two
    views fwd+bwd online = 2 x 3 passes, plus two target forwards = 2 passes, against 3 per image), lower with
    the attention pools, whose 1x1-conv MLP on the stage-4 map costs a large part of a backbone.
    """
    import torch
    import torch.nn.functional as F
    from torch.utils.flop_counter import FlopCounterMode

    from vito.model import ResNet, VitoModel

    size = cfg.data.crop_size
    with torch.device("meta"):
        backbone = ResNet(cfg.model.arch, cfg.model.width, stem=cfg.model.stem)
        classifier = torch.nn.Linear(backbone.channels[5], 1000)
        images = torch.randn(2, 3, size, size)
        counter = FlopCounterMode(display=False)
        with counter:
            logits = classifier(backbone(images)[5].mean(dim=(2, 3)))
            F.cross_entropy(logits, torch.zeros(2, dtype=torch.long)).backward()
        supervised_per_image = counter.get_total_flops() / 2

        model = VitoModel(cfg.model, cfg.loss)
        counter = FlopCounterMode(display=False)
        with counter:
            model(images, images)["loss"].backward()
        vito_per_pair = counter.get_total_flops() / 2
    return {
        "supervised_gflop_per_image": supervised_per_image / 1e9,
        "vito_gflop_per_pair": vito_per_pair / 1e9,
        "limit_backbone_only": 3 / 8,
        "limit_with_pools": supervised_per_image / vito_per_pair,
    }


def _time_trainer_steps(trainer, views, warmup: int, timed: int) -> tuple[float, list[float]]:
    for step in range(warmup):
        trainer._train_step(step, *views)
    _sync(trainer.dist.device)
    started = time.perf_counter()
    outs = [trainer._train_step(warmup + step, *views)["loss"].detach() for step in range(timed)]
    _sync(trainer.dist.device)
    seconds = time.perf_counter() - started
    losses = [float(loss) for loss in outs]
    return seconds, losses


def section_vito_step(args, device, work: Path, reference: dict[str, Any] | None, compile_model: bool = False) -> dict[str, Any]:
    import torch

    batch, crop = (8, 32) if args.tiny else (128, 224)
    warmup, timed = (2, 3) if args.tiny else (15, 40)
    if compile_model:  # the engine's compilation steps, then cuDNN autotuning of the compiled graph
        warmup, timed = (3, 2) if args.tiny else (20, 40)
    cfg = cluster_config(args.tiny, batch, crop, steps=warmup + timed)
    cfg.train.compile = compile_model
    trainer = make_trainer(cfg, work, "compile" if compile_model else "vito_step")
    views = _device_views(cfg, trainer.dist.device)
    seconds, losses = _time_trainer_steps(trainer, views, warmup, timed)
    result: dict[str, Any] = {
        "batch_pairs": batch, "crop": crop, "precision": cfg.train.precision, "compile": compile_model,
        "steps_timed": timed, "pairs_per_s": batch * timed / seconds, "losses_finite": all(map(math.isfinite, losses)),
        "params_m": sum(p.numel() for p in trainer.model.online_parameters()) / 1e6,
        # What the engine set up: fp32 masters (target included), NHWC convs and autotuning on CUDA only.
        "masters_fp32": all(p.dtype == torch.float32 for p in trainer.model.parameters()),
        "channels_last": trainer.model.backbone.stem[0].weight.is_contiguous(memory_format=torch.channels_last),
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
    }
    if trainer.dist.device.type == "cuda":
        result["max_memory_gib"] = torch.cuda.max_memory_allocated(trainer.dist.device) / 2**30
    result.update(count_flop_limits(cfg))
    if reference and "img_per_s" in reference:
        ratio = result["pairs_per_s"] / reference["img_per_s"]
        result["ratio_to_reference"] = ratio
        result["fraction_of_backbone_limit"] = ratio / result["limit_backbone_only"]
        result["fraction_of_pool_limit"] = ratio / result["limit_with_pools"]
        result["aim_met"] = result["fraction_of_pool_limit"] >= AIM_FRACTION_OF_POOL_LIMIT
    return result


def section_trainer(args, device, work: Path, budget_s: float) -> dict[str, Any]:
    """The real Trainer, data workers included, from clip files to a committed checkpoint.

    If the steps would outlast `budget_s`, the trainer is asked to stop as a preempted job is (the flag it
    checks every train.stop_check_every steps): it saves the step it reached and the figures cover what ran.
    """
    steps = args.trainer_steps or (6 if args.tiny else 300)
    workers = args.workers if args.workers is not None else (2 if args.tiny else 8)
    batch, crop = (8, 32) if args.tiny else (128, 224)
    cfg = cluster_config(args.tiny, batch, crop, steps)
    cfg.data.num_workers = workers
    started = time.perf_counter()
    stop_at = time.monotonic() + budget_s
    trainer = make_trainer(cfg, work, "trainer", stop_requested=lambda: time.monotonic() > stop_at)
    setup_s = time.perf_counter() - started

    saves: list[float] = []
    save = trainer.checkpoints.save

    def timed_save(*a, **kw):
        began = time.perf_counter()
        save(*a, **kw)
        saves.append(time.perf_counter() - began)

    trainer.checkpoints.save = timed_save
    losses = []
    step_fn = trainer._train_step

    def recording_step(*a, **kw):
        out = step_fn(*a, **kw)
        losses.append(out["loss"].detach())  # no .item() here: that would sync every step
        return out

    trainer._train_step = recording_step
    waits: list[tuple[float, float]] = []  # (began, seconds) of each batch fetch
    make_batches = trainer.batches

    def timed_batches(start_step):
        source = make_batches(start_step)

        def fetch():
            while True:
                began = time.perf_counter()
                try:
                    batch = next(source)
                except StopIteration:
                    return
                waits.append((began, time.perf_counter() - began))
                yield batch

        return fetch()

    trainer.batches = timed_batches
    result = trainer.run()
    # Steady state: from step 10 on, once the workers have started and filled their prefetch queues.
    steady = waits[10:]
    steady_wait = None
    if len(steady) >= 2:
        span = steady[-1][0] - steady[0][0]
        steady_wait = sum(seconds for _, seconds in steady[:-1]) / span if span > 0 else None
    values = [float(loss) for loss in losses]
    return {
        "steps": result.step, "workers": workers, "batch_pairs": batch, "clip_px": cfg.data.synthetic.size,
        "completed": result.completed, "stopped_by_time_budget": not result.completed, "budget_s": budget_s,
        "setup_s": setup_s,
        "pairs_per_s": result.timing["steps_per_s"] * batch, "data_wait_frac": result.timing["data_wait_frac"],
        "checkpoint_save_s": saves, "committed_step": trainer.checkpoints.last_committed_step,
        "losses_finite": all(map(math.isfinite, values)), "loss_first": values[0], "loss_last": values[-1],
        "data_wait_frac_steady": steady_wait,
        "aim_met": (steady_wait if steady_wait is not None else result.timing["data_wait_frac"]) < AIM_DATA_WAIT,
    }


def section_resume(args, device, work: Path) -> dict[str, Any]:
    """Stopped at a step and resumed, against uninterrupted: train.deterministic makes GPU kernels repeatable."""
    import torch

    batch, crop, steps, stop_at = (8, 32, 8, 4) if args.tiny else (32, 128, 12, 6)
    cfg = cluster_config(args.tiny, batch, crop, steps)
    cfg.train.deterministic = True
    cfg.train.stop_check_every = stop_at
    cfg.data.num_workers = 0 if args.tiny else 4

    try:
        whole = make_trainer(cfg, work, "resume_whole")
        whole_result = whole.run()
        reference = {k: v.detach().clone() for k, v in whole.model.state_dict().items()}

        first = make_trainer(cfg, work, "resume_split", stop_requested=lambda: True)
        first_result = first.run()
        second = make_trainer(cfg, work, "resume_split")
        second_result = second.run()
        resumed = second.model.state_dict()
    finally:
        if device.type == "cuda":  # leave the later sections their fast kernels, also after a failure
            torch.use_deterministic_algorithms(False)
            torch.backends.cudnn.deterministic = False
            torch.backends.cudnn.benchmark = True

    differences = {name: (reference[name].double() - resumed[name].double()).abs().max().item()
                   for name in reference if reference[name].is_floating_point()}
    exact = all(torch.equal(reference[name], resumed[name]) for name in reference)
    worst = max(differences, key=differences.get)
    return {
        "steps": steps, "stopped_at": first_result.step, "resumed_from": second_result.resumed_from,
        "uninterrupted_completed": whole_result.completed, "resumed_completed": second_result.completed,
        "bitwise_equal": exact, "max_abs_diff": differences[worst], "max_abs_diff_tensor": worst,
    }


def section_eval(args, device, work: Path, deadline: Deadline) -> dict[str, Any]:
    """The evaluation engine on the device against the CPU (benchmarks/gpu_eval_check.py), with the cluster's network."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling module, also when imported from elsewhere
    from gpu_eval_check import section_eval as run_eval

    cfg = cluster_config(args.tiny, batch=8, crop=32, steps=1)
    return run_eval(args, device, work, cfg.model, cfg.loss, lambda: deadline.left() - 10)


# ------------------------------------------------------------------------------------------------- driver

SECTION_NEEDS_S = {"reference": 40, "vito_step": 60, "trainer": 150, "resume": 60, "compile": 150, "eval": 120}
TINY_NEEDS_S = {**{name: 5 for name in SECTION_NEEDS_S}, "eval": 30}


def run_sections(args, report: Report, deadline: Deadline, work: Path) -> None:
    from vito.distributed import init_distributed

    dist_info = init_distributed()
    device = dist_info.device
    report.data["mode"]["device"] = _device_name(device)
    report.data["mode"]["backend"] = _backend()
    needs = TINY_NEEDS_S if args.tiny else SECTION_NEEDS_S
    calls: dict[str, Callable[[], dict[str, Any]]] = {
        "reference": lambda: section_reference(args, device),
        "vito_step": lambda: section_vito_step(args, device, work, report.data["sections"].get("reference")),
        # Leaves the resume section its time; compile runs only if the trainer finished early.
        "trainer": lambda: section_trainer(args, device, work, max(deadline.left() - needs["resume"] - 15, 30)),
        "resume": lambda: section_resume(args, device, work),
        "compile": lambda: section_vito_step(args, device, work, report.data["sections"].get("reference"), True),
        "eval": lambda: section_eval(args, device, work, deadline),
    }
    for name in args.sections:
        if deadline.left() < needs[name]:
            report.section(name, {"ok": False, "skipped": f"{deadline.left():.0f} s left, needs ~{needs[name]} s"})
            continue
        print(f"gpu_check: {name} ...", flush=True)
        began = time.perf_counter()
        try:
            values = {"ok": True, **calls[name]()}
        except Exception as problem:  # noqa: BLE001 - recorded, and the next section still runs
            values = {"ok": False, "error": f"{type(problem).__name__}: {problem}"[:2000],
                      "traceback": traceback.format_exc()[-4000:]}
        values["seconds"] = time.perf_counter() - began
        report.section(name, values)
        _release_memory(device)
        print(f"gpu_check: {name} {'ok' if values['ok'] else 'FAILED'} in {values['seconds']:.1f} s", flush=True)


def _release_memory(device) -> None:
    """Drop the finished section's engine and cached blocks, so the next one starts with the whole GPU."""
    import gc

    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _device_name(device) -> str:
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def _backend() -> str:
    import torch.distributed as dist

    return dist.get_backend() if dist.is_initialized() else "none"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 100 else f"{value:.1f}"
    if isinstance(value, list):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    return str(value)


def print_report(data: dict[str, Any]) -> None:
    print("\n==== gpu_check report ====")
    for key, value in data["mode"].items():
        print(f"{key:>22}: {value}")
    for name, values in data["sections"].items():
        status = "ok" if values.get("ok") else ("SKIPPED" if "skipped" in values else "FAILED")
        print(f"\n[{name}] {status}")
        for key, value in values.items():
            if key in ("ok", "traceback"):
                continue
            print(f"{key:>28}: {_fmt(value)}")
    if data.get("timed_out"):
        print("\nTIMED OUT: the sections above are all that ran")
    print("==== end ====", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    if args.cpu:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before torch: init_distributed then picks gloo and the CPU
        # Inductor's C++ build of a ResNet takes minutes on a few cores: the CPU check traces (dynamo) only.
        os.environ.setdefault("VITO_COMPILE_BACKEND", "eager")
    # cuBLAS reads this when it creates its handle, which an earlier section does before `resume` needs it.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    deadline = Deadline(args.timeout)
    report = Report(args.out, {"tiny": args.tiny, "cpu": args.cpu, "timeout_s": args.timeout, "python": sys.version.split()[0]})
    _start_watchdog(report, deadline)
    sys.path.insert(0, str(REPO))
    import torch

    if args.cpu:
        torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    report.data["mode"]["torch"] = torch.__version__
    report.data["mode"]["compile_backend"] = os.environ.get("VITO_COMPILE_BACKEND", "inductor")
    with tempfile.TemporaryDirectory(dir=args.work_dir) as work:
        run_sections(args, report, deadline, Path(work))
    report.data["finished"] = True
    report.write()
    print_report(report.data)
    failed = [name for name, values in report.data["sections"].items() if not values.get("ok")]
    return 1 if failed else 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    # DeepSpeed's and the loader's threads can hold a clean interpreter exit: the report is written.
    os._exit(code)
