"""Video manifests: one JSON object per line describing a clip (uri, timing, optional label).

A uri without a scheme that is a relative path is read relative to the manifest's directory, so a
dataset directory can be moved or mounted elsewhere and its manifest still works.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class VideoRecord:
    uri: str
    duration_s: float
    fps: float
    num_frames: int
    label: int | None = None


_REQUIRED = ("uri", "duration_s", "fps", "num_frames")


def _resolve_uri(uri: str, base_dir: Path) -> str:
    if "://" in uri or Path(uri).is_absolute():
        return uri
    return str(base_dir / uri)


def _parse_record(obj: object, base_dir: Path) -> VideoRecord:
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    missing = [key for key in _REQUIRED if key not in obj]
    if missing:
        raise ValueError(f"missing field(s) {missing}")
    unknown = set(obj) - {f.name for f in dataclasses.fields(VideoRecord)}
    if unknown:
        raise ValueError(f"unknown field(s) {sorted(unknown)}")
    label = obj.get("label")
    return VideoRecord(
        uri=_resolve_uri(str(obj["uri"]), base_dir),
        duration_s=float(obj["duration_s"]),
        fps=float(obj["fps"]),
        num_frames=int(obj["num_frames"]),
        label=None if label is None else int(label),
    )


def read_manifest(path: str | Path) -> list[VideoRecord]:
    """Parse a JSONL manifest; blank lines are skipped, a bad line raises ValueError naming file:line."""
    records = []
    base_dir = Path(path).resolve().parent
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                records.append(_parse_record(json.loads(line), base_dir))
            except (ValueError, TypeError) as err:  # JSONDecodeError is a ValueError
                raise ValueError(f"{path}:{line_no}: malformed manifest line: {err}") from err
    return records


def write_manifest(path: str | Path, records: Iterable[VideoRecord]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(dataclasses.asdict(record), sort_keys=True) + "\n")
