"""Re-encode a manifest's videos for training: small short side, short keyframe interval, parallel, resumable.

A training sample opens a video, seeks to a keyframe and decodes forward to two frames. At 720p with a 2 s
keyframe interval that is ~200 ms a pair; at a 256 px short side with a keyframe every 0.5 s it is a few tens
of ms (benchmarks/data_pipeline.py --real-resolution measures both). This module does the re-encoding once.

Layout of OUT (a local folder or an fsspec URL such as s3://bucket/prefix):

    OUT/prepare.json              the options (a rerun with other options into the same OUT is refused)
    OUT/videos/<ab>/<stem>-<hash>.mp4   one file per input, named by a hash of the input uri
    OUT/done/<hash>.json          written after its video: the output record and byte counts
    OUT/manifest.jsonl            the new manifest (relative uris: OUT can be moved or mounted elsewhere)
    OUT/prepare-report.json       videos, hours, bytes before/after, failures with their reason

Resuming: a video whose done-marker exists is not redone, so a killed run continues where it stopped. A
video is trusted only with its marker (S3 has no atomic rename: an upload cut short leaves no marker).
Failures write no marker, so a rerun retries them. Nothing here imports torch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import posixpath
import shutil
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import av

from vito.data.manifest import VideoRecord, read_manifest, record_to_dict
from vito.data.video import is_remote, open_container, probe_video

# Defaults measured with benchmarks/data_pipeline.py --real-resolution --sweep-options (720p noise clips, one
# worker core, pairs per CPU-second): 256 px / 0.5 s / fastdecode 66; 0.25 s 79 for 12% more bytes (more on
# real footage, whose keyframes cost many times a P-frame); 1.0 s 47; 288 px 55; without fastdecode 24;
# the 720p/2 s source 7. 0.5 s already clears the 50/core a GPU needs, so the bytes are not spent.
DEFAULT_SHORT_SIDE = 256
DEFAULT_KEYFRAME_INTERVAL_S = 0.5
DEFAULT_CRF = 23
DEFAULT_PRESET = "veryfast"


@dataclass(frozen=True)
class PrepareOptions:
    short_side: int = DEFAULT_SHORT_SIDE
    keyframe_interval_s: float = DEFAULT_KEYFRAME_INTERVAL_S
    crf: int = DEFAULT_CRF
    preset: str = DEFAULT_PRESET
    # x264's fastdecode tune (no CABAC, no deblocking): larger files, cheaper decode in every loader worker.
    fast_decode: bool = True

    def __post_init__(self) -> None:
        if self.short_side < 16 or self.short_side % 2:
            raise ValueError(f"short side must be an even number of pixels >= 16, got {self.short_side}")
        if not 0 < self.keyframe_interval_s <= 60:
            raise ValueError(f"keyframe interval must be in (0, 60] seconds, got {self.keyframe_interval_s}")
        if not 0 <= self.crf <= 51:
            raise ValueError(f"crf must be in [0, 51], got {self.crf}")


@dataclass(frozen=True)
class Encoded:
    width: int
    height: int
    frames: int


def output_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """(width, height) with the short side scaled to `short_side` (never up), both even for yuv420p."""
    scale = min(1.0, short_side / min(width, height))
    even = lambda value: max(2, int(round(value * scale / 2)) * 2)  # noqa: E731
    return even(width), even(height)


def reencode(
    src_uri: str, dst_path: str, options: PrepareOptions, storage_options: dict[str, Any] | None = None
) -> Encoded:
    """Decode the first video stream of src_uri and write it to dst_path (local .mp4) as H.264.

    Presentation times are kept (variable frame rates too): a sample's time means the same frame before and
    after. Audio and other streams are dropped. One thread each for decoding and encoding: the caller runs
    one process per core.
    """
    with open_container(src_uri, storage_options) as source:
        if not source.streams.video:
            raise ValueError("no video stream")
        in_stream = source.streams.video[0]
        in_stream.codec_context.thread_type = "NONE"
        in_stream.codec_context.thread_count = 1
        rate = in_stream.average_rate or in_stream.guessed_rate or in_stream.base_rate
        if not rate:
            raise ValueError("the video stream states no frame rate")
        width, height = output_size(in_stream.codec_context.width, in_stream.codec_context.height, options.short_side)
        gop = max(1, math.floor(float(rate) * options.keyframe_interval_s + 1e-6))
        in_tb: Fraction = in_stream.time_base
        start = in_stream.start_time or 0
        frames = 0
        with av.open(dst_path, "w", format="mp4") as sink:
            stream = sink.add_stream("libx264", rate=rate)
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            stream.codec_context.time_base = in_tb
            stream.codec_context.gop_size = gop
            x264 = {"crf": str(options.crf), "preset": options.preset, "keyint_min": str(gop), "threads": "1"}
            if options.fast_decode:
                x264["tune"] = "fastdecode"
            stream.options = x264
            last_pts = None
            for frame in source.decode(in_stream):
                if frame.pts is None or (last_pts is not None and frame.pts <= last_pts):
                    continue  # a duplicate or missing timestamp cannot be muxed; the frame shown there is kept
                last_pts = frame.pts
                out = frame.reformat(width=width, height=height, format="yuv420p", interpolation="AREA")
                out.pts, out.time_base = frame.pts - start, in_tb
                sink.mux(stream.encode(out))
                frames += 1
            if frames == 0:
                raise ValueError("no decodable frames")
            sink.mux(stream.encode())
    return Encoded(width, height, frames)


# ---------------------------------------------------------------------------------------------- layout


def video_key(uri: str) -> str:
    return hashlib.sha1(uri.encode()).hexdigest()[:16]


def relative_output(uri: str) -> str:
    """Where input `uri` goes under OUT: readable stem, hashed name (two inputs never collide)."""
    key = video_key(uri)
    stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in posixpath.basename(uri).rsplit(".", 1)[0])[:60]
    return f"videos/{key[:2]}/{stem}-{key}.mp4"


class _Out:
    """OUT as a local folder or an fsspec location, with just the operations prepare needs."""

    def __init__(self, root: str, storage_options: dict[str, Any] | None) -> None:
        self.root = root.rstrip("/")
        self.remote = is_remote(root)
        self.storage_options = storage_options or {}
        if self.remote:
            import fsspec

            self.fs, self.base = fsspec.core.url_to_fs(self.root, **self.storage_options)
        else:
            self.fs, self.base = None, str(Path(root.removeprefix("file://")).resolve())

    def uri(self, rel: str) -> str:
        return f"{self.root}/{rel}" if self.remote else str(Path(self.base) / rel)

    def exists(self, rel: str) -> bool:
        return self.fs.exists(f"{self.base}/{rel}") if self.remote else (Path(self.base) / rel).exists()

    def read_text(self, rel: str) -> str:
        if self.remote:
            return self.fs.cat_file(f"{self.base}/{rel}").decode()
        return (Path(self.base) / rel).read_text()

    def write_text(self, rel: str, text: str) -> None:
        if self.remote:
            self.fs.pipe_file(f"{self.base}/{rel}", text.encode())
            return
        path = Path(self.base) / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(text)
        os.replace(tmp, path)  # atomic: a reader never sees half a marker

    def put(self, local: str, rel: str) -> None:
        if self.remote:
            self.fs.put_file(local, f"{self.base}/{rel}")
            return
        path = Path(self.base) / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(local, path)

    def listdir(self, rel: str) -> list[str]:
        if self.remote:
            prefix = f"{self.base}/{rel}"
            return [posixpath.basename(p) for p in self.fs.find(prefix)] if self.fs.exists(prefix) else []
        folder = Path(self.base) / rel
        return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []

    def drop_scratch(self) -> None:
        """Remove the local encoder scratch folder (and what killed runs left in it)."""
        if not self.remote:
            shutil.rmtree(Path(self.base) / ".partial", ignore_errors=True)

    def scratch(self) -> str:
        """A local folder for the encoder's output before it is moved or uploaded into OUT."""
        if self.remote:
            return tempfile.mkdtemp(prefix="vito-prepare-")
        folder = Path(self.base) / ".partial"
        folder.mkdir(parents=True, exist_ok=True)
        return str(folder)


