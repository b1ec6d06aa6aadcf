"""Video manifests: one record per clip (uri, timing, optional label), as JSONL or Parquet.

A uri without a scheme that is a relative path is read relative to the manifest's location (a folder, or an
`s3://` prefix), so a dataset can be moved or mounted elsewhere and its manifest still works. A manifest is
read from a local path or any fsspec URL; `.parquet` files are Parquet (needs pyarrow), anything else JSONL.
"""

from __future__ import annotations

import dataclasses
import json
import posixpath
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class VideoRecord:
    uri: str
    duration_s: float
    fps: float
    num_frames: int
    label: int | None = None
    label_name: str | None = None  # the class's name, when known (folder name, labels file, classifier)
    score: float | None = None  # curation: the classifier's confidence in `label`


_REQUIRED = ("uri", "duration_s", "fps", "num_frames")
_OPTIONAL_OMITTED_WHEN_NONE = ("label_name", "score")


def _is_url(text: str) -> bool:
    return "://" in text


def _resolve_uri(uri: str, base: str) -> str:
    if _is_url(uri) or Path(uri).is_absolute():
        return uri
    if _is_url(base):
        return posixpath.join(base, uri)
    return str(Path(base) / uri)


def _base_of(path: str | Path) -> str:
    text = str(path)
    if _is_url(text):
        return text.rsplit("/", 1)[0]
    return str(Path(text).resolve().parent)


def _parse_record(obj: object, base: str) -> VideoRecord:
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    missing = [key for key in _REQUIRED if obj.get(key) is None]
    if missing:
        raise ValueError(f"missing field(s) {missing}")
    unknown = set(obj) - {f.name for f in dataclasses.fields(VideoRecord)}
    if unknown:
        raise ValueError(f"unknown field(s) {sorted(unknown)}")
    label, label_name, score = obj.get("label"), obj.get("label_name"), obj.get("score")
    return VideoRecord(
        uri=_resolve_uri(str(obj["uri"]), base),
        duration_s=float(obj["duration_s"]),
        fps=float(obj["fps"]),
        num_frames=int(obj["num_frames"]),
        label=None if label is None else int(label),
        label_name=None if label_name is None else str(label_name),
        score=None if score is None else float(score),
    )


def _open(path: str | Path, mode: str, storage_options: dict[str, Any] | None = None):
    if _is_url(str(path)):
        import fsspec

        return fsspec.open(str(path), mode, **(storage_options or {}))
    return open(path, mode) if "b" in mode else open(path, mode, encoding="utf-8")


def read_manifest(path: str | Path, storage_options: dict[str, Any] | None = None) -> list[VideoRecord]:
    """Parse a manifest; blank JSONL lines are skipped, a bad line raises ValueError naming file:line."""
    base = _base_of(path)
    if str(path).endswith(".parquet"):
        return _read_parquet(path, base, storage_options)
    records = []
    with _open(path, "r", storage_options) as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                records.append(_parse_record(json.loads(line), base))
            except (ValueError, TypeError) as err:  # JSONDecodeError is a ValueError
                raise ValueError(f"{path}:{line_no}: malformed manifest line: {err}") from err
    return records


def record_to_dict(record: VideoRecord) -> dict[str, Any]:
    """The JSON object of a record: optional extras left out when unset, so plain manifests stay plain."""
    row = dataclasses.asdict(record)
    for key in _OPTIONAL_OMITTED_WHEN_NONE:
        if row[key] is None:
            del row[key]
    return row


def write_manifest(path: str | Path, records: Iterable[VideoRecord], storage_options: dict[str, Any] | None = None) -> None:
    if str(path).endswith(".parquet"):
        _write_parquet(path, list(records), storage_options)
        return
    with _open(path, "w", storage_options) as f:
        for record in records:
            f.write(json.dumps(record_to_dict(record), sort_keys=True) + "\n")


def _read_parquet(path: str | Path, base: str, storage_options: dict[str, Any] | None) -> list[VideoRecord]:
    import pyarrow.parquet as pq

    with _open(path, "rb", storage_options) as f:
        table = pq.read_table(f)
    records = []
    for row_no, row in enumerate(table.to_pylist(), start=1):
        try:
            records.append(_parse_record({k: v for k, v in row.items() if v is not None or k in _REQUIRED}, base))
        except (ValueError, TypeError) as err:
            raise ValueError(f"{path}: row {row_no}: malformed manifest row: {err}") from err
    return records


def _write_parquet(path: str | Path, records: list[VideoRecord], storage_options: dict[str, Any] | None) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([
        ("uri", pa.string()), ("duration_s", pa.float64()), ("fps", pa.float64()), ("num_frames", pa.int64()),
        ("label", pa.int64()), ("label_name", pa.string()), ("score", pa.float64()),
    ])
    table = pa.Table.from_pylist([dataclasses.asdict(r) for r in records], schema=schema)
    with _open(path, "wb", storage_options) as f:
        pq.write_table(table, f)
