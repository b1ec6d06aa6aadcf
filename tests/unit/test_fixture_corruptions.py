"""The fixtures' 19 ImageNet-C corruptions (vito/eval/fixtures/corruptions.py), the complete tree the fixtures
command writes with them (read back by the ImageNet-C reader, scored into an mCE), and its published-weights
files (loaded through load_foreign, their kinds detected)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from vito.config import SyntheticConfig
from vito.data.synthetic import render_clip
from vito.eval.datasets.corruption_tree import (
    IMAGENET_C_BENCHMARK,
    IMAGENET_C_EXTRA,
    KNOWN_CORRUPTIONS,
    SEVERITIES,
    read_corruption_tree,
)
from vito.eval.datasets.imagenet_classes import IMAGENET_WNIDS
from vito.eval.fixtures.corruptions import CORRUPTIONS, corrupt
from vito.eval.scoring.robustness_metrics import imagenet_c_errors

# corruptions that draw random fields: another seed must give another image
RANDOM = {"gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise", "glass_blur", "motion_blur", "snow",
          "frost", "fog", "elastic_transform", "spatter"}


def _frames(size: int = 40, count: int = 4) -> torch.Tensor:
    """(count, 3, size, size) frames of the synthetic videos (the fixtures' source), float in [0, 1]."""
    cfg = SyntheticConfig(size=size, num_frames=2, num_classes=4, background_pool=8, object_scale=1.6,
                          distractor_p=0.0)
    rng = np.random.default_rng(0)
    frames = [render_clip(k % 4, cfg, rng)[0] for k in range(count)]
    return torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float().div(255)


def test_the_corruptions_are_the_19_names_the_reader_knows_in_its_order():
    assert tuple(CORRUPTIONS) == IMAGENET_C_BENCHMARK + IMAGENET_C_EXTRA == KNOWN_CORRUPTIONS["imagenet-c"]
    assert len(CORRUPTIONS) == 19 and RANDOM < set(CORRUPTIONS)


@pytest.mark.parametrize("size", [40, 64])
@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_each_corruption_grows_with_severity_and_is_deterministic(name, size):
    clean = _frames(size)
    outputs = [corrupt(clean, name, severity, seed=3) for severity in SEVERITIES]
    for out in outputs:
        assert out.shape == clean.shape and out.dtype == torch.float32
        assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    distances = [float((out - clean).abs().mean()) for out in outputs]
    assert distances[0] > 0.002, f"{name} at severity 1 barely changes the image: {distances}"
    assert all(later > earlier for earlier, later in zip(distances, distances[1:])), f"{name}: {distances}"
    assert torch.equal(corrupt(clean, name, 4, seed=3), outputs[3])
    other_seed = corrupt(clean, name, 4, seed=4)
    assert torch.equal(other_seed, outputs[3]) != (name in RANDOM)


def test_a_corruption_leaves_its_input_alone_and_refuses_bad_arguments():
    clean = _frames(32, 2)
    copy = clean.clone()
    for name in CORRUPTIONS:
        corrupt(clean, name, 5)
    assert torch.equal(clean, copy)
    with pytest.raises(ValueError, match="unknown corruption 'jpeg'"):
        corrupt(clean, "jpeg", 1)
    with pytest.raises(ValueError, match="severity must be 1..5"):
        corrupt(clean, "fog", 6)
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        corrupt(clean[:, :1], "fog", 1)


def test_the_fixtures_command_writes_a_complete_tree_with_an_mce_and_both_weights_layouts(tmp_path: Path):
    from click.testing import CliRunner

    from vito.eval.fixtures.weights import FIXTURE_WEIGHTS
    from vito.eval.foreign_weights import load_foreign
    from vitolaunch.cli import main

    result = CliRunner().invoke(main, ["data", "fixtures", str(tmp_path), "--classes", "2", "--train-per-class", "1",
                                       "--val-per-class", "2"])
    assert result.exit_code == 0, result.output
    assert "19 corruptions" in result.output and "RANDOM width-8 ResNet-50s" in result.output

    tree = read_corruption_tree(str(tmp_path / "imagenet-c"), IMAGENET_WNIDS)
    assert tree.corruptions == list(KNOWN_CORRUPTIONS["imagenet-c"])
    assert tree.missing == [] and tree.unknown == []
    assert tree.counts() == {name: {s: 4 for s in SEVERITIES} for name in CORRUPTIONS}  # 2 classes x 2 val images
    # every top-1 made up, the same for each severity: CE_c = (1 - top1) / AlexNet's error, averaged over 15
    table = {name: {s: 0.5 for s in SEVERITIES} for name in tree.corruptions}
    scored = imagenet_c_errors(table, clean_top1=0.9)
    assert scored.missing == [] and scored.mce is not None and scored.relative_mce is not None
    assert set(scored.ce) == set(IMAGENET_C_BENCHMARK) and set(scored.extra_errors) == set(IMAGENET_C_EXTRA)
    assert scored.mce == pytest.approx(np.mean([0.5 / e for e in scored.alexnet_errors.values()]))

    for kind, name in FIXTURE_WEIGHTS.items():
        network = load_foreign(tmp_path / "weights" / name)  # kind detected from the keys
        assert network.kind == kind
        assert network.has_fc == (kind == "torchvision")
        assert network.features(torch.rand(2, 3, 40, 40)).shape == (2, 256)  # width 8: 8 x 32 layer4 channels
        assert network.module.backbone.stem[0].out_channels == 8
        assert (tmp_path / "weights" / name).stat().st_size < 4_000_000


def test_the_weights_fixtures_are_seeded_and_in_their_real_layouts(tmp_path: Path):
    from vito.eval.fixtures.weights import write_foreign_weights
    from vito.eval.foreign_weights import load_foreign

    first = write_foreign_weights(tmp_path / "a")
    again = write_foreign_weights(tmp_path / "b")
    other = write_foreign_weights(tmp_path / "c", seed=1)
    digests = {kind: load_foreign(path).digest for kind, path in first.items()}
    assert digests == {kind: load_foreign(path).digest for kind, path in again.items()}
    assert all(load_foreign(path).digest != digests[kind] for kind, path in other.items())
    port = torch.load(first["vito_port"], weights_only=True)
    assert {"avgpool.module_list.0.weight", "avgpool.module_list.2.weight", "avgpool.module_list.4.weight"} <= set(port)
    assert "fc.weight" not in port and "conv1.weight" in port
    supervised = torch.load(first["torchvision"], weights_only=True)
    assert supervised["fc.weight"].shape == (1000, 256) and "layer1.0.downsample.0.weight" in supervised
    from vito.model import SameConv2d

    assert isinstance(load_foreign(first["vito_port"]).module.backbone.stem[0], SameConv2d)
    assert not isinstance(load_foreign(first["torchvision"]).module.backbone.stem[0], SameConv2d)


def test_the_quickstart_evaluation_names_both_weights_layouts_and_no_own_head():
    """sweeps/quickstart_eval.yaml: its published-weights entries are the files the fixtures command writes, and
    its benchmarks (ucf101 and davis among them, kinds without a `head`) ask for no own head."""
    import yaml

    from vito.config import VitoConfig
    from vito.eval.fixtures.weights import FIXTURE_WEIGHTS
    from vito.evaluate_task import own_head_benchmarks

    spec = yaml.safe_load((Path(__file__).parents[2] / "sweeps" / "quickstart_eval.yaml").read_text())
    entries = spec["evaluate"]["checkpoints"]
    assert {(Path(e["weights"]).name, e["kind"]) for e in entries} == {(n, k) for k, n in FIXTURE_WEIGHTS.items()}
    assert spec["evaluate"]["runs"] == ["quickstart"]
    cfg = VitoConfig.model_validate({"eval": {**spec["base"]["eval"], "weights": "w.pth"}})
    assert {b.kind for b in cfg.eval.benchmarks.values()} >= {"ucf101", "davis", "corruptions"}
    assert own_head_benchmarks(cfg) == []
    cfg.eval.benchmarks["imagenet_c"] = cfg.eval.benchmarks["imagenet_c"].model_copy(update={"head": "own",
                                                                                             "readout": None})
    assert own_head_benchmarks(cfg) == ["imagenet_c"]