# ---------------------------------------------------------------------------------------------- one video


@dataclass(frozen=True)
class _Task:
    record: VideoRecord
    rel: str
    out_root: str
    options: PrepareOptions
    storage_options: dict[str, Any]


def _source_bytes(uri: str, storage_options: dict[str, Any]) -> int:
    if is_remote(uri):
        import fsspec

        fs, path = fsspec.core.url_to_fs(uri, **storage_options)
        return int(fs.size(path))
    return os.path.getsize(uri.removeprefix("file://"))


def _prepare_one(task: _Task) -> dict[str, Any]:
    """Encode one video into OUT, then write its done-marker. Returns the marker's content."""
    out = _Out(task.out_root, task.storage_options)
    started = time.perf_counter()
    scratch = out.scratch()
    local = os.path.join(scratch, f"{video_key(task.record.uri)}.{os.getpid()}.mp4")
    try:
        reencode(task.record.uri, local, task.options, task.storage_options)
        duration_s, fps, num_frames = probe_video(local)
        bytes_after = os.path.getsize(local)
        out.put(local, task.rel)
    finally:
        if os.path.exists(local):
            os.remove(local)
        if out.remote:
            shutil.rmtree(scratch, ignore_errors=True)
    record = dataclasses.replace(task.record, uri=task.rel, duration_s=duration_s, fps=fps, num_frames=num_frames)
    marker = {
        "source": task.record.uri,
        "record": record_to_dict(record),
        "bytes_before": _source_bytes(task.record.uri, task.storage_options),
        "bytes_after": bytes_after,
        "seconds": round(time.perf_counter() - started, 3),
    }
    out.write_text(f"done/{video_key(task.record.uri)}.json", json.dumps(marker, sort_keys=True))
    return marker


