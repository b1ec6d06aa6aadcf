"""The evaluation reader and extraction, measured.

    python benchmarks/eval_extraction.py [--images 400] [--workers 1] [--small 2000] [--large 20000]

1. Loader throughput, images/s per DataLoader worker, over the same ~400 JPEGs of 500x375 (ImageNet's typical
   size): vito.eval's ImageFolderDataset + ImageTransform (resize 256, centre crop 224) with JPEG draft decoding
   on and off, against a bare PIL loop (open, convert, resize, crop, normalise; no torchvision) in a DataLoader.
2. Peak RSS of extract_features over 2k and 20k tiny JPEGs with a trivial encoder, each size in a fresh
   subprocess (ru_maxrss): what grows with N beyond the features themselves.
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
    """The plain loop: PIL decode at full size, short side to 256, centre 224, normalise."""

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


def _throughput(dataset, workers: int, collate=None, rounds: int = 2) -> float:
    import torch

    loader = torch.utils.data.DataLoader(dataset, batch_size=32, num_workers=workers, collate_fn=collate)
    best = 0.0
    for _ in range(rounds):
        started = time.perf_counter()
        count = 0
        for batch in loader:
            count += len(batch[0]) if collate is not None else len(batch)
        best = max(best, count / (time.perf_counter() - started))
    return best


def loader_section(args) -> None:
    from vito.eval.image_folder import ImageFolderDataset, ImageTransform, collate, read_image_folder

    with tempfile.TemporaryDirectory(prefix="eval-bench-") as folder:
        root = Path(folder)
        write_images(root, args.images, (500, 375))
        image_set = read_image_folder(str(root), "val", classes_from=None)
        paths = [s.path for s in image_set.samples]
        for path in paths:  # warm the page cache: decode is what is measured
            Path(path).read_bytes()
        draft = ImageFolderDataset(image_set, ImageTransform(decoder_draft=True))
        full = ImageFolderDataset(image_set, ImageTransform(decoder_draft=False))
        bare = _throughput(BarePIL(paths), args.workers) / args.workers
        with_draft = _throughput(draft, args.workers, collate) / args.workers
        without = _throughput(full, args.workers, collate) / args.workers
        print(f"loader, {len(paths)} JPEGs of 500x375, resize 256 / crop 224, {args.workers} worker(s):")
        print(f"  bare PIL loop          {bare:7.1f} images/s per worker")
        print(f"  vito.eval, draft off   {without:7.1f} images/s per worker  ({without / bare:.2f}x bare)")
        print(f"  vito.eval, draft on    {with_draft:7.1f} images/s per worker  ({with_draft / bare:.2f}x bare, "
              f"{with_draft / without:.2f}x draft off)")
        print("  (500x375 -> short side 256 is a reduction of 1.46: draft cannot reduce it, since 1/2 would go "
              "below the target; see the 1000x750 line)")
        write_images(root / "big", args.images // 2, (1000, 750))
        big_set = read_image_folder(str(root / "big"), "val", classes_from=None)
        for sample in big_set.samples:
            Path(sample.path).read_bytes()
        big_bare = _throughput(BarePIL([s.path for s in big_set.samples]), args.workers) / args.workers
        big_draft = _throughput(ImageFolderDataset(big_set, ImageTransform()), args.workers, collate) / args.workers
        big_full = _throughput(ImageFolderDataset(big_set, ImageTransform(decoder_draft=False)), args.workers,
                               collate) / args.workers
        print(f"  1000x750: bare {big_bare:.1f}, draft off {big_full:.1f}, draft on {big_draft:.1f} images/s per worker "
              f"(draft on = {big_draft / big_bare:.2f}x bare, {big_draft / big_full:.2f}x draft off)")


def _rss_child(count: int) -> None:
    """In a fresh process: list, extract, report ru_maxrss before and after (KiB on Linux)."""
    import torch

    from vito.eval.extract import extract_features
    from vito.eval.image_folder import ImageFolderDataset, ImageTransform, read_image_folder

    with tempfile.TemporaryDirectory(prefix="eval-rss-") as folder:
        root = Path(folder)
        write_images(root, count, (16, 12), classes=100)
        torch.set_num_threads(1)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        dataset = ImageFolderDataset(read_image_folder(str(root), "val", classes_from=None),
                                     ImageTransform(resize=0, crop=8))
        weights = torch.randn(3 * 8 * 8, 64, generator=torch.Generator().manual_seed(0))
        started = time.perf_counter()
        result = extract_features(lambda x: x.flatten(1) @ weights, dataset, str(root / "cache"), shard_size=1024,
                                  batch_size=256, workers=0)
        seconds = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(json.dumps({"count": count, "rows": int(result.features.shape[0]), "before_kib": before,
                          "peak_kib": after, "seconds": seconds,
                          "features_kib": result.features.numel() * 2 / 1024}))


def rss_section(args) -> None:
    rows = []
    for count in (args.small, args.large):
        out = subprocess.run([sys.executable, __file__, "--rss-child", str(count)], capture_output=True, text=True,
                             check=True, env={**os.environ, "PYTHONPATH": str(REPO)})
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print("extraction peak RSS (fresh process each, 16x12 JPEGs, crop 8, a linear encoder to 64-d, workers 0):")
    for row in rows:
        print(f"  {row['count']:6d} images: peak {row['peak_kib'] / 1024:7.1f} MiB (after imports "
              f"{row['before_kib'] / 1024:.1f} MiB; growth {(row['peak_kib'] - row['before_kib']) / 1024:.1f} MiB; "
              f"fp16 features {row['features_kib'] / 1024:.1f} MiB; {row['count'] / row['seconds']:.0f} images/s)")
    small, large = rows
    growth = [(r["peak_kib"] - r["before_kib"]) for r in rows]
    print(f"  ratio {large['count'] / small['count']:.0f}x images: peak {large['peak_kib'] / small['peak_kib']:.2f}x, "
          f"growth above imports {growth[1] / max(growth[0], 1):.2f}x "
          f"({(growth[1] - growth[0]) / (large['count'] - small['count']):.2f} KiB per extra image)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--workers", type=int, default=1)
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
