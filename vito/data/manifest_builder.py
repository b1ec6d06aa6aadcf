"""Build a video manifest from a folder or an `s3://` (any fsspec) prefix: list, probe, label, report.

Every file with a video extension under the source is probed with PyAV (duration, fps, frame count); a file
that cannot be opened or has no video stream is left out and reported with the reason, never fatal. Labels
come from the first sub-folder under the source (`SRC/<class>/.../clip.mp4`), from a labels file, or not at
all. Class indices are the sorted class names, so the same folders give the same indices everywhere.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import posixpath
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from vito.data.manifest import VideoRecord, write_manifest
from vito.data.video import is_remote, probe_video

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts", ".gif")
LabelSource = Literal["auto", "subfolder", "none"]


@dataclass
class ManifestReport:
    source: str
    output: str
    found: int = 0
    written: int = 0
    skipped: list[dict[str, str]] = field(default_factory=list)  # {"uri", "reason"}
    unlabelled: int = 0
    classes: list[str] = field(default_factory=list)
    class_counts: dict[str, int] = field(default_factory=dict)
    total_duration_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "output": self.output,
            "found": self.found,
            "written": self.written,
            "skipped": len(self.skipped),
            "skipped_files": self.skipped,
            "unlabelled": self.unlabelled,
            "classes": self.classes,
            "class_counts": self.class_counts,
            "total_duration_s": round(self.total_duration_s, 3),
        }

    def summary(self) -> str:
        seconds = self.total_duration_s
        length = f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"
        lines = [
            f"{self.written} videos ({length}) written to {self.output}; {self.found} found under {self.source}, "
            f"{len(self.skipped)} skipped as unreadable"
        ]
        if self.classes:
            lines.append(f"{len(self.classes)} classes: " + ", ".join(f"{c}={self.class_counts.get(c, 0)}" for c in self.classes))
        if self.unlabelled and self.classes:
            lines.append(f"{self.unlabelled} videos have no label")
        for item in self.skipped[:10]:
            lines.append(f"  skipped {item['uri']}: {item['reason']}")
        if len(self.skipped) > 10:
            lines.append(f"  ... and {len(self.skipped) - 10} more (see the report)")
        return "\n".join(lines)


def _list_videos(source: str, extensions: tuple[str, ...], storage_options: dict[str, Any] | None) -> list[str]:
    """Every video under `source`, as full uris (local: absolute paths), sorted."""
    if is_remote(source):
        import fsspec

        fs, root = fsspec.core.url_to_fs(source, **(storage_options or {}))
        protocol = source.split("://", 1)[0]
        found = fs.find(root.rstrip("/"), detail=False)
        return sorted(f"{protocol}://{path}" for path in found if path.lower().endswith(extensions))
    root = Path(source.removeprefix("file://")).resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"{source} is not a folder")
    videos = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        videos.extend(str(Path(folder) / name) for name in files if name.lower().endswith(extensions) and not name.startswith("."))
    return sorted(videos)


def _relative(uri: str, source: str) -> str:
    """The uri's path below the source, '/'-separated."""
    if is_remote(source):
        prefix = source.rstrip("/") + "/"
        return uri[len(prefix):] if uri.startswith(prefix) else uri.split("://", 1)[1]
    return Path(uri).relative_to(Path(source.removeprefix("file://")).resolve()).as_posix()


def read_labels_file(path: str | Path) -> dict[str, str]:
    """A labels file: CSV/TSV with a header naming a path column (path|uri|file|video) and a label column
    (label|class|category), or JSON {path: label}, or JSONL of {"path"|"uri": ..., "label": ...}.
    Paths are relative to the source (or bare file names); labels are class names or integers."""
    text = Path(path).read_text(encoding="utf-8")
    suffix = Path(path).suffix.lower()
    if suffix == ".json":
        mapping = json.loads(text)
        if not isinstance(mapping, dict):
            raise ValueError(f"{path}: a JSON labels file is an object {{path: label}}")
        return {str(k): str(v) for k, v in mapping.items()}
    if suffix == ".jsonl":
        mapping = {}
        for line_no, line in enumerate(text.splitlines(), 1):
            if line.strip():
                obj = json.loads(line)
                key = obj.get("path") or obj.get("uri")
                if key is None or obj.get("label") is None:
                    raise ValueError(f"{path}:{line_no}: needs 'path' (or 'uri') and 'label'")
                mapping[str(key)] = str(obj["label"])
        return mapping
    dialect = "excel-tab" if suffix == ".tsv" else "excel"
    reader = csv.DictReader(io.StringIO(text), dialect=dialect)
    fields = {name.lower(): name for name in reader.fieldnames or []}
    path_col = next((fields[n] for n in ("path", "uri", "file", "video") if n in fields), None)
    label_col = next((fields[n] for n in ("label", "class", "category") if n in fields), None)
    if path_col is None or label_col is None:
        raise ValueError(f"{path}: the header needs a path column (path, uri, file or video) and a label column "
                         f"(label, class or category); found {reader.fieldnames}")
    return {row[path_col]: row[label_col] for row in reader if row.get(path_col)}


