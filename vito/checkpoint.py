"""Checkpoint store over fsspec: the same code for a local folder and an `s3://` prefix.

Layout under a trial's root::

    step_00000050/<files written by every rank>
    step_00000050/COMMITTED      # written last, by rank 0: file list with sizes and sha256
    latest                       # {"step": 50}, updated after COMMITTED; a convenience for humans

S3 has no atomic rename, so a step folder without its COMMITTED marker is never read: a save that died
half-way is invisible. Resume trusts markers, not `latest`, and verifies sizes and checksums, falling back
to the previous committed step when one does not match.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import fsspec

log = logging.getLogger(__name__)

COMMIT_MARKER = "COMMITTED"
LATEST_POINTER = "latest"
_STEP_DIR = re.compile(r"step_(\d+)$")
_CHUNK = 4 << 20


@dataclass(frozen=True)
class StoredFile:
    path: str  # relative to the step folder
    size: int
    sha256: str


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def step_name(step: int) -> str:
    return f"step_{step:08d}"


class CheckpointStore:
    """Committed, verified checkpoint steps of one trial under `root` (a path or URL)."""

    def __init__(self, root: str, storage_options: dict[str, Any] | None = None):
        self.root_uri = root.rstrip("/")
        self.fs, self.root = fsspec.core.url_to_fs(self.root_uri, **(storage_options or {}))

    # -- writing ---------------------------------------------------------------------------------
    def upload(self, step: int, local_dir: str | Path) -> list[StoredFile]:
        """Put every file under `local_dir` into the step folder; returns what was written."""
        local_dir = Path(local_dir)
        written = []
        for local_file in sorted(p for p in local_dir.rglob("*") if p.is_file()):
            relative = local_file.relative_to(local_dir).as_posix()
            remote = f"{self.root}/{step_name(step)}/{relative}"
            self.fs.makedirs(os.path.dirname(remote), exist_ok=True)
            self.fs.put_file(str(local_file), remote)
            written.append(StoredFile(relative, local_file.stat().st_size, sha256_of(local_file)))
        return written

    def commit(self, step: int, files: list[StoredFile], metadata: dict[str, Any] | None = None) -> None:
        """Mark a fully uploaded step as valid, then point `latest` at it. Call once, after a barrier."""
        marker = {
            "step": step,
            "committed_at": time.time(),
            "files": [asdict(f) for f in sorted(files, key=lambda f: f.path)],
            "metadata": metadata or {},
        }
        self._write_json(f"{self.root}/{step_name(step)}/{COMMIT_MARKER}", marker)
        self._write_json(f"{self.root}/{LATEST_POINTER}", {"step": step})

    def _write_json(self, path: str, payload: dict[str, Any]) -> None:
        # Write-then-rename: on a local disk the rename is atomic; on S3 the final PUT is.
        tmp = f"{path}.tmp-{os.getpid()}"
        with self.fs.open(tmp, "w") as handle:
            json.dump(payload, handle, indent=1)
        self.fs.mv(tmp, path)

    # -- reading ---------------------------------------------------------------------------------
    def _step_folders(self) -> dict[int, str]:
        if not self.fs.exists(self.root):
            return {}
        folders = {}
        for entry in self.fs.ls(self.root, detail=False):
            match = _STEP_DIR.search(entry.rstrip("/"))
            if match:
                folders[int(match.group(1))] = entry.rstrip("/")
        return folders

    def marker(self, step: int) -> dict[str, Any] | None:
        path = f"{self.root}/{step_name(step)}/{COMMIT_MARKER}"
        try:
            with self.fs.open(path, "r") as handle:
                return json.load(handle)
        except FileNotFoundError:
            return None
        except (json.JSONDecodeError, UnicodeDecodeError):
            log.warning("checkpoint %s: unreadable %s marker, step ignored", step_name(step), COMMIT_MARKER)
            return None

    def committed_steps(self) -> list[int]:
        return sorted(step for step in self._step_folders() if self.marker(step) is not None)

    def latest_pointer(self) -> int | None:
        try:
            with self.fs.open(f"{self.root}/{LATEST_POINTER}", "r") as handle:
                return int(json.load(handle)["step"])
        except (FileNotFoundError, ValueError, KeyError):
            return None

    def download(self, step: int, local_dir: str | Path) -> dict[str, Any]:
        """Fetch a committed step into `local_dir`, verifying every file; returns its marker.

        Raises CorruptCheckpoint when the marker is missing or a file does not match it.
        """
        marker = self.marker(step)
        if marker is None:
            raise CorruptCheckpoint(f"{self.root_uri}/{step_name(step)} has no {COMMIT_MARKER} marker")
        local_dir = Path(local_dir)
        for entry in marker["files"]:
            target = local_dir / entry["path"]
            target.parent.mkdir(parents=True, exist_ok=True)
            remote = f"{self.root}/{step_name(step)}/{entry['path']}"
            try:
                self.fs.get_file(remote, str(target))
            except FileNotFoundError as missing:
                raise CorruptCheckpoint(f"{self.root_uri}/{step_name(step)}: {entry['path']} is missing") from missing
            if target.stat().st_size != entry["size"] or sha256_of(target) != entry["sha256"]:
                raise CorruptCheckpoint(f"{self.root_uri}/{step_name(step)}: {entry['path']} fails its checksum")
        return marker

    def restore_newest(self, local_dir: str | Path) -> tuple[int, dict[str, Any]] | None:
        """Download the newest committed step that verifies; older ones are the fallback."""
        for step in reversed(self.committed_steps()):
            step_dir = Path(local_dir) / step_name(step)
            try:
                return step, self.download(step, step_dir)
            except CorruptCheckpoint as problem:
                log.warning("skipping checkpoint: %s; falling back to the previous committed step", problem)
        return None

    # -- retention -------------------------------------------------------------------------------
    def prune(self, keep_last: int, keep: set[int] = frozenset()) -> list[int]:
        """Delete all but the newest `keep_last` committed steps (and any in `keep`).

        Uncommitted folders older than the newest committed step are debris of failed saves: removed too.
        Folders newer than it may be a save in progress and are left alone.
        """
        folders = self._step_folders()
        committed = [s for s in sorted(folders) if self.marker(s) is not None]
        if not committed:
            return []
        survivors = set(committed[-keep_last:]) | set(keep)
        newest = committed[-1]
        doomed = [s for s in folders if s not in survivors and s <= newest]
        for step in doomed:
            # Remove the marker first so a half-deleted folder is never mistaken for a valid step.
            marker_path = f"{folders[step]}/{COMMIT_MARKER}"
            if self.fs.exists(marker_path):
                self.fs.rm(marker_path)
            self.fs.rm(folders[step], recursive=True)
        return sorted(doomed)


class CorruptCheckpoint(Exception):
    """A step that exists but cannot be trusted."""
