"""The augmented linear protocol's parts: the config keys (absent from the dump at their defaults), the epoch-seeded
order and each rank's share of it, the cosine schedule, the per-sample seeded RandomResizedCrop + flip, and the
probe's checkpoints (round trip, fallback past a corrupt newest step, retention)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import ValidationError

from vito.config import ImageFolderBenchmark, VitoConfig
from vito.eval.datasets.augmented import AugmentedImageDataset, AugmentedTransform, crop_box, sample_generator
from vito.eval.datasets.image_folder import ImageTransform, _to_tensor, read_image_folder
from vito.eval.scoring.augmented_linear import (
    PROBE_FILE,
    ProbeCheckpoints,
    cosine_lr,
    epoch_order,
    rank_batches,
    steps_per_epoch,
)

IMAGENET = {"root": "/data/imagenet"}
DEFAULTS = {"linear_augmented": False, "augmented_epochs": 100, "augmented_lr": 0.1, "augmented_batch_size": 1024,
            "augmented_crop_scale": [0.08, 1.0], "augmented_standardize": True, "augmented_checkpoint_steps": 0}


def _cfg(**bench) -> VitoConfig:
    return VitoConfig.model_validate({"eval": {"benchmarks": {"imagenet": {**IMAGENET, **bench}}}})


def test_the_new_keys_leave_existing_trial_keys_alone() -> None:
    assert _cfg().fingerprint() == "624c76bb861b"  # the pin of test_robust_wiring: before the augmented protocol
    assert _cfg(**DEFAULTS).fingerprint() == "624c76bb861b"  # written out at their defaults: the same trial
    dumped = _cfg().to_dict()["eval"]["benchmarks"]["imagenet"]
    assert not set(DEFAULTS) & set(dumped)
    on = _cfg(linear_augmented=True, augmented_crop_scale=[0.2, 1.0])
    assert on.fingerprint() != _cfg().fingerprint()
    assert on.to_dict()["eval"]["benchmarks"]["imagenet"]["augmented_crop_scale"] == [0.2, 1.0]
    assert VitoConfig.model_validate(on.to_dict()).fingerprint() == on.fingerprint()  # round trip


@pytest.mark.parametrize("scale", [[0.0, 1.0], [0.5, 0.2], [0.1, 1.5]])
def test_a_bad_crop_scale_is_refused_naming_the_key(scale) -> None:
    with pytest.raises(ValidationError, match="augmented_crop_scale must be"):
        ImageFolderBenchmark(root="/d", augmented_crop_scale=scale)


def test_the_epoch_order_is_seeded_by_seed_and_epoch_alone() -> None:
    first = epoch_order(37, seed=3, epoch=5)
    assert sorted(first.tolist()) == list(range(37))
    epoch_order(37, seed=3, epoch=0)  # what ran before changes nothing: no running generator
    assert torch.equal(epoch_order(37, seed=3, epoch=5), first)
    assert not torch.equal(epoch_order(37, seed=3, epoch=6), first)
    assert not torch.equal(epoch_order(37, seed=4, epoch=5), first)


@pytest.mark.parametrize("world", [1, 2, 3, 8])
def test_the_ranks_share_each_global_batch_without_padding(world: int) -> None:
    n, batch = 37, 8  # 5 steps, the last of 5 samples; with 8 ranks some slices are empty
    order = epoch_order(n, 0, 2)
    shares = [rank_batches(order, batch, rank, world) for rank in range(world)]
    assert all(len(share) == steps_per_epoch(n, batch) == 5 for share in shares)
    for step in range(5):  # global batch `step` is exactly the union of the ranks' slices, in order
        assert torch.equal(torch.cat([share[step] for share in shares]), order[step * batch:(step + 1) * batch])
    seen = torch.cat([b for share in shares for b in share])
    assert sorted(seen.tolist()) == list(range(n))  # every sample once per epoch: no DistributedSampler padding
    resumed = rank_batches(order, batch, world - 1, world, first_step=3)  # a run resumed mid-epoch
    assert [b.tolist() for b in resumed] == [b.tolist() for b in shares[world - 1][3:]]


def test_the_lr_follows_a_cosine_from_the_scaled_peak_to_zero() -> None:
    peak = 0.1 * 1024 / 256
    total = 100
    lrs = [cosine_lr(peak, step, total) for step in range(total)]
    assert lrs[0] == peak and lrs[50] == pytest.approx(peak / 2) and cosine_lr(peak, total, total) == pytest.approx(0)
    assert all(a > b for a, b in zip(lrs, lrs[1:]))
    assert lrs[25] == pytest.approx(peak * 0.5 * (1 + math.cos(math.pi / 4)))


def test_crop_boxes_stay_inside_the_image_within_scale_and_ratio() -> None:
    rng = np.random.default_rng(0)
    for _ in range(500):
        width, height = int(rng.integers(20, 400)), int(rng.integers(20, 400))
        top, left, h, w = crop_box(width, height, (0.08, 1.0), rng)
        assert 0 <= top and 0 <= left and top + h <= height and left + w <= width and h > 0 and w > 0
    fallback = crop_box(1000, 10, (0.9, 1.0), np.random.default_rng(1))  # no 3/4..4/3 crop fits: centre crop
    assert fallback == (0, (1000 - 13) // 2, 10, 13)


def _folder(tmp_path: Path) -> Path:
    for c in range(2):
        for i in range(3):
            folder = tmp_path / "train" / f"c{c}"
            folder.mkdir(parents=True, exist_ok=True)
            pixels = np.random.default_rng(c * 10 + i).integers(0, 256, (30, 40, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"{i}.JPEG", quality=90)
    return tmp_path


def test_each_sample_s_augmentation_depends_on_seed_epoch_and_index_only(tmp_path: Path) -> None:
    root = _folder(tmp_path)
    image_set = read_image_folder(str(root), "train")
    transform = AugmentedTransform(crop=16)
    dataset = AugmentedImageDataset(image_set, transform, seed=7)
    index, image, error = dataset[(4, 2)]
    assert index == 4 and error is None and image.shape == (3, 16, 16)
    dataset[(1, 0)], dataset[(4, 3)]  # other samples first: nothing carries over
    assert torch.equal(AugmentedImageDataset(image_set, transform, seed=7)[(4, 2)][1], image)
    assert not torch.equal(dataset[(4, 3)][1], image)  # a new epoch, a new crop
    assert not torch.equal(AugmentedImageDataset(image_set, transform, seed=8)[(4, 2)][1], image)
    # a crop of the whole image with no flip is the plain resize: the geometry is torchvision's resized_crop
    whole = AugmentedTransform(crop=16, scale=(1.0, 1.0), flip_p=0.0)
    with Image.open(image_set.samples[0].path) as source:
        rgb = source.convert("RGB")
    square = rgb.crop((5, 0, 35, 30))  # 30 x 30: at scale 1 the only crop within 3/4..4/3 is all of it
    out = whole.apply(square, sample_generator(0, 0, 0))
    expected = square.resize((16, 16), Image.Resampling.BILINEAR)
    assert torch.equal(out, ImageTransform._normalised(_to_tensor(expected)))
    Path(image_set.samples[2].path).write_bytes(b"garbage")
    index, image, error = dataset[(2, 0)]
    assert image is None and "cannot decode" in error  # a bad file is reported, never raised


def _state(step: int) -> dict:
    generator = torch.Generator().manual_seed(step)
    weight = torch.randn(3, 4, generator=generator, requires_grad=True)
    optimizer = torch.optim.SGD([weight], lr=0.1, momentum=0.9)
    weight.grad = torch.randn(3, 4, generator=generator)
    optimizer.step()
    return {"weight": weight.detach().clone(), "bias": torch.zeros(3), "optimizer": optimizer.state_dict(), "step": step}


def test_checkpoints_round_trip_keep_two_and_fall_back_past_a_corrupt_newest(tmp_path: Path) -> None:
    root = tmp_path / "probe"
    checkpoints = ProbeCheckpoints(str(root), {}, {"hyperparameters": {"epochs": 3}})
    assert checkpoints.restore(0, None) is None  # a fresh start
    for step in (5, 10, 15):
        checkpoints.save(step, _state(step), world=1)
    assert sorted(p.name for p in root.glob("step_*")) == ["step_00000010", "step_00000015"]
    restored = checkpoints.restore(0, None)
    saved = _state(15)
    assert restored["step"] == 15 and torch.equal(restored["weight"], saved["weight"])
    assert torch.equal(restored["optimizer"]["state"][0]["momentum_buffer"], saved["optimizer"]["state"][0]["momentum_buffer"])
    assert restored["saved_by_world_size"] == 1
    (root / "step_00000015" / PROBE_FILE).write_bytes(b"torn")  # a newest step that fails its checksum
    assert checkpoints.restore(0, None)["step"] == 10
    (root / "step_00000020").mkdir()  # a save that died before its marker: invisible
    (root / "step_00000020" / PROBE_FILE).write_bytes(b"half")
    assert checkpoints.restore(0, None)["step"] == 10
