"""Network, loss, EMA and optimizer: shapes, invariants and a few real training steps on CPU."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tests.unit.tiny_model import tiny_model_cfg, views
from vito.config import EMAConfig, LossConfig, OptimConfig
from vito.loss import info_nce
from vito.model import AttentionPool, AveragePool, ResNet, VitoModel, ema_momentum
from vito.optim import LARS, build_optimizer, learning_rate, param_groups_for

torch.set_num_threads(1)


# ------------------------------------------------------------------------------------------ backbone


@pytest.mark.parametrize(
    "arch, width, size, channels",
    [("resnet18", 8, 32, {4: 32, 5: 64}), ("resnet50", 4, 64, {4: 64, 5: 128})],
)
def test_backbone_stage_shapes(arch, width, size, channels):
    backbone = ResNet(arch, width)
    maps = backbone(torch.randn(2, 3, size, size))
    assert set(maps) == {4, 5}
    assert maps[4].shape == (2, channels[4], size // 16, size // 16)
    assert maps[5].shape == (2, channels[5], size // 32, size // 32)
    assert backbone.channels == channels


def test_backbone_residual_blocks_start_as_identity_branches():
    backbone = ResNet("resnet18", 8)
    last_gammas = [block.last_bn.weight for layer in (backbone.layer1, backbone.layer4) for block in layer]
    assert all(torch.all(gamma == 0) for gamma in last_gammas)
    assert torch.all(backbone.stem[1].weight == 1)


def test_stage4_only_backbone_has_no_layer4():
    backbone = ResNet("resnet18", 8, last_stage=4)
    assert backbone.layer4 is None
    assert set(backbone(torch.randn(2, 3, 32, 32))) == {4}


# ------------------------------------------------------------------------------------------- pooling


def test_attention_weights_sum_to_one():
    pool = AttentionPool(6, 5)
    weights = pool.attention(torch.randn(3, 6, 4, 5))
    assert weights.shape == (3, 20)
    assert torch.allclose(weights.sum(dim=1), torch.ones(3), atol=1e-6)
    assert torch.all(weights > 0)


def test_one_hot_attention_selects_that_position():
    channels, hidden = 4, 3
    pool = AttentionPool(channels, hidden)
    first, second, last = pool.scorer[0], pool.scorer[2], pool.scorer[4]
    with torch.no_grad():
        for conv in (first, second, last):
            conv.weight.zero_()
            conv.bias.zero_()
        first.weight[0, 0] = 1.0  # hidden 0 <- channel 0
        second.weight[0, 0] = 1.0  # channel 0 <- hidden 0
        last.weight[0, 0] = 100.0  # logit = 100 * channel 0
    x = torch.rand(2, channels, 3, 3) * 0.01
    x[:, 0] = 0.0
    x[0, 0, 2, 1] = 1.0  # sample 0 marks position (2, 1)
    x[1, 0, 0, 2] = 1.0  # sample 1 marks position (0, 2)
    pooled = pool(x)
    assert torch.allclose(pooled[0], x[0, :, 2, 1], atol=1e-6)
    assert torch.allclose(pooled[1], x[1, :, 0, 2], atol=1e-6)


def test_average_pool_is_the_mean():
    x = torch.randn(2, 5, 3, 4)
    pool = AveragePool(5, 7)
    assert torch.allclose(pool(x), x.mean(dim=(2, 3)))
    assert torch.allclose(pool.attention(x).sum(dim=1), torch.ones(2))


def test_pooling_ablation_builds_average_pools_without_parameters():
    model = VitoModel(tiny_model_cfg(pooling="average"), LossConfig())
    assert all(isinstance(pool, AveragePool) for pool in model.pools.values())
    assert sum(p.numel() for p in model.pools.parameters()) == 0
    assert torch.isfinite(model(*views())["loss"])


# ---------------------------------------------------------------------------------------------- loss


def test_info_nce_is_log_batch_for_unrelated_vectors():
    generator = torch.Generator().manual_seed(0)
    query, key = torch.randn(64, 2048, generator=generator), torch.randn(64, 2048, generator=generator)
    assert info_nce(query, key, temperature=1.0).item() == pytest.approx(math.log(64), abs=0.02)


def test_info_nce_near_zero_for_identical_separated_pairs():
    points = torch.eye(8) * 3.0  # orthogonal after normalisation
    assert info_nce(points, points.clone(), temperature=0.05).item() < 1e-6


def test_info_nce_swapping_arguments_classifies_columns():
    generator = torch.Generator().manual_seed(1)
    a, b = torch.randn(6, 5, generator=generator), torch.randn(6, 5, generator=generator)
    logits = F.normalize(a, dim=1) @ F.normalize(b, dim=1).T / 0.1
    by_rows = F.cross_entropy(logits, torch.arange(6))
    by_columns = F.cross_entropy(logits.T, torch.arange(6))
    assert torch.allclose(info_nce(a, b, 0.1), by_rows, atol=1e-6)
    assert torch.allclose(info_nce(b, a, 0.1), by_columns, atol=1e-6)
    assert not torch.allclose(by_rows, by_columns)
    permutation = torch.randperm(6, generator=generator)
    assert torch.allclose(info_nce(a[permutation], b[permutation], 0.1), by_rows, atol=1e-6)


def test_info_nce_computes_in_float32_from_bf16():
    generator = torch.Generator().manual_seed(2)
    a, b = torch.randn(16, 32, generator=generator), torch.randn(16, 32, generator=generator)
    loss = info_nce(a.bfloat16(), b.bfloat16(), 0.1)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(info_nce(a.bfloat16().float(), b.bfloat16().float(), 0.1).item(), abs=1e-6)


def test_info_nce_compiles_into_its_caller_s_graph_under_autocast():
    # torch 2.11 (the lent GPU machine's) broke the compiled step's graph at the autocast-availability check,
    # into two graphs; 2.13 did not. The op before the call stands for the model that feeds the loss.
    from torch._dynamo.testing import CompileCounter
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    counter = CompileCounter()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = torch.compile(lambda a, b: info_nce(a * 2.0, b, 0.1), backend=counter)(torch.randn(8, 16), torch.randn(8, 16))
    assert counter.frame_count == 1 and not counters["graph_break"] and loss.dtype == torch.float32
    with torch.device("meta"):  # no autocast there: counting FLOPs takes the plain path
        assert info_nce(torch.randn(4, 8), torch.randn(4, 8), 0.1).device.type == "meta"


# ------------------------------------------------------------------------------------------ VitoModel


def test_forward_gives_finite_loss_and_grads_only_on_online():
    model = VitoModel(tiny_model_cfg(), LossConfig())
    out = model(*views())
    assert set(out) == {"loss", "loss/s4", "loss/s5"}
    assert out["loss"].dim() == 0 and torch.isfinite(out["loss"])
    assert torch.allclose(out["loss"], out["loss/s4"] + out["loss/s5"])
    out["loss"].backward()
    online = dict(model.named_online_parameters())
    for name, param in model.named_parameters():
        if name in online:
            assert param.requires_grad and param.grad is not None, name
        else:
            assert name.startswith("target_") and not param.requires_grad and param.grad is None, name
    assert len(online) == len(list(model.online_parameters())) > 0


def test_asymmetric_loss_is_one_direction():
    torch.manual_seed(0)
    symmetric = VitoModel(tiny_model_cfg(scales=[5]), LossConfig(symmetric=True))
    one_way = VitoModel(tiny_model_cfg(scales=[5]), LossConfig(symmetric=False))
    one_way.load_state_dict(symmetric.state_dict())
    a, b = views()
    forward_only = one_way(a, b)["loss"]
    backward_only = one_way(b, a)["loss"]  # same concatenated batch, up to order: BN stats identical
    assert torch.allclose(symmetric(a, b)["loss"], 0.5 * (forward_only + backward_only), atol=1e-5)


def test_scales_select_losses():
    only5 = VitoModel(tiny_model_cfg(scales=[5]), LossConfig())(*views())
    only4 = VitoModel(tiny_model_cfg(scales=[4]), LossConfig())
    assert set(only5) == {"loss", "loss/s5"}
    assert set(only4(*views())) == {"loss", "loss/s4"}
    assert only4.backbone.layer4 is None


def test_update_target_momentum_zero_copies_and_one_keeps():
    model = VitoModel(tiny_model_cfg(), LossConfig())
    with torch.no_grad():
        for param in model.online_parameters():
            param.add_(torch.randn_like(param))
    model(*views())  # moves BN running stats of both networks
    online_state = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("target_")}
    before = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("target_")}

    model.update_target(1.0)
    after_keep = model.state_dict()
    for key, value in before.items():
        if "running" in key or "num_batches" in key:
            continue  # buffers are always copied from online
        assert torch.equal(after_keep[key], value), key

    model.update_target(0.0)
    after_copy = model.state_dict()
    for key, value in online_state.items():
        if key.startswith("predictors."):
            continue  # the target has no predictor
        assert torch.equal(after_copy["target_" + key], value), key


def test_update_target_interpolates():
    model = VitoModel(tiny_model_cfg(), LossConfig())
    target_param = model.target_projectors["s5"].net[0].weight
    online_param = model.projectors["s5"].net[0].weight
    with torch.no_grad():
        online_param.fill_(1.0)
        target_param.fill_(0.0)
    model.update_target(0.75)
    assert torch.allclose(target_param, torch.full_like(target_param, 0.25))


def test_features_are_pooled_online_features_in_eval_mode():
    model = VitoModel(tiny_model_cfg(), LossConfig())
    x, _ = views(batch=4)
    assert model.features(x, scale=5).shape == (4, 64)
    assert model.features(x, scale=4).shape == (4, 32)
    assert model.training  # mode restored
    single = model.features(x[:1], scale=5)
    assert torch.allclose(single, model.features(x, scale=5)[:1], atol=1e-5)  # eval BN: batch-independent


def test_ema_momentum_schedule():
    cfg = EMAConfig(base_momentum=0.99, final_momentum=1.0)
    assert ema_momentum(0, 100, cfg) == pytest.approx(0.99)
    assert ema_momentum(50, 100, cfg) == pytest.approx(0.995)
    assert ema_momentum(100, 100, cfg) == pytest.approx(1.0)
    assert ema_momentum(25, 100, cfg) < ema_momentum(75, 100, cfg)
    assert ema_momentum(70, 100, EMAConfig(base_momentum=0.99, schedule="constant")) == 0.99


# ------------------------------------------------------------------------------------------ optimizer


def test_learning_rate_warmup_peak_and_cosine_end():
    cfg = OptimConfig(lr=0.4, warmup_steps=10, min_lr_ratio=0.1)
    peak = 0.4 * 512 / 256
    lrs = [learning_rate(step, 100, cfg, global_batch=512) for step in range(101)]
    assert lrs[0] == 0.0
    assert lrs[5] == pytest.approx(peak / 2)
    assert all(b - a == pytest.approx(peak / 10) for a, b in zip(lrs[:10], lrs[1:11]))
    assert lrs[10] == pytest.approx(peak) and max(lrs) == pytest.approx(peak)
    assert lrs[55] == pytest.approx(0.1 * peak + 0.9 * peak / 2)
    assert lrs[100] == pytest.approx(0.1 * peak)
    assert learning_rate(150, 100, cfg, global_batch=512) == pytest.approx(0.1 * peak)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))


def test_param_groups_exclude_biases_and_norms():
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    groups = param_groups_for(net.named_parameters(), weight_decay=0.1)
    decayed, excluded = groups
    assert [p.shape for p in decayed["params"]] == [torch.Size([3, 4])]
    assert decayed["weight_decay"] == 0.1 and not decayed["lars_exclude"]
    assert len(excluded["params"]) == 3 and excluded["weight_decay"] == 0.0 and excluded["lars_exclude"]


def test_lars_reduces_a_quadratic_and_leaves_excluded_params_undecayed():
    torch.manual_seed(0)
    weight = torch.nn.Parameter(torch.randn(8, 8))
    bias = torch.nn.Parameter(torch.ones(8))
    optimizer = LARS(
        param_groups_for([("w", weight), ("layer.bias", bias)], weight_decay=0.5), lr=5.0, momentum=0.9, weight_decay=0.5
    )
    target = torch.randn(8, 8)

    def loss_fn() -> torch.Tensor:
        return ((weight - target) ** 2).sum()

    start = loss_fn().item()
    for _ in range(20):
        optimizer.zero_grad()
        loss_fn().backward()  # the bias gets no gradient from this loss ...
        bias.grad = torch.zeros_like(bias)  # ... so only weight decay could move it
        optimizer.step()
    assert loss_fn().item() < 0.9 * start
    assert torch.equal(bias.detach(), torch.ones(8))


def test_lars_trust_ratio_bounds_relative_step():
    weight = torch.nn.Parameter(torch.full((4, 4), 2.0))
    optimizer = LARS([weight], lr=1.0, momentum=0.0, eta=0.01)
    weight.grad = torch.full((4, 4), 1000.0)  # huge gradient: the trust ratio rescales it
    before = weight.detach().clone()
    optimizer.step()
    relative_change = (weight.detach() - before).norm() / before.norm()
    assert relative_change.item() == pytest.approx(0.01, rel=1e-5)


def test_lars_excluded_params_take_plain_sgd_steps():
    bias = torch.nn.Parameter(torch.full((3,), 5.0))
    optimizer = LARS([{"params": [bias], "lars_exclude": True, "weight_decay": 0.0}], lr=0.5, momentum=0.9, eta=0.001)
    bias.grad = torch.tensor([1.0, -2.0, 0.0])
    optimizer.step()  # no trust ratio: the step is lr * grad, not eta-scaled
    assert torch.allclose(bias.detach(), torch.tensor([4.5, 6.0, 5.0]))


def test_build_optimizer_scales_lr_and_picks_kind():
    model = torch.nn.Linear(3, 2)
    lars = build_optimizer(model.named_parameters(), OptimConfig(name="lars", lr=0.3), global_batch=1024)
    assert isinstance(lars, LARS) and lars.param_groups[0]["lr"] == pytest.approx(1.2)
    adamw = build_optimizer(model.named_parameters(), OptimConfig(name="adamw", lr=1e-3), global_batch=256)
    assert isinstance(adamw, torch.optim.AdamW) and adamw.param_groups[0]["lr"] == pytest.approx(1e-3)
    assert [group["weight_decay"] for group in adamw.param_groups] == [OptimConfig().weight_decay, 0.0]


def test_a_few_lars_steps_reduce_the_loss_on_a_fixed_batch():
    torch.manual_seed(0)
    model = VitoModel(tiny_model_cfg(scales=[4, 5]), LossConfig(temperature=0.1))
    cfg = OptimConfig(name="lars", lr=3.0, warmup_steps=0)
    optimizer = build_optimizer(model.named_online_parameters(), cfg, global_batch=8)
    batch = views(batch=8, size=32, seed=3)
    losses = []
    for step in range(8):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, 100, cfg, global_batch=8)
        loss = model(*batch)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        model.update_target(ema_momentum(step, 100, EMAConfig(base_momentum=0.99)))
        losses.append(loss.item())
    with torch.no_grad():
        final = model(*batch)["loss"].item()
    assert all(math.isfinite(value) for value in losses)
    assert final < 0.6 * losses[0], losses + [final]
