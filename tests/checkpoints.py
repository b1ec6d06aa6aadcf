"""Test helpers that read what a trial left in its checkpoint store.

torch is imported only when `final_weights` is called, so a test module can import this at its top and still
leave torch out of the pytest process until a test needs it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from vito.checkpoint import CheckpointStore

if TYPE_CHECKING:
    import torch


def committed_steps(checkpoint_uri: str) -> list[int]:
    """The steps committed under `checkpoint_uri`, oldest first."""
    return CheckpointStore(checkpoint_uri).committed_steps()


def final_weights(checkpoint_uri: str, scratch: str | Path, storage_options: dict[str, Any] | None = None) -> dict[str, torch.Tensor]:
    """The model (online + target) state of the newest committed step, verified: for exact-resume checks.

    A newest step that fails its checksum fails the test instead of falling back to an older step, which
    could hide a resume that ended elsewhere.
    """
    import torch

    from vito.evaluate_task import MODEL_STATES

    store = CheckpointStore(checkpoint_uri, storage_options)
    committed = store.committed_steps()
    if not committed:
        raise FileNotFoundError(f"no committed checkpoint under {checkpoint_uri}")
    path = store.fetch_verified(committed[-1], MODEL_STATES, scratch)
    return torch.load(path, map_location="cpu", weights_only=False)["module"]
