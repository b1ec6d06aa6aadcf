"""DAVIS label propagation on two real gloo ranks (CPU processes): each rank propagates a disjoint set of
sequences, and the committed masks (byte for byte) and the scores equal those of one process."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from tests.integration.gloo_ranks import free_loopback_port

pytestmark = pytest.mark.integration

WORLD = 2


def _run(root: str, cache: str, out: Path, rank: int) -> None:
    from tests.unit.tiny_model import tiny_model_cfg
    from vito.config import DavisBenchmark, LossConfig
    from vito.eval.protocols.davis import run_davis
    from vito.eval.protocols.image_folder import ExtractionSettings
    from vito.eval.suite import model_encoder
    from vito.model import VitoModel

    torch.manual_seed(0)  # the same network in every process
    model = VitoModel(tiny_model_cfg(), LossConfig())
    encoder = model_encoder(model, "tiny-seed0", torch.device("cpu"))
    bench = DavisBenchmark(kind="davis", root=root, short_side=128)
    outcome = run_davis("davis", bench, encoder, ExtractionSettings(cache, 64, 8, 0, {}), is_main=rank == 0)
    torch.save(None if outcome is None else {"metrics": outcome.metrics, "record": outcome.record,
                                             "tables": outcome.tables}, out / f"rank{rank}.pt")


def _worker(rank: int, port: int, root: str, cache: str, out: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo")
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=WORLD)
    _run(root, cache, Path(out), rank)
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


def _masks(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*.png"))}


@pytest.mark.timeout(300)
def test_two_ranks_propagate_disjoint_sequences_and_give_the_single_process_masks_and_scores(tmp_path: Path) -> None:
    from vito.eval.fixtures.davis import write_davis_fixture
    from vito.eval.protocols.davis import assign_sequences

    root = write_davis_fixture(tmp_path / "davis", widths=(96, 128, 96, 128), num_frames=5)
    (tmp_path / "alone").mkdir()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the ranks: the same kernels, so the same bits
    try:
        _run(str(root), str(tmp_path / "cache-alone"), tmp_path / "alone", 0)
    finally:
        torch.set_num_threads(threads)
    alone = torch.load(tmp_path / "alone" / "rank0.pt")

    mp.start_processes(_worker, args=(free_loopback_port(), str(root), str(tmp_path / "cache-shared"), str(tmp_path)),
                       nprocs=WORLD, start_method="spawn")
    main, other = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert other is None  # only the main rank scores
    names = [f"synth{i:02d}" for i in range(4)]
    by_rank = main["record"]["sequences"]["by_rank"]
    assert by_rank == [sorted(part) for part in assign_sequences([(n, 5) for n in names], WORLD)]
    assert set(by_rank[0]).isdisjoint(by_rank[1]) and sorted(by_rank[0] + by_rank[1]) == names
    assert main["record"]["sequences"]["computed"] == names and main["record"]["sequences"]["reused"] == []

    assert main["metrics"] == alone["metrics"] and main["tables"] == alone["tables"]
    masks_alone, masks_shared = _masks(Path(alone["record"]["masks"])), _masks(Path(main["record"]["masks"]))
    assert len(masks_alone) == 4 * 5 and masks_shared == masks_alone
