"""Predicted DAVIS masks, committed by sequence under the feature cache (a local path or any fsspec URL).

Layout: DAVIS's results layout, so the folder can be handed to the official evaluator as it is::

    manifest.json          # the dataset's fingerprint and the protocol's key fields (encoder, constants)
    <seq>/<frame>.png      # 8-bit palette PNGs of object ids, one per annotated frame
    <seq>.done             # written LAST: {"frames": [...], "sha256": {frame: digest}}

A sequence counts as done only when its marker exists and every PNG matches its digest: a sequence without a
marker (a preempted propagation) or with a stale one is recomputed; a committed one never is. A folder whose
manifest disagrees with this evaluation is refused (CacheMismatch), as the feature cache does.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from vito.eval.datasets.davis import DavisSequence, mask_png, read_mask_png
from vito.eval.extract import CacheFolder, CacheMismatch, _manifest_difference

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


class MaskStore:
    def __init__(self, url: str, storage_options: dict[str, Any] | None = None):
        self.folder = CacheFolder(url, storage_options)
        self.url = self.folder.url

    def check_manifest(self, expected: dict[str, Any], *, write: bool) -> None:
        """Refuse a folder of another evaluation; write the manifest when absent and `write` (one rank)."""
        expected = {"format": FORMAT_VERSION, **expected}
        found = self.folder.read_json(MANIFEST)
        if found is None:
            if write:
                self.folder.write_json(MANIFEST, expected)
            return
        differences = _manifest_difference(found, expected)
        if differences:
            raise CacheMismatch(f"{self.url}/{MANIFEST} was written for other masks ({'; '.join(differences)}): "
                                "use another feature_cache, or delete that folder to recompute")

    def load(self, sequence: DavisSequence) -> list[np.ndarray] | None:
        """The committed masks of a sequence, verified against its marker; None when not (validly) committed."""
        marker = self.folder.read_json(f"{sequence.name}.done")
        frames = [path.name for path in sequence.annotations]
        if marker is None or marker.get("frames") != frames:
            return None
        masks = []
        for frame in frames:
            data = self.folder.read_bytes(f"{sequence.name}/{frame}")
            if data is None or hashlib.sha256(data).hexdigest() != marker["sha256"].get(frame):
                return None
            masks.append(read_mask_png(data))
        return masks

    def commit(self, sequence: DavisSequence, masks: list[np.ndarray]) -> None:
        """Write the sequence's PNGs, then its marker (a stale marker is removed first: it never vouches for
        new bytes)."""
        frames = [path.name for path in sequence.annotations]
        if len(masks) != len(frames):
            raise ValueError(f"{sequence.name}: {len(masks)} masks for {len(frames)} annotated frames")
        self.folder.remove(f"{sequence.name}.done")
        self.folder.fs.makedirs(self.folder.path(sequence.name), exist_ok=True)
        digests = {}
        for frame, mask in zip(frames, masks):
            data = mask_png(mask, f"{self.url}/{sequence.name}/{frame}")
            self.folder.write_bytes(f"{sequence.name}/{frame}", data)
            digests[frame] = hashlib.sha256(data).hexdigest()
        self.folder.write_json(f"{sequence.name}.done", {"sequence": sequence.name, "frames": frames,
                                                         "sha256": digests})
