"""The user's benchmark copies checked before anything is queued, where the submitting machine can see them.

A root that is not visible from here (a path mounted only on the compute nodes) is left to the job, which
checks every layout as its first act and fails the trial with the reason tagged (vito.evaluate_task).
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
            if bench.kind != "image_folder":
                continue  # the readout kinds' readers check their layouts in the job (they need the readout)
            identity = (name, bench.root, bench.train_split, bench.val_split)
            if identity in checked or not _visible(bench.root):
                continue
            checked.add(identity)
            from vito.eval.image_folder import LayoutError, check_layout

            try:
                check_layout(bench.root, (bench.train_split, bench.val_split), spec.storage.storage_options())
            except LayoutError as problem:
                key = f"eval.benchmarks.{name}.root"
                raise spec.error_at(("base", "eval", "benchmarks", name, "root"), str(problem), key=key,
                                    hint="Point it at the folder that holds the splits, in the layout above.") from None


def _visible(root: str) -> bool:
    """A local path that exists here; remote roots (s3://) are checked in the job, with its credentials."""
    return "://" not in root and Path(root).exists()
