"""`evaluate.checkpoints` entries of published weights: the spec entry, its validation before anything is
queued, the evaluation trial's config (eval.weights, omitted at its default), and the job's refusal, tagged."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch

from tests.unit.fake_registry import FakeRegistry
from vito.config import VitoConfig
from vito.eval.foreign_weights import ForeignResNet, foreign_state_dict
from vitolaunch.errors import SpecError
from vitolaunch.launch.benchmark_check import check_benchmark_roots
from vitolaunch.launch.evaluate_targets import expand_evaluate
from vitolaunch.spec import expand, load_spec
from vitolaunch.spec.schema import PublishedWeights


def _weights(path: Path, fc: bool = False, drop: str | None = None) -> Path:
    state = foreign_state_dict(ForeignResNet(8, num_classes=10 if fc else None))
    if drop:
        del state[drop]
    torch.save(state, path)
    return path


def _spec(folder: Path, entries: str) -> Path:
    path = folder / "evaluate.yaml"
    body = textwrap.indent(textwrap.dedent(entries), "    ")
    path.write_text(f"name: ev\ntask: evaluate\nevaluate:\n  checkpoints:\n{body}base: {{eval: {{synthetic_suite: false}}}}\n")
    return path


def test_strings_stay_checkpoint_roots_and_mappings_are_published_weights(tmp_path: Path) -> None:
    spec = load_spec(_spec(tmp_path, """\
        - /ckpt/a
        - {weights: /models/resnet50_vito_linear_sdattn.pth, kind: vito_port, name: vito-released}
        - {weights: /models/resnet50-torchvision.pth}
        """))
    plain, released, supervised = spec.evaluate.checkpoints
    assert plain == "/ckpt/a"
    assert isinstance(released, PublishedWeights) and released.kind == "vito_port" and released.label == "vito-released"
    assert supervised.kind is None and supervised.label == "resnet50-torchvision.pth", "default label: the file name"
    with pytest.raises(SpecError, match="kind"):
        load_spec(_spec(tmp_path, "- {weights: /m.pth, kind: caffe}\n"))
    with pytest.raises(SpecError, match="weight"):
        load_spec(_spec(tmp_path, "- {weigths: /m.pth}\n"))


def test_a_published_entry_becomes_a_trial_with_eval_weights_labelled_by_its_name(tmp_path: Path) -> None:
    _weights(tmp_path / "tv.pth")
    spec = load_spec(_spec(tmp_path, "- {weights: tv.pth, kind: torchvision, name: supervised}\n"))
    check_benchmark_roots(spec, [])  # visible, loads strictly: no error
    (trial,) = expand_evaluate(spec, expand(spec), FakeRegistry({}, {})).trials
    assert trial.config.eval.weights == str(tmp_path / "tv.pth"), "relative to the spec's folder"
    assert trial.config.eval.weights_kind == "torchvision" and trial.config.eval.checkpoint is None
    assert trial.params == {"pretrain.weights": "supervised"}
    from vitolaunch.results.benchmark_table import checkpoint_label

    assert checkpoint_label(trial.params) == "weights=supervised"


def test_weights_that_do_not_load_are_one_located_error_naming_the_key(tmp_path: Path) -> None:
    _weights(tmp_path / "broken.pth", drop="layer2.0.conv1.weight")
    spec = load_spec(_spec(tmp_path, "- /ckpt/a\n- {weights: broken.pth, name: broken}\n"))
    with pytest.raises(SpecError) as caught:
        check_benchmark_roots(spec, [])
    text = str(caught.value)
    assert "evaluate.checkpoints.1.weights" in text and "layer2.0.conv1.weight" in text and "missing 1" in text
    assert "evaluate.yaml:" in text, text
    _weights(tmp_path / "tv.pth")
    spec = load_spec(_spec(tmp_path, "- {weights: tv.pth, kind: vito_port}\n"))
    with pytest.raises(SpecError, match=r"evaluate.checkpoints.0.weights.*vito_port"):
        check_benchmark_roots(spec, [])
    spec = load_spec(_spec(tmp_path, "- {weights: nothere.pth}\n"))
    with pytest.raises(SpecError, match="no such file"):
        check_benchmark_roots(spec, [])


def test_weights_not_visible_from_here_are_left_to_the_job(tmp_path: Path) -> None:
    spec = load_spec(_spec(tmp_path, "- {weights: /mnt/only-on-nodes/rn50.pth}\n- {weights: 's3://b/rn50.pth'}\n"))
    check_benchmark_roots(spec, [])


def test_the_new_keys_are_omitted_at_their_defaults_and_exclude_a_checkpoint() -> None:
    default = VitoConfig()
    dumped = default.to_dict()["eval"]
    assert "weights" not in dumped and "weights_kind" not in dumped
    assert VitoConfig.model_validate(default.to_dict()).fingerprint() == default.fingerprint()
    foreign = VitoConfig.model_validate({"eval": {"weights": "/m.pth", "weights_kind": "timm"}})
    assert foreign.to_dict()["eval"]["weights"] == "/m.pth" and foreign.fingerprint() != default.fingerprint()
    with pytest.raises(ValueError, match="exclude each other"):
        VitoConfig.model_validate({"eval": {"weights": "/m.pth", "checkpoint": "/c"}})
    with pytest.raises(ValueError, match="needs eval.weights"):
        VitoConfig.model_validate({"eval": {"weights_kind": "timm"}})


class _Tags:
    def __init__(self) -> None:
        self.tags: dict[str, str] = {}

    def set_tags(self, tags: dict[str, str]) -> None:
        self.tags.update(tags)


def test_the_job_refuses_weights_that_do_not_load_with_the_reason_tagged(tmp_path: Path) -> None:
    from vito.evaluate_task import EVAL_ERROR_TAG, load_weights_checked

    metrics = _Tags()
    cfg = VitoConfig.model_validate({"eval": {"weights": str(tmp_path / "missing.pth")}})
    with pytest.raises(FileNotFoundError, match="eval.weights"):
        load_weights_checked(cfg, {}, metrics)
    assert metrics.tags[EVAL_ERROR_TAG].startswith("eval.weights ")
    _weights(tmp_path / "broken.pth", drop="layer1.0.bn1.weight")
    cfg = VitoConfig.model_validate({"eval": {"weights": str(tmp_path / "broken.pth")}})
    with pytest.raises(ValueError, match="layer1.0.bn1.weight"):
        load_weights_checked(cfg, {}, metrics)
    assert "layer1.0.bn1.weight" in metrics.tags[EVAL_ERROR_TAG]
    _weights(tmp_path / "fc.pth", fc=True)
    cfg = VitoConfig.model_validate({"eval": {"weights": str(tmp_path / "fc.pth")}})
    assert load_weights_checked(cfg, {}, metrics).has_fc
