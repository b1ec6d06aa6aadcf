"""VideoNet-style curation: balancing arithmetic, target parsing, classifier loading, and a whole curation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from vito.config import SyntheticConfig
from vito.data.curate import (
    balanced_counts,
    curate,
    curate_manifest,
    format_report,
    load_classifier,
    parse_target,
    total_variation,
)
from vito.data.manifest import VideoRecord, read_manifest
from vito.data.synthetic import ensure_synthetic_videos

torch.set_num_threads(1)


def test_total_variation() -> None:
    assert total_variation({0: 5, 1: 5}, {0: 0.5, 1: 0.5}) == 0.0
    assert total_variation({0: 10}, {0: 0.5, 1: 0.5}) == pytest.approx(0.5)
    assert total_variation({0: 3, 1: 1}, {0: 0.5, 1: 0.5}) == pytest.approx(0.25)
    assert total_variation({}, {0: 1.0}) == 1.0


def test_balanced_counts_exact_proportions() -> None:
    uniform = {0: 1 / 3, 1: 1 / 3, 2: 1 / 3}
    assert balanced_counts({0: 50, 1: 7, 2: 20}, uniform) == {0: 7, 1: 7, 2: 7}
    skewed = {0: 0.5, 1: 0.25, 2: 0.25}
    assert balanced_counts({0: 50, 1: 7, 2: 20}, skewed) == {0: 14, 1: 7, 2: 7}
    # A class with no candidates is unreachable: the rest are balanced among themselves.
    assert balanced_counts({0: 9, 2: 4}, uniform) == {0: 4, 2: 4}
    assert balanced_counts({}, uniform) == {}
    assert balanced_counts({0: 50, 1: 50}, {0: 0.5, 1: 0.5}, max_total=10) == {0: 5, 1: 5}
    # 1:2 with room for 4.5 circles and 9 squares: flooring at the limit gives 4 and 9; 4 and 8 is exact.
    assert balanced_counts({0: 5, 1: 9}, {0: 1 / 3, 1: 2 / 3}) == {0: 4, 1: 8}


def test_balanced_counts_tolerance_keeps_more_within_the_bound() -> None:
    available = {0: 100, 1: 10, 2: 40}
    target = {0: 1 / 3, 1: 1 / 3, 2: 1 / 3}
    exact = balanced_counts(available, target)
    loose = balanced_counts(available, target, tolerance=0.2)
    assert sum(loose.values()) > sum(exact.values())
    assert total_variation(loose, target) <= 0.2 + 1e-9
    assert all(loose[c] <= available[c] for c in loose)
    assert balanced_counts(available, target, tolerance=1.0) == available  # anything goes: keep all


def test_parse_target(tmp_path: Path) -> None:
    classes = ["cat", "dog", "fish"]
    assert parse_target("uniform", classes) == pytest.approx({0: 1 / 3, 1: 1 / 3, 2: 1 / 3})
    hist = tmp_path / "hist.json"
    hist.write_text(json.dumps({"dog": 3, "fish": 1}))
    assert parse_target(str(hist), classes) == {1: 0.75, 2: 0.25}
    assert parse_target([1, 1, 2], classes) == {0: 0.25, 1: 0.25, 2: 0.5}
    with pytest.raises(ValueError, match="bird"):
        parse_target({"bird": 1}, classes)


class ColourClassifier(torch.nn.Module):
    """Deterministic stand-in: class = the dominant colour channel of the frame's mean, confidently."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3)) * 20.0


def save_classifier(path: Path, kind: str) -> Path:
    module = ColourClassifier()
    if kind == "torchscript":
        torch.jit.script(module).save(str(path))
    elif kind == "module":
        torch.save(module, path)
    else:
        torch.save({"state_dict": module.state_dict(), "factory": f"{__name__}:ColourClassifier",
                    "classes": ["red", "green", "blue"], "input_size": 24}, path)
    return path


@pytest.mark.parametrize("kind", ["torchscript", "module", "state_dict"])
def test_any_torch_checkpoint_loads(tmp_path: Path, kind: str) -> None:
    classifier = load_classifier(save_classifier(tmp_path / "clf.pt", kind))
    assert not classifier.model.training
    logits = classifier.model(torch.ones(2, 3, 8, 8))
    assert logits.shape == (2, 3)


def test_a_state_dict_checkpoint_carries_its_class_names_and_input_size(tmp_path: Path) -> None:
    classifier = load_classifier(save_classifier(tmp_path / "clf.pt", "state_dict"))
    assert classifier.classes == ["red", "green", "blue"] and classifier.input_size == 24


def test_state_dict_without_factory_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "sd.pt"
    torch.save({"state_dict": ColourClassifier().state_dict()}, path)
    with pytest.raises(ValueError, match="factory"):
        load_classifier(path)


@pytest.fixture(scope="module")
def candidates(tmp_path_factory: pytest.TempPathFactory) -> list[VideoRecord]:
    cfg = SyntheticConfig(num_videos=30, num_frames=8, fps=8, size=32, num_classes=3, seed=2)
    records = read_manifest(ensure_synthetic_videos(tmp_path_factory.mktemp("cands"), cfg))
    broken = tmp_path_factory.mktemp("broken") / "broken.mp4"
    broken.write_bytes(b"nope" * 30)
    return records + [VideoRecord(str(broken), 1.0, 8.0, 8)]


def test_curation_moves_the_histogram_to_the_target_and_reports_by_how_much(tmp_path, candidates) -> None:
    classifier = load_classifier(save_classifier(tmp_path / "clf.pt", "state_dict"))
    classifier.input_size = 16
    result = curate(candidates, classifier, target="uniform", min_confidence=0.4, frames=2, workers=2)
    report = result.report
    assert report["candidates"] == 31 and report["unreadable"] == 1
    assert report["unreadable_videos"][0]["uri"].endswith("broken.mp4")
    before = report["histogram"]["candidates"]
    after = report["histogram"]["curated"]
    assert sum(before.values()) == 30 and len(set(before.values())) > 1, "the candidates should be unbalanced"
    reachable = [name for name in report["classes"] if report["histogram"]["confident"].get(name)]
    assert len({after[name] for name in reachable}) == 1, "curated counts are equal across reachable classes"
    tv = report["total_variation_to_target"]
    assert tv["curated"] < tv["candidates"]
    assert report["total_variation_reduction"] == pytest.approx(tv["candidates"] - tv["curated"], abs=1e-6)
    assert len(result.curated) == report["curated"] == sum(after.values())
    for record in result.curated:
        assert record.label_name == report["classes"][record.label] and record.score >= 0.4
    text = format_report(report)
    assert "total variation to the target" in text and "reduced by" in text


def test_curate_manifest_writes_manifest_and_respects_a_histogram_target(tmp_path, candidates) -> None:
    from vito.data.manifest import write_manifest

    manifest = tmp_path / "candidates.jsonl"
    write_manifest(manifest, candidates)
    hist = tmp_path / "hist.json"
    hist.write_text(json.dumps({"red": 2, "green": 1, "blue": 1}))
    out = tmp_path / "curated.jsonl"
    report = curate_manifest(manifest, save_classifier(tmp_path / "clf.pt", "state_dict"), out, target=str(hist),
                             min_confidence=0.0, frames=2, input_size=16, workers=1)
    curated = read_manifest(out)
    assert len(curated) == report["curated"] > 0
    after = report["histogram"]["curated"]
    assert after.get("green", 0) > 0 and after.get("red") == 2 * after["green"], after
    assert report["total_variation_to_target"]["curated"] <= report["total_variation_to_target"]["candidates"]
