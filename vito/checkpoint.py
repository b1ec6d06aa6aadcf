"""Checkpoint store over fsspec: the same code for a local folder and an `s3://` prefix.

Layout under a trial's root::

    step_00000050/<files written by every rank>
    step_00000050/COMMITTED      # written last, by rank 0: file list with sizes and sha256, and metadata
                                 # (world size, the resolved config)
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
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import fsspec

log = logging.getLogger(__name__)

COMMIT_MARKER = "COMMITTED"
LATEST_POINTER = "latest"
KEEP_MARKER = "KEEP"
RANK_MARKERS = "_ranks"  # per-rank "my files are uploaded" notes, merged into COMMITTED by rank 0
MARKER_CONFIG = "config"  # the marker's metadata key for the resolved config the step was trained with
_STEP_DIR = re.compile(r"step_(\d+)$")
_CHUNK = 4 << 20


def with_retries(action, what: str, attempts: int = 6, first_delay_s: float = 1.0, max_delay_s: float = 30.0):
    """Run `action`, retrying transient storage failures with exponential backoff.

    FileNotFoundError and PermissionError are answers, not outages: they are raised at once.
    """
    delay = first_delay_s
    for attempt in range(1, attempts + 1):
        try:
            return action()
        except (FileNotFoundError, PermissionError):
            raise
        except Exception as problem:
            if attempt == attempts:
                raise
            log.warning("%s failed (%s: %s); retry %d/%d in %.0f s", what, type(problem).__name__,
                        str(problem).splitlines()[0][:200] if str(problem) else "", attempt, attempts - 1, delay)
            time.sleep(delay)
            delay = min(delay * 2, max_delay_s)


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
        self.storage_options = dict(storage_options or {})
        self.fs, self.root = fsspec.core.url_to_fs(self.root_uri, **self.storage_options)

    def describe(self) -> str:
        """Where this store is, for messages: the URL and, for S3, the endpoint. Never credentials."""
        if "://" not in self.root_uri or self.root_uri.startswith("file://"):
            return self.root_uri
        endpoint = (
            self.storage_options.get("endpoint_url")
            or os.environ.get("AWS_ENDPOINT_URL_S3")
            or os.environ.get("AWS_ENDPOINT_URL")
            or "the default AWS endpoint"
        )
        bucket = self.root_uri.split("://", 1)[1].split("/", 1)[0]
        return f"{self.root_uri} (bucket '{bucket}' at {endpoint})"

    def check_writable(self) -> None:
        """Write, read back and delete a small object; StorageUnavailable with one clear message if not."""
        probe = f"{self.root}/.vito-write-check-{os.getpid()}"
        try:
            self.fs.makedirs(self.root, exist_ok=True)
            self.fs.pipe_file(probe, b"ok")
            if self.fs.cat_file(probe) != b"ok":
                raise OSError("read back different bytes")
            self.fs.rm(probe)
        except PermissionError as problem:
            raise StorageUnavailable(
                f"{self.describe()} refused the credentials ({_reason(problem)}): check AWS_ACCESS_KEY_ID / "
                "AWS_SECRET_ACCESS_KEY or the AWS profile of the account that runs the jobs"
            ) from problem
        except FileNotFoundError as problem:
            raise StorageUnavailable(f"{self.describe()} does not exist ({_reason(problem)}): create the bucket first") from problem
        except Exception as problem:
            raise StorageUnavailable(f"{self.describe()} is unreachable or not writable ({_reason(problem)})") from problem

    # -- writing ---------------------------------------------------------------------------------
    def upload(self, step: int, local_dir: str | Path) -> list[StoredFile]:
        """Put every file under `local_dir` into the step folder; returns what was written."""
        local_dir = Path(local_dir)
        written = []
        for local_file in sorted(p for p in local_dir.rglob("*") if p.is_file()):
            relative = local_file.relative_to(local_dir).as_posix()
            remote = f"{self.root}/{step_name(step)}/{relative}"

            def put(local_file=local_file, remote=remote) -> None:
                self.fs.makedirs(os.path.dirname(remote), exist_ok=True)
                self.fs.put_file(str(local_file), remote)

            with_retries(put, f"upload of {relative} ({step_name(step)})")
            written.append(StoredFile(relative, local_file.stat().st_size, sha256_of(local_file)))
        return written

    def mark_rank_uploaded(self, step: int, rank: int, files: list[StoredFile]) -> None:
        path = f"{self.root}/{step_name(step)}/{RANK_MARKERS}/rank_{rank:05d}.json"
        payload = {"rank": rank, "files": [asdict(f) for f in files]}
        with_retries(lambda: self._write_json(path, payload), f"rank {rank} marker ({step_name(step)})")

    def uploaded_ranks(self, step: int) -> dict[int, list[StoredFile]]:
        """The ranks whose files of `step` are all uploaded, with those files."""
        folder = f"{self.root}/{step_name(step)}/{RANK_MARKERS}"
        try:
            names = self.fs.ls(folder, detail=False, refresh=True)
        except FileNotFoundError:
            return {}
        ranks = {}
        for name in names:
            if not name.endswith(".json"):
                continue
            with self.fs.open(name, "r") as handle:
                payload = json.load(handle)
            ranks[payload["rank"]] = [StoredFile(**entry) for entry in payload["files"]]
        return ranks

    def mark_keep(self, step: int) -> None:
        """Exempt a step from retention (e.g. a milestone an evaluation points at)."""
        with_retries(lambda: self.fs.pipe_file(f"{self.root}/{step_name(step)}/{KEEP_MARKER}", b"keep"), "keep marker")

    def kept_steps(self) -> set[int]:
        return {step for step, folder in self._step_folders().items() if self.fs.exists(f"{folder}/{KEEP_MARKER}")}

    def commit(self, step: int, files: list[StoredFile], metadata: dict[str, Any] | None = None) -> None:
        """Mark a fully uploaded step as valid, then point `latest` at it. Call once, after a barrier."""
        marker = {
            "step": step,
            "committed_at": time.time(),
            "files": [asdict(f) for f in sorted(files, key=lambda f: f.path)],
            "metadata": metadata or {},
        }
        with_retries(lambda: self._write_json(f"{self.root}/{step_name(step)}/{COMMIT_MARKER}", marker), "commit marker")
        with_retries(lambda: self._write_json(f"{self.root}/{LATEST_POINTER}", {"step": step}), "latest pointer")

    def _write_json(self, path: str, payload: dict[str, Any]) -> None:
        # Write-then-rename: on a local disk the rename is atomic; on S3 the final PUT is.
        tmp = f"{path}.tmp-{os.getpid()}"
        self.fs.makedirs(os.path.dirname(path), exist_ok=True)
        with self.fs.open(tmp, "w") as handle:
            json.dump(payload, handle, indent=1)
        self.fs.mv(tmp, path)

    # -- reading ---------------------------------------------------------------------------------
    def _step_folders(self) -> dict[int, str]:
        try:
            entries = self.fs.ls(self.root, detail=False, refresh=True)
        except FileNotFoundError:
            return {}
        folders = {}
        for entry in entries:
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

    def committed_marker(self, step: int) -> dict[str, Any]:
        """The COMMITTED marker of `step`; CorruptCheckpoint when the step is not committed."""
        marker = self.marker(step)
        if marker is None:
            raise CorruptCheckpoint(f"{self.root_uri}/{step_name(step)} has no {COMMIT_MARKER} marker")
        return marker

    def committed_config(self, step: int) -> dict[str, Any] | None:
        """The resolved config recorded in the marker of `step`; None for steps committed before markers held it.

        Reading it fetches only the small marker: no weights, and nothing that needs torch.
        """
        config = self.committed_marker(step).get("metadata", {}).get(MARKER_CONFIG)
        return config if isinstance(config, dict) else None

    def fetch_verified(self, step: int, relative_path: str, dest: str | Path) -> Path:
        """Fetch one file of a committed step to `dest/relative_path`, its size and sha256 checked against the marker.

        Raises CorruptCheckpoint when the step is not committed, its marker lists no such file, or the file is
        missing or does not match.
        """
        marker = self.committed_marker(step)
        entry = next((e for e in marker["files"] if e["path"] == relative_path), None)
        if entry is None:
            raise CorruptCheckpoint(f"{self.root_uri}/{step_name(step)} lists no {relative_path}")
        return self._fetch(step, entry, Path(dest))

    def _fetch(self, step: int, entry: dict[str, Any], local_dir: Path) -> Path:
        target = local_dir / entry["path"]
        target.parent.mkdir(parents=True, exist_ok=True)
        remote = f"{self.root}/{step_name(step)}/{entry['path']}"
        try:
            self.fs.get_file(remote, str(target))
        except FileNotFoundError as missing:
            raise CorruptCheckpoint(f"{self.root_uri}/{step_name(step)}: {entry['path']} is missing") from missing
        if target.stat().st_size != entry["size"] or sha256_of(target) != entry["sha256"]:
            raise CorruptCheckpoint(f"{self.root_uri}/{step_name(step)}: {entry['path']} fails its checksum")
        return target

    def download(self, step: int, local_dir: str | Path, wanted: Callable[[str], bool] | None = None) -> dict[str, Any]:
        """Fetch a committed step into `local_dir`, verifying every file; returns its marker.

        `wanted(path)` picks the files to fetch (all by default): a rank fetches only what it loads.
        Raises CorruptCheckpoint when the marker is missing or a fetched file does not match it.
        """
        marker = self.committed_marker(step)
        for entry in marker["files"]:
            if wanted is None or wanted(entry["path"]):
                self._fetch(step, entry, Path(local_dir))
        return marker

    def warn_about_unfinished_saves(self, committed: list[int]) -> None:
        """Log step folders newer than the newest committed step: saves that never finished, ignored."""
        for step in sorted(self._step_folders()):
            if step not in committed and (not committed or step > committed[-1]):
                log.warning("ignoring %s/%s: no %s marker (a save that did not finish)", self.root_uri, step_name(step), COMMIT_MARKER)

    def restore_newest(self, local_dir: str | Path) -> tuple[int, dict[str, Any]] | None:
        """Download the newest committed step that verifies; older ones are the fallback."""
        committed = self.committed_steps()
        self.warn_about_unfinished_saves(committed)
        for step in reversed(committed):
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
        survivors = set(committed[-keep_last:]) | set(keep) | self.kept_steps()
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


class StorageUnavailable(Exception):
    """The checkpoint root cannot be used: wrong credentials, missing bucket, unreachable endpoint."""


def _reason(problem: Exception) -> str:
    text = str(problem).strip().splitlines()
    return f"{type(problem).__name__}: {text[0][:200] if text else ''}"
