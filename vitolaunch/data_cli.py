"""`vitolaunch data ...`: build a manifest from a folder or an S3 prefix, curate one with a classifier, and
re-encode one for fast training reads (prepare).

Registered on the main command in vitolaunch/cli.py. torch and PyAV load only inside the commands.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import click

from vitolaunch.errors import VitolaunchError


def _storage_options(endpoint_url: str | None) -> dict[str, str]:
    return {"endpoint_url": endpoint_url} if endpoint_url else {}


def _default_report_path(output: str) -> str:
    text = str(output)
    for suffix in (".jsonl", ".parquet", ".json"):
        if text.endswith(suffix):
            return text[: -len(suffix)] + ".report.json"
    return text + ".report.json"


def _write_report(path: str, report: dict) -> None:
    if "://" in path:
        import fsspec

        with fsspec.open(path, "w") as handle:
            json.dump(report, handle, indent=2)
    else:
        Path(path).write_text(json.dumps(report, indent=2) + "\n")


def _progress(label: str):
    if not sys.stderr.isatty():
        return None

    def report(done: int, total: int) -> None:
        click.echo(f"\r{label} {done}/{total}", nl=done == total, err=True)

    return report


@click.group()
def data() -> None:
    """Video datasets: manifests, VideoNet-style curation, re-encoding for training."""


FIXTURE_CORRUPTION_SIZE = 64  # the corrupted images' side: the quickstart centre crops 40 px of it


@data.command("fixtures")
@click.argument("output", type=click.Path(file_okay=False))
@click.option("--classes", default=4, show_default=True, type=click.IntRange(2, 8), help="Classes of every set.")
@click.option("--train-per-class", default=100, show_default=True, type=click.IntRange(1), help="Train images per class.")
@click.option("--val-per-class", default=25, show_default=True, type=click.IntRange(1), help="Val images per class.")
def fixtures(output: str, classes: int, train_per_class: int, val_per_class: int) -> None:
    """Write small benchmark sets in their real layouts under OUTPUT, rendered from the synthetic videos, so
    the evaluation a cluster runs on ImageNet runs here on a CPU (sweeps/quickstart_eval.yaml)."""
    from vito.eval.fixtures.images import ImageFolderFixture, write_image_folder
    from vito.eval.fixtures.robustness import (
        cue_conflict_shapes,
        write_class_subset,
        write_corruption_tree,
        write_cue_conflict,
    )

    root = Path(output) / "imagenet"
    shutil.rmtree(root, ignore_errors=True)  # fixtures of an older version (other wnids) leave no stale folders
    counts = write_image_folder(root, ImageFolderFixture(classes, train_per_class, val_per_class))
    click.echo(f"imagenet (ImageFolder: train/<wnid>/*.JPEG, val/<wnid>/*.JPEG): {root}  "
               f"{counts['train']} train, {counts['val']} val images, {classes} classes")
    val = root / "val"
    corrupted = Path(output) / "imagenet-c"
    shutil.rmtree(corrupted, ignore_errors=True)  # a rerun with fewer classes leaves no stale wnid folders
    started = time.perf_counter()
    written = write_corruption_tree(val, corrupted, image_size=FIXTURE_CORRUPTION_SIZE)
    click.echo(f"imagenet-c (<corruption>/<1-5>/<wnid>/*.JPEG): {corrupted}  {len(written)} corruptions (the 15 of "
               f"mCE and the 4 extras, the project's approximations) x 5 severities, "
               f"{next(iter(written.values()))} images each, {time.perf_counter() - started:.1f} s")
    subset = Path(output) / "imagenet-r"
    shutil.rmtree(subset, ignore_errors=True)
    wnids = sorted(p.name for p in val.iterdir() if p.is_dir())[: max(1, classes - 1)]
    copied = write_class_subset(val, subset, wnids)
    click.echo(f"imagenet-r (<wnid>/*.JPEG, a subset of the classes): {subset}  {copied} images, {len(wnids)} classes")
    cue = Path(output) / "cue-conflict"
    shutil.rmtree(cue, ignore_errors=True)
    images = write_cue_conflict(cue, classes=classes)
    click.echo(f"cue-conflict (<category>/<shape><i>-<texture><j>.png): {cue}  {images} images, 16 categories; "
               f"shape vs texture among {', '.join(cue_conflict_shapes(classes))} (the fixture classes' categories)")
    from vito.eval.fixtures.ucf101 import write_ucf_fixture

    ucf = Path(output) / "ucf101"
    shutil.rmtree(ucf, ignore_errors=True)
    write_ucf_fixture(ucf, num_classes=classes, clips_per_group=3, size=64, num_frames=16)
    clips = sum(1 for _ in ucf.glob("*/*.avi"))
    click.echo(f"ucf101 (<Class>/v_<Class>_gXX_cYY.avi, ucfTrainTestlist/): {ucf}  {clips} clips of 16 frames, "
               f"{classes} classes, splits 1-3 (each tests on one of 4 groups)")
    from vito.eval.fixtures.davis import write_davis_fixture

    davis = Path(output) / "davis"
    shutil.rmtree(davis, ignore_errors=True)
    write_davis_fixture(davis)
    click.echo(f"davis (JPEGImages/480p/<seq>/*.jpg, Annotations/480p/<seq>/*.png, ImageSets/2017/val.txt): {davis}  "
               "3 sequences of 6 frames, 2 objects each, widths 96 and 128")
    from vito.eval.fixtures.weights import FIXTURE_WEIGHTS_WIDTH, write_foreign_weights

    weights = Path(output) / "weights"
    shutil.rmtree(weights, ignore_errors=True)  # with the feature caches the evaluation left beside the files
    files = write_foreign_weights(weights)
    click.echo(f"weights (published-weights layouts, for evaluate.checkpoints): {weights}  "
               f"{', '.join(f'{p.name} ({kind})' for kind, p in files.items())}: RANDOM width-{FIXTURE_WEIGHTS_WIDTH} "
               "ResNet-50s, to exercise loading and the side-by-side table; they measure nothing")


@data.command("manifest")
@click.argument("source")
@click.argument("output")
@click.option("--label-from", type=click.Choice(["auto", "subfolder", "none"]), default="auto", show_default=True,
              help="Class of a video: its first folder under SOURCE (auto: when videos sit in sub-folders).")
@click.option("--labels", "labels_file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="CSV/TSV (path,label), JSON {path: label} or JSONL labels file; overrides --label-from.")
@click.option("--ext", "extensions", multiple=True, help="Video file extensions to include (repeatable) [default: common video types].")
@click.option("--workers", default=8, show_default=True, help="Videos probed at once.")
@click.option("--endpoint-url", default=None, help="S3-compatible endpoint [default: AWS_ENDPOINT_URL_S3 or AWS's].")
@click.option("--absolute-uris", is_flag=True, help="Write local paths absolute, not relative to the manifest.")
@click.option("--report", "report_path", default=None, help="Where the JSON report goes [default: OUTPUT's name + .report.json].")
def manifest(source: str, output: str, label_from: str, labels_file: str | None, extensions: tuple[str, ...], workers: int,
             endpoint_url: str | None, absolute_uris: bool, report_path: str | None) -> None:
    """Probe every video under SOURCE (a folder or s3://bucket/prefix) and write the manifest OUTPUT
    (.jsonl, or .parquet). Unreadable files are skipped and listed in the report."""
    from vito.data.manifest_builder import VIDEO_EXTENSIONS, build_manifest

    exts = tuple(e if e.startswith(".") else f".{e}" for e in extensions) or VIDEO_EXTENSIONS
    try:
        report = build_manifest(
            source, output, label_from=label_from, labels_file=labels_file, extensions=exts, workers=workers,
            storage_options=_storage_options(endpoint_url), relative_uris=not absolute_uris,
            progress=_progress("probed"),
        )
    except (FileNotFoundError, PermissionError, ValueError) as problem:
        raise VitolaunchError(f"data manifest {source}: {problem}") from problem
    if report.found == 0:
        raise VitolaunchError(f"no video files under {source} (extensions: {' '.join(exts)})")
    if report.written == 0:
        first = report.skipped[0]
        raise VitolaunchError(f"none of the {report.found} videos under {source} could be read "
                              f"(first: {first['uri']}: {first['reason']}); check access and the files")
    report_path = report_path or _default_report_path(output)
    _write_report(report_path, report.to_dict())
    click.echo(report.summary())
    click.echo(f"report: {report_path}")


@data.command("curate")
@click.argument("candidates")
@click.option("--classifier", required=True, type=click.Path(exists=True, dir_okay=False),
              help="A torch classifier: TorchScript, a pickled module, or a checkpoint dict (see --factory).")
@click.option("--out", "output", required=True, help="The curated manifest (.jsonl or .parquet).")
@click.option("--target", default="uniform", show_default=True,
              help="'uniform', or a JSON histogram: {class name or index: weight} or [weight per class].")
@click.option("--min-confidence", type=click.FloatRange(0, 1), default=0.5, show_default=True,
              help="Keep videos whose mean top-class probability is at least this.")
@click.option("--frames", type=click.IntRange(1), default=4, show_default=True, help="Frames scored per video.")
@click.option("--tolerance", type=click.FloatRange(0, 1), default=0.0, show_default=True,
              help="Allowed total-variation distance to the target: keeps more videos when > 0.")
@click.option("--max-videos", type=click.IntRange(1), default=None, help="Keep at most this many videos.")
@click.option("--classes", "classes_file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Class names, one per line or a JSON list [default: the checkpoint's, else indices].")
@click.option("--input-size", type=click.IntRange(8), default=None, help="Classifier input side [default: the checkpoint's, else 224].")
@click.option("--mean", default=None, help="Input normalisation mean 'r,g,b' [default: the checkpoint's, else ImageNet's].")
@click.option("--std", default=None, help="Input normalisation std 'r,g,b'.")
@click.option("--factory", default=None, help="'package.module:function' that builds the network of a state-dict checkpoint.")
@click.option("--workers", default=4, show_default=True, help="Videos decoded at once.")
@click.option("--report", "report_path", default=None, help="Where the JSON report goes [default: OUT's name + .report.json].")
def curate(candidates: str, classifier: str, output: str, target: str, min_confidence: float, frames: int, tolerance: float,
           max_videos: int | None, classes_file: str | None, input_size: int | None, mean: str | None, std: str | None,
           factory: str | None, workers: int, report_path: str | None) -> None:
    """Score every video of the CANDIDATES manifest with a classifier on a few frames, keep the confident ones,
    balance the count per class toward the target, and write the curated manifest and a report."""
    from vito.data.curate import curate_manifest, format_report

    def triple(text: str | None, name: str):
        if text is None:
            return None
        try:
            values = [float(v) for v in text.split(",")]
        except ValueError:
            values = []
        if len(values) != 3:
            raise VitolaunchError(f"--{name} takes three comma-separated numbers, got {text!r}")
        return values

    classes = None
    if classes_file:
        text = Path(classes_file).read_text()
        classes = json.loads(text) if text.lstrip().startswith("[") else [line.strip() for line in text.splitlines() if line.strip()]
    try:
        report = curate_manifest(
            candidates, classifier, output, factory=factory, classes=classes, input_size=input_size,
            mean=triple(mean, "mean"), std=triple(std, "std"), target=target, min_confidence=min_confidence,
            frames=frames, tolerance=tolerance, max_videos=max_videos, workers=workers, progress=_progress("scored"),
        )
    except (FileNotFoundError, ValueError) as problem:
        raise VitolaunchError(f"data curate: {problem}") from problem
    report_path = report_path or _default_report_path(output)
    _write_report(report_path, report)
    click.echo(format_report(report))
    click.echo(f"curated manifest: {output}\nreport: {report_path}")


@data.command("prepare")
@click.argument("manifest")
@click.argument("output")
@click.option("--short-side", type=click.IntRange(16), default=256, show_default=True,
              help="Scale each video so its short side is this many pixels (never upscaled; even).")
@click.option("--keyframe-interval", type=click.FloatRange(0, 60, min_open=True), default=0.5, show_default=True,
              help="Seconds between keyframes: a sample's seek decodes at most this much video.")
@click.option("--crf", type=click.IntRange(0, 51), default=23, show_default=True,
              help="x264 quality (lower: larger files).")
@click.option("--preset", default="veryfast", show_default=True, help="x264 preset (encoding speed vs size).")
@click.option("--fast-decode/--no-fast-decode", default=True, show_default=True,
              help="x264 'fastdecode' tune: larger files, about 3x cheaper to decode in the loader (measured).")
@click.option("--workers", type=click.IntRange(1), default=None, help="Videos encoded at once [default: CPU count].")
@click.option("--endpoint-url", default=None, help="S3-compatible endpoint [default: AWS_ENDPOINT_URL_S3 or AWS's].")
@click.option("--cluster", type=click.Choice(["local", "slurm"]), default="local", show_default=True,
              help="slurm: submit a job array (each task a share of the videos) and return at once.")
@click.option("--tasks", type=click.IntRange(1), default=8, show_default=True, help="Array tasks (--cluster slurm).")
@click.option("--cpus-per-task", type=click.IntRange(1), default=4, show_default=True,
              help="CPUs (and encoding processes) of each array task (--cluster slurm).")
@click.option("--mem-gb", type=click.FloatRange(0.5), default=8, show_default=True, help="Memory per array task.")
@click.option("--time-min", type=click.IntRange(1), default=240, show_default=True, help="Time limit per array task.")
@click.option("--partition", default=None, help="SLURM partition [default: the cluster's].")
def prepare(manifest: str, output: str, short_side: int, keyframe_interval: float, crf: int, preset: str,
            fast_decode: bool, workers: int | None, endpoint_url: str | None, cluster: str, tasks: int,
            cpus_per_task: int, mem_gb: float, time_min: int, partition: str | None) -> None:
    """Re-encode the videos of MANIFEST into OUTPUT (a folder or s3://bucket/prefix) for fast training reads,
    and write OUTPUT/manifest.jsonl. A rerun resumes: videos already done are not redone."""
    from vito.data.prepare import PrepareOptions, prepare_manifest

    try:
        options = PrepareOptions(short_side, keyframe_interval, crf, preset, fast_decode)
    except ValueError as problem:
        raise VitolaunchError(f"data prepare: {problem}") from problem
    if cluster == "slurm":
        _submit_prepare_array(manifest, output, options, _storage_options(endpoint_url), tasks, cpus_per_task,
                              mem_gb, time_min, partition)
        return
    with _rich_progress("prepared") as progress:
        try:
            report = prepare_manifest(manifest, output, options, workers=workers,
                                      storage_options=_storage_options(endpoint_url), progress=progress)
        except (FileNotFoundError, PermissionError, ValueError) as problem:
            raise VitolaunchError(f"data prepare {manifest}: {problem}") from problem
    click.echo(report.summary())
    click.echo(f"report: {output.rstrip('/')}/prepare-report.json")
    if report.prepared + report.resumed == 0:
        first = report.failed[0]
        raise VitolaunchError(f"none of the {report.videos} videos of {manifest} could be prepared "
                              f"(first: {first['uri']}: {first['reason']})")


def _submit_prepare_array(manifest: str, output: str, options, storage_options: dict, tasks: int, cpus: int,
                          mem_gb: float, time_min: int, partition: str | None) -> None:
    """Queue `tasks` array tasks through the SLURM backend, after checking what can be checked here."""
    from vito.data.prepare import PrepareShard, check_before_submit
    from vitolaunch.backends import make_backend
    from vitolaunch.workspace import Workspace

    try:
        videos = check_before_submit(manifest, output, options, storage_options)
    except (FileNotFoundError, PermissionError, ValueError) as problem:
        raise VitolaunchError(f"data prepare {manifest}: {problem}") from problem
    tasks = min(tasks, videos)
    resources = _array_resources(cpus_per_task=cpus, mem_gb=mem_gb, timeout_min=time_min, partition=partition,
                                 array_parallelism=tasks)
    backend = make_backend("slurm")
    backend.check(resources)
    jobs = [PrepareShard(manifest, output, options, k, tasks, cpus, storage_options) for k in range(tasks)]
    handles = backend.submit(jobs, [f"prepare-{k}" for k in range(tasks)], resources,
                             Workspace.from_env().log_dir("data-prepare"))
    array = handles[0].job_id.split("_")[0]
    click.echo(f"submitted array {array}: {tasks} tasks for {videos} videos into {output}")
    click.echo("when it has ended, run the same command without --cluster: it redoes nothing that finished, "
               "prepares what failed, and writes the manifest and report")


def _array_resources(**fields):
    from vitolaunch.spec.resources import Resources

    return Resources(cluster="slurm", **fields)


class _rich_progress:
    """A rich progress bar on stderr (only on a terminal), as a `progress(done, total)` callback."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.bar = None
        self.task = None

    def __enter__(self):
        if not sys.stderr.isatty():
            return None
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.bar = Progress(TextColumn(self.label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                            TimeRemainingColumn(), console=Console(stderr=True))
        self.bar.start()
        self.task = self.bar.add_task(self.label, total=None)
        return self._update

    def _update(self, done: int, total: int) -> None:
        self.bar.update(self.task, completed=done, total=total)

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.stop()
