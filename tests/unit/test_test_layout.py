"""The rules tests/conftest.py enforces on the suite itself: what counts as CI, and where the integration
marker comes from."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import conftest


class _Item:
    def __init__(self, path: Path, *markers: str):
        self.path, self.nodeid = path, f"{path.name}::test"
        self.markers = list(markers)

    def add_marker(self, marker) -> None:
        self.markers.append(marker.name)

    def get_closest_marker(self, name: str):
        return name if name in self.markers else None


@pytest.mark.parametrize(
    ("value", "ci"),
    [(None, False), ("", False), ("0", False), ("false", False), ("No", False), (" off ", False),
     ("true", True), ("1", True), ("yes", True), ("TRUE", True), ("gitlab", True)],
)
def test_ci_is_on_unless_unset_or_an_explicit_off(monkeypatch, value, ci):
    if value is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", value)
    assert conftest.in_ci() is ci


def test_a_missing_service_skips_locally_and_fails_under_ci(monkeypatch):
    monkeypatch.setenv("CI", "false")
    with pytest.raises(pytest.skip.Exception, match="S3 not available: port closed"):
        conftest.service_unavailable("S3", "port closed", "start it")
    monkeypatch.setenv("CI", "1")
    with pytest.raises(pytest.fail.Exception, match="CI=1 requires the real services: S3 not available"):
        conftest.service_unavailable("S3", "port closed", "start it")


def test_everything_under_tests_integration_is_marked_and_nothing_else():
    integration = _Item(conftest.INTEGRATION_DIR / "sub" / "test_x.py")
    unit = _Item(conftest.INTEGRATION_DIR.parent / "unit" / "test_y.py")
    conftest.pytest_collection_modifyitems(None, [integration, unit])
    assert integration.markers == ["integration"] and unit.markers == []


def test_an_integration_marker_outside_tests_integration_is_refused():
    stray = _Item(conftest.INTEGRATION_DIR.parent / "unit" / "test_z.py", "integration")
    with pytest.raises(pytest.UsageError, match="test_z.py::test"):
        conftest.pytest_collection_modifyitems(None, [stray])
