"""The user's benchmark copies, and the published weights an evaluate sweep names, checked before anything is
queued, where the submitting machine can see them.

A root or file that is not visible from here (a path mounted only on the compute nodes) is left to the job,
which checks every layout and loads the weights as its first act, and fails the trial with the reason tagged
(vito.evaluate_task).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from vitolaunch.spec import SweepSpec, Trial


def check_benchmark_roots(spec: SweepSpec, trials: Sequence[Trial]) -> None:
    """Each benchmark root of the trials, in its standard layout; one located error for the first that is not."""
    checked: set[tuple[str, str, str, str]] = set()
    for trial in trials:
        for name, bench in trial.config.eval.benchmarks.items():
            if bench.kind == "davis":
                _check_davis(spec, name, bench, checked)
                continue
            if bench.kind != "image_folder":
                continue  # the readout kinds' readers check their layouts in the job (they need the readout)
            identity = (name, bench.root, bench.train_split, bench.val_split)
            if identity in checked or not _visible(bench.root):
                continue
            checked.add(identity)
            from vito.eval.datasets.image_folder import LayoutError, check_layout

            try:
                check_layout(bench.root, (bench.train_split, bench.val_split), spec.storage.storage_options())
            except LayoutError as problem:
                key = f"eval.benchmarks.{name}.root"
                raise spec.error_at(("base", "eval", "benchmarks", name, "root"), str(problem), key=key,
                                    hint="Point it at the folder that holds the splits, in the layout above.") from None
    check_foreign_weights(spec)


def _check_davis(spec: SweepSpec, name: str, bench, checked: set) -> None:
    """A visible DAVIS root: its split file, every listed sequence with frames and annotations (the reader's
    checks, ids included); one located error naming the path."""
    identity = (name, bench.root, bench.split, bench.resolution)
    if identity in checked or not _visible(bench.root):
        return
    checked.add(identity)
    from vito.eval.datasets.davis import read_davis
    from vito.eval.datasets.image_folder import LayoutError

    try:
        read_davis(bench.root, bench.split, bench.resolution)
    except LayoutError as problem:
        raise spec.error_at(("base", "eval", "benchmarks", name, "root"), str(problem), key=f"eval.benchmarks.{name}.root",
                            hint="Point it at the DAVIS root: JPEGImages/<res>/<seq>/*.jpg, Annotations/<res>/<seq>/*.png, "
                                 "ImageSets/2017/<split>.txt.") from None


def check_foreign_weights(spec: SweepSpec) -> None:
    """Each `evaluate.checkpoints` entry of published weights visible from here exists and loads strictly (as
    the job will load it); one located error naming the entry and what does not fit otherwise."""
    if spec.evaluate is None:
        return
    from vitolaunch.launch.evaluate_targets import resolve_weights_path
    from vitolaunch.spec.schema import PublishedWeights

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
        from vito.eval.foreign_weights import load_foreign

        try:
            load_foreign(path, entry.kind)
        except (ValueError, OSError) as problem:  # ForeignWeightsError is a ValueError
            raise spec.error_at(where, f"{path}: {problem}", key=key,
                                hint="Give kind: torchvision | timm | vito_port, or a file in one of these layouts.") from None


def _visible(root: str) -> bool:
    """A local path that exists here; remote roots (s3://) are checked in the job, with its credentials."""
    return "://" not in root and Path(root).exists()