def _run_one(task: _Task) -> tuple[str, dict[str, Any] | None, str | None]:
    """(source uri, marker or None, failure reason or None): a failure never stops the others."""
    try:
        return task.record.uri, _prepare_one(task), None
    except Exception as problem:  # noqa: BLE001 - any unreadable or unencodable input is reported, not fatal
        text = str(problem).splitlines()[0][:300] if str(problem) else ""
        return task.record.uri, None, f"{type(problem).__name__}: {text}" if text else type(problem).__name__


# ---------------------------------------------------------------------------------------------- the run


@dataclass
class PrepareReport:
    source: str
    output: str
    manifest: str
    options: dict[str, Any]
    videos: int = 0
    prepared: int = 0  # encoded by this run
    resumed: int = 0  # already done by an earlier run (marker found)
    failed: list[dict[str, str]] = field(default_factory=list)  # {"uri", "reason"}
    hours: float = 0.0
    bytes_before: int = 0
    bytes_after: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def summary(self) -> str:
        ok = self.prepared + self.resumed
        ratio = f" ({self.bytes_after / self.bytes_before:.2f}x)" if self.bytes_before else ""
        lines = [
            f"{ok}/{self.videos} videos prepared ({self.hours:.2f} h) into {self.output}: {self.prepared} now, "
            f"{self.resumed} already done; {len(self.failed)} failed; {self.seconds:.1f} s",
            f"bytes: {_human(self.bytes_before)} before, {_human(self.bytes_after)} after{ratio}",
            f"manifest: {self.manifest}",
        ]
        lines += [f"  failed {item['uri']}: {item['reason']}" for item in self.failed[:10]]
        if len(self.failed) > 10:
            lines.append(f"  ... and {len(self.failed) - 10} more (see the report)")
        return "\n".join(lines)


def _human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _check_options(out: _Out, options: PrepareOptions) -> None:
    wanted = dataclasses.asdict(options)
    if out.exists("prepare.json"):
        found = json.loads(out.read_text("prepare.json"))
        differ = sorted(k for k in set(wanted) | set(found) if wanted.get(k) != found.get(k))
        if differ:
            raise ValueError(
                f"{out.uri('prepare.json')}: this folder was prepared with other options ("
                + ", ".join(f"{k}: {found.get(k)!r} there, {wanted.get(k)!r} now" for k in differ)
                + "); use a new OUT, or the same options to resume"
            )
    else:
        out.write_text("prepare.json", json.dumps(wanted, indent=2, sort_keys=True) + "\n")


def check_before_submit(manifest: str, output: str, options: PrepareOptions,
                        storage_options: dict[str, Any] | None = None) -> int:
    """What an array submission checks first (the manifest parses, OUT takes these options): video count."""
    records = read_manifest(manifest, storage_options)
    if not records:
        raise ValueError(f"{manifest}: the manifest lists no videos")
    _check_options(_Out(output, storage_options), options)
    return len(records)


