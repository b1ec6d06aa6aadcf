"""Published ResNet-50 weights (torchvision/timm layout, the public port of the VITO weights) loaded into the
project's ResNet: key mapping, strictness, TF "SAME" padding; and the padding option leaves project configs and
checkpoints as they were."""

from __future__ import annotations

import hashlib
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.unit.tiny_model import tiny_model_cfg, views
from vito.config import LossConfig, ModelConfig, VitoConfig
from vito.eval.foreign_weights import (
    ForeignResNet,
    ForeignWeightsError,
    PortAttentionPool,
    foreign_state_dict,
    foreign_to_project,
    load_foreign,
    project_aliases,
    project_to_foreign,
)
from vito.model import ResNet, SameConv2d, VitoModel, same_pad_total

torch.set_num_threads(1)

IMAGES = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
PORT_PARAMETERS = 42_342_440  # the released VITO ResNet-50 with its attention pool and fc (eval-benchmarks notes)


def _randomise(module: nn.Module, seed: int = 1) -> nn.Module:
    """Every parameter and BN statistic random (the zero-initialised last gammas too, so every block counts)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            if name.endswith("num_batches_tracked"):
                continue
            values = torch.randn(tensor.shape, generator=generator) * 0.1
            if name.endswith("running_var"):
                values = values.abs() + 0.5
            elif name.endswith(("bn1.weight", "bn2.weight", "bn3.weight", "stem.1.weight", "shortcut.1.weight")):
                values = values.abs() + 0.5
            tensor.copy_(values)
    return module.eval()


def _torchvision_name(project_name: str) -> str:
    """The inverse name map written out by hand (independent of the module's own inverse)."""
    return (project_name.replace("stem.0.", "conv1.").replace("stem.1.", "bn1.").replace(".shortcut.", ".downsample."))


# ------------------------------------------------------------------------------------------- SAME padding


def _tf_same_reference(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """TensorFlow's SAME, written from its formula: total = max((ceil(in/s)-1)*s + (k-1)*d + 1 - in, 0)."""
    pads = []
    for size, k, s, d in ((x.shape[3], *[conv.kernel_size[1], conv.stride[1], conv.dilation[1]]),
                          (x.shape[2], *[conv.kernel_size[0], conv.stride[0], conv.dilation[0]])):
        total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
        pads += [total // 2, total - total // 2]
    return F.conv2d(F.pad(x, pads), conv.weight, conv.bias, conv.stride, 0, conv.dilation)


@pytest.mark.parametrize("height, width", [(8, 8), (9, 9), (7, 10), (13, 12)])
@pytest.mark.parametrize("kernel", [1, 3, 7])
@pytest.mark.parametrize("stride", [1, 2])
def test_same_conv_matches_tensorflows_formula(height, width, kernel, stride):
    torch.manual_seed(0)
    conv = SameConv2d(3, 4, kernel, stride)
    x = torch.randn(1, 3, height, width)
    out = conv(x)
    assert out.shape[2:] == (math.ceil(height / stride), math.ceil(width / stride))
    torch.testing.assert_close(out, _tf_same_reference(x, conv), rtol=0, atol=0)


def test_same_pad_totals_known_values():
    # odd totals put the extra pixel right/bottom: 224 px, 7x7/2 -> 2 before, 3 after; 64 px, 3x3/2 -> 0, 1
    assert same_pad_total(224, 7, 2) == 5
    assert same_pad_total(64, 3, 2) == 1
    assert same_pad_total(7, 3, 2) == 2
    assert same_pad_total(64, 3, 1) == 2
    assert same_pad_total(64, 1, 2) == 0


def test_same_padding_follows_a_stride_changed_after_construction():
    torch.manual_seed(0)
    conv = SameConv2d(3, 4, 3, 2)
    conv.stride = (1, 1)  # as the DAVIS protocol does to layer3/layer4
    x = torch.randn(1, 3, 9, 8)
    assert conv(x).shape[2:] == (9, 8)
    torch.testing.assert_close(conv(x), _tf_same_reference(x, conv), rtol=0, atol=0)

    backbone = ResNet("resnet50", 4, padding="same").eval()
    for layer in (backbone.layer3, backbone.layer4):
        layer[0].conv2.stride = (1, 1)
        layer[0].shortcut[0].stride = (1, 1)
    maps = backbone(torch.randn(1, 3, 64, 64))
    assert maps[4].shape[2:] == maps[5].shape[2:] == (8, 8)  # /8 throughout: layer2's resolution


def test_same_padding_is_on_every_conv_and_the_max_pool_stays_pytorchs():
    backbone = ResNet("resnet50", 4, padding="same")
    convs = [m for m in backbone.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(isinstance(m, SameConv2d) for m in convs)
    pool = backbone.stem[3]
    assert isinstance(pool, nn.MaxPool2d) and (pool.kernel_size, pool.stride, pool.padding) == (3, 2, 1)
    with pytest.raises(ValueError, match="padding"):
        ResNet("resnet18", 4, padding="valid")


# ---------------------------------------------------------------------------- the project stays as it was

# Computed on main (9a054b8) before the padding option existed.
DEFAULT_FINGERPRINT = "c0f418abce6e"
DEFAULT_MODEL_DUMP_SHA256 = "5f8cf6a4505a8e1d0487c8300bb3cea53204d52eeb35448e192d1fdb573fb093"


def test_default_config_dump_and_fingerprint_are_unchanged():
    assert VitoConfig().fingerprint() == DEFAULT_FINGERPRINT
    assert hashlib.sha256(ModelConfig().model_dump_json().encode()).hexdigest() == DEFAULT_MODEL_DUMP_SHA256
    assert "padding" not in ModelConfig().model_dump()
    same = ModelConfig(padding="same")
    assert same.model_dump()["padding"] == "same"
    assert ModelConfig.model_validate(same.model_dump()) == same
    assert VitoConfig(model=same).fingerprint() != DEFAULT_FINGERPRINT


def test_project_networks_keep_plain_convs_and_their_checkpoints_load_as_before():
    torch.manual_seed(0)
    model = VitoModel(tiny_model_cfg(), LossConfig())
    convs = [m for m in model.backbone.modules() if isinstance(m, nn.Conv2d)]
    assert not any(isinstance(m, SameConv2d) for m in convs)
    assert all(m.padding == (m.kernel_size[0] // 2,) * 2 for m in convs)
    torch.manual_seed(0)
    again = VitoModel(tiny_model_cfg(), LossConfig())
    for (name, a), (other, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert name == other and torch.equal(a, b)  # same construction, same RNG draws
    restored = VitoModel(ModelConfig.model_validate(tiny_model_cfg().model_dump()), LossConfig())
    restored.load_state_dict(model.state_dict())
    x, _ = views(2, 32)
    torch.testing.assert_close(restored.features(x), model.features(x), rtol=0, atol=0)


# ---------------------------------------------------------------------------------------- torchvision


def _torchvision_state(width: int = 8, fc: bool = True, prefix: str = "module.") -> tuple[dict, ResNet, nn.Linear]:
    torch.manual_seed(0)
    backbone = _randomise(ResNet("resnet50", width))
    head = _randomise(nn.Linear(backbone.channels[5], 10), seed=2)
    state = {prefix + _torchvision_name(k): v.clone() for k, v in backbone.state_dict().items() if ".last_bn." not in k}
    if fc:
        state.update({f"{prefix}fc.{k}": v.clone() for k, v in head.state_dict().items()})
    return state, backbone, head


def test_a_torchvision_state_dict_round_trips_with_identical_outputs():
    state, backbone, head = _torchvision_state()
    assert "module.layer1.0.downsample.0.weight" in state and "module.conv1.weight" in state
    network = load_foreign(state)
    assert network.kind == "torchvision" and network.has_fc
    with torch.no_grad():
        pooled = backbone(IMAGES)[5].mean(dim=(2, 3))
        torch.testing.assert_close(network.features(IMAGES), pooled, rtol=0, atol=0)
        torch.testing.assert_close(network.logits(IMAGES), head(pooled), rtol=0, atol=0)
    assert not any(isinstance(m, SameConv2d) for m in network.module.modules())
    assert load_foreign(state, kind="timm").key() != network.key()
    assert load_foreign(state).key() == network.key()


def test_the_usual_prefixes_are_stripped_and_fc_is_optional(tmp_path):
    for prefix in ("", "backbone.", "module.encoder_q.", "module.base_encoder."):
        state, backbone, _ = _torchvision_state(prefix=prefix, fc=False)
        path = tmp_path / "weights.pth"
        torch.save({"state_dict": state, "epoch": 3}, path)
        network = load_foreign(path)
        assert not network.has_fc
        with torch.no_grad():
            torch.testing.assert_close(network.features(IMAGES), backbone(IMAGES)[5].mean(dim=(2, 3)), rtol=0, atol=0)
        with pytest.raises(ForeignWeightsError, match="no fc"):
            network.logits(IMAGES)


def test_missing_and_unexpected_keys_are_listed_by_name_in_one_error():
    state, _, _ = _torchvision_state()
    del state["module.layer2.1.bn2.running_var"]
    state["module.layer2.1.conv4.weight"] = torch.zeros(1)
    with pytest.raises(ForeignWeightsError) as caught:
        load_foreign(state)
    message = str(caught.value)
    assert "missing 1: layer2.1.bn2.running_var" in message
    assert "unexpected 1: layer2.1.conv4.weight" in message


def test_a_wrong_shape_is_one_error_naming_the_key_and_both_shapes():
    state, _, _ = _torchvision_state()
    state["module.layer3.0.conv2.weight"] = torch.zeros(32, 32, 5, 5)
    with pytest.raises(ForeignWeightsError, match=r"layer3\.0\.conv2\.weight: \(32, 32, 5, 5\) where the network has \(32, 32, 3, 3\)"):
        load_foreign(state)


def test_a_resnet18_state_dict_is_one_clear_error():
    backbone = ResNet("resnet18", 64)
    state = {_torchvision_name(k): v for k, v in backbone.state_dict().items() if ".last_bn." not in k}
    state.update({"fc.weight": torch.zeros(1000, 512), "fc.bias": torch.zeros(1000)})
    with pytest.raises(ForeignWeightsError, match=r"not a ResNet-50: BasicBlock .* \(2, 2, 2, 2\) \(resnet18\)"):
        load_foreign(state)


def test_a_project_checkpoint_or_a_wrong_kind_is_refused():
    model = VitoModel(tiny_model_cfg(), LossConfig())
    with pytest.raises(ForeignWeightsError, match="load_pretrained_model"):
        load_foreign(model.state_dict())
    state, _, _ = _torchvision_state()
    with pytest.raises(ForeignWeightsError, match="vito_port"):
        load_foreign(state, kind="vito_port")


def test_the_name_map_and_its_inverse():
    pairs = {
        "conv1.weight": "backbone.stem.0.weight",
        "bn1.running_mean": "backbone.stem.1.running_mean",
        "layer1.0.downsample.0.weight": "backbone.layer1.0.shortcut.0.weight",
        "layer4.0.downsample.1.bias": "backbone.layer4.0.shortcut.1.bias",
        "layer3.5.conv3.weight": "backbone.layer3.5.conv3.weight",
        "layer2.3.bn2.num_batches_tracked": "backbone.layer2.3.bn2.num_batches_tracked",
        "avgpool.module_list.4.weight": "pool.module_list.4.weight",
        "fc.bias": "fc.bias",
    }
    for foreign, project in pairs.items():
        assert foreign_to_project(foreign) == project
        assert project_to_foreign(project) == foreign
    module = ForeignResNet(4, pool="attention", pool_hidden=8, num_classes=3)
    aliases = project_aliases(module)
    # the project's blocks hold their last BN twice: bn3 and last_bn (the alias, never in a foreign file)
    assert aliases["backbone.layer1.0.last_bn.weight"] == "backbone.layer1.0.bn3.weight"
    assert len(aliases) == 16 * 5 and all(".last_bn." in name for name in aliases)
    assert all(foreign_to_project(project_to_foreign(name)) == name for name in module.state_dict() if name not in aliases)


# ---------------------------------------------------------------------------------------- the VITO port


def _port_state(width: int = 8, hidden: int = 64, fc: bool = True) -> tuple[dict, ForeignResNet]:
    torch.manual_seed(0)
    port = _randomise(ForeignResNet(width, padding="same", pool="attention", pool_hidden=hidden,
                                    num_classes=10 if fc else None))
    return {k: v.clone() for k, v in foreign_state_dict(port).items()}, port


def _pool_by_hand(features: torch.Tensor, state: dict) -> torch.Tensor:
    """The port's pool from its description: 1x1 convs with biases, ReLU, last without bias, softmax, sum."""
    h = F.relu(F.conv2d(features, state["avgpool.module_list.0.weight"], state["avgpool.module_list.0.bias"]))
    h = F.relu(F.conv2d(h, state["avgpool.module_list.2.weight"], state["avgpool.module_list.2.bias"]))
    weights = F.conv2d(h, state["avgpool.module_list.4.weight"]).flatten(1).softmax(dim=1)
    return (features.flatten(2) * weights[:, None]).sum(dim=2)


@pytest.mark.parametrize("fc", [True, False])
def test_a_vito_port_state_dict_round_trips_with_identical_outputs(fc):
    state, port = _port_state(fc=fc)
    assert "avgpool.module_list.4.weight" in state and "avgpool.module_list.4.bias" not in state
    assert ("fc.weight" in state) == fc
    network = load_foreign(state)
    assert network.kind == "vito_port" and network.has_fc == fc
    assert all(isinstance(m, SameConv2d) for m in network.module.backbone.modules() if isinstance(m, nn.Conv2d))
    with torch.no_grad():
        expected = port(IMAGES)
        torch.testing.assert_close(network.features(IMAGES), expected, rtol=0, atol=0)
        torch.testing.assert_close(expected, _pool_by_hand(port.backbone(IMAGES)[5], state), rtol=1e-5, atol=1e-6)
        if fc:
            torch.testing.assert_close(network.logits(IMAGES), port.fc(expected), rtol=0, atol=0)
    assert network.key().startswith("foreign:vito_port:")


def test_a_port_file_without_num_batches_tracked_still_loads(tmp_path):
    state, port = _port_state()
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    torch.save(state, tmp_path / "resnet50_vito.pth")
    network = load_foreign(tmp_path / "resnet50_vito.pth", kind="vito_port")
    torch.testing.assert_close(network.features(IMAGES), port(IMAGES), rtol=0, atol=0)


def test_the_port_pool_differs_from_the_project_pool_only_by_the_last_bias():
    pool = PortAttentionPool(8, 16)
    assert [type(m).__name__ for m in pool.module_list] == ["Conv2d", "ReLU", "Conv2d", "ReLU", "Conv2d"]
    assert pool.module_list[4].bias is None and pool.module_list[0].bias is not None
    weights = pool.attention(torch.randn(2, 8, 3, 3))
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(2))


def test_the_full_size_torchvision_layout_has_torchvisions_keys_and_count():
    state = foreign_state_dict(ForeignResNet(64, num_classes=1000))
    buffers = ("running_mean", "running_var", "num_batches_tracked")
    # torchvision's resnet50().state_dict(): 320 entries, 25,557,032 parameters
    assert len(state) == 320
    assert sum(v.numel() for k, v in state.items() if not k.endswith(buffers)) == 25_557_032


def test_the_full_size_port_has_42_342_440_parameters():
    torch.manual_seed(0)
    port = ForeignResNet(64, padding="same", pool="attention", pool_hidden=4096, num_classes=1000)
    state = foreign_state_dict(port)
    assert not any(".last_bn." in k for k in state)
    buffers = ("running_mean", "running_var", "num_batches_tracked")
    assert sum(v.numel() for k, v in state.items() if not k.endswith(buffers)) == PORT_PARAMETERS
    network = load_foreign(state)
    assert network.kind == "vito_port"
    assert sum(p.numel() for p in network.module.parameters()) == PORT_PARAMETERS
    assert network.module.pool.module_list[0].weight.shape == (4096, 2048, 1, 1)
    assert network.features(torch.randn(1, 3, 64, 64)).shape == (1, 2048)
