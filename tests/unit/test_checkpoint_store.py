"""The checkpoint store's contract on a local folder: markers last, verification, fallback, retention."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vito.checkpoint import COMMIT_MARKER, MARKER_CONFIG, CheckpointStore, CorruptCheckpoint, step_name


def _save(store: CheckpointStore, tmp_path: Path, step: int, commit: bool = True) -> None:
    local = tmp_path / f"local_{step}"
    local.mkdir()
    (local / "model.pt").write_bytes(f"model at {step}".encode() * 100)
    (local / "rank1" / "optim.pt").parent.mkdir()
    (local / "rank1" / "optim.pt").write_bytes(b"optimizer" * step)
    files = store.upload(step, local)
    if commit:
        store.commit(step, files, {"world_size": 2})


def test_only_committed_steps_are_visible_and_latest_follows_commits(tmp_path):
    store = CheckpointStore(str(tmp_path / "ckpt"))
    _save(store, tmp_path, 10)
    _save(store, tmp_path, 20, commit=False)  # a save that died before its marker
    assert store.committed_steps() == [10]
    assert store.latest_pointer() == 10
    restored = store.restore_newest(tmp_path / "restore")
    assert restored is not None and restored[0] == 10
    assert (tmp_path / "restore" / step_name(10) / "rank1" / "optim.pt").read_bytes() == b"optimizer" * 10


def test_corrupt_shard_fails_its_checksum_and_the_previous_step_is_used(tmp_path, caplog):
    store = CheckpointStore(str(tmp_path / "ckpt"))
    _save(store, tmp_path, 10)
    _save(store, tmp_path, 20)
    shard = tmp_path / "ckpt" / step_name(20) / "model.pt"
    shard.write_bytes(shard.read_bytes()[:-1] + b"X")  # same size, different bytes
    with pytest.raises(CorruptCheckpoint, match="checksum"):
        store.download(20, tmp_path / "direct")
    restored = store.restore_newest(tmp_path / "restore")
    assert restored is not None and restored[0] == 10
    assert "falling back" in caplog.text


def test_missing_file_and_garbled_marker_are_not_trusted(tmp_path):
    store = CheckpointStore(str(tmp_path / "ckpt"))
    _save(store, tmp_path, 10)
    _save(store, tmp_path, 20)
    _save(store, tmp_path, 30)
    (tmp_path / "ckpt" / step_name(30) / "rank1" / "optim.pt").unlink()
    (tmp_path / "ckpt" / step_name(20) / COMMIT_MARKER).write_text('{"step": 20, "fil')
    assert store.committed_steps() == [10, 30]
    restored = store.restore_newest(tmp_path / "restore")
    assert restored is not None and restored[0] == 10


def test_retention_keeps_the_newest_and_marked_steps_and_clears_dead_saves(tmp_path):
    store = CheckpointStore(str(tmp_path / "ckpt"))
    for step in (10, 20, 30, 40):
        _save(store, tmp_path, step)
    _save(store, tmp_path, 25, commit=False)  # debris of a failed save, older than the newest commit
    _save(store, tmp_path, 50, commit=False)  # possibly a save in progress: must survive
    removed = store.prune(keep_last=2, keep={10})
    assert removed == [20, 25]
    assert store.committed_steps() == [10, 30, 40]
    assert (tmp_path / "ckpt" / step_name(50)).exists()


def test_marker_lists_sizes_and_checksums(tmp_path):
    store = CheckpointStore(str(tmp_path / "ckpt"))
    _save(store, tmp_path, 5)
    marker = json.loads((tmp_path / "ckpt" / step_name(5) / COMMIT_MARKER).read_text())
    assert {f["path"] for f in marker["files"]} == {"model.pt", "rank1/optim.pt"}
    assert all(len(f["sha256"]) == 64 and f["size"] > 0 for f in marker["files"])
    assert marker["metadata"] == {"world_size": 2}


def test_empty_store_restores_nothing(tmp_path):
    assert CheckpointStore(str(tmp_path / "nothing")).restore_newest(tmp_path / "r") is None


def test_fetch_verified_fetches_one_file_checked_against_the_marker(tmp_path):
    store = CheckpointStore(str(tmp_path / "ckpt"))
    _save(store, tmp_path, 10)
    _save(store, tmp_path, 20, commit=False)
    fetched = store.fetch_verified(10, "rank1/optim.pt", tmp_path / "one")
    assert fetched == tmp_path / "one" / "rank1" / "optim.pt" and fetched.read_bytes() == b"optimizer" * 10
    assert not (tmp_path / "one" / "model.pt").exists(), "only the file asked for"
    with pytest.raises(CorruptCheckpoint, match="no COMMITTED marker"):
        store.fetch_verified(20, "model.pt", tmp_path / "two")
    with pytest.raises(CorruptCheckpoint, match="lists no rank1/nothing.pt"):
        store.fetch_verified(10, "rank1/nothing.pt", tmp_path / "two")
    shard = tmp_path / "ckpt" / step_name(10) / "model.pt"
    shard.write_bytes(shard.read_bytes() + b"!")  # a different size
    with pytest.raises(CorruptCheckpoint, match="model.pt fails its checksum"):
        store.fetch_verified(10, "model.pt", tmp_path / "two")
    shard.unlink()
    with pytest.raises(CorruptCheckpoint, match="model.pt is missing"):
        store.fetch_verified(10, "model.pt", tmp_path / "two")


def test_committed_config_comes_from_the_marker_alone(tmp_path):
    store = CheckpointStore(str(tmp_path / "ckpt"))
    config = {"model": {"width": 8}, "train": {"steps": 7}}
    local = tmp_path / "local"
    local.mkdir()
    (local / "model.pt").write_bytes(b"weights")
    store.commit(5, store.upload(5, local), {"world_size": 1, MARKER_CONFIG: config})
    _save(store, tmp_path, 10)  # committed with no config, as steps were before markers held it
    (tmp_path / "ckpt" / step_name(5) / "model.pt").unlink()  # the weights are not read
    assert store.committed_config(5) == config
    assert store.committed_config(10) is None
    with pytest.raises(CorruptCheckpoint, match="no COMMITTED marker"):
        store.committed_config(99)


def _deepspeed_like_step(store: CheckpointStore, tmp_path: Path, step: int, world_size: int) -> None:
    local = tmp_path / f"ds_{step}"
    local.mkdir()
    (local / "mp_rank_00_model_states.pt").write_bytes(b"model")
    for rank in range(world_size):
        (local / f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt").write_bytes(b"shard %d" % rank)
        (local / f"rng_rank{rank}.pt").write_bytes(b"rng %d" % rank)
    store.commit(step, store.upload(step, local), {"world_size": world_size})


class _Engine:
    def __init__(self, zero_stage: int):
        self.stage = zero_stage

    def zero_optimization_stage(self) -> int:
        return self.stage


def _manager(store, tmp_path, rank: int, world_size: int, zero_stage: int = 2):
    import torch

    from vito.checkpoint_manager import CheckpointManager
    from vito.distributed import DistInfo

    info = DistInfo(rank=rank, local_rank=rank, world_size=world_size, device=torch.device("cpu"))
    return CheckpointManager(store, _Engine(zero_stage), info, tmp_path / "scratch", keep_last=2, background=False)


def test_a_rank_fetches_only_the_files_it_loads(tmp_path):
    store = CheckpointStore(str(tmp_path / "ckpt"))
    _deepspeed_like_step(store, tmp_path, 8, world_size=4)
    manager = _manager(store, tmp_path, rank=2, world_size=4)
    assert manager.fetch_rank_files(8) is None
    fetched = sorted(p.name for p in (tmp_path / "scratch" / "rank_2" / step_name(8)).iterdir())
    assert fetched == ["mp_rank_00_model_states.pt", "rng_rank2.pt", "zero_pp_rank_2_mp_rank_00_optim_states.pt"]


def test_a_corrupt_file_of_this_rank_is_reported_not_raised(tmp_path):
    store = CheckpointStore(str(tmp_path / "ckpt"))
    _deepspeed_like_step(store, tmp_path, 8, world_size=2)
    (tmp_path / "ckpt" / step_name(8) / "zero_pp_rank_1_mp_rank_00_optim_states.pt").write_bytes(b"bitrot")
    assert _manager(store, tmp_path, rank=0, world_size=2).fetch_rank_files(8) is None  # not rank 0's file
    problem = _manager(store, tmp_path, rank=1, world_size=2).fetch_rank_files(8)
    assert problem.startswith("rank 1:") and "checksum" in problem


@pytest.mark.parametrize("zero_stage", [1, 2])
def test_resuming_zero_shards_on_another_world_size_is_refused_clearly(tmp_path, zero_stage):
    store = CheckpointStore(str(tmp_path / "ckpt"))
    _deepspeed_like_step(store, tmp_path, 8, world_size=2)
    with pytest.raises(ValueError, match=r"saved by 2 ranks with ZeRO stage .* this run has 4.*train.zero_stage: 0"):
        _manager(store, tmp_path, rank=0, world_size=4, zero_stage=zero_stage).fetch_rank_files(8)


def test_zero_0_resumes_on_any_world_size(tmp_path):
    store = CheckpointStore(str(tmp_path / "ckpt"))
    _deepspeed_like_step(store, tmp_path, 8, world_size=2)
    assert _manager(store, tmp_path, rank=3, world_size=4, zero_stage=0).fetch_rank_files(8) is None
