"""The user's benchmark copies, and the published weights an evaluate sweep names, checked before anything is
queued, where the submitting machine can see them.

The readout kinds (corruptions, class_subset, cue_conflict) are read with their own readers against the classes of
the head that will score them (vito/eval/layouts.py), so a wrong corruption name, severity folder or wnid is
refused here, naming the path. A root or file that is not visible from here (a path mounted only on the compute
nodes) is left to the job,
which checks every layout and loads the weights as its first act, and fails the trial with the reason tagged
(vito.evaluate_task).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vito.config import READOUT_KINDS
from vitolaunch.spec import SweepSpec, Trial


def check_benchmark_roots(spec: SweepSpec, trials: Sequence[Trial]) -> None:
    """Each benchmark root of the trials, in its standard layout (image folders first: a readout kind is read
    against its readout's classes); one located error for the first that is not. The readout kinds' layouts
    (corruption names and severities, wnid folders, the 16 categories) are checked with their own readers."""
    checked: set[str] = set()
    for trial in trials:
        benchmarks = trial.config.eval.benchmarks
        for name, bench in sorted(benchmarks.items(), key=lambda item: item[1].kind != "image_folder"):
            identity = json.dumps([name, bench.model_dump(), _readout_of(bench, benchmarks)], sort_keys=True)
            if identity in checked or not _visible(bench.root):
                continue
            checked.add(identity)
            from vito.eval.datasets.image_folder import LayoutError  # torch: only when a root is to be read
            from vito.eval.layouts import check_benchmark_layout

            try:
                check_benchmark_layout(bench, benchmarks, spec.storage.storage_options(), visible=_visible)
            except LayoutError as problem:
                key = f"eval.benchmarks.{name}.root"
                raise spec.error_at(("base", "eval", "benchmarks", name, "root"), str(problem), key=key,
                                    hint=_HINTS[bench.kind]) from None
    loads = _ForeignLoads()
    check_foreign_weights(spec, loads)
    check_own_heads(spec, trials, loads)


_HINTS = {
    "image_folder": "Point it at the folder that holds the splits, in the layout above.",
    "corruptions": "Point it at the folder of the corruption folders (<corruption>/<1-5>/<wnid>/), named as "
                   "ImageNet-C's or 3DCC's, with the wnids of the head that scores it.",
    "class_subset": "Point it at the folder of the wnid folders (ImageNet-A/R's layout), wnids of the head that "
                    "scores it.",
    "cue_conflict": "Point it at the folder of the 16 category folders of the cue-conflict images.",
    "davis": "Point it at the DAVIS root: JPEGImages/<res>/<seq>/*.jpg, Annotations/<res>/<seq>/*.png, "
             "ImageSets/2017/<split>.txt.",
    "ucf101": "Point it at the folder of class folders (<Class>/*.avi), with ucfTrainTestlist/ in it or named by "
              "splits_dir.",
}


def _readout_of(bench, benchmarks) -> object:
    """What a readout kind's check depends on besides itself: its readout benchmark's root and train split."""
    if bench.kind not in READOUT_KINDS or bench.head == "own":
        return None
    source = benchmarks[bench.readout]
    return [source.root, source.train_split]


def check_own_heads(spec: SweepSpec, trials: Sequence[Trial], loads: _ForeignLoads | None = None) -> None:
    """A benchmark with `head: own` scores through the 1000-way fc of published weights: a file visible here must
    hold that fc (a trial of a checkpoint with `head: own` is refused by the config, vito.config.EvalConfig)."""
    loads = loads or _ForeignLoads()
    for trial in trials:
        cfg = trial.config.eval
        own = [name for name, bench in cfg.benchmarks.items() if bench.kind in READOUT_KINDS and bench.head == "own"]
        if not own:
            continue
        where = ("base", "eval", "benchmarks", own[0], "head")
        key = f"eval.benchmarks.{own[0]}.head"
        hint = "Evaluate published weights whose file holds a 1000-way fc (evaluate.checkpoints: [{weights: ...}]), " \
               "or score through a trained readout (head: trained, readout: <image_folder benchmark>)."
        if cfg.weights is None or "://" in cfg.weights or not Path(cfg.weights).is_file():
            continue  # a checkpoint's trial is refused by the config; a file not visible here, by the job
        if problem := loads(cfg.weights, cfg.weights_kind).own_head_problem():
            raise spec.error_at(where, f"head: own needs eval.weights with a 1000-way fc; {cfg.weights}: {problem}",
                                key=key, hint=hint)


def check_foreign_weights(spec: SweepSpec, loads: _ForeignLoads | None = None) -> None:
    """Each `evaluate.checkpoints` entry of published weights visible from here exists and loads strictly (as
    the job will load it); one located error naming the entry and what does not fit otherwise."""
    if spec.evaluate is None:
        return
    from vitolaunch.launch.evaluate_targets import resolve_weights_path
    from vitolaunch.spec.schema import PublishedWeights

    loads = loads or _ForeignLoads()
    for index, entry in enumerate(spec.evaluate.checkpoints):
        if not isinstance(entry, PublishedWeights):
            continue
        path = resolve_weights_path(spec, entry.weights)
        if "://" in path:
            continue  # a URL: loaded by the job, with its credentials
        where = ("evaluate", "checkpoints", index, "weights")
        key = f"evaluate.checkpoints.{index}.weights"
        if not Path(path).is_file():
            if Path(path).parent.exists():  # its folder is here: the file is missing, not merely not mounted
                raise spec.error_at(where, f"{path}: no such file", key=key,
                                    hint="Name a file of ResNet-50 weights (torchvision, timm or the VITO port's).")
            continue  # not visible from this machine: the job checks it first thing
        try:
            loads(path, entry.kind)
        except (ValueError, OSError) as problem:  # ForeignWeightsError is a ValueError
            raise spec.error_at(where, f"{path}: {problem}", key=key,
                                hint="Give kind: torchvision | timm | vito_port, or a file in one of these layouts.") from None


class _ForeignLoads:
    """Weights files loaded strictly, each once per submission: the entry's check and every `head: own` trial of
    it share the load (a ResNet-50 file is ~100 MB). Per submission, so a file fixed and resubmitted is re-read."""

    def __init__(self) -> None:
        self._loaded: dict[tuple[str, str | None], Any] = {}

    def __call__(self, path: str, kind: str | None):
        if (path, kind) not in self._loaded:
            from vito.eval.foreign_weights import load_foreign

            self._loaded[path, kind] = load_foreign(path, kind)
        return self._loaded[path, kind]


def _visible(root: str) -> bool:
    """A local path that exists here; remote roots (s3://) are checked in the job, with its credentials."""
    return "://" not in root and Path(root).exists()
