"""Each ablation switch of the paper's claims, set from a sweep spec, changes what it claims to and nothing else.

Every test loads a small sweep spec that sweeps one switch, expands it into trials with the real spec code, and
builds the affected component from each trial's resolved config.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.unit.tiny_model import views
from vito.config import SyntheticConfig, VitoConfig
from vito.data.pairs import PairSampler
from vito.data.video import decode_frames_at
from vito.loss import info_nce
from vito.model import AttentionPool, AveragePool, VitoModel, ema_momentum
from vitolaunch.spec import expand, load_spec

torch.set_num_threads(1)

TINY = SyntheticConfig(num_videos=6, num_frames=24, fps=8, size=32, num_classes=3, seed=5)
BASE = {
    "data": {"synthetic": TINY.model_dump(), "crop_size": 16, "batch_size": 4, "max_gap_s": 1.0},
    "model": {"width": 8, "pool_hidden": 16, "proj_hidden": 32, "proj_dim": 16, "pred_hidden": 32},
}


def trials(tmp_path: Path, parameters: str, base_extra: str = "") -> list[VitoConfig]:
    import yaml

    spec = tmp_path / "ablation.yaml"
    spec.write_text(
        "name: ablation\n"
        f"base: {yaml.safe_dump(BASE, default_flow_style=True).strip()}\n"
        + textwrap.dedent(base_extra)
        + "parameters:\n"
        + textwrap.indent(textwrap.dedent(parameters), "  ")
    )
    return [trial.config for trial in expand(load_spec(spec))]


@pytest.fixture(scope="module")
def synthetic_videos() -> SyntheticConfig:
    """The videos of `records` (tests/unit/conftest.py)."""
    return TINY


# ------------------------------------------------------------------------------------------ pair source


def test_pair_source_same_frame_gives_identical_source_frames(tmp_path, records):
    temporal, same = trials(tmp_path, "data.pair_source: [temporal, same_frame]")
    assert (temporal.data.pair_source, same.data.pair_source) == ("temporal", "same_frame")
    temporal_sampler, same_sampler = PairSampler(records, temporal.data, 0), PairSampler(records, same.data, 0)
    temporal_differ = 0
    for position in range(24):
        video, time_a, time_b = same_sampler.sample_timestamps(position)
        frame_a, frame_b = decode_frames_at(records[video].uri, [time_a, time_b])
        np.testing.assert_array_equal(frame_a, frame_b)  # before augmentation: one frame, twice
        t_video, t_a, t_b = temporal_sampler.sample_timestamps(position)
        assert (t_video, t_a) == (video, time_a), "the arms must share videos and first frames"
        frames = decode_frames_at(records[video].uri, [t_a, t_b])
        temporal_differ += not np.array_equal(*frames)
    assert temporal_differ >= 20


# ------------------------------------------------------------------------------------------ pooling


def test_pooling_switch_attention_vs_average(tmp_path):
    attention, average = trials(tmp_path, "model.pooling: [attention, average]")
    maps = torch.randn(2, 64, 3, 3)
    torch.manual_seed(0)
    attention_model = VitoModel(attention.model, attention.loss)
    average_model = VitoModel(average.model, average.loss)
    for scale in (4, 5):
        assert isinstance(attention_model.pools[f"s{scale}"], AttentionPool)
        assert isinstance(average_model.pools[f"s{scale}"], AveragePool)
    pool_a, pool_b = attention_model.pools["s5"], average_model.pools["s5"]
    torch.testing.assert_close(pool_b(maps), maps.mean(dim=(2, 3)))
    weights = pool_a.attention(maps)
    assert not torch.allclose(weights, torch.full_like(weights, 1 / 9)), "attention must weight positions unequally"
    torch.testing.assert_close(pool_a(maps), torch.einsum("bcn,bn->bc", maps.flatten(2), weights))
    assert sum(p.numel() for p in average_model.pools.parameters()) == 0
    assert sum(p.numel() for p in attention_model.pools.parameters()) > 0


# ------------------------------------------------------------------------------------------- scales


def test_scales_switch_stage5_only_vs_stages_4_and_5(tmp_path):
    only5, both = trials(tmp_path, "model.scales: [[5], [4, 5]]")
    model5, model45 = VitoModel(only5.model, only5.loss), VitoModel(both.model, both.loss)
    out5, out45 = model5(*views()), model45(*views())
    assert set(out5) == {"loss", "loss/s5"} and set(out45) == {"loss", "loss/s4", "loss/s5"}
    torch.testing.assert_close(out45["loss"], out45["loss/s4"] + out45["loss/s5"])
    assert set(model5.pools) == {"s5"} and set(model45.pools) == {"s4", "s5"}
    assert set(model5.predictors) == {"s5"} and set(model45.predictors) == {"s4", "s5"}


# ------------------------------------------------------------------------------------------ temperature


def test_temperature_switch_scales_the_logits(tmp_path):
    configs = trials(tmp_path, "loss.temperature: [0.05, 0.1, 0.5]")
    torch.manual_seed(0)
    reference = VitoModel(configs[0].model, configs[0].loss)
    a, b = views()
    losses = []
    for config in configs:
        model = VitoModel(config.model, config.loss)
        model.load_state_dict(reference.state_dict())
        assert model.temperature == config.loss.temperature
        with torch.no_grad():
            both = torch.cat([a, b])
            prediction = model.predictors["s5"](model.projectors["s5"](model.pools["s5"](model.backbone(both)[5])))
            target = model.target_projectors["s5"](model.target_pools["s5"](model.target_backbone(both)[5]))
            expected = 0.5 * (info_nce(prediction[:8], target[8:], config.loss.temperature)
                              + info_nce(prediction[8:], target[:8], config.loss.temperature))
            model.load_state_dict(reference.state_dict())  # BN running stats moved: restore before the real pass
            got = model(a, b)["loss/s5"]
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
        losses.append(got.item())
    assert len({round(value, 5) for value in losses}) == 3


# ------------------------------------------------------------------------------------------- EMA


def test_ema_schedule_switch(tmp_path):
    configs = trials(tmp_path, """\
        zip:
          - ema.schedule: [cosine, constant, cosine]
            ema.base_momentum: [0.99, 0.99, 0.9]
        """)
    steps = 100
    curves = [[ema_momentum(step, steps, config.ema) for step in range(steps + 1)] for config in configs]
    cosine, constant, low_base = curves
    assert cosine[0] == pytest.approx(0.99) and cosine[-1] == pytest.approx(1.0)
    assert all(a <= b + 1e-12 for a, b in zip(cosine, cosine[1:]))  # rises monotonically to 1
    assert set(constant) == {0.99}
    assert low_base[0] == pytest.approx(0.9) and low_base[50] == pytest.approx(0.95)

    # And the momentum is what the target moves by: one update from a known state.
    model = VitoModel(configs[0].model, configs[0].loss)
    online = model.projectors["s5"].net[0].weight
    target = model.target_projectors["s5"].net[0].weight
    with torch.no_grad():
        online.fill_(1.0)
        target.fill_(0.0)
    model.update_target(constant[10])
    torch.testing.assert_close(target, torch.full_like(target, 1 - 0.99))


# ---------------------------------------------------------------------------------------------- gap


def test_gap_switch_bounds_and_shapes_the_time_between_frames(tmp_path, records):
    configs = trials(tmp_path, """\
        zip:
          - data.gap_distribution: [uniform, uniform, fixed, exponential]
            data.max_gap_s: [0.25, 1.5, 1.0, 1.5]
        """, base_extra="")
    gaps = {}
    for config in configs:
        sampler = PairSampler(records, config.data, seed=0)
        values = []
        for position in range(400):
            _, time_a, time_b = sampler.sample_timestamps(position)
            values.append(abs(time_b - time_a))
        gaps[(config.data.gap_distribution, config.data.max_gap_s)] = np.array(values)
    short, long = gaps[("uniform", 0.25)], gaps[("uniform", 1.5)]
    assert short.max() <= 0.25 + 1e-9 and long.max() <= 1.5 + 1e-9
    assert long.mean() > 3 * short.mean()
    # Reflected inside the clip, a uniform gap keeps its distribution: mean max/2.
    assert long.mean() == pytest.approx(0.75, abs=0.08)
    fixed = gaps[("fixed", 1.0)]
    np.testing.assert_allclose(fixed, 1.0, atol=1e-9)  # 3 s clips: a 1 s gap always fits one way or the other
    exponential = gaps[("exponential", 1.5)]
    # Truncated exponential with mean 1 s below 1.5 s: mean 1 - 1.5 e^-1.5 / (1 - e^-1.5) = 0.57 s.
    expected = 1 - 1.5 * math.exp(-1.5) / (1 - math.exp(-1.5))
    assert exponential.mean() == pytest.approx(expected, abs=0.06)
    assert exponential.max() <= 1.5 + 1e-9
    assert np.median(exponential) < np.median(long)


def test_min_gap_excludes_near_frames(tmp_path, records):
    (config,) = trials(tmp_path, "data.min_gap_s: [0.5]")
    sampler = PairSampler(records, config.data, seed=0)
    for position in range(100):
        _, time_a, time_b = sampler.sample_timestamps(position)
        assert 0.5 - 1e-9 <= abs(time_b - time_a) <= 1.0 + 1e-9


def test_gap_settings_are_validated(tmp_path):
    from vitolaunch.errors import SpecError

    with pytest.raises(SpecError, match="min_gap_s"):
        trials(tmp_path, "data.min_gap_s: [2.0]")


# ------------------------------------------------------------------------------------------- augmentation


def test_hue_jitter_rotates_colour_and_is_off_by_default(tmp_path):
    from vito.config import AugmentConfig
    from vito.data.augment import augment_view

    off, on = trials(tmp_path, "data.augment.hue: [0.0, 0.5]")
    assert off.data.augment.hue == 0.0 and on.data.augment.hue == 0.5
    frame = torch.zeros(3, 16, 16)
    frame[0] = 0.9  # saturated red
    frame[1:] = 0.1
    jitter_only = dict(crop_scale_min=1.0, flip_p=0, color_jitter_p=1.0, color_jitter_strength=0.0, grayscale_p=0,
                       blur_p=0, solarize_p=0)
    plain = augment_view(frame, AugmentConfig(**jitter_only), 16, torch.Generator().manual_seed(0))
    again = augment_view(frame, AugmentConfig(**jitter_only), 16, torch.Generator().manual_seed(0))
    torch.testing.assert_close(plain, again)
    hue = AugmentConfig(**jitter_only, hue=0.5)
    hues = [augment_view(frame, hue, 16, torch.Generator().manual_seed(s)) for s in range(6)]
    channel_means = torch.stack([h.mean(dim=(1, 2)) for h in hues])
    assert channel_means.std(dim=0).max() > 0.3, "hue rotation must move colour between channels"
    # Luma is (nearly) kept: hue rotation leaves brightness alone.
    from vito.data.augment import MEAN, STD

    luma = torch.tensor([0.299, 0.587, 0.114])
    lumas = [((h * STD[:, None, None] + MEAN[:, None, None]) * luma[:, None, None]).sum(0).mean() for h in hues]
    assert max(lumas) - min(lumas) < 0.1
