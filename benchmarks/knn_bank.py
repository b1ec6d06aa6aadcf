"""Weighted kNN on a cached fp16 bank: wall time and peak memory per query chunk size.

    python benchmarks/knn_bank.py [--bank 131072] [--queries 10000] [--dim 2048] [--chunks default,256] [--threads 2]

A random fp16 bank (rows drawn block by block, so building it never holds an fp32 copy) with random labels over
1000 classes, random fp32 queries, DINO's k = 10, 20, 100, 200 and T = 0.07. Each chunk size runs in its own
subprocess (a fresh process: the peak of one run cannot hide the next), which builds the data, then resets the
kernel's peak-RSS mark (`echo 5 > /proc/self/clear_refs`, Linux) and reads VmHWM after `knn_evaluate`:
peak RSS delta = VmHWM after - RSS before, i.e. what the evaluation added on top of the bank and queries.
tracemalloc does not see torch's allocations, hence the kernel's count. Where clear_refs is not writable, a
psutil thread sampling RSS every 5 ms gives the peak instead (printed as the method).

One run (2 cores shared with other jobs, load average ~4.3; about 3.3 minutes with the data building):

      chunk bank block  seconds  queries/s  peak RSS delta MiB  method
       4096      16384     47.5        211                 599  VmHWM  (default)
        512      32768     76.9        130                 454  VmHWM

512 is the chunk a "whole-bank similarity row block <= 256 MB" rule would pick for this bank. At ~115 GFLOP/s,
ImageNet-1k (50k queries x 1.28M bank, 50x the work) would take ~40 minutes on these two cores.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

MIB = 2**20


def _rss_bytes() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def _vm_hwm_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise OSError("no VmHWM")


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def worker(args: argparse.Namespace) -> dict:
    import torch

    from vito.eval.scoring.knn import knn_evaluate

    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(0)
    bank = torch.empty(args.bank, args.dim, dtype=torch.float16)
    for start in range(0, args.bank, 8192):
        rows = min(8192, args.bank - start)
        bank[start:start + rows] = torch.randn(rows, args.dim, generator=generator).half()
    bank_labels = torch.randint(0, 1000, (args.bank,), generator=generator)
    queries = torch.randn(args.queries, args.dim, generator=generator)
    query_labels = torch.randint(0, 1000, (args.queries,), generator=generator)

    before = _rss_bytes()
    method = "VmHWM" if _reset_peak() else "psutil sampling"
    peak = [before]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _rss_bytes())
            time.sleep(0.005)

    sampler = None
    if method != "VmHWM":
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
    chunk = None if args.chunk == "default" else int(args.chunk)
    started = time.perf_counter()
    result = knn_evaluate(bank, bank_labels, queries, query_labels, 1000, chunk_size=chunk)
    elapsed = time.perf_counter() - started
    if sampler is not None:
        stop.set()
        sampler.join()
    top = _vm_hwm_bytes() if method == "VmHWM" else peak[0]
    return dict(
        chunk=result.chunk_size, bank_block=result.bank_block_size, seconds=elapsed,
        queries_per_s=args.queries / elapsed, peak_delta_mib=(top - before) / MIB, method=method,
        data_mib=(bank.numel() * 2 + queries.numel() * 4) / MIB, top1_k20=result.top1[20],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bank", type=int, default=131072)
    parser.add_argument("--queries", type=int, default=10000)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--chunks", default="default,256", help="comma-separated query chunk sizes ('default' = knn's own)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--chunk", help=argparse.SUPPRESS)  # worker mode
    args = parser.parse_args()
    if args.chunk is not None:
        print(json.dumps(worker(args)))
        return

    print(f"bank {args.bank} x {args.dim} fp16 ({args.bank * args.dim * 2 / MIB:.0f} MiB), {args.queries} fp32 queries, "
          f"1000 classes, k 10/20/100/200, T 0.07, {args.threads} torch threads, one subprocess per chunk size")
    print(f"{'chunk':>7} {'bank block':>10} {'seconds':>8} {'queries/s':>10} {'peak RSS delta MiB':>19}  method")
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    for chunk in args.chunks.split(","):
        command = [sys.executable, __file__, "--bank", str(args.bank), "--queries", str(args.queries), "--dim", str(args.dim),
                   "--threads", str(args.threads), "--chunk", chunk]
        row = json.loads(subprocess.run(command, check=True, capture_output=True, text=True, env=env).stdout.strip().splitlines()[-1])
        print(f"{row['chunk']:>7} {row['bank_block']:>10} {row['seconds']:>8.1f} {row['queries_per_s']:>10.0f} "
              f"{row['peak_delta_mib']:>19.0f}  {row['method']}" + ("  (default)" if chunk == "default" else ""))


if __name__ == "__main__":
    main()
