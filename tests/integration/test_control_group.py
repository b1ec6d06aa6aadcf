"""Long waits that are not training steps (a slow upload being committed, data being rendered) run on the
control group, whose timeout is long, not on the training group, whose short timeout fails dead ranks fast."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import torch.multiprocessing as mp

from tests.integration.gloo_ranks import free_loopback_port


def _worker(rank: int, port: int, out: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), VITO_DIST_TIMEOUT_S="3", GLOO_SOCKET_IFNAME="lo")
    import torch

    from vito.distributed import control_barrier, init_distributed

    info = init_distributed()
    if rank == 0:
        time.sleep(6)  # rank 0 "commits a slow upload" for twice the training group's timeout
    started = time.monotonic()
    control_barrier(info)
    waited = time.monotonic() - started
    outcome = "ok"
    if rank == 0:
        time.sleep(6)
    try:
        torch.distributed.barrier()  # the same wait on the training group times out
    except RuntimeError as problem:
        outcome = f"training group: {type(problem).__name__}"
    Path(out, f"rank{rank}.json").write_text(json.dumps({"waited": waited, "training": outcome}))


@pytest.mark.timeout(180)
def test_a_wait_longer_than_the_training_timeout_survives_on_the_control_group(tmp_path):
    try:
        mp.start_processes(_worker, args=(free_loopback_port(), str(tmp_path)), nprocs=2, start_method="spawn")
    except mp.ProcessRaisedException:
        pass  # a rank that timed out in the training group may raise on exit: the files say what happened
    rank1 = json.loads((tmp_path / "rank1.json").read_text())
    assert rank1["waited"] > 3  # waited past the training group's timeout, and the control barrier held
    assert rank1["training"].startswith("training group:"), rank1  # the contrast: there it would have failed
