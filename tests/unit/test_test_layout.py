"""The rules the suite keeps for itself: what counts as CI and where the integration marker comes from (both
enforced by tests/conftest.py), and that tests share helpers through helper modules, never by importing a test
module (test_*.py)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests import conftest

TESTS = Path(conftest.__file__).resolve().parent


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


# ---------------------------------------------------------------- helpers live in helper modules


def _package_of(path: Path) -> list[str]:
    """The dotted package of a file under tests/, as a list: tests/unit/x.py -> ["tests", "unit"]."""
    return ["tests", *path.resolve().parent.relative_to(TESTS).parts]


def _is_test_module(parts: list[str]) -> bool:
    return parts[:1] == ["tests"] and any(part.startswith("test_") for part in parts)


def _test_modules_imported(node: ast.Import | ast.ImportFrom, package: list[str]) -> list[str]:
    """The test modules one import statement loads: `from tests.unit import a, test_b` -> tests.unit.test_b."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names if _is_test_module(alias.name.split("."))]
    base = package[: len(package) - node.level + 1] if node.level else []
    base += node.module.split(".") if node.module else []
    if _is_test_module(base):
        return [".".join(base)]
    return [".".join(base + [alias.name]) for alias in node.names if _is_test_module(base + [alias.name])]


def imports_of_test_modules(source: str, package: list[str]) -> list[tuple[int, str]]:
    """(line, module) for each import of a test_*.py module of the suite in `source` (code of the package
    `package`): at module level, inside functions, and inside string constants that hold code (the program a
    test runs in a fresh `python -c`)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found += [(node.lineno, name) for name in _test_modules_imported(node, package)]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and "import" in node.value:
            try:
                inner = imports_of_test_modules(node.value, package)
            except SyntaxError:
                continue  # prose, not code
            found += [(node.lineno + line - 1, name) for line, name in inner]
    return found


@pytest.mark.parametrize(
    "source",
    [
        "from tests.integration.test_slurm_backend import _trials",
        "from tests.unit import sweep_store, test_cli",
        "import tests.unit.test_cli as other",
        "def helper():\n    from tests.unit.test_data import TINY",
        "from .test_cli import _cli",
        "CODE = \"\"\"\nimport sys\nfrom tests.unit.test_evaluate_targets import FakeRegistry\n\"\"\"",
    ],
    ids=["from-a-test-module", "a-test-module-from-its-package", "import-as", "inside-a-function", "relative",
         "in-a-python-c-program"],
)
def test_an_import_of_a_test_module_is_found_wherever_it_is_written(source):
    assert imports_of_test_modules(source, ["tests", "unit"]), source


@pytest.mark.parametrize(
    "source",
    [
        "from tests.unit import sweep_store",
        "from tests.integration.local_sweeps import vitolaunch",
        "from tests import conftest",
        "from .run_records import run_record",
        "from vitolaunch.results import test_reports",  # not the test suite's
        "HELP = 'import what you need, from tests.unit.test_x'",  # prose
    ],
    ids=["a-helper-module-from-its-package", "from-a-helper-module", "conftest", "relative", "not-the-suite", "prose"],
)
def test_imports_of_helper_modules_pass(source):
    assert imports_of_test_modules(source, ["tests", "unit"]) == [], source


def test_no_module_under_tests_imports_a_test_module():
    this = Path(__file__).resolve()  # whose examples above are the only such imports allowed
    found = [
        f"{path.relative_to(TESTS.parent)}:{line}: imports {name}"
        for path in sorted(TESTS.rglob("*.py"))
        if path.resolve() != this
        for line, name in imports_of_test_modules(path.read_text(), _package_of(path))
    ]
    assert not found, (
        "a test module is no library: move what is shared into a helper module (e.g. tests/unit/run_records.py, "
        "tests/integration/slurm_trials.py) or a conftest.py fixture, and import it from there:\n" + "\n".join(found)
    )