def _label_lookup(labels: dict[str, str]) -> Callable[[str], str | None]:
    by_path = {key.strip("/"): value for key, value in labels.items()}
    by_name = {posixpath.basename(key): value for key, value in labels.items()}

    def lookup(relative: str) -> str | None:
        return by_path.get(relative) or by_name.get(posixpath.basename(relative))

    return lookup


def _class_index(names: set[str]) -> dict[str, int]:
    """Class names sorted; all-integer names keep their own values."""
    if names and all(name.lstrip("-").isdigit() for name in names):
        return {name: int(name) for name in names}
    return {name: index for index, name in enumerate(sorted(names))}


def build_manifest(
    source: str,
    output: str | Path,
    label_from: LabelSource = "auto",
    labels_file: str | Path | None = None,
    extensions: tuple[str, ...] = VIDEO_EXTENSIONS,
    workers: int = 8,
    storage_options: dict[str, Any] | None = None,
    relative_uris: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> ManifestReport:
    """List the videos under `source`, probe them, write the manifest at `output` and return the report.

    label_from: "subfolder" takes the first folder below the source as the class; "auto" does so when any
    video sits in a sub-folder; "none" writes no labels. A labels file, when given, takes precedence.
    relative_uris: local videos below the manifest's folder are written relative to it (the tree can move).
    """
    source = str(source)
    uris = _list_videos(source, tuple(e.lower() for e in extensions), storage_options)
    report = ManifestReport(source=source, output=str(output), found=len(uris))
    relatives = [_relative(uri, source) for uri in uris]

    lookup = _label_lookup(read_labels_file(labels_file)) if labels_file else None
    use_folders = lookup is None and (label_from == "subfolder" or (label_from == "auto" and any("/" in r for r in relatives)))
    names: list[str | None] = []
    for relative in relatives:
        if lookup is not None:
            names.append(lookup(relative))
        elif use_folders and "/" in relative:
            names.append(relative.split("/", 1)[0])
        else:
            names.append(None)

    def probe(uri: str) -> tuple[float, float, int] | str:
        try:
            duration_s, fps, num_frames = probe_video(uri, storage_options)
        except Exception as problem:  # noqa: BLE001 - report every unreadable file, whatever the cause
            text = str(problem).splitlines()[0][:200] if str(problem) else ""
            if isinstance(problem, IndexError):
                text = "no video stream"
            return f"{type(problem).__name__}: {text}".rstrip(": ")
        if num_frames < 1 or fps <= 0:
            return f"no decodable frames (frames={num_frames}, fps={fps:g})"
        return duration_s, fps, num_frames

    probed: list[tuple[float, float, int] | str] = []
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for done, result in enumerate(pool.map(probe, uris), start=1):
            probed.append(result)
            if progress is not None:
                progress(done, len(uris))

    good_names = {name for name, result in zip(names, probed) if name is not None and not isinstance(result, str)}
    index = _class_index(good_names)
    report.classes = sorted(index, key=lambda n: index[n])
    manifest_dir = None if is_remote(str(output)) else Path(output).resolve().parent
    records, counts = [], Counter()
    for uri, name, result in zip(uris, names, probed):
        if isinstance(result, str):
            report.skipped.append({"uri": uri, "reason": result})
            log.info("skipping %s: %s", uri, result)
            continue
        duration_s, fps, num_frames = result
        written_uri = uri
        if relative_uris and manifest_dir is not None and not is_remote(uri):
            try:
                written_uri = Path(uri).relative_to(manifest_dir).as_posix()
            except ValueError:
                pass
        label = index[name] if name is not None else None
        label_name = name if name is not None and not name.lstrip("-").isdigit() else None
        records.append(VideoRecord(written_uri, duration_s, fps, num_frames, label, label_name))
        report.total_duration_s += duration_s
        if name is None:
            report.unlabelled += 1
        else:
            counts[name] += 1
    report.class_counts = {name: counts[name] for name in report.classes}
    report.written = len(records)
    write_manifest(output, records, storage_options)
    return report
