"""DAVIS label propagation on this CPU: frames/s, peak memory against the context, and the metric's cost.

    python benchmarks/davis_propagation.py [--threads 2] [--reps 3] [--skip-resnet18]

1. Frames/s, side by side: the dense trunk (stage 4 at stride 8) and one propagation step at a full context
   (the first frame + 20), at 480p (854 x 480: a 60 x 107 grid) and at the fixtures' size (96 x 64 native, and
   at short side 128 as sweeps/quickstart_eval.yaml runs it). Two networks: the tests' tiny ResNet-18 (width 8:
   32 channels at stage 4) and a standard ResNet-18 (width 64: 256 channels, CRW's network).
   Random weights and random frames: the cost does not depend on what the frames show.
2. Peak memory against the number of context frames (0, 5, 10, 20), each in its own subprocess (the kernel's
   VmHWM after a reset, as benchmarks/knn_bank.py): one propagation step at 480p with 256-channel features,
   on top of the context's features; the ResNet-50 figure (1024 channels) is the same step's arithmetic.
3. The metric per object-frame at 480p and at the fixtures' size: J alone, F as we compute it (dilation by
   the exact disk inside the boundaries' bounding box) and F with the dilation over the whole frame (what the
   official evaluator does with cv2), on an ellipse and a prediction shifted by 6 px.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

MIB = 2**20
SIZES = {"480p 854x480": (480, 854, None), "fixture 96x64": (64, 96, None), "fixture @ short side 128": (64, 96, 128)}


def _timed(fn, reps: int, *args, **kwargs) -> float:
    fn(*args, **kwargs)  # warm-up
    started = time.perf_counter()
    for _ in range(reps):
        fn(*args, **kwargs)
    return (time.perf_counter() - started) / reps


def frames_per_second(args: argparse.Namespace) -> None:
    import torch
    import torch.nn.functional as F

    from vito.eval.scoring.label_propagation import dense_trunk, propagate_frame
    from vito.model import ResNet

    networks = {"tiny resnet18 w8": ResNet("resnet18", 8).eval()}
    if not args.skip_resnet18:
        networks["resnet18 w64"] = ResNet("resnet18", 64).eval()
    print(f"1. frames/s (context: first + 20 frames, top-k 10, T 0.07, radius 12; {args.threads} threads)")
    print(f"{'network':>18} {'frames':>26} {'grid':>8} {'trunk s':>8} {'propagate s':>12} {'frames/s':>9}")
    for label, network in networks.items():
        trunk = dense_trunk(network, 4)
        for size_label, (height, width, short) in SIZES.items():
            if short:
                scale = short / min(height, width)
                height, width = round(height * scale), round(width * scale)
            image = torch.randn(1, 3, height, width)
            with torch.inference_mode():
                trunk_s = _timed(trunk, args.reps, image)
                maps = trunk(image)[4]
            h, w, c = maps.shape[-2], maps.shape[-1], maps.shape[1]
            keys = F.normalize(torch.randn(21, h, w, c), dim=-1)
            query = F.normalize(torch.randn(h, w, c), dim=-1)
            labels = torch.softmax(torch.randn(21, 3, h, w), 1)
            reps = 1 if h * w > 4000 and c > 64 else args.reps
            prop_s = _timed(propagate_frame, reps, query, keys, labels, topk=10, temperature=0.07, radius=12)
            print(f"{label:>18} {size_label:>26} {f'{h}x{w}':>8} {trunk_s:>8.3f} {prop_s:>12.3f} "
                  f"{1 / (trunk_s + prop_s):>9.2f}")


def memory_worker(context: int, channels: int) -> dict:
    import torch
    import torch.nn.functional as F

    from vito.eval.scoring.label_propagation import propagate_frame

    h, w, n = 60, 107, 1 + context
    keys = F.normalize(torch.randn(n, h, w, channels), dim=-1)
    labels = torch.softmax(torch.randn(n, 3, h, w), 1)
    query = F.normalize(torch.randn(h, w, channels), dim=-1)
    before = _rss()
    Path("/proc/self/clear_refs").write_text("5")
    started = time.perf_counter()
    propagate_frame(query, keys, labels, topk=10, temperature=0.07, radius=12)
    seconds = time.perf_counter() - started
    return {"context": context, "features_mib": (keys.numel() + query.numel()) * 4 / MIB,
            "step_peak_mib": (_hwm() - before) / MIB, "seconds": seconds}


def _rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise OSError("no VmRSS")


def _hwm() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise OSError("no VmHWM")


def peak_memory(args: argparse.Namespace) -> None:
    print("\n2. peak memory of one propagation step at 480p (60 x 107 grid), 256-channel features, by context")
    print(f"{'context':>8} {'features MiB':>13} {'step peak MiB':>14} {'step s':>7} {'ResNet-50 features MiB':>23}")
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    for context in (0, 5, 10, 20):
        command = [sys.executable, __file__, "--threads", str(args.threads), "--memory-worker", str(context)]
        row = json.loads(subprocess.run(command, check=True, capture_output=True, text=True, env=env).stdout.splitlines()[-1])
        resnet50 = (1 + context + 1) * 60 * 107 * 1024 * 4 / MIB
        print(f"{context:>8} {row['features_mib']:>13.0f} {row['step_peak_mib']:>14.0f} {row['seconds']:>7.2f} "
              f"{resnet50:>23.0f}")


def _f_whole_frame(predicted, truth, radius: int) -> float:
    """F with both dilations over the whole frame (the official evaluator's way)."""
    from vito.eval.scoring.davis_metric import dilate, seg2bmap

    pb, tb = seg2bmap(predicted), seg2bmap(truth)
    precision = (pb & dilate(tb, radius)).sum() / pb.sum()
    recall = (tb & dilate(pb, radius)).sum() / tb.sum()
    return 2 * precision * recall / (precision + recall)


def metric_cost(args: argparse.Namespace) -> None:
    import numpy as np

    from vito.eval.scoring.davis_metric import boundary_tolerance, contour_accuracy, region_similarity

    print("\n3. the metric per object-frame (an ellipse, the prediction shifted by 6 px)")
    print(f"{'frame':>14} {'tolerance px':>13} {'J ms':>7} {'F ms (ours)':>12} {'F ms (whole-frame dilation)':>28}")
    for label, (height, width) in (("854x480", (480, 854)), ("96x64", (64, 96))):
        ys, xs = np.mgrid[:height, :width]
        truth = ((ys - height / 2) / (height / 4)) ** 2 + ((xs - width / 2) / (width / 5)) ** 2 <= 1
        predicted = np.roll(truth, 6, axis=1)
        radius = boundary_tolerance(truth.shape)
        assert math.isclose(_f_whole_frame(predicted, truth, radius), contour_accuracy(predicted, truth))
        reps = args.reps * 10
        j = _timed(region_similarity, reps, predicted, truth)
        f = _timed(contour_accuracy, reps, predicted, truth)
        whole = _timed(_f_whole_frame, reps, predicted, truth, radius)
        print(f"{label:>14} {radius:>13} {j * 1e3:>7.2f} {f * 1e3:>12.2f} {whole * 1e3:>28.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--skip-resnet18", action="store_true", help="only the tiny network in part 1")
    parser.add_argument("--memory-worker", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    if args.memory_worker is not None:
        print(json.dumps(memory_worker(args.memory_worker, 256)))
        return
    frames_per_second(args)
    peak_memory(args)
    metric_cost(args)


if __name__ == "__main__":
    main()
