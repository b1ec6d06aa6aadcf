"""Trainer overhead: VITO's DeepSpeed training loop against a bare PyTorch loop, same process, same model,
loss, optimizer and in-memory batch; then the real data loader's wait fraction.

    python benchmarks/trainer_overhead.py [--steps 40] [--rounds 3]

Arms alternate in rounds so machine noise hits both alike; the ratio of medians is reported.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from vito.config import VitoConfig
from vito.model import VitoModel, ema_momentum
from vito.optim import build_optimizer, learning_rate
from vito.train import RunContext, Trainer
from vitolaunch.spec import load_spec

REPO = Path(__file__).resolve().parents[1]


def quickstart_config(steps: int, num_workers: int = 0, zero_stage: int | None = None) -> VitoConfig:
    base = load_spec(REPO / "sweeps" / "quickstart.yaml").base_config_dict()
    if zero_stage is not None:
        base["train"]["zero_stage"] = zero_stage
    base["train"].update(steps=steps, log_every=10**6)
    base["checkpoint"]["every_steps"] = steps
    base["eval"]["linear_probe"] = False
    base["data"]["num_workers"] = num_workers
    return VitoConfig.model_validate(base)


def fixed_batch(cfg: VitoConfig) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    shape = (cfg.data.batch_size, 3, cfg.data.crop_size, cfg.data.crop_size)
    return torch.randn(shape, generator=generator), torch.randn(shape, generator=generator)


class InMemoryTrainer(Trainer):
    def batches(self, start_step):
        batch = fixed_batch(self.cfg)
        return iter([batch] * (self.cfg.train.steps - start_step))


def trainer_steps_per_s(cfg: VitoConfig, work: Path, trainer_class=Trainer) -> dict[str, float]:
    with tempfile.TemporaryDirectory(dir=work) as run_dir:
        ctx = RunContext(checkpoint_uri=f"{run_dir}/ckpt", data_root=str(work / "data"),
                         scratch_dir=f"{run_dir}/scratch")
        return trainer_class(cfg, ctx).run().timing


def bare_steps_per_s(cfg: VitoConfig) -> float:
    torch.manual_seed(cfg.train.seed)
    model = VitoModel(cfg.model, cfg.loss)
    optimizer = build_optimizer(model.named_online_parameters(), cfg.optim, cfg.data.batch_size)
    view_a, view_b = fixed_batch(cfg)
    started = time.perf_counter()
    for step in range(cfg.train.steps):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, cfg.train.steps, cfg.optim, cfg.data.batch_size)
        loss = model(view_a, view_b)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        model.update_target(ema_momentum(step, cfg.train.steps, cfg.ema))
    return cfg.train.steps / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--zero-stage", type=int, default=None, help="default: the quickstart's")
    args = parser.parse_args()
    torch.set_num_threads(1)
    cfg = quickstart_config(args.steps, zero_stage=args.zero_stage)
    work = Path(tempfile.mkdtemp(prefix="vito-bench-"))
    bare, framed = [], []
    for _ in range(args.rounds):
        bare.append(bare_steps_per_s(cfg))
        framed.append(trainer_steps_per_s(cfg, work, InMemoryTrainer)["steps_per_s"])
    ratio = statistics.median(framed) / statistics.median(bare)
    print(f"model: quickstart (resnet18 width {cfg.model.width}, {cfg.data.crop_size}px, batch {cfg.data.batch_size}), "
          f"1 process, 1 thread, {args.steps} steps x {args.rounds} rounds")
    print("| loop | steps/s (median) |\n|---|---|")
    print(f"| bare PyTorch | {statistics.median(bare):.2f} |")
    print(f"| vito Trainer (DeepSpeed ZeRO-{cfg.train.zero_stage}, in-memory data) | {statistics.median(framed):.2f} |")
    print(f"trainer / bare ratio: {ratio:.3f}")
    for workers in (0, 1):
        timing = trainer_steps_per_s(quickstart_config(args.steps, workers, args.zero_stage), work)
        print(f"real loader, num_workers={workers}: {timing['steps_per_s']:.2f} steps/s, "
              f"data wait fraction {timing['data_wait_frac']:.3f}")


if __name__ == "__main__":
    main()
