"""Batched device augmentation: same choices as the per-sample reference, uint8 in, normalised float out."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vito.config import AugmentConfig, DataConfig, SyntheticConfig
from vito.data.augment import PHOTOMETRIC_FIELDS, augment_view, crop_uint8, draw_view_params, resize_square
from vito.data.batch_augment import PairCrops, augment_batch, augment_pairs
from vito.data.pairs import FramePairDataset, PairSampler, build_pair_loader

torch.set_num_threads(1)

# Every op drawn often, hue included, so a batch mixes all of them.
BUSY = AugmentConfig(hue=0.1, color_jitter_p=0.7, grayscale_p=0.3, blur_p=0.5, solarize_p=0.3)


def frame(seed: int, height: int, width: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def to_float(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(image).permute(2, 0, 1).float().div_(255)


def test_params_consume_the_generator_exactly_as_augment_view() -> None:
    for seed in range(40):
        drawing, reference = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
        draw_view_params(60, 80, BUSY, 32, drawing)
        augment_view(to_float(frame(seed, 60, 80)), BUSY, 32, reference)
        assert torch.equal(drawing.get_state(), reference.get_state()), f"seed {seed}: draws diverge"


def test_batch_matches_the_per_sample_reference_on_the_same_crop() -> None:
    # crop_scale_min 1 on square frames of the output size: the crop is the frame and the resize the identity,
    # so the reference sees exactly the uint8 crop the batched path starts from.
    cfg = BUSY.model_copy(update={"crop_scale_min": 1.0})
    crops, rows, references = [], [], []
    for seed in range(48):
        image = frame(seed, 32, 32)
        params = draw_view_params(32, 32, cfg, 32, torch.Generator().manual_seed(seed))
        crops.append(crop_uint8(image, params, 32))
        rows.append(params.to_row())
        references.append(augment_view(to_float(image), cfg, 32, torch.Generator().manual_seed(seed)))
    table = torch.stack(rows)
    for column in PHOTOMETRIC_FIELDS:  # the batch really mixes rows with and without each op
        identity = 1 if column in ("brightness", "contrast", "saturation") else 0
        used = (table[:, PHOTOMETRIC_FIELDS.index(column)] != identity).sum()
        assert 0 < used < len(table), column
    views = augment_batch(torch.stack(crops), table)
    assert views.dtype == torch.float32 and views.shape == (48, 3, 32, 32)
    torch.testing.assert_close(views, torch.stack(references), rtol=0, atol=1e-5)


def test_uint8_crop_is_within_one_grey_level_of_the_float_crop() -> None:
    image = frame(0, 120, 160)
    for seed in range(10):
        params = draw_view_params(120, 160, AugmentConfig(flip_p=0), 40, torch.Generator().manual_seed(seed))
        crop = crop_uint8(image, params, 40)
        assert crop.dtype == torch.uint8 and crop.shape == (3, 40, 40)
        window = to_float(image)[:, params.top : params.top + params.height, params.left : params.left + params.width]
        reference = resize_square(window, 40).clamp(0, 1) * 255
        assert (crop.float() - reference).abs().max() <= 1.05  # fixed-point weights: just over 1 at worst


def test_same_choices_give_identical_output_and_other_choices_differ() -> None:
    params = [draw_view_params(48, 64, BUSY, 24, torch.Generator().manual_seed(s)) for s in range(8)]
    crops = torch.stack([crop_uint8(frame(s, 48, 64), p, 24) for s, p in enumerate(params)])
    rows = torch.stack([p.to_row() for p in params])
    first = augment_batch(crops, rows)
    assert torch.equal(first, augment_batch(crops.clone(), rows.clone()))
    # A row's result does not depend on its neighbours: alone or in a batch, the same view.
    torch.testing.assert_close(augment_batch(crops[3:4], rows[3:4]), first[3:4], rtol=0, atol=1e-6)
    assert not torch.equal(first, augment_batch(crops, rows.roll(1, 0)))
    # The CPU's cache-sized chunks and a GPU's whole batch compute the same rows.
    for chunk_rows in (1, 3, 8):
        torch.testing.assert_close(augment_batch(crops, rows, chunk_rows=chunk_rows), first, rtol=0, atol=1e-6)


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="uint8"):
        augment_batch(torch.zeros(2, 3, 8, 8), torch.zeros(2, len(PHOTOMETRIC_FIELDS), dtype=torch.float64))
    with pytest.raises(ValueError, match="params"):
        augment_batch(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), torch.zeros(3, len(PHOTOMETRIC_FIELDS)))


@pytest.fixture(scope="module")
def synthetic_videos() -> SyntheticConfig:
    """The videos of `records` (tests/unit/conftest.py)."""
    return SyntheticConfig(num_videos=6, num_frames=12, fps=8, size=32, num_classes=3, seed=3)


def test_loader_batches_augment_to_the_reference_views(records) -> None:
    cfg = DataConfig(crop_size=16, batch_size=4, max_gap_s=0.5, augment=BUSY)
    loader = build_pair_loader(records, cfg, 0, 0, 1, 0, 2)
    reference = PairSampler(records, cfg, seed=0, clip_cache_bytes=0)
    for step, batch in enumerate(loader):
        assert isinstance(batch, PairCrops) and batch.crop_a.dtype == torch.uint8
        view_a, view_b = augment_pairs(batch, "cpu")
        assert view_a.shape == view_b.shape == (4, 3, 16, 16) and view_a.dtype == torch.float32
        for slot in range(4):
            ref_a, ref_b = reference.sample(step * 4 + slot)
            # Same choices; the only difference is the uint8 rounding of the resized crop (<= 1 grey level,
            # amplified at most ~2x by contrast and saturation, divided by the normalisation's std).
            torch.testing.assert_close(view_a[slot], ref_a, rtol=0, atol=3 / 255 / 0.224)
            torch.testing.assert_close(view_b[slot], ref_b, rtol=0, atol=3 / 255 / 0.224)


def test_a_resumed_stream_augments_bitwise_like_the_uninterrupted_one(records) -> None:
    cfg = DataConfig(crop_size=16, batch_size=4, max_gap_s=0.5, augment=BUSY)
    full = [augment_pairs(b) for b in build_pair_loader(records, cfg, 1, 0, 1, 0, 5)]
    resumed = [augment_pairs(b) for b in build_pair_loader(records, cfg, 1, 0, 1, 3, 5)]
    for (a, b), (ra, rb) in zip(full[3:], resumed):
        assert torch.equal(a, ra) and torch.equal(b, rb)
    assert FramePairDataset(records, cfg, 1, 0, 1, 3, 5).position(0) == 12
