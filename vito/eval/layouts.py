"""Every benchmark root of eval.benchmarks checked against its reader's layout, without extracting anything.

One function serves the launcher (vitolaunch/launch/benchmark_check.py: before anything is queued, for the roots
visible from the submitting machine) and the job (vito.evaluate_task: its first act). The image folders are
checked by `check_layout`; the readout kinds by their own readers (which list the files and open none): a
corruption tree against the known corruption names and severities 1..5, an ImageNet-A/R folder and a corruption
tree against the classes of the head that will score them (the readout benchmark's train class folders, or
ImageNet-1k's 1000 sorted wnids for `head: own`), the cue-conflict folder against the 16 categories and its
file names. Every error is the reader's LayoutError, which names the path and what was expected.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any


def readout_classes(bench, benchmarks: Mapping[str, Any], storage_options: dict | None) -> list[str] | None:
    """The columns of the head that scores a readout kind: ImageNet-1k's sorted wnids (`head: own`), or the class
    folders of its readout benchmark's train split; None when that train split is not a folder (the image
    folder's own check reports it)."""
    from vito.eval.datasets.image_folder import FolderStore
    from vito.eval.datasets.imagenet_classes import IMAGENET_WNIDS

    if bench.head == "own":
        return list(IMAGENET_WNIDS)
    source = benchmarks[bench.readout]
    listing = FolderStore(source.root, storage_options).list_dir(source.train_split)
    return listing[0] if listing and listing[0] else None


def check_benchmark_layout(bench, benchmarks: Mapping[str, Any], storage_options: dict | None = None,
                           visible: Callable[[str], bool] = lambda root: True) -> None:
    """LayoutError unless `bench`'s root is in its kind's layout. `visible(root)` False skips a root (and a
    readout kind whose readout root is not visible: its classes cannot be known here)."""
    from vito.eval.datasets.image_folder import check_layout

    if not visible(bench.root):
        return
    if bench.kind == "image_folder":
        check_layout(bench.root, (bench.train_split, bench.val_split), storage_options)
        return
    if bench.kind == "davis":  # every listed sequence with frames and annotations, ids checked
        from vito.eval.datasets.davis import read_davis

        read_davis(bench.root, bench.split, bench.resolution)
        return
    if bench.kind == "ucf101":
        if bench.splits_dir is not None and not visible(bench.splits_dir):
            return
        from vito.eval.datasets.ucf101 import check_ucf_layout

        check_ucf_layout(bench.root, bench.split, bench.splits_dir, storage_options)
        return
    if bench.head != "own" and not visible(benchmarks[bench.readout].root):
        return
    if bench.kind == "cue_conflict":
        from vito.eval.datasets.shape_bias import read_cue_conflict

        read_cue_conflict(bench.root, storage_options)
        return
    classes = readout_classes(bench, benchmarks, storage_options)
    if classes is None:
        return
    if bench.kind == "corruptions":
        from vito.eval.datasets.corruption_tree import read_corruption_tree

        read_corruption_tree(bench.root, classes, bench.set, storage_options)
    elif bench.kind == "class_subset":
        from vito.eval.datasets.class_subsets import read_class_subset

        read_class_subset(bench.root, classes, storage_options)
    else:
        raise ValueError(f"no layout check for benchmark kind {bench.kind!r}")
