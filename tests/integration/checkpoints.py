"""A pretrained checkpoint for the evaluation tests, committed as the trainer commits it (model states and a
marker holding the config) but without a pretraining sweep: the tests of evaluation need a checkpoint, not the
launcher's pretraining (tests/integration/test_evaluate_sweep.py and test_local_sweep.py cover that), and a
sweep costs about a minute of CI each."""

from __future__ import annotations

import tempfile
from pathlib import Path

from tests.integration.local_sweeps import TINY_BASE


def committed_checkpoint(root: Path, step: int = 4, seed: int = 0) -> Path:
    """Step `step` of the tests' tiny VitoModel (seeded weights) committed under `root`; returns `root`."""
    import torch

    from vito.checkpoint import MARKER_CONFIG, CheckpointStore
    from vito.config import VitoConfig
    from vito.evaluate_task import MODEL_STATES
    from vito.model import VitoModel

    cfg = VitoConfig.model_validate({"model": TINY_BASE["model"]})
    torch.manual_seed(seed)
    model = VitoModel(cfg.model, cfg.loss)
    with tempfile.TemporaryDirectory() as scratch:
        torch.save({"module": model.state_dict(), "config": cfg.to_dict()}, Path(scratch) / MODEL_STATES)
        store = CheckpointStore(str(root))
        store.commit(step, store.upload(step, scratch), {"world_size": 1, MARKER_CONFIG: cfg.to_dict()})
    return root
