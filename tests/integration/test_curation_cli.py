"""`vitolaunch data curate` with a small classifier trained here on the synthetic labels: the curated
manifest's class histogram moves toward the target, and the report says by how much."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.integration.local_sweeps import vitolaunch

CLASSES = ["circle", "square", "triangle"]


def _synthetic(root: Path, split: str, count: int):
    from vito.config import SyntheticConfig
    from vito.data.manifest import read_manifest
    from vito.data.synthetic import ensure_synthetic_videos

    cfg = SyntheticConfig(num_videos=count, num_frames=8, fps=8, size=32, num_classes=3, object_scale=1.6, seed=9)
    return read_manifest(ensure_synthetic_videos(root, cfg, split=split, num_videos=count))


def _train_classifier(records, path: Path) -> float:
    """A small grayscale CNN on every frame of `records`; saved as TorchScript with its class names."""
    from vito.data.video import decode_all_frames

    frames, labels = [], []
    for record in records:
        clip = torch.from_numpy(decode_all_frames(record.uri)).permute(0, 3, 1, 2).float() / 255
        frames.append(clip)
        labels += [record.label] * len(clip)
    x, y = torch.cat(frames), torch.tensor(labels)
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(32, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveMaxPool2d(1), torch.nn.Flatten(),
        torch.nn.Linear(32, len(CLASSES)),
    )
    optimizer = torch.optim.Adam(net.parameters(), 3e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(250):
        batch = torch.randint(len(x), (64,), generator=generator)
        loss = F.cross_entropy(net((x[batch] - 0.5) / 0.25), y[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    net.eval()
    torch.jit.script(net).save(str(path))
    with torch.no_grad():
        return float((net((x - 0.5) / 0.25).argmax(1) == y).float().mean())


@pytest.mark.timeout(300)
def test_curation_moves_the_histogram_toward_the_target(tmp_path: Path):
    from vito.data.manifest import read_manifest, write_manifest

    torch.set_num_threads(1)
    train_accuracy = _train_classifier(_synthetic(tmp_path / "data", "classifier_train", 24), tmp_path / "clf.pt")
    assert train_accuracy > 0.5, "the classifier should have learnt something of the labels"
    (tmp_path / "classes.txt").write_text("\n".join(CLASSES) + "\n")

    # Unbalanced candidates: 18 circles, 9 squares, 3 triangles (by their source labels).
    pool = _synthetic(tmp_path / "data", "candidates", 54)
    keep = {0: 18, 1: 9, 2: 3}
    candidates = [r for r in pool if keep[r.label] > 0 and not keep.__setitem__(r.label, keep[r.label] - 1)]
    manifest = tmp_path / "candidates.jsonl"
    write_manifest(manifest, candidates)

    out = vitolaunch(tmp_path / "home", "data", "curate", str(manifest), "--classifier", str(tmp_path / "clf.pt"),
                     "--out", str(tmp_path / "curated.jsonl"), "--classes", str(tmp_path / "classes.txt"),
                     "--input-size", "32", "--mean", "0.5,0.5,0.5", "--std", "0.25,0.25,0.25",
                     "--min-confidence", "0.4", "--frames", "3", timeout=240).stdout
    report = json.loads((tmp_path / "curated.report.json").read_text())
    assert "total variation to the target" in out and f"reduced by {report['total_variation_reduction']:.3f}" in out

    before, after = report["histogram"]["candidates"], report["histogram"]["curated"]
    assert sum(before.values()) == 30 and report["curated"] > 0
    reachable = [c for c in CLASSES if report["histogram"]["confident"].get(c)]
    assert len(reachable) >= 2
    assert len({after.get(c, 0) for c in reachable}) == 1, after  # equal counts: uniform over what can be reached
    tv = report["total_variation_to_target"]
    assert tv["curated"] < tv["candidates"] and report["total_variation_reduction"] > 0.05, tv
    curated = read_manifest(tmp_path / "curated.jsonl")
    assert len(curated) == report["curated"]
    assert all(r.label_name in CLASSES and r.score >= 0.4 for r in curated)
    assert 0.0 <= report["agreement_with_source_labels"] <= 1.0

    # A histogram target: twice as many squares as circles.
    (tmp_path / "hist.json").write_text(json.dumps({"circle": 1, "square": 2}))
    vitolaunch(tmp_path / "home", "data", "curate", str(manifest), "--classifier", str(tmp_path / "clf.pt"),
               "--out", str(tmp_path / "curated2.jsonl"), "--classes", str(tmp_path / "classes.txt"),
               "--input-size", "32", "--mean", "0.5,0.5,0.5", "--std", "0.25,0.25,0.25", "--target",
               str(tmp_path / "hist.json"), "--min-confidence", "0.0", "--frames", "2", timeout=240)
    second = json.loads((tmp_path / "curated2.report.json").read_text())
    after2 = second["histogram"]["curated"]
    assert set(after2) <= {"circle", "square"}
    assert after2.get("circle", 0) > 0 and after2.get("square") == 2 * after2["circle"], after2
    assert second["total_variation_to_target"]["curated"] < second["total_variation_to_target"]["candidates"]
    assert np.isclose(sum(second["target"].values()), 1.0)
