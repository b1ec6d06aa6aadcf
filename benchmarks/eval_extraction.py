"""The evaluation reader and extraction, measured.

    python benchmarks/eval_extraction.py [--images 400] [--workers 1] [--rounds 3] [--small 2000] [--large 20000]

1. Loader throughput per DataLoader worker over the same JPEGs, ~400 of 500x375 (ImageNet's typical size) and
   ~200 of 1000x750: vito.eval's ImageFolderDataset + ImageTransform (resize 256, centre crop 224) with JPEG
   draft decoding on and off, against a bare PIL loop (open, convert, resize, crop, normalise; no torchvision)
   in a DataLoader. Reported as images per CPU-second (robust on a shared machine) and wall-clock images/s
   through --workers workers.
2. Peak RSS of extract_features over 2k and 20k tiny JPEGs with a trivial encoder, each size in a fresh
   subprocess (VmHWM): what grows with N beyond the features themselves.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def write_images(root: Path, count: int, size: tuple[int, int], classes: int = 10) -> None:
    rng = np.random.default_rng(0)
    width, height = size
    for i in range(count):
        small = rng.integers(0, 256, (max(2, height // 12), max(2, width // 12), 3), dtype=np.uint8)
        image = Image.fromarray(small).resize((width, height), Image.Resampling.BICUBIC)
        path = root / "val" / f"n{i % classes:08d}" / f"img_{i:06d}.JPEG"
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path, "JPEG", quality=90)


class BarePIL:
    """The plain loop: PIL decode at full size, short side to 256 (PIL bilinear), centre 224, normalise."""

    def __init__(self, paths: list[str]):
        import torch

        self.paths = paths
        self.mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
        self.std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        import torch

        with Image.open(self.paths[i]) as image:
            image = image.convert("RGB")
        width, height = image.size
        scale = 256 / min(width, height)
        image = image.resize((max(256, int(width * scale)), max(256, int(height * scale))), Image.Resampling.BILINEAR)
        left, top = (image.width - 224) // 2, (image.height - 224) // 2
        image = image.crop((left, top, left + 224, top + 224))
        pixels = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).float().div_(255)
        return (pixels - self.mean).div_(self.std)


def _rates(dataset, collate, workers: int) -> tuple[float, float]:
    """(images per CPU-second in a loop without workers, images/s wall-clock through `workers` workers).

    The first is what one worker does on a core of its own, and holds on a machine shared with other jobs;
    the second is the plain wall-clock figure, which a busy machine drags down."""
    import torch

    count = len(dataset)
    loader = torch.utils.data.DataLoader(dataset, batch_size=32, num_workers=0, collate_fn=collate)
    started = time.process_time()
    for _ in loader:
        pass
    per_cpu_second = count / (time.process_time() - started)
    loader = torch.utils.data.DataLoader(dataset, batch_size=32, num_workers=workers, collate_fn=collate)
    started = time.perf_counter()
    for _ in loader:
        pass
    wall = count / (time.perf_counter() - started) / max(workers, 1)
    return per_cpu_second, wall


def _compare(label: str, datasets: dict[str, tuple], workers: int, rounds: int) -> None:
    """Interleaved rounds, best of each (the least disturbed by other processes)."""
    best = {name: (0.0, 0.0) for name in datasets}
    for _ in range(rounds):
        for name, (dataset, collate) in datasets.items():
            cpu, wall = _rates(dataset, collate, workers)
            best[name] = (max(best[name][0], cpu), max(best[name][1], wall))
    bare_cpu, bare_wall = best["bare PIL loop"]
    print(f"{label} (best of {rounds} interleaved rounds):")
    for name, (cpu, wall) in best.items():
        print(f"  {name:22s} {cpu:7.1f} images per CPU-second ({cpu / bare_cpu:.2f}x bare)   "
              f"wall, {workers} worker(s): {wall:6.1f} images/s per worker ({wall / bare_wall:.2f}x bare)")
    on, off = best["vito.eval, draft on"][0], best["vito.eval, draft off"][0]
    print(f"  draft on / draft off: {on / off:.2f}x per CPU-second")


def loader_section(args) -> None:
    import torch

    from vito.eval.datasets.image_folder import ImageFolderDataset, ImageTransform, collate, read_image_folder

    torch.set_num_threads(1)  # one worker = one thread: idle intra-op threads would count as CPU time
    with tempfile.TemporaryDirectory(prefix="eval-bench-") as folder:
        root = Path(folder)
        for name, size, count in (("typical", (500, 375), args.images), ("large", (1000, 750), args.images // 2)):
            write_images(root / name, count, size)
            image_set = read_image_folder(str(root / name), "val", classes_from=None)
            paths = [s.path for s in image_set.samples]
            for path in paths:  # warm the page cache: decoding is what is measured
                Path(path).read_bytes()
            _compare(f"loader, {len(paths)} JPEGs of {size[0]}x{size[1]} -> resize 256, crop 224", {
                "bare PIL loop": (BarePIL(paths), None),
                "vito.eval, draft off": (ImageFolderDataset(image_set, ImageTransform(decoder_draft=False)), collate),
                "vito.eval, draft on": (ImageFolderDataset(image_set, ImageTransform(decoder_draft=True)), collate),
            }, args.workers, args.rounds)
            if size == (500, 375):
                print("  (500x375: the short side goes 375 -> 256, a reduction under 2, so the draft cannot decode "
                      "smaller without going below the target: no gain expected; ImageNet-1k photos are mostly this size)")


def _peak_rss_kib() -> int:
    """This process's peak RSS: VmHWM, which exec resets (ru_maxrss keeps the forking parent's peak across exec)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _rss_child(count: int) -> None:
    """In a fresh process: list, extract, report the peak RSS before and after (KiB)."""
    import torch

    from vito.eval.datasets.image_folder import ImageFolderDataset, ImageTransform, read_image_folder
    from vito.eval.extract import extract_features

    torch.set_num_threads(1)
    before = _peak_rss_kib()  # after imports
    with tempfile.TemporaryDirectory(prefix="eval-rss-") as folder:
        root = Path(folder)
        write_images(root, count, (16, 12), classes=100)
        dataset = ImageFolderDataset(read_image_folder(str(root), "val", classes_from=None),
                                     ImageTransform(resize=0, crop=8))
        weights = torch.randn(3 * 8 * 8, 64, generator=torch.Generator().manual_seed(0))
        started = time.perf_counter()
        result = extract_features(lambda x: x.flatten(1) @ weights, dataset, str(root / "cache"), shard_size=1024,
                                  batch_size=256, workers=0)
        seconds = time.perf_counter() - started
        after = _peak_rss_kib()
        print(json.dumps({"count": count, "rows": int(result.features.shape[0]), "before_kib": before,
                          "peak_kib": after, "seconds": seconds,
                          "features_kib": result.features.numel() * 2 / 1024}))


