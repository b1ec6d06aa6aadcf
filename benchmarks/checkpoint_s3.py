"""Checkpoints to S3 (the local SeaweedFS of scripts/services-up.sh), measured side by side.

    source /var/lib/vitolaunch-services/env.sh && python benchmarks/checkpoint_s3.py [--mb 256] [--rounds 3]

1. Throughput: CheckpointStore.upload + per-rank marker + COMMITTED (sha256 of every file included) against a
   raw s3fs put of the same bytes.
2. Training stall per checkpoint: the time `save()` blocks the training loop with the background upload,
   against a synchronous save + upload + commit of the same checkpoint (a real DeepSpeed engine).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))


def _s3fs():
    import s3fs

    return s3fs.S3FileSystem(skip_instance_cache=True)


def throughput(root: str, mb: int, rounds: int) -> None:
    from vito.checkpoint import CheckpointStore

    work = Path(tempfile.mkdtemp(prefix="ckpt-bench-"))
    files = {"mp_rank_00_model_states.pt": mb // 4, "zero_pp_rank_0_optim_states.pt": mb // 2, "rng_rank0.pt": 1}
    files["zero_pp_rank_1_optim_states.pt"] = mb - sum(files.values())
    for name, size in files.items():
        (work / name).write_bytes(os.urandom(size << 20))
    fs = _s3fs()
    raw, ours = [], []
    for round_index in range(rounds):
        prefix = f"{root}/raw-{round_index}"
        started = time.perf_counter()
        for name in files:
            fs.put_file(str(work / name), f"{prefix}/{name}")
        raw.append(time.perf_counter() - started)

        store = CheckpointStore(f"{root}/store-{round_index}")
        started = time.perf_counter()
        written = store.upload(100, work)
        store.mark_rank_uploaded(100, 0, written)
        store.commit(100, written)
        ours.append(time.perf_counter() - started)
    raw_s, ours_s = statistics.median(raw), statistics.median(ours)
    print(f"### Checkpoint upload to S3 ({mb} MB in {len(files)} files, median of {rounds})\n")
    print("| arm | seconds | MB/s |\n|---|---|---|")
    print(f"| raw s3fs put_file | {raw_s:.2f} | {mb / raw_s:.0f} |")
    print(f"| CheckpointStore upload + marker + commit (with sha256) | {ours_s:.2f} | {mb / ours_s:.0f} |")
    print(f"\nthroughput ratio (ours / raw): {raw_s / ours_s:.2f}\n")


def stall(root: str, rounds: int) -> None:
    import torch
    from trainer_overhead import quickstart_config

    from vito.train import RunContext, Trainer

    cfg = quickstart_config(steps=10).to_dict()
    cfg["model"].update(width=32, pool_hidden=1024, proj_hidden=1024, pred_hidden=1024)  # a checkpoint worth timing
    from vito.config import VitoConfig

    cfg = VitoConfig.model_validate(cfg)
    results = {}
    size_mb = 0.0
    for background in (False, True):
        cfg.checkpoint.background_upload = background
        work = tempfile.mkdtemp(prefix="stall-")
        ctx = RunContext(checkpoint_uri=f"{root}/stall-{background}", data_root=f"{work}/data",
                         scratch_dir=f"{work}/scratch")
        trainer = Trainer(cfg, ctx)
        stalls = []
        for index in range(rounds + 1):
            started = time.perf_counter()
            trainer.checkpoints.save(index + 1, {"step": index + 1})
            stalls.append(time.perf_counter() - started)
            trainer.checkpoints.wait()  # the steps between two saves, here spent idle
        results[background] = statistics.median(stalls[1:])  # the first save warms up
        marker = trainer.checkpoints.store.marker(rounds + 1)
        size_mb = sum(f["size"] for f in marker["files"]) / 2**20
        del trainer
        torch.distributed.barrier()
    print(f"### Training stall per checkpoint ({size_mb:.0f} MB DeepSpeed checkpoint to S3, median of {rounds})\n")
    print("| save | stall s |\n|---|---|")
    print(f"| synchronous (save + upload + commit) | {results[False]:.3f} |")
    print(f"| background upload (local write only) | {results[True]:.3f} |")
    print(f"\nstall ratio (background / synchronous): {results[True] / results[False]:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--bucket", default=os.environ.get("VITOLAUNCH_TEST_S3_ROOT", "s3://vitolaunch"))
    args = parser.parse_args()
    root = f"{args.bucket}/bench-{uuid.uuid4().hex[:8]}"
    try:
        throughput(root, args.mb, args.rounds)
        stall(root, args.rounds)
    finally:
        _s3fs().rm(root.removeprefix("s3://"), recursive=True)


if __name__ == "__main__":
    main()
