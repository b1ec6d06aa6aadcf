"""Data pipeline throughput: frame pairs/s of the full pipeline against raw PyAV decoding of the same frames.

    python benchmarks/data_pipeline.py [--rounds 5] [--samples 256] [--loader-steps 24] [--trainer-pairs-per-s X]

Quickstart data (sweeps/quickstart.yaml: 64 synthetic clips of 24 frames at 64x64, crop 40, batch 32), one
process, one torch thread. Per round, in alternation on the same sample positions:

* pipeline: `FramePairDataset[i]` (sampling + decode + two uint8 crops and their choices; the photometric
  augmentations run batched on the device, not here), clip cache warm (every clip
  was visited once before timing: the steady state after the first epoch);
* pipeline, cold cache: a fresh dataset's first epoch (every clip is decoded whole once, on first use);
* pipeline, no cache: the seek path that long videos always take (open + seek + decode per sample);
* raw PyAV decode: for each sample, open the clip and decode from the start until both of its frames are
  reached, converting them with `frame.to_ndarray(format="rgb24")` (PyAV defaults, the simplest way);
  and the same tuned the way the pipeline decodes (single-threaded decoder, one reused converter).

With --s3-prefix s3://bucket/prefix (credentials and endpoint from the standard AWS environment), the clips are
also uploaded there and the seek path is timed reading from S3 (fsspec, ranged reads), against raw PyAV decoding
of the same frames from the same S3 objects (whole object read, then decoded from the start).

Then the pipeline through `build_pair_loader` with num_workers 0, 1 and 2 (workers started and their
clip caches warmed before timing). The trainer's consumption rate (steps/s x batch on in-memory data) is printed by
benchmarks/trainer_overhead.py; pass it as --trainer-pairs-per-s to get the headroom column.
Medians over rounds; machine noise hits all arms alike because they alternate.

    python benchmarks/data_pipeline.py --real-resolution [--rounds 5] [--samples 40] [--clips 6]

Real resolution: generated 720p H.264 clips (30 fps, 10 s, a keyframe every 2 s, a scrolling noise texture:
harder to decode than most camera footage), then `prepare_manifest` with its defaults (256 px short side,
a keyframe every 0.5 s, x264 fastdecode). Crop 224 and the cluster spec's data settings. One process, one
torch thread, clip cache off (a real manifest is far larger than any cache). Rates are pairs per CPU-second of
the process: what a worker core delivers when it has the core to itself, which wall time on a shared machine
does not show (wall-clock rates are printed alongside). Arms alternate per round:

* worker, before prepare: `FramePairDataset[i]` on the 720p clips (decode + uint8 crops + choices);
* worker, after prepare: the same on the prepared clips; the per-core rate a loader worker reaches;
* worker with per-sample float augmentation (the old path, `PairSampler.sample`), before and after;
* decode only (`decode_frames_at` of the two frames) after prepare: the floor of a worker's cost.

Then per-view CPU cost of the photometric augmentations: per sample in float on the CPU (`augment_view`
minus its crop) against `augment_batch` on a batch of 256 views on the CPU (the device path run on the CPU).
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import av
import torch
from av.video.reformatter import VideoReformatter

from vito.config import DataConfig
from vito.data import FramePairDataset, build_pair_loader, ensure_synthetic_videos, read_manifest
from vito.data.manifest import VideoRecord
from vito.data.pairs import PairSampler
from vitolaunch.spec import load_spec

REPO = Path(__file__).resolve().parents[1]


def quickstart_data_config() -> DataConfig:
    base = load_spec(REPO / "sweeps" / "quickstart.yaml").base_config_dict()
    return DataConfig.model_validate(base["data"])


_TUNED_REFORMATTER = VideoReformatter()


def raw_decode_pair(uri: str, time_a: float, time_b: float, tuned: bool = False) -> None:
    """Open the clip and decode from the start until the frames shown at both times are in hand.

    tuned: single-threaded decoding and one reused single-threaded colour converter, instead of PyAV's
    defaults (a decoder thread pool per open, and a new converter with a thread pool per frame)."""
    with av.open(uri) as container:
        stream = container.streams.video[0]
        if tuned:
            stream.codec_context.thread_type = "NONE"
            stream.codec_context.thread_count = 1

        def to_rgb(frame: av.VideoFrame) -> None:
            if tuned:
                _TUNED_REFORMATTER.reformat(frame, format="rgb24", threads=1).to_ndarray()
            else:
                frame.to_ndarray(format="rgb24")

        start = stream.start_time or 0
        targets = sorted({start + math.floor(max(t, 0.0) / stream.time_base + 1e-3) for t in (time_a, time_b)})
        previous = None
        for frame in container.decode(stream):
            while targets and frame.pts > targets[0]:  # previous frame is the one shown at targets[0]
                to_rgb(previous or frame)
                targets.pop(0)
            if not targets:
                return
            previous = frame
        for _ in targets:  # times at or past the last frame
            to_rgb(previous)


def rate(fn: Callable[[int], object], positions: range) -> float:
    started = time.perf_counter()
    for position in positions:
        fn(position)
    return len(positions) / (time.perf_counter() - started)


def loader_pairs_per_s(records: list[VideoRecord], cfg: DataConfig, workers: int, steps: int) -> float:
    # Batches go to workers in turn: let each worker see a few epochs' worth of clips before timing.
    warmup = max(workers, 1) * (2 * math.ceil(len(records) / cfg.batch_size) + 2)
    loader = build_pair_loader(records, cfg.model_copy(update={"num_workers": workers}), 0, 0, 1, 0, warmup + steps)
    batches = iter(loader)
    for _ in range(warmup):  # worker start-up and first visits of clips are not the steady state
        next(batches)
    started = time.perf_counter()
    for _ in range(steps):
        next(batches)
    elapsed = time.perf_counter() - started
    del batches, loader
    return steps * cfg.batch_size / elapsed


def s3_rates(records: list[VideoRecord], cfg: DataConfig, prefix: str, rounds: int, samples: int) -> dict[str, float]:
    """Pairs/s of the seek path reading from S3, and of raw PyAV decoding of the same S3 objects."""
    import io

    import fsspec

    from vito.data.video import is_remote

    fs, root = fsspec.core.url_to_fs(prefix)
    remote = []
    for record in records:
        key = f"{root.rstrip('/')}/{Path(record.uri).name}"
        fs.put_file(record.uri, key)
        remote.append(VideoRecord(f"s3://{key}", record.duration_s, record.fps, record.num_frames, record.label))
    assert all(is_remote(r.uri) for r in remote)
    steps = (rounds + 1) * (samples // cfg.batch_size + 2) + 8
    seeking = FramePairDataset(remote, cfg, 0, 0, 1, 0, steps, clip_cache_bytes=0)
    timestamps = PairSampler(remote, cfg, 0, clip_cache_bytes=0)

    def raw(position: int) -> None:
        video, time_a, time_b = timestamps.sample_timestamps(position)
        data = fs.cat_file(remote[video].uri)
        raw_decode_pair(io.BytesIO(data), time_a, time_b)  # type: ignore[arg-type]

    arms: dict[str, list[float]] = {"s3_seek": [], "s3_raw": []}
    try:
        for round_index in range(rounds):
            positions = range(round_index * samples, (round_index + 1) * samples)
            arms["s3_seek"].append(rate(seeking.__getitem__, positions))
            arms["s3_raw"].append(rate(raw, positions))
    finally:
        fs.rm(root, recursive=True)
    return {name: statistics.median(values) for name, values in arms.items()}


# ---------------------------------------------------------------------------------------- real resolution


def write_noise_video(path: Path, width: int = 1280, height: int = 720, fps: int = 30, seconds: float = 10.0,
                      keyframe_s: float = 2.0, seed: int = 0) -> None:
    """H.264 of a scrolling 4x4-block noise texture, a keyframe every keyframe_s (the notes' test footage)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    texture = rng.integers(0, 256, (height // 4 + 64, width // 4 + 64, 3), dtype=np.uint8).repeat(4, 0).repeat(4, 1)
    gop = int(fps * keyframe_s)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.gop_size = gop
        stream.options = {"preset": "ultrafast", "crf": "23", "keyint_min": str(gop), "sc_threshold": "0"}
        for i in range(int(fps * seconds)):
            dy, dx = (i + seed) % 64, (2 * i) % 64
            image = np.ascontiguousarray(texture[dy : dy + height, dx : dx + width])
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())


