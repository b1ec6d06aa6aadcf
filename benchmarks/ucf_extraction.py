"""UCF-101 clip extraction, measured on the CPU (one thread: the figures are per core).

    python benchmarks/ucf_extraction.py [--rounds 3] [--native-clips 8]

1. The fixture (`vitolaunch data fixtures`' ucf101: 48 clips, 64 px, 16 frames) through `extract_clips` with the
   quickstart's network (resnet18, width 8) and the quickstart entry's settings (4 frames a clip, resize 44,
   crop 40): clips/s of the whole extraction, decode to committed shard, on a fresh cache each round.
2. UCF-101's own clip size (320x240, 25 fps, 7 s: 175 frames, MPEG-4 Part 2 in AVI as its XviD files): clips/s
   of `UcfClipDataset` alone (probe, seek and decode 8 frames, resize 256, crop 224), the CPU side one loader
   worker delivers to a GPU rank; and the frames/s that makes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _fixture_rounds(rounds: int) -> list[float]:
    import torch
    import yaml

    from vito.config import VitoConfig
    from vito.eval.fixtures.ucf101 import write_ucf_fixture
    from vito.eval.protocols.image_folder import ExtractionSettings
    from vito.eval.protocols.ucf101 import extract_clips
    from vito.eval.suite import model_encoder
    from vito.model import VitoModel

    quickstart = yaml.safe_load((REPO / "sweeps/quickstart.yaml").read_text())["base"]
    evaluation = yaml.safe_load((REPO / "sweeps/quickstart_eval.yaml").read_text())["base"]["eval"]
    folder = Path(tempfile.mkdtemp())
    root = write_ucf_fixture(folder / "ucf101", num_classes=4, clips_per_group=3, size=64, num_frames=16)
    entry = {**evaluation["benchmarks"]["ucf101"], "root": str(root)}
    cfg = VitoConfig.model_validate({**quickstart, "eval": {"benchmarks": {"ucf101": entry}}})
    bench = cfg.eval.benchmarks["ucf101"]
    encoder = model_encoder(VitoModel(cfg.model, cfg.loss), "bench", torch.device("cpu"))
    rates = []
    for round_ in range(rounds):
        settings = ExtractionSettings(str(folder / f"cache{round_}"), evaluation["extract_shard_size"],
                                      evaluation["extract_batch_size"], 0, {})
        started = time.perf_counter()
        clips = sum(extract_clips(bench, subset, encoder, settings, "ucf101")[1].num_samples for subset in ("train", "test"))
        rates.append(clips / (time.perf_counter() - started))
    return rates


def _native_clips(folder: Path, count: int) -> Path:
    """`count` clips of 320x240, 25 fps, 175 frames: a moving textured scene, in UCF-101's layout."""
    from vito.eval.fixtures.ucf101 import write_avi

    rng = np.random.default_rng(0)
    root = folder / "UCF-101"
    (root / "Native").mkdir(parents=True)
    (root / "ucfTrainTestlist").mkdir()
    names = []
    for i in range(count):
        scene = np.kron(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8), np.ones((8, 8, 1), dtype=np.uint8))
        frames = np.stack([np.roll(scene, (t, 2 * t), axis=(0, 1))[:240, :320] for t in range(175)])
        name = f"v_Native_g{i + 1:02d}_c01.avi"
        write_avi(root / "Native" / name, frames, 25)
        names.append(f"Native/{name}")
    (root / "ucfTrainTestlist/classInd.txt").write_text("1 Native\n")
    (root / "ucfTrainTestlist/trainlist01.txt").write_text("".join(f"{n} 1\n" for n in names))
    (root / "ucfTrainTestlist/testlist01.txt").write_text("".join(f"{n}\n" for n in names))
    return root


def _native_rounds(rounds: int, count: int) -> list[float]:
    from vito.eval.datasets.image_folder import ImageTransform
    from vito.eval.datasets.ucf101 import UcfClipDataset, read_ucf101

    root = _native_clips(Path(tempfile.mkdtemp()), count)
    dataset = UcfClipDataset(read_ucf101(str(root), 1, "train"), 8, ImageTransform(resize=256, crop=224))
    rates = []
    for _ in range(rounds):
        started = time.perf_counter()
        for i in range(len(dataset)):
            _, clip, reason = dataset[i]
            assert reason is None and tuple(clip.shape) == (8, 3, 224, 224), reason
        rates.append(len(dataset) / (time.perf_counter() - started))
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--native-clips", type=int, default=8)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    fixture = _fixture_rounds(args.rounds)
    native = _native_rounds(args.rounds, args.native_clips)
    print(json.dumps({
        "fixture_extraction_clips_per_s": {"median": round(statistics.median(fixture), 1), "rounds": [round(r, 1) for r in fixture]},
        "native_decode_clips_per_s": {"median": round(statistics.median(native), 2), "rounds": [round(r, 2) for r in native],
                                      "frames_per_s": round(8 * statistics.median(native), 1)},
    }, indent=1))


if __name__ == "__main__":
    main()
