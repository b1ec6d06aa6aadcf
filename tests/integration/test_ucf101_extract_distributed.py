"""The UCF-101 protocol on real AVI clips: one process scores the fixture with a corrupt clip skipped and listed;
two gloo ranks (CPU processes) give exactly its clip features, counts, chosen lr and top-1, each shard computed
by one rank; a second job over the same cache computes nothing."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from tests.eval_images import toy_encoder
from vito.config import Ucf101Benchmark
from vito.eval.protocols.image_folder import Encoder, ExtractionSettings
from vito.eval.protocols.ucf101 import extract_clips, run_ucf101

pytestmark = pytest.mark.integration

WORLD = 2
FRAMES = 3
# 3 classes x 4 groups x 3 clips: split 1 trains on 27 clips, tests on 9. Shards of 4 clips (12 frames), batches
# of 2: train has 7 shards (the last of 3), so rank 0 computes 0 2 4 6 and rank 1 computes 1 3 5.
SHARD_FRAMES, BATCH_FRAMES = 12, 6
BENCH = Ucf101Benchmark(kind="ucf101", root="/set/below", frames_per_clip=FRAMES, resize=32, crop=28, linear_epochs=8,
                        linear_batch_size=8, linear_lr_grid=[0.1, 1.0], knn=True, knn_k=[3])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run(root: str, cache: str, workers: int) -> dict:
    """run_ucf101 and the raw extraction results, as this process sees them."""
    bench = BENCH.model_copy(update={"root": root})
    encoder = Encoder(toy_encoder(), "toy", torch.device("cpu"))
    settings = ExtractionSettings(cache, SHARD_FRAMES, BATCH_FRAMES, workers, {})
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    outcome = run_ucf101("ucf", bench, encoder, settings, seed=0, is_main=rank == 0)
    parts = {subset: extract_clips(bench, subset, encoder, settings, "ucf")[1] for subset in ("train", "test")}
    return {"outcome": None if outcome is None else (outcome.metrics, outcome.record, outcome.skipped),
            **{f"{subset}_{field}": getattr(part, field) for subset, part in parts.items()
               for field in ("features", "indices", "labels", "skipped", "reused_shards")}}


def _worker(rank: int, port: int, root: str, cache: str, out: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo")
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=WORLD)
    torch.save(_run(root, cache, workers=1 if rank == 0 else 0), Path(out) / f"rank{rank}.pt")
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


@pytest.mark.timeout(300)
def test_two_ranks_give_the_single_process_features_and_top1_with_the_corrupt_clip_listed(tmp_path: Path) -> None:
    from vito.eval.fixtures.ucf101 import write_ucf_fixture

    root = write_ucf_fixture(tmp_path / "UCF-101", clips_per_group=3, size=32, num_frames=8)
    corrupt = root / "Square" / "v_Square_g01_c02.avi"  # a test clip of split 1
    corrupt.write_bytes(corrupt.read_bytes()[:400])  # a download cut short
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the ranks: the same kernels, so the same bits
    try:
        alone = _run(str(root), str(tmp_path / "alone"), workers=0)
    finally:
        torch.set_num_threads(threads)

    metrics, record, skipped = alone["outcome"]
    assert metrics["eval/ucf/train_clips"] == 27 and metrics["eval/ucf/clips_scored"] == 8
    assert metrics["eval/ucf/skipped_clips"] == 1
    assert 0.0 <= metrics["eval/ucf/linear_top1"] <= 1.0 and "eval/ucf/knn3_top1" in metrics
    assert len(skipped) == 1 and skipped[0]["subset"] == "test" and skipped[0]["path"] == str(corrupt)
    assert skipped[0]["reason"].startswith(f"cannot decode {corrupt}")
    assert alone["test_features"].shape == (8, 8) and alone["train_features"].shape == (27, 8)
    assert (record["split"], record["frames_per_clip"], record["transform"]) == (1, FRAMES, "resize32-crop28-bilinear-antialias-draft")
    assert record["linear"]["linear_lr"] in (0.1, 1.0) and record["linear"]["linear_epochs"] == 8
    assert record["linear"]["lr_chosen_on"].startswith("train groups g0") and "held out whole" in record["linear"]["lr_chosen_on"]
    assert record["extraction"] == {"clips_per_shard": 4, "clips_per_batch": 2}

    cache = tmp_path / "shared"
    mp.start_processes(_worker, args=(_free_port(), str(root), str(cache), str(tmp_path)), nprocs=WORLD, start_method="spawn")
    ranks = [torch.load(tmp_path / f"rank{rank}.pt", weights_only=False) for rank in range(WORLD)]
    assert ranks[1]["outcome"] is None  # only the main rank scores
    two_metrics, two_record, two_skipped = ranks[0]["outcome"]
    assert two_metrics == metrics and two_skipped == skipped
    assert two_record["linear"] == record["linear"]  # the same lr grid scores, chosen lr, ...
    for result in ranks:
        for subset in ("train", "test"):
            for field in ("features", "indices", "labels"):
                assert torch.equal(result[f"{subset}_{field}"], alone[f"{subset}_{field}"]), (subset, field)
            assert result[f"{subset}_skipped"] == alone[f"{subset}_skipped"]
    # the second extract_clips call of each rank found every shard of its own committed: nothing recomputed
    assert ranks[0]["train_reused_shards"] == [0, 2, 4, 6] and ranks[1]["train_reused_shards"] == [1, 3, 5]
    assert ranks[0]["test_reused_shards"] == [0, 2] and ranks[1]["test_reused_shards"] == [1]
    markers = lambda folder: {p.relative_to(folder).as_posix(): p.read_text() for p in folder.rglob("shard-*.done")}  # noqa: E731
    assert markers(cache) == markers(tmp_path / "alone")  # a shard's bytes do not depend on the rank
