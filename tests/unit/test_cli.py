"""The CLI's promises that need no service: instant start, dry runs, and one clear error for bad input."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "deepspeed", "mlflow")


def _cli(*args: str, home: Path, path: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "VITOLAUNCH_HOME": str(home), "COLUMNS": "200"}
    if path is not None:  # e.g. a folder without sbatch: no SLURM, whatever this machine has
        env["PATH"] = path
    return subprocess.run([sys.executable, "-m", "vitolaunch.cli", *args], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=60)


def _heavy_modules_after(argv: list[str]) -> list[str]:
    code = (
        "import sys\n"
        "from vitolaunch.cli import main\n"
        f"sys.argv = {['vitolaunch', *argv]!r}\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        f"print('HEAVY=' + ','.join(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60).stdout
    return [m for m in out.rsplit("HEAVY=", 1)[1].strip().split(",") if m]


def test_help_imports_no_heavy_module():
    assert _heavy_modules_after(["--help"]) == []


def test_dry_run_imports_no_heavy_module():
    assert _heavy_modules_after(["sweep", "sweeps/quickstart.yaml", "--dry-run"]) == []


@pytest.mark.parametrize("spec", ["sweeps/quickstart.yaml", "sweeps/temperature_ablation.yaml"])
def test_dry_run_plans_the_shipped_specs_and_submits_nothing(spec, tmp_path):
    # Unit tests use no service: SLURM is hidden (its checks are in tests/integration/test_slurm_backend.py).
    result = _cli("sweep", spec, "--dry-run", home=tmp_path, path=str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "nothing submitted" in result.stdout
    assert "loss.temperature" in result.stdout
    assert not (tmp_path / "mlflow.db").exists()


def test_bad_spec_names_file_line_and_key_and_submits_nothing(tmp_path):
    spec = tmp_path / "bad.yaml"
    spec.write_text("name: bad\nparameters:\n  loss.temprature: [0.1, 0.2]\n")
    result = _cli("sweep", str(spec), home=tmp_path / "home")
    assert result.returncode == 2
    assert "bad.yaml:3" in result.stderr and "loss.temprature" in result.stderr
    assert "loss.temperature" in result.stderr  # the hint
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "home").exists(), "nothing may be created for a spec that fails validation"


def test_bad_override_is_named(tmp_path):
    result = _cli("sweep", "sweeps/quickstart.yaml", "-o", "resources.nodes=two", "--dry-run", home=tmp_path)
    assert result.returncode == 2
    assert "resources.nodes=two" in result.stderr and "Traceback" not in result.stderr


def test_batch_that_does_not_split_over_ranks_is_refused_before_submission(tmp_path):
    result = _cli("sweep", "sweeps/quickstart.yaml", "-o", "resources.tasks_per_node=3", home=tmp_path)
    assert result.returncode == 2
    assert "data.batch_size" in result.stderr and "3 ranks" in result.stderr
    assert not (tmp_path / "mlflow.db").exists()


def test_local_backend_refuses_multi_node_before_submission(tmp_path):
    result = _cli("sweep", "sweeps/quickstart.yaml", "-o", "resources.nodes=2", home=tmp_path)
    assert result.returncode == 2
    assert "resources.nodes" in result.stderr and "Traceback" not in result.stderr
    # that no trial reached the tracking store is checked in tests/integration/test_registry_store.py


@pytest.mark.parametrize("command", [["resume", "abc123"], ["cancel", "abc123"], ["logs", "abc123"]])
def test_commands_about_existing_runs_say_there_are_none_in_an_empty_workspace(command, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # the workspace's own store, not this shell's
    result = _cli(*command, home=tmp_path / "home")
    assert result.returncode == 2
    assert "no sweeps here yet" in result.stderr and "mlflow.db does not exist" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "home").exists(), "asking about runs must not create a tracking store"