def _spread(values: list[float]) -> str:
    return f"{statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f})"


def per_view_augment_ms(cfg: DataConfig, views: int, rounds: int) -> dict[str, list[float]]:
    """CPU ms per view: the old and new worker paths, and the photometric part per sample vs batched."""
    import numpy as np

    from vito.data.augment import augment_view, crop_uint8, draw_view_params
    from vito.data.batch_augment import augment_batch
    from vito.data.pairs import to_chw_float

    size = cfg.crop_size
    frames = [np.random.default_rng(k).integers(0, 256, (256, 456, 3), dtype=np.uint8) for k in range(8)]
    params = [draw_view_params(256, 456, cfg.augment, size, torch.Generator().manual_seed(k)) for k in range(views)]
    crops = torch.stack([crop_uint8(frames[k % 8], p, size) for k, p in enumerate(params)])
    rows = torch.stack([p.to_row() for p in params])
    floats = [c.float().div(255) for c in crops]
    # The reference draws its own choices: with crop_scale_min 1 on a square input of the crop size its crop
    # and resize are the identity, so it times the photometric work alone, as the batched arm does.
    square_cfg = cfg.augment.model_copy(update={"crop_scale_min": 1.0})
    out: dict[str, list[float]] = {k: [] for k in ("per_sample_float", "batched", "old_720p", "old_prepared",
                                                    "uint8_720p", "uint8_prepared")}
    sources = {"720p": np.random.default_rng(9).integers(0, 256, (720, 1280, 3), dtype=np.uint8),
               "prepared": frames[0]}
    few = max(8, views // 8)
    for _ in range(rounds):
        for name, image in sources.items():
            height, width = image.shape[:2]
            started = time.process_time()
            for k in range(few):  # as the old worker: the whole frame to float, then the view
                augment_view(to_chw_float(image), cfg.augment, size, torch.Generator().manual_seed(k))
            out[f"old_{name}"].append(1e3 * (time.process_time() - started) / few)
            drawn = [draw_view_params(height, width, cfg.augment, size, torch.Generator().manual_seed(k)) for k in range(few)]
            started = time.process_time()
            for p in drawn:
                crop_uint8(image, p, size)
            out[f"uint8_{name}"].append(1e3 * (time.process_time() - started) / few)
        started = time.process_time()
        for k, image in enumerate(floats):
            augment_view(image, square_cfg, size, torch.Generator().manual_seed(k))
        out["per_sample_float"].append(1e3 * (time.process_time() - started) / views)
        started = time.process_time()
        augment_batch(crops, rows, "cpu")
        out["batched"].append(1e3 * (time.process_time() - started) / views)
    return out


def _swept_options() -> dict:
    from vito.data.prepare import PrepareOptions

    return {
        "256 / 0.25 s / fastdecode": PrepareOptions(keyframe_interval_s=0.25),
        "256 / 1.0 s / fastdecode": PrepareOptions(keyframe_interval_s=1.0),
        "288 / 0.5 s / fastdecode": PrepareOptions(short_side=288),
        "256 / 0.5 s / default tune (CABAC, deblocking)": PrepareOptions(fast_decode=False),
    }


def real_resolution(args: argparse.Namespace) -> None:
    from vito.data.manifest import write_manifest
    from vito.data.prepare import PrepareOptions, prepare_manifest
    from vito.data.video import decode_frames_at, probe_video

    root = Path(args.data_root or tempfile.mkdtemp(prefix="vito-data-bench-720p-"))
    source = root / "720p"
    source.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    records = []
    for k in range(args.clips):
        path = source / f"clip{k}.mp4"
        if not path.exists():
            write_noise_video(path, seed=k)
        records.append(VideoRecord(str(path), *probe_video(str(path))))
    write_manifest(source / "manifest.jsonl", records)
    generated_s = time.perf_counter() - started
    options = PrepareOptions()
    started, cpu_started = time.perf_counter(), time.process_time()
    fresh = Path(tempfile.mkdtemp(prefix="prepared-", dir=root))  # timed from scratch, never resumed
    report = prepare_manifest(str(source / "manifest.jsonl"), str(fresh), options, workers=1)  # in this process
    prepare_s, prepare_cpu_s = time.perf_counter() - started, time.process_time() - cpu_started
    prepared = read_manifest(fresh / "manifest.jsonl")
    variants = {}
    if args.sweep_options:  # the evidence for prepare's defaults: other short sides and keyframe intervals
        for label, variant in _swept_options().items():
            folder = root / f"variant-{label.replace(' ', '_').replace('/', '_')}"
            prepare_manifest(str(source / "manifest.jsonl"), str(folder), variant, workers=1)
            variants[label] = (read_manifest(folder / "manifest.jsonl"), folder)

    spec = load_spec(REPO / "sweeps" / "temperature_ablation.yaml").base_config_dict()["data"]
    cfg = DataConfig.model_validate({**spec, "source": "bench", "num_workers": 0, "batch_size": 256})
    steps = (args.rounds + 1) * args.samples // cfg.batch_size + 2
    datasets = {name: FramePairDataset(recs, cfg, 0, 0, 1, 0, steps, clip_cache_bytes=0)
                for name, recs in (("before", records), ("after", prepared))}
    # Pairs per CPU-second of this (single-threaded) process: what one worker core delivers when it has the core
    # to itself, which wall time on a shared machine does not show. Wall-clock rates are kept alongside.
    arms: dict[str, list[float]] = {}
    wall: dict[str, list[float]] = {}

    def timed(name: str, fn: Callable[[int], object], positions: range) -> None:
        started, cpu_started = time.perf_counter(), time.process_time()
        for position in positions:
            fn(position)
        arms.setdefault(name, []).append(len(positions) / (time.process_time() - cpu_started))
        wall.setdefault(name, []).append(len(positions) / (time.perf_counter() - started))

    for round_index in range(args.rounds):
        positions = range(round_index * args.samples, (round_index + 1) * args.samples)
        few = range(positions.start, positions.start + max(4, args.samples // 8))  # 720p is slow: fewer samples
        timed("before", datasets["before"].__getitem__, few)
        timed("after", datasets["after"].__getitem__, positions)
        timed("before_float", datasets["before"].sampler.sample, few)
        timed("after_float", datasets["after"].sampler.sample, positions)
        sampler = datasets["after"].sampler

        def decode_only(position: int, sampler: PairSampler = sampler) -> None:
            video, time_a, time_b = sampler.sample_timestamps(position)
            decode_frames_at(prepared[video].uri, [time_a, time_b])

        timed("after_decode", decode_only, positions)
        for label, (recs, _) in variants.items():
            dataset = FramePairDataset(recs, cfg, 0, 0, 1, 0, steps, clip_cache_bytes=0)
            timed(f"variant {label}", dataset.__getitem__, positions)
    views = per_view_augment_ms(cfg, 256, args.rounds)

    hours = sum(r.duration_s for r in records) / 3600
    print(f"data: {args.clips} generated 720p H.264 clips (30 fps, 10 s, keyframe every 2 s, scrolling noise; "
          f"generated in {generated_s:.0f} s), crop {cfg.crop_size}, 1 process, 1 torch thread, clip cache off, "
          f"{args.rounds} rounds")
    print(f"prepare (defaults: short side {options.short_side} px, keyframe every {options.keyframe_interval_s} s, "
          f"fastdecode {options.fast_decode}), 1 worker: {prepare_cpu_s:.1f} CPU-s ({prepare_s:.1f} s wall) for "
          f"{hours * 3600:.0f} s of video ({hours * 3600 / prepare_cpu_s:.1f}x real time per core); "
          f"bytes {report.bytes_before / 2**20:.1f} MiB -> "
          f"{report.bytes_after / 2**20:.1f} MiB")
    base = statistics.median(arms["before_float"])
    print("\n| arm (one worker core) | pairs per CPU-second median (min-max) | CPU ms/pair | vs before (old worker path) "
          "| wall-clock pairs/s median (min-max) |")
    print("|---|---|---|---|---|")
    rows = [
        ("720p/2 s, per-sample float augmentation in the worker (before)", "before_float"),
        ("720p/2 s, uint8 crops (photometric on device)", "before"),
        ("prepared, per-sample float augmentation in the worker", "after_float"),
        ("prepared, uint8 crops (photometric on device): a loader worker now", "after"),
        ("prepared, decode of the two frames only (the floor)", "after_decode"),
    ]
    for label, key in rows:
        med = statistics.median(arms[key])
        print(f"| {label} | {_spread(arms[key])} | {1e3 / med:.1f} | {med / base:.1f}x | {_spread(wall[key])} |")
    print(f"\nafter prepare, worker pairs/s per core: {statistics.median(arms['after']):.1f} per CPU-second, "
          f"{statistics.median(wall['after']):.1f} wall-clock (aim: 50)")
    if variants:
        default = statistics.median(arms["after"])
        print("\n| prepare options (short side / keyframe interval / tune) | worker pairs per CPU-second (min-max) "
              "| vs defaults | MiB |\n|---|---|---|---|")
        print(f"| {options.short_side} / {options.keyframe_interval_s} s / fastdecode (defaults) | "
              f"{_spread(arms['after'])} | 1.00x | {report.bytes_after / 2**20:.1f} |")
        for label, (_, folder) in variants.items():
            values = arms[f"variant {label}"]
            size = sum(f.stat().st_size for f in (folder / "videos").rglob("*.mp4")) / 2**20
            print(f"| {label} | {_spread(values)} | {statistics.median(values) / default:.2f}x | {size:.1f} |")
    print("\n| one 224 px view | CPU ms/view median (min-max) |\n|---|---|")
    print("| old worker: whole frame to float, crop, resize, photometric (augment_view), 720p source | "
          f"{_spread(views['old_720p'])} |")
    print(f"| old worker: the same, prepared 456x256 source | {_spread(views['old_prepared'])} |")
    print(f"| new worker: uint8 crop + resize + flip (crop_uint8), 720p source | {_spread(views['uint8_720p'])} |")
    print(f"| new worker: the same, prepared 456x256 source | {_spread(views['uint8_prepared'])} |")
    print("| photometric only, per sample in float on the CPU (augment_view on the crop) | "
          f"{_spread(views['per_sample_float'])} |")
    print(f"| photometric only, batched: 256 views, CPU as the device (augment_batch) | {_spread(views['batched'])} |")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--real-resolution", action="store_true", help="720p clips before and after `data prepare`")
    parser.add_argument("--clips", type=int, default=6, help="generated 720p clips (real-resolution mode)")
    parser.add_argument("--sweep-options", action="store_true",
                        help="also time other prepare options (real-resolution mode)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--samples", type=int, default=256, help="pairs per arm per round")
    parser.add_argument("--loader-steps", type=int, default=24, help="timed batches per loader arm per round")
    parser.add_argument("--trainer-pairs-per-s", type=float, default=None, help="from trainer_overhead.py")
    parser.add_argument("--data-root", default=None, help="where the synthetic clips are generated (default: temp)")
    parser.add_argument("--s3-prefix", default=None, help="also time decoding from S3 under this s3:// prefix")
    parser.add_argument("--s3-samples", type=int, default=64, help="pairs per S3 arm per round")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.real_resolution:
        if args.samples == 256:
            args.samples = 48
        real_resolution(args)
        return

    cfg = quickstart_data_config()
    root = Path(args.data_root or tempfile.mkdtemp(prefix="vito-data-bench-"))
    records = read_manifest(ensure_synthetic_videos(root, cfg.synthetic, split="train"))
    num_videos = len(records)
    total_steps = (args.rounds + 2) * (args.samples // cfg.batch_size + 2) + 64
    warm = FramePairDataset(records, cfg, 0, 0, 1, 0, total_steps)
    uncached = FramePairDataset(records, cfg, 0, 0, 1, 0, total_steps, clip_cache_bytes=0)
    timestamps = PairSampler(records, cfg, 0, clip_cache_bytes=0)
    for index in range(num_videos):  # one epoch: every clip in the warm dataset's cache
        warm[index]
    assert warm.sampler.clip_cache is not None and len(warm.sampler.clip_cache) == num_videos

    def raw(position: int) -> None:
        video, time_a, time_b = timestamps.sample_timestamps(position)
        raw_decode_pair(records[video].uri, time_a, time_b)

    def raw_tuned(position: int) -> None:
        video, time_a, time_b = timestamps.sample_timestamps(position)
        raw_decode_pair(records[video].uri, time_a, time_b, tuned=True)

    def cold_epoch(_: int) -> float:
        fresh = FramePairDataset(records, cfg, 0, 0, 1, 0, total_steps)
        return rate(fresh.__getitem__, range(num_videos))

    arms: dict[str, list[float]] = {"pipeline": [], "cold": [], "uncached": [], "raw": [], "raw_tuned": []}
    for round_index in range(args.rounds):
        positions = range(num_videos + round_index * args.samples, num_videos + (round_index + 1) * args.samples)
        arms["pipeline"].append(rate(warm.__getitem__, positions))
        arms["raw"].append(rate(raw, positions))
        arms["raw_tuned"].append(rate(raw_tuned, positions))
        arms["uncached"].append(rate(uncached.__getitem__, positions))
        arms["cold"].append(cold_epoch(round_index))
    med = {name: statistics.median(values) for name, values in arms.items()}

    loader_rates: dict[int, list[float]] = {0: [], 1: [], 2: []}
    for _ in range(args.rounds):
        for workers in loader_rates:
            loader_rates[workers].append(loader_pairs_per_s(records, cfg, workers, args.loader_steps))
    loader_med = {workers: statistics.median(values) for workers, values in loader_rates.items()}

    size = cfg.synthetic.size
    print(f"data: quickstart ({num_videos} clips x {cfg.synthetic.num_frames} frames at {size}x{size}, "
          f"crop {cfg.crop_size}, batch {cfg.batch_size}), 1 torch thread, {args.rounds} rounds, "
          f"{args.samples} pairs per arm per round")
    print("\n| arm (one process) | pairs/s (median) | ms/pair | vs raw decode |\n|---|---|---|---|")
    rows = [
        ("FramePairDataset, clip cache warm (steady state)", "pipeline"),
        ("FramePairDataset, first epoch (cache cold)", "cold"),
        ("FramePairDataset, no clip cache (seek path)", "uncached"),
        ("raw PyAV decode of the same 2 frames (open + decode, defaults)", "raw"),
        ("raw PyAV decode, tuned (1 decode thread, reused 1-thread converter)", "raw_tuned"),
    ]
    for label, key in rows:
        print(f"| {label} | {med[key]:.0f} | {1e3 / med[key]:.2f} | {med[key] / med['raw']:.2f}x |")
    print(f"\npipeline / raw decode ratio: {med['pipeline'] / med['raw']:.2f} (warm cache), "
          f"{med['uncached'] / med['raw']:.2f} (seek path, no cache); against tuned raw decode: "
          f"{med['pipeline'] / med['raw_tuned']:.2f}, {med['uncached'] / med['raw_tuned']:.2f}")

    consumer = args.trainer_pairs_per_s
    header = "| loader | pairs/s (median) |" + (" vs trainer consumption |" if consumer else "")
    print("\n" + header + "\n|---|---|" + ("---|" if consumer else ""))
    for workers, value in loader_med.items():
        extra = f" {value / consumer:.1f}x |" if consumer else ""
        print(f"| build_pair_loader, num_workers={workers} | {value:.0f} |{extra}")
    if args.s3_prefix:
        s3 = s3_rates(records, cfg, args.s3_prefix, args.rounds, args.s3_samples)
        print("\n| arm (one process, S3) | pairs/s (median) | vs raw decode from S3 |\n|---|---|---|")
        print(f"| FramePairDataset, seek path reading S3 (no clip cache) | {s3['s3_seek']:.0f} | "
              f"{s3['s3_seek'] / s3['s3_raw']:.2f}x |")
        print(f"| raw PyAV decode of the same 2 frames, object read whole from S3 | {s3['s3_raw']:.0f} | 1.00x |")
    if consumer:
        print(f"\ntrainer consumption (given): {consumer:.0f} pairs/s")


if __name__ == "__main__":
    main()
