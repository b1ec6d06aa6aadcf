"""Fixtures shared by the unit modules.

`records` is the manifest of tiny synthetic videos, rendered once per module. Which videos is each module's own
choice, since its assertions count on their number, length and classes: a module that uses `records` defines a
module-scoped `synthetic_videos` fixture returning its SyntheticConfig, e.g.

    @pytest.fixture(scope="module")
    def synthetic_videos() -> SyntheticConfig:
        return TINY
"""

from __future__ import annotations

import pytest

from vito.config import SyntheticConfig
from vito.data.manifest import VideoRecord, read_manifest
from vito.data.synthetic import ensure_synthetic_videos


@pytest.fixture(scope="module")
def records(tmp_path_factory: pytest.TempPathFactory, synthetic_videos: SyntheticConfig) -> list[VideoRecord]:
    """The VideoRecords of the module's `synthetic_videos`, rendered into a fresh temporary folder."""
    return read_manifest(ensure_synthetic_videos(tmp_path_factory.mktemp("videos"), synthetic_videos))
