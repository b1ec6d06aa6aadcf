"""What every test shares: one rule for a missing service, the `integration` marker, and the environment.

- A test that needs a real service (SLURM, SeaweedFS, the MLflow server) and does not find it calls
  `service_unavailable(...)`: skipped with the reason on a developer's machine, failed under CI, because CI
  always starts the services and a skip there would hide a broken setup.
- Everything under tests/integration is marked `integration` here, so `-m "not integration"` selects the
  unit tests; a unit test cannot carry the marker (it would hide it from that selection's complement).
- Environment changes go through `monkeypatch` (function scope) or `module_monkeypatch` (module scope), so
  they are undone whatever the test's outcome.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NoReturn

import pytest

INTEGRATION_DIR = Path(__file__).resolve().parent / "integration"

# CI systems spell "on" as true, 1, yes (GitHub Actions and GitLab set CI=true); anything but an explicit
# "off" counts, so a CI that sets an unexpected value fails loudly rather than skipping silently.
_CI_OFF = frozenset({"", "0", "false", "no", "off"})


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in _CI_OFF


def service_unavailable(service: str, reason: str, hint: str) -> NoReturn:
    """Skip the calling test because `service` is missing, or fail it under CI. `hint`: how to start it."""
    message = f"{service} not available: {reason} ({hint})"
    if in_ci():
        pytest.fail(f"CI={os.environ['CI']} requires the real services: {message}", pytrace=False)
    pytest.skip(message)


def _is_integration(item: pytest.Item) -> bool:
    return INTEGRATION_DIR in Path(str(item.path)).resolve().parents


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    misplaced = []
    for item in items:
        if _is_integration(item):
            item.add_marker(pytest.mark.integration)
        elif item.get_closest_marker("integration") is not None:
            misplaced.append(item.nodeid)
    if misplaced:
        raise pytest.UsageError(
            "the integration marker is given by the folder: move these tests to tests/integration "
            "(or drop the marker): " + ", ".join(misplaced)
        )


@pytest.fixture(scope="session", autouse=True)
def _no_telemetry():
    """MLflow 3 phones home unless told not to (also from the processes the tests start); no cluster profile."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
        patch.setenv("DO_NOT_TRACK", "true")
        # A developer's own ~/.config/vitolaunch/clusters.yaml must not change what specs mean in tests.
        patch.setenv("VITOLAUNCH_CLUSTERS", os.devnull)
        yield


@pytest.fixture(scope="module")
def module_monkeypatch():
    """`monkeypatch` for module-scoped fixtures (e.g. credentials that a module's shared jobs inherit)."""
    with pytest.MonkeyPatch.context() as patch:
        yield patch
