"""The fixtures' ImageNet-C tree: time to compute each of the 19 corruptions at 5 severities, and to write the
whole tree as `vitolaunch data fixtures` does (100 val images at FIXTURE_CORRUPTION_SIZE px, JPEG q85).

    PYTHONPATH=. .venv/bin/python benchmarks/fixture_corruptions.py [--repeats 3] [--threads N]

Prints the median (min-max) over the repeats of the wall time, per corruption and for the whole tree, and the
process CPU time (which a machine shared with other work inflates less than the wall time)."""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from vito.eval.fixtures.corruptions import CORRUPTIONS, corrupt
from vito.eval.fixtures.images import ImageFolderFixture, write_image_folder
from vito.eval.fixtures.robustness import _prepared, _val_images, write_corruption_tree
from vitolaunch.data_cli import FIXTURE_CORRUPTION_SIZE


def _spread(times: list[float]) -> str:
    return f"{statistics.median(times):.3f} ({min(times):.3f}-{max(times):.3f})"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads [default: torch's]")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        write_image_folder(root / "imagenet", ImageFolderFixture(4, 1, 25))  # the default's 100 val images
        val = root / "imagenet" / "val"
        batch = torch.stack([_prepared(path, FIXTURE_CORRUPTION_SIZE) for _, path in _val_images(val)])
        print(f"torch threads {torch.get_num_threads()}, {len(batch)} images at {FIXTURE_CORRUPTION_SIZE} px")
        total = []
        cpu = time.process_time()
        for name in CORRUPTIONS:
            times = []
            for _ in range(args.repeats):
                started = time.perf_counter()
                for severity in range(1, 6):
                    corrupt(batch, name, severity)
                times.append(time.perf_counter() - started)
            total.append(statistics.median(times))
            print(f"{name:18s} 5 severities: {_spread(times)} s")
        print(f"compute, all 19 x 5 (sum of medians): {sum(total):.2f} s wall, "
              f"{(time.process_time() - cpu) / args.repeats:.2f} s CPU per pass")
        writes = []
        cpu = time.process_time()
        for _ in range(args.repeats):
            shutil.rmtree(root / "imagenet-c", ignore_errors=True)
            started = time.perf_counter()
            write_corruption_tree(val, root / "imagenet-c", image_size=FIXTURE_CORRUPTION_SIZE)
            writes.append(time.perf_counter() - started)
        files = sum(1 for _ in (root / "imagenet-c").rglob("*.JPEG"))
        print(f"write_corruption_tree, {files} JPEGs: {_spread(writes)} s wall, "
              f"{(time.process_time() - cpu) / args.repeats:.2f} s CPU per tree")


if __name__ == "__main__":
    main()