def rss_section(args) -> None:
    rows = []
    for count in (args.small, args.large):
        out = subprocess.run([sys.executable, __file__, "--rss-child", str(count)], capture_output=True, text=True,
                             check=True, env={**os.environ, "PYTHONPATH": str(REPO)})
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print("extraction peak RSS (fresh process each, VmHWM, 16x12 JPEGs, crop 8, a linear encoder to 64-d, workers 0):")
    for row in rows:
        print(f"  {row['count']:6d} images: peak {row['peak_kib'] / 1024:7.1f} MiB (after imports "
              f"{row['before_kib'] / 1024:.1f} MiB; growth {(row['peak_kib'] - row['before_kib']) / 1024:.1f} MiB; "
              f"fp16 features {row['features_kib'] / 1024:.1f} MiB; {row['count'] / row['seconds']:.0f} images/s)")
    small, large = rows
    growth = [(r["peak_kib"] - r["before_kib"]) for r in rows]
    print(f"  {large['count'] / small['count']:.0f}x the images: peak RSS {large['peak_kib'] / small['peak_kib']:.2f}x, "
          f"growth above imports {growth[1] / max(growth[0], 1):.2f}x; "
          f"{(growth[1] - growth[0]) / (large['count'] - small['count']):.2f} KiB per extra image")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--small", type=int, default=2000)
    parser.add_argument("--large", type=int, default=20000)
    parser.add_argument("--rss-child", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        _rss_child(args.rss_child)
        return
    loader_section(args)
    rss_section(args)


if __name__ == "__main__":
    main()
