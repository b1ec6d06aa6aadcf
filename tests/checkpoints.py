"""Test helpers that read what a trial left in its checkpoint store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from vito.checkpoint import CheckpointStore
from vito.evaluate_task import MODEL_STATES


def final_weights(checkpoint_uri: str, scratch: str | Path, storage_options: dict[str, Any] | None = None) -> dict[str, torch.Tensor]:
    """The model (online + target) state of the newest committed step, verified: for exact-resume checks.

    A newest step that fails its checksum fails the test instead of falling back to an older step, which
    could hide a resume that ended elsewhere.
    """
    store = CheckpointStore(checkpoint_uri, storage_options)
    committed = store.committed_steps()
    if not committed:
        raise FileNotFoundError(f"no committed checkpoint under {checkpoint_uri}")
    path = store.fetch_verified(committed[-1], MODEL_STATES, scratch)
    return torch.load(path, map_location="cpu", weights_only=False)["module"]