def prepare_manifest(
    manifest: str,
    output: str,
    options: PrepareOptions = PrepareOptions(),
    workers: int | None = None,
    storage_options: dict[str, Any] | None = None,
    progress: Callable[[int, int], None] | None = None,
    only: tuple[int, int] | None = None,
) -> PrepareReport:
    """Prepare every video of `manifest` into `output`; see the module docstring for the layout.

    only=(k, n): this call does videos k, k+n, k+2n, ... (one array task of n) and writes no manifest.
    """
    storage_options = storage_options or {}
    started = time.perf_counter()
    records = read_manifest(manifest, storage_options)
    if not records:
        raise ValueError(f"{manifest}: the manifest lists no videos")
    out = _Out(output, storage_options)
    _check_options(out, options)
    done = {name.removesuffix(".json") for name in out.listdir("done") if name.endswith(".json")}
    mine = records if only is None else records[only[0] :: only[1]]
    todo = [r for r in mine if video_key(r.uri) not in done]
    failures: dict[str, str] = {}
    markers: dict[str, dict[str, Any]] = {}  # this run's; earlier runs' are read back below
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    workers = max(1, min(workers or available, len(todo) or 1))
    completed = len(mine) - len(todo)
    if progress:
        progress(completed, len(mine))
    tasks = [_Task(r, relative_output(r.uri), output, options, storage_options) for r in todo]

    def record(uri: str, marker: dict[str, Any] | None, reason: str | None) -> None:
        nonlocal completed
        completed += 1
        if reason:
            failures[uri] = reason
        else:
            markers[uri] = marker
        if progress:
            progress(completed, len(mine))

    if workers == 1:
        for result in map(_run_one, tasks):
            record(*result)
    else:
        # Forked workers would inherit whatever threads the parent runs; spawn starts them clean.
        import multiprocessing

        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            pending = {pool.submit(_run_one, task) for task in tasks}
            while pending:
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    record(*future.result())
    if only is None:  # array tasks may share the scratch folder; a whole run owns it
        out.drop_scratch()
    new_manifest = out.uri("manifest.jsonl")
    report = PrepareReport(manifest, output, new_manifest if only is None else "", dataclasses.asdict(options))
    report.videos = len(mine)
    report.resumed = len(mine) - len(todo)
    report.prepared = len(todo) - len(failures)
    report.failed = [{"uri": uri, "reason": reason} for uri, reason in failures.items()]
    prepared_records = []
    for record in mine:
        if record.uri in failures:
            continue
        marker = markers.get(record.uri) or json.loads(out.read_text(f"done/{video_key(record.uri)}.json"))
        prepared_records.append(marker["record"])
        report.hours += marker["record"]["duration_s"] / 3600
        report.bytes_before += marker["bytes_before"]
        report.bytes_after += marker["bytes_after"]
    if only is None and prepared_records:
        lines = "".join(json.dumps(row, sort_keys=True) + "\n" for row in prepared_records)
        out.write_text("manifest.jsonl", lines)
    report.hours = round(report.hours, 4)
    report.seconds = round(time.perf_counter() - started, 2)
    out.write_text("prepare-report.json" if only is None else f"reports/task-{only[0]}.json",
                   json.dumps(report.to_dict(), indent=2) + "\n")
    return report


@dataclass(frozen=True)
class PrepareShard:
    """One task of a scheduler array: videos shard, shard + shards, ... of the manifest (picklable).

    Each task writes its videos and done-markers; none writes the manifest. Running the whole prepare once
    more afterwards (anywhere) finds every marker, redoes nothing, and writes the manifest and report.
    """

    manifest: str
    output: str
    options: PrepareOptions
    shard: int
    shards: int
    workers: int = 1
    storage_options: dict[str, Any] = field(default_factory=dict)

    def __call__(self) -> dict[str, Any]:
        report = prepare_manifest(self.manifest, self.output, self.options, workers=self.workers,
                                  storage_options=self.storage_options, only=(self.shard, self.shards))
        return report.to_dict()


__all__ = ["PrepareOptions", "PrepareReport", "PrepareShard", "output_size", "prepare_manifest", "reencode"]
