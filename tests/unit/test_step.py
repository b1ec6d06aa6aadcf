"""The training step's parts: foreach LARS, bf16 autocast with fp32 masters, the DeepSpeed config, the whole-
tensor check, and global batch norm in the heads (one process; the multi-rank checks are integration tests)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from tests.unit.tiny_model import tiny_model_cfg, views
from vito.config import LossConfig, VitoConfig
from vito.engine import (
    autocast,
    check_whole_tensors,
    deepspeed_config,
    memory_format,
    to_device,
)
from vito.global_bn import GlobalBatchNorm1d, globalise_batch_norms
from vito.model import VitoModel
from vito.optim import LARS, param_groups_for

torch.set_num_threads(1)


def per_tensor_lars_step(params, grads, buffers, lr, momentum, weight_decay, eta, exclude):
    """LARS as first written, one tensor at a time: what the foreach version must reproduce bit for bit."""
    for index, (param, grad) in enumerate(zip(params, grads)):
        update = grad
        if not exclude:
            if weight_decay:
                update = update.add(param, alpha=weight_decay)
            param_norm, update_norm = torch.linalg.vector_norm(param), torch.linalg.vector_norm(update)
            trust = torch.where((param_norm > 0) & (update_norm > 0), eta * param_norm / update_norm,
                                torch.ones_like(param_norm))
            update = update * trust
        if buffers[index] is None:
            buffers[index] = update.clone()
        else:
            buffers[index].mul_(momentum).add_(update)
        param.add_(buffers[index], alpha=-lr)


@pytest.mark.parametrize("weight_decay", [0.0, 1e-2])
def test_foreach_lars_matches_the_per_tensor_algorithm_bitwise(weight_decay):
    generator = torch.Generator().manual_seed(0)
    shapes = [(16, 8), (4, 3, 3, 3), (7,), (5, 5)]
    params = [nn.Parameter(torch.randn(shape, generator=generator)) for shape in shapes]
    with torch.no_grad():
        params[3].zero_()  # a zero tensor keeps trust ratio 1
    reference = [p.detach().clone() for p in params]
    named = [(f"w{i}", p) for i, p in enumerate(params)]
    optimizer = LARS(param_groups_for(named, weight_decay), lr=0.7, momentum=0.9, weight_decay=weight_decay, eta=0.01)
    groups = [[i for i, p in enumerate(params) if p.ndim > 1], [i for i, p in enumerate(params) if p.ndim <= 1]]
    buffers: list = [None] * len(params)
    for step in range(4):
        grads = [torch.randn(shape, generator=generator) for shape in shapes]
        for param, grad in zip(params, grads):
            param.grad = grad.clone()
        params[2].grad = None if step == 1 else params[2].grad  # a tensor without gradient is skipped
        optimizer.step()
        for exclude, indices in zip((False, True), groups):
            live = [i for i in indices if not (step == 1 and i == 2)]
            sub_buffers = [buffers[i] for i in live]
            per_tensor_lars_step([reference[i] for i in live], [grads[i] for i in live], sub_buffers, 0.7, 0.9,
                                 0.0 if exclude else weight_decay, 0.01, exclude)
            for i, buffer in zip(live, sub_buffers):
                buffers[i] = buffer
    for param, expected in zip(params, reference):
        assert torch.equal(param.detach(), expected)
    assert not torch.equal(params[3].detach(), torch.zeros(5, 5))  # the zero tensor moved (ratio 1)


def test_deepspeed_config_never_asks_for_bf16_and_pins_fp32_gradient_communication():
    cfg = VitoConfig.model_validate({"train": {"precision": "bf16"}, "data": {"batch_size": 32}})
    config = deepspeed_config(cfg, world_size=4)
    assert "bf16" not in config and "data_types" not in config
    assert config["communication_data_type"] == "fp32"
    assert config["train_micro_batch_size_per_gpu"] == 8
    with pytest.raises(ValueError, match="not divisible"):
        deepspeed_config(cfg, world_size=3)


def test_whole_tensor_check_rejects_flattened_copies():
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    check_whole_tensors(LARS(model.parameters(), lr=0.1), model)  # the model's own tensors: fine
    flat = nn.Parameter(torch.cat([p.detach().flatten() for p in model.parameters()]))
    with pytest.raises(RuntimeError, match="per shard"):
        check_whole_tensors(LARS([flat], lr=0.1), model)


def test_bf16_autocast_keeps_fp32_masters_target_and_gradients():
    cfg = VitoConfig.model_validate({"train": {"precision": "bf16"}})
    model = VitoModel(tiny_model_cfg(), LossConfig())
    device = torch.device("cpu")
    with autocast(cfg, device):
        maps = model.backbone(views()[0])
        out = model(*views())
    assert maps[5].dtype == torch.bfloat16  # the convolutions ran in bf16
    assert out["loss"].dtype == torch.float32  # InfoNCE in fp32
    out["loss"].backward()
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert all(p.grad.dtype == torch.float32 for p in model.online_parameters())
    fp32 = VitoConfig()
    with autocast(fp32, device):
        assert model.backbone(views()[0])[5].dtype == torch.float32


def test_info_nce_logits_stay_fp32_under_bf16_autocast():
    from vito.loss import info_nce

    generator = torch.Generator().manual_seed(3)
    a, b = torch.randn(64, 256, generator=generator), torch.randn(64, 256, generator=generator)
    exact = info_nce(a, b, 0.1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(info_nce(a, b, 0.1), exact)
        rounded = torch.nn.functional.cross_entropy(  # what an autocast matmul would have given
            (torch.nn.functional.normalize(a) @ torch.nn.functional.normalize(b).T).float() / 0.1, torch.arange(64))
    assert not torch.equal(rounded, exact)


def test_cpu_keeps_its_memory_format_and_values():
    view = torch.randn(2, 3, 8, 8)
    assert memory_format(torch.device("cpu")) == torch.preserve_format
    moved = to_device(view, torch.device("cpu"))
    assert moved.is_contiguous() and torch.equal(moved, view)
    assert memory_format(torch.device("cuda")) == torch.channels_last


def test_global_batch_norm_alone_is_batch_norm_with_the_same_state_names():
    torch.manual_seed(0)
    plain = VitoModel(tiny_model_cfg(), LossConfig())
    torch.manual_seed(0)
    synced = VitoModel(tiny_model_cfg(sync_bn_heads=True), LossConfig())
    heads = [m for m in synced.modules() if isinstance(m, nn.BatchNorm1d)]
    assert heads and all(isinstance(m, GlobalBatchNorm1d) for m in heads)
    assert any(isinstance(m, GlobalBatchNorm1d) for m in synced.target_projectors.modules())
    assert not any(isinstance(m, GlobalBatchNorm1d) for m in synced.backbone.modules())
    assert plain.state_dict().keys() == synced.state_dict().keys()  # checkpoints load either way
    synced.load_state_dict(plain.state_dict())
    assert torch.equal(plain(*views())["loss"], synced(*views())["loss"])  # one process: plain BN


def test_globalise_keeps_the_replaced_norms_state():
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4, momentum=0.3))
    with torch.no_grad():
        net[1].weight.fill_(2.0)
        net[1].running_mean.fill_(0.5)
    before = copy.deepcopy(net.state_dict())
    globalise_batch_norms(net)
    assert isinstance(net[1], GlobalBatchNorm1d) and net[1].momentum == 0.3
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
