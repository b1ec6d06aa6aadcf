"""The layers of docs/architecture.md, checked: a module imports only its own wing and the wings below it.

Lazy imports inside functions count too: a lower wing reaching up at run time is the same dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]

# Lowest first. Each wing may import itself and every wing before it; `vito` (the method) sits under all of them
# and imports nothing of vitolaunch.
WINGS: list[tuple[str, tuple[str, ...]]] = [
    ("foundation", ("vitolaunch", "vitolaunch.errors", "vitolaunch.workspace")),
    ("spec", ("vitolaunch.spec",)),
    ("tracking", ("vitolaunch.tracking",)),
    ("backends", ("vitolaunch.backends",)),
    ("results", ("vitolaunch.results",)),
    ("job", ("vitolaunch.job",)),
    ("launch", ("vitolaunch.launch",)),
    ("cli", ("vitolaunch.cli", "vitolaunch.data_cli")),
]


def wing_of(module: str) -> int:
    """The index in WINGS of the wing `module` belongs to (the longest matching prefix wins)."""
    best, best_len = None, -1
    for index, (_, prefixes) in enumerate(WINGS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best_len:
                best, best_len = index, len(prefix)
    if best is None:
        raise AssertionError(f"{module} is in no wing: add it to WINGS and to docs/architecture.md")
    return best


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, root: Path = ROOT) -> list[tuple[int, str]]:
    """(line, module) for every import of vitolaunch or vito in the file, relative imports resolved."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            # `from vitolaunch.results import ranking` imports a module of that wing: the package is enough.
            found.append((node.lineno, module))
    return [(line, m) for line, m in found if m.split(".")[0] in {"vitolaunch", "vito"}]


def upward_imports(files: list[Path], root: Path = ROOT) -> list[str]:
    problems = []
    for path in files:
        own = wing_of(module_name(path, root))
        for line, module in imported_modules(path, root):
            if module.split(".")[0] == "vito":
                continue  # the method: every wing may use it
            target = wing_of(module)
            if target > own:
                problems.append(f"{path.relative_to(root)}:{line}: {WINGS[own][0]} imports {module} ({WINGS[target][0]})")
    return problems


def test_no_wing_imports_a_wing_above_it() -> None:
    problems = upward_imports(sorted((ROOT / "vitolaunch").rglob("*.py")))
    assert not problems, "imports against the layers of docs/architecture.md:\n" + "\n".join(problems)


def test_vito_knows_nothing_of_the_launcher() -> None:
    problems = [f"{path.relative_to(ROOT)}:{line}: imports {module}"
                for path in sorted((ROOT / "vito").rglob("*.py"))
                for line, module in imported_modules(path) if module.split(".")[0] == "vitolaunch"]
    assert not problems, "\n".join(problems)


def test_no_folder_hides_the_architecture_again() -> None:
    for folder in [ROOT / "vitolaunch", *(p for p in (ROOT / "vitolaunch").iterdir() if p.is_dir())]:
        modules = [p for p in folder.glob("*.py") if p.name != "__init__.py"]
        assert len(modules) <= 12, f"{folder.relative_to(ROOT)} has {len(modules)} modules: split it into wings"


def test_every_wing_says_what_it_is_for_and_what_it_may_import() -> None:
    for init in sorted((ROOT / "vitolaunch").glob("*/__init__.py")):
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        assert "May import" in doc, f"{init.relative_to(ROOT)}: its docstring must say what the wing may import"


@pytest.mark.parametrize("source, expected", [
    ("from vitolaunch.launch.launcher import Launcher\n", ["tracking imports vitolaunch.launch.launcher (launch)"]),
    ("def f():\n    from vitolaunch.cli import main\n", ["tracking imports vitolaunch.cli (cli)"]),
    ("from vitolaunch.errors import VitolaunchError\nfrom . import records\n", []),
    ("from ..results import states\n", ["tracking imports vitolaunch.results (results)"]),
])
def test_the_check_sees_upward_imports_lazy_and_relative(tmp_path: Path, source, expected) -> None:
    wing = tmp_path / "vitolaunch" / "tracking"
    wing.mkdir(parents=True)
    (wing / "probe.py").write_text(source)
    problems = upward_imports([wing / "probe.py"], tmp_path)
    assert [p.split(": ", 1)[1] for p in problems] == expected
