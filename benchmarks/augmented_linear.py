"""One epoch of the augmented linear protocol against one epoch of the cached-feature probe, on CPU.

    python benchmarks/augmented_linear.py [--images 256] [--arch resnet18] [--crop 224] [--threads 1]

Over the same JPEGs (500x375, ImageNet's usual size) and the same frozen network (the project's VitoModel,
deepest pooled feature, eval mode):
1. the extraction the cached protocols need once: resize 256 / centre crop 224, forward, fp16 shards;
2. one epoch of the cached probe (vito.eval.scoring.linear.train_linear, batch 1024) on the cached features,
   tiled to 64k rows so the epoch is long enough to time (the cost per row does not depend on the values);
3. one epoch of the augmented protocol (RandomResizedCrop + flip, forward, linear step, one commit).
Images per second of wall clock and per CPU-second of this process (loader workers 0: everything is here).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def write_images(root: Path, count: int, classes: int = 10) -> None:
    rng = np.random.default_rng(0)
    for split, n in (("train", count), ("val", classes)):
        for i in range(n):
            small = rng.integers(0, 256, (32, 42, 3), dtype=np.uint8)
            path = root / split / f"n{i % classes:08d}" / f"img_{i:06d}.JPEG"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(small).resize((500, 375), Image.Resampling.BICUBIC).save(path, "JPEG", quality=90)


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def timed(action) -> tuple[object, float, float]:
    wall, cpu = time.perf_counter(), _cpu()
    result = action()
    return result, time.perf_counter() - wall, _cpu() - cpu


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--arch", default="resnet18", choices=["resnet18", "resnet50"])
    parser.add_argument("--crop", type=int, default=224)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    import torch

    from vito.config import ImageFolderBenchmark, ModelConfig, VitoConfig
    from vito.eval.datasets.augmented import AugmentedImageDataset, AugmentedTransform
    from vito.eval.protocols.image_folder import ExtractionSettings, extract_split
    from vito.eval.scoring.augmented_linear import ProbeCheckpoints, train_augmented_linear
    from vito.eval.scoring.linear import feature_stats, train_linear
    from vito.eval.suite import model_encoder
    from vito.model import VitoModel

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = VitoConfig(model=ModelConfig(arch=args.arch))
    encoder = model_encoder(VitoModel(cfg.model, cfg.loss), f"bench-{args.arch}", torch.device("cpu"))
    rows = {}
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch) / "images"
        write_images(root, args.images)
        bench = ImageFolderBenchmark(root=str(root), crop=args.crop)
        settings = ExtractionSettings(f"{scratch}/cache", 4096, 64, 0, {})
        (train_set, train, _), wall, cpu = timed(lambda: extract_split(bench, "train", encoder, settings, "bench"))
        rows["extraction (once)"] = (args.images, wall, cpu)

        x = train.features.float().repeat(max(1, 65536 // args.images), 1)
        y = train.labels.repeat(max(1, 65536 // args.images))
        mean, std = feature_stats(x)
        _, wall, cpu = timed(lambda: train_linear(x, y, 10, 0.1, epochs=1, batch_size=1024, seed=0, mean=mean,
                                                  std=std))
        rows["cached probe, one epoch"] = (x.shape[0], wall, cpu)

        dataset = AugmentedImageDataset(train_set, AugmentedTransform(args.crop), seed=0)
        checkpoints = ProbeCheckpoints(f"{scratch}/probe", {}, {})
        _, wall, cpu = timed(lambda: train_augmented_linear(
            encoder, dataset, train.indices, 10, mean=mean, std=std, base_lr=0.1, epochs=1, batch_size=64, seed=0,
            checkpoints=checkpoints))
        rows["augmented protocol, one epoch"] = (args.images, wall, cpu)
    report = {name: {"images": n, "wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
                     "images_per_s": round(n / wall, 1), "images_per_cpu_s": round(n / cpu, 1)}
              for name, (n, wall, cpu) in rows.items()}
    report["augmented epoch / cached epoch (images per CPU-s)"] = round(
        report["cached probe, one epoch"]["images_per_cpu_s"] / report["augmented protocol, one epoch"]["images_per_cpu_s"], 1)
    print(json.dumps({"arch": args.arch, "crop": args.crop, "threads": args.threads, **report}, indent=1))


if __name__ == "__main__":
    main()
