"""The readout kinds' layouts are checked before anything is queued (vitolaunch/launch/benchmark_check.py through
vito/eval/layouts.py): through the CLI's sweep path, a corruption tree with a wrong severity folder or an unknown
wnid, a class subset with a foreign folder and a cue-conflict folder missing categories are refused with the
reader's error naming the path, and nothing is submitted."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.eval_images import write_jpeg

REPO = Path(__file__).resolve().parents[2]
WNIDS = ("n02504013", "n02690373")


def _weights(path: Path) -> Path:
    import torch

    from vito.eval.foreign_weights import ForeignResNet, foreign_state_dict

    torch.manual_seed(0)
    torch.save(foreign_state_dict(ForeignResNet(8, num_classes=1000)), path)
    return path


def _layouts(root: Path) -> dict[str, Path]:
    for split in ("train", "val"):
        for wnid in WNIDS:
            write_jpeg(root / "imagenet" / split / wnid / "a.JPEG", seed=1)
    for severity in (1, 2, 3, 4, 5):
        for wnid in WNIDS:
            write_jpeg(root / "imagenet-c" / "contrast" / str(severity) / wnid / "a.JPEG", seed=2)
    write_jpeg(root / "imagenet-r" / WNIDS[1] / "a.JPEG", seed=3)
    return {"imagenet": root / "imagenet", "c": root / "imagenet-c", "r": root / "imagenet-r"}


def _spec(folder: Path, roots: dict[str, Path], weights: Path, **benchmark) -> Path:
    benchmarks = {
        "imagenet": {"root": str(roots["imagenet"])},
        "c": {"kind": "corruptions", "root": str(roots["c"]), "readout": "imagenet"},
        "r": {"kind": "class_subset", "root": str(roots["r"]), "readout": "imagenet"},
        **benchmark,
    }
    spec = {"name": "layouts", "task": "evaluate", "evaluate": {"checkpoints": [{"weights": str(weights)}]},
            "base": {"eval": {"benchmarks": benchmarks}}, "resources": {"cluster": "local"}}
    path = folder / "layouts.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _sweep(spec: Path, home: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "VITOLAUNCH_HOME": str(home), "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "vitolaunch.cli", "sweep", str(spec), *extra], capture_output=True,
                          text=True, env=env, cwd=REPO, timeout=120)


@pytest.fixture()
def setup(tmp_path: Path):
    return tmp_path, _layouts(tmp_path / "data"), _weights(tmp_path / "r50.pth")


def _refusal(folder: Path, roots: dict[str, Path], weights: Path, **benchmark) -> str:
    """The pre-queue check in process (what the CLI runs before queueing): its SpecError's message."""
    from vitolaunch.errors import SpecError
    from vitolaunch.launch.benchmark_check import check_benchmark_roots
    from vitolaunch.spec import expand, load_spec

    spec = load_spec(_spec(folder, roots, weights, **benchmark))
    with pytest.raises(SpecError) as refusal:
        check_benchmark_roots(spec, expand(spec))
    return str(refusal.value)


@pytest.mark.timeout(120)
def test_through_the_cli_a_wrong_severity_folder_is_refused_naming_the_path_and_nothing_is_submitted(setup):
    folder, roots, weights = setup
    home = folder / "home"
    result = _sweep(_spec(folder, roots, weights), home, "--dry-run")
    assert result.returncode == 0 and "nothing submitted" in result.stdout, result.stderr  # the right layouts pass
    (roots["c"] / "contrast" / "6").mkdir()
    result = _sweep(_spec(folder, roots, weights), home)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "eval.benchmarks.c.root" in result.stderr, result.stderr
    assert f"{roots['c']}/contrast: severity folder(s) 6 outside 1..5" in result.stderr, result.stderr
    assert not (home / "logs").exists() and not list(home.rglob("*.sbatch")), "nothing may be submitted"


@pytest.mark.parametrize("breaking, key, message", [
    (lambda r: (r["c"] / "contrast" / "3" / "n01440764").mkdir(), "eval.benchmarks.c.root",
     r"imagenet-c/contrast/3: 1 wnid folder\(s\) not among the readout's 2 classes: n01440764"),
    (lambda r: (r["c"] / "contrast").rename(r["c"] / "contrasts"), "eval.benchmarks.c.root",
     r"imagenet-c: no imagenet-c corruption folder \(found contrasts"),
    (lambda r: write_jpeg(r["r"] / "stray.JPEG", seed=4), "eval.benchmarks.r.root",
     r"imagenet-r: 1 image file\(s\) directly under imagenet-r/"),
    (lambda r: (r["r"] / "n09999999").mkdir(), "eval.benchmarks.r.root",
     r"imagenet-r: 1 folder\(s\) not among the readout's 2 classes: n09999999"),
])
def test_each_wrong_readout_layout_is_refused_with_the_readers_error(setup, breaking, key, message) -> None:
    import re

    folder, roots, weights = setup
    breaking(roots)
    refusal = _refusal(folder, roots, weights)
    assert f"key '{key}'" in refusal and re.search(message, refusal), refusal


def test_a_cue_conflict_folder_without_its_categories_and_an_own_head_without_fc(setup) -> None:
    folder, roots, weights = setup
    (folder / "cue" / "cat").mkdir(parents=True)
    refusal = _refusal(folder, roots, weights, cue={"kind": "cue_conflict", "root": str(folder / "cue"), "head": "own"})
    assert "eval.benchmarks.cue.root" in refusal and f"{folder / 'cue'}: category folder(s) airplane" in refusal

    import torch

    from vito.eval.foreign_weights import ForeignResNet, foreign_state_dict
    from vitolaunch.errors import SpecError
    from vitolaunch.launch.benchmark_check import check_own_heads
    from vitolaunch.spec import expand, load_spec

    torch.save(foreign_state_dict(ForeignResNet(8)), weights)  # no fc
    spec = load_spec(_spec(folder, roots, weights, c={"kind": "corruptions", "root": str(roots["c"]), "head": "own"}))
    trials = expand(spec)
    for trial in trials:  # as the evaluate target's resolution sets it for published weights
        trial.config.eval.weights = str(weights)
    with pytest.raises(SpecError) as refusal:
        check_own_heads(spec, trials)
    assert "eval.benchmarks.c.head" in str(refusal.value) and "holds no fc" in str(refusal.value), refusal.value
