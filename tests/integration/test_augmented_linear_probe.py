"""The augmented linear protocol as a job: SIGKILLed after a committed epoch and started again, it resumes from
that epoch (not from 0) and ends with the weights of an uninterrupted run, bitwise (one CPU process); on two gloo
ranks it counts val the same and trains the same layer up to the float reduction order. A kill mid-epoch resumes
at the step committed last. Real processes, a real JPEG folder, the toy encoder: a few seconds each."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from tests.integration.augmented_probe_job import BATCH, EPOCHS, run
from tests.integration.gloo_ranks import free_loopback_port

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
CLASSES, TRAIN_PER_CLASS, VAL_PER_CLASS = 4, 10, 5
TRAIN = CLASSES * TRAIN_PER_CLASS - 1  # one train JPEG truncated: the extraction skips it, so does training
PER_EPOCH = math.ceil(TRAIN / BATCH)  # 5 steps


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from vito.eval.fixtures.images import ImageFolderFixture, wnid, write_image_folder

    root = tmp_path_factory.mktemp("augmented") / "imagenet"
    write_image_folder(root, ImageFolderFixture(CLASSES, TRAIN_PER_CLASS, VAL_PER_CLASS, size=32, image_size=40))
    bad = sorted((root / "train" / wnid(1)).glob("*.JPEG"))[2]
    bad.write_bytes(bad.read_bytes()[:200])
    return root


def _job(images: Path, cache: Path, out: Path, kill_after_step: int | None = None,
         checkpoint_steps: int = 0) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("VITO_AUGMENTED_KILL_AFTER_STEP", None)
    if kill_after_step is not None:
        env["VITO_AUGMENTED_KILL_AFTER_STEP"] = str(kill_after_step)
    return subprocess.run([sys.executable, "-m", "tests.integration.augmented_probe_job", str(images), str(cache),
                           str(out), str(checkpoint_steps)], cwd=REPO, env=env, capture_output=True, text=True, timeout=240)


@pytest.fixture(scope="module")
def uninterrupted(images: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """In this process (torch is imported already): one thread, as in the jobs, so the same kernels and bits."""
    folder = tmp_path_factory.mktemp("uninterrupted")
    threads = torch.get_num_threads()
    try:
        run(0, 1, 0, str(images), str(folder / "cache"), str(folder / "out.pt"))
    finally:
        torch.set_num_threads(threads)
    return torch.load(folder / "out.pt", weights_only=False)


@pytest.mark.timeout(300)
def test_a_run_killed_after_epoch_2_resumes_there_and_ends_with_the_same_weights(images, uninterrupted,
                                                                                    tmp_path: Path) -> None:
    record = uninterrupted["record"]["linear_augmented"]
    assert record["resumed_from_step"] == 0 and record["steps"] == EPOCHS * PER_EPOCH
    assert record["train_images"] == TRAIN and record["val_images"] == CLASSES * VAL_PER_CLASS
    assert 0 <= uninterrupted["metrics"]["eval/imagenet/linear_augmented_top1"] <= 1

    killed = _job(images, tmp_path / "cache", tmp_path / "out.pt", kill_after_step=2 * PER_EPOCH)
    assert killed.returncode == -9, killed.stderr[-3000:]  # SIGKILL: no cleanup, as a preemption
    assert "killing this process after step 10's checkpoint" in killed.stderr
    assert not (tmp_path / "out.pt").exists()
    (probe_root,) = (tmp_path / "cache" / "augmented_linear").iterdir()
    assert (probe_root / "latest").read_text().count('"step": 10') == 1

    resumed = _job(images, tmp_path / "cache", tmp_path / "out.pt")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"at step {2 * PER_EPOCH} of {EPOCHS * PER_EPOCH} (2 epochs and 0 steps done)" in resumed.stderr
    assert "shards computed here []" in resumed.stderr  # the features came from the cache of the first attempt
    after = torch.load(tmp_path / "out.pt", weights_only=False)
    assert after["record"]["linear_augmented"]["resumed_from_step"] == 2 * PER_EPOCH
    assert after["record"]["linear_augmented"]["trained_steps_this_run"] == 2 * PER_EPOCH
    assert torch.equal(after["readout"]["weight"], uninterrupted["readout"]["weight"])  # bitwise
    assert torch.equal(after["readout"]["bias"], uninterrupted["readout"]["bias"])
    assert after["metrics"] == uninterrupted["metrics"]


@pytest.mark.timeout(300)
def test_a_run_killed_mid_epoch_resumes_at_its_last_committed_step_bitwise(images, uninterrupted,
                                                                          tmp_path: Path) -> None:
    # checkpoint_steps 3: commits at steps 3, 5 (epoch 1's end), 6, 9, 10, ...; killed after step 6's
    killed = _job(images, tmp_path / "cache", tmp_path / "out.pt", kill_after_step=6, checkpoint_steps=3)
    assert killed.returncode == -9, killed.stderr[-3000:]
    resumed = _job(images, tmp_path / "cache", tmp_path / "out.pt", checkpoint_steps=3)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"at step 6 of {EPOCHS * PER_EPOCH} (1 epochs and 1 steps done)" in resumed.stderr
    after = torch.load(tmp_path / "out.pt", weights_only=False)
    assert after["record"]["linear_augmented"]["resumed_from_step"] == 6
    # the checkpoint frequency is not a hyperparameter: the same layer as the run that committed per epoch
    assert torch.equal(after["readout"]["weight"], uninterrupted["readout"]["weight"])


@pytest.mark.timeout(300)
def test_two_gloo_ranks_count_val_once_and_train_the_one_rank_layer(images, uninterrupted, tmp_path: Path) -> None:
    mp.start_processes(run, args=(2, free_loopback_port(), str(images), str(tmp_path / "cache"),
                                  str(tmp_path / "out.pt")), nprocs=2, start_method="spawn")
    two = torch.load(tmp_path / "out.pt", weights_only=False)
    record = two["record"]["linear_augmented"]
    assert record["world_size"] == 2 and record["val_images"] == CLASSES * VAL_PER_CLASS
    assert record["train_images"] == TRAIN and record["steps"] == EPOCHS * PER_EPOCH
    top1 = two["metrics"]["eval/imagenet/linear_augmented_top1"]
    assert math.isfinite(top1) and 0 <= top1 <= 1
    # Each rank its slice of every global batch, gradients summed: one rank's layer up to the reduction order
    # (not bitwise: the sum of two partial sums rounds differently from one sum).
    assert torch.allclose(two["readout"]["weight"], uninterrupted["readout"]["weight"], rtol=1e-4, atol=1e-7)
