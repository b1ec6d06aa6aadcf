"""Loader settings sized from the allocation, and the config keys that carry them."""

from __future__ import annotations

import pytest
import torch

from vito.config import DataConfig, VitoConfig
from vito.data.loader_plan import apply_main_threads, cpus_per_rank, plan_loader


def test_cpus_per_rank_prefers_slurm_then_shares_the_node() -> None:
    assert cpus_per_rank({"SLURM_CPUS_PER_TASK": "12", "LOCAL_WORLD_SIZE": "8"}, available=128) == 12
    assert cpus_per_rank({"LOCAL_WORLD_SIZE": "8"}, available=128) == 16
    assert cpus_per_rank({"SLURM_NTASKS_PER_NODE": "4"}, available=10) == 2
    assert cpus_per_rank({"LOCAL_WORLD_SIZE": "4"}, available=2) == 1  # never 0
    assert cpus_per_rank({"SLURM_CPUS_PER_TASK": "junk"}, available=6) == 6


def test_auto_workers_leave_the_main_process_its_cpus() -> None:
    plan = plan_loader(DataConfig(num_workers="auto", main_process_cpus=2, prefetch_factor=4), "cuda", cpus=16)
    assert (plan.num_workers, plan.main_threads, plan.prefetch_factor) == (14, 2, 4)
    assert plan.pin_memory and plan.persistent_workers
    cpu = plan_loader(DataConfig(num_workers="auto"), "cpu", cpus=1)
    assert (cpu.num_workers, cpu.main_threads, cpu.prefetch_factor) == (0, 1, None)
    assert not cpu.pin_memory and not cpu.persistent_workers


def test_explicit_workers_are_kept_and_the_main_process_gets_the_rest() -> None:
    plan = plan_loader(DataConfig(num_workers=3), "cpu", cpus=8)
    assert (plan.num_workers, plan.main_threads, plan.pin_memory) == (3, 5, False)
    assert plan_loader(DataConfig(num_workers=12), "cpu", cpus=8).main_threads == 1


def test_main_threads_are_set_only_when_there_are_workers() -> None:
    before = torch.get_num_threads()
    try:
        apply_main_threads(plan_loader(DataConfig(num_workers=0), "cpu", cpus=7))
        assert torch.get_num_threads() == before
        apply_main_threads(plan_loader(DataConfig(num_workers=1), "cpu", cpus=3))
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_new_loader_keys_leave_existing_trial_keys_alone() -> None:
    plain = VitoConfig()
    assert "main_process_cpus" not in plain.to_dict()["data"] and "prefetch_factor" not in plain.to_dict()["data"]
    explicit_defaults = VitoConfig.model_validate({"data": {"main_process_cpus": 1, "prefetch_factor": 2}})
    assert explicit_defaults.fingerprint() == plain.fingerprint()
    tuned = VitoConfig.model_validate({"data": {"num_workers": "auto", "prefetch_factor": 4}})
    assert tuned.fingerprint() != plain.fingerprint()
    assert VitoConfig.model_validate(tuned.to_dict()) == tuned  # what a job receives rebuilds the same config
    with pytest.raises(ValueError, match="num_workers"):
        DataConfig(num_workers=-1)
    with pytest.raises(ValueError):
        DataConfig(num_workers="many")
