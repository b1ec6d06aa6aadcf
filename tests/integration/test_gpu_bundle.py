"""benchmarks/gpu_bundle.py and benchmarks/gpu_run.sh, played here as the lent GPU machine is: a Python that is
itself a venv holding torch and the few packages that machine has, but not deepspeed, PyAV or pydantic; an install
with the network refused; gpu_check.py in its CPU mode through the runner, every section ok.

What this machine cannot play: the target's Python (the bundle is built for this one, cp311, not cp312) and its
CUDA torch (a CPU torch of the project's pin stands in for it; docs/gpu-check.md has the torch 2.11 table).
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.version import Version

from tests.conftest import service_unavailable

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
# Of what the lent machine's image holds (/work/.library/device/KINDS.md), what gpu_check.py's imports and the
# bundle's requirements touch; torch comes first and on its own.
MACHINE_PACKAGES = ("numpy", "pyyaml", "click", "rich", "fsspec", "psutil", "py-cpuinfo", "msgpack", "ninja", "packaging",
                    "tqdm", "einops", "pillow")
# Import names the machine lacks: the mimic must lack them too, or the test would pass on them and not on the bundle.
NOT_ON_MACHINE = ("deepspeed", "av", "pydantic", "pydantic_core", "hjson", "mlflow", "submitit", "s3fs")
BUNDLED = {"annotated-types", "av", "deepspeed", "hjson", "pydantic", "pydantic-core", "typing-extensions",
           "typing-inspection", "vitolaunch"}
DEAD_PROXY = "http://127.0.0.1:9"  # the discard port: a request that slips past --no-index fails at once
SECTIONS = ["reference", "vito_step", "trainer", "resume", "compile", "eval"]


def _pin(name: str) -> str:
    """name==the version this test's Python has, so the mimic's install comes from pip's cache or the local index."""
    try:
        return f"{name}=={importlib.metadata.version(name)}"
    except importlib.metadata.PackageNotFoundError:
        return name


def _run(command: list[str], timeout: float, **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False, **kwargs)


def _build_bundle(bundle: Path, cache: Path) -> subprocess.CompletedProcess[str]:
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    proc = _run([sys.executable, str(REPO / "benchmarks" / "gpu_bundle.py"), "--out", str(bundle), "--python-version", python,
                 "--cache-dir", str(cache)], timeout=600, cwd=REPO)
    if proc.returncode and any(sign in proc.stdout + proc.stderr for sign in ("NewConnectionError", "Temporary failure in name")):
        service_unavailable("PyPI", "gpu_bundle.py could not download the wheels", "a network to the package index")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _machine_python(base: Path) -> Path:
    """A venv with torch and MACHINE_PACKAGES only, as /opt/torch/.venv is on the lent machine."""
    torch_version = Version(importlib.metadata.version("torch"))
    if torch_version.local != "cpu":
        # Its pin would make pip download a multi-GB CUDA build for a machine without a GPU.
        service_unavailable("a CPU build of torch", f"this Python's torch is {torch_version}", "scripts/test.sh installs one")
    proc = _run([sys.executable, "-m", "venv", str(base)], timeout=120)
    assert proc.returncode == 0, proc.stderr
    python = base / "bin" / "python"
    proc = _run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", "--only-binary=:all:",
                 f"torch=={torch_version}", *map(_pin, MACHINE_PACKAGES)], timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    probe = "import importlib.util, sys; print([n for n in sys.argv[1:] if importlib.util.find_spec(n)])"
    assert _run([str(python), "-c", probe, *NOT_ON_MACHINE], timeout=60).stdout.strip() == "[]"
    return python


@pytest.mark.timeout(1200)
def test_the_bundle_installs_offline_over_a_torch_only_python_and_every_section_passes(tmp_path, request):
    # Downloads and the deepspeed build are kept in pytest's cache folder between local runs; CI starts clean.
    pytest_cache = getattr(request.config, "cache", None)
    cache = Path(pytest_cache.mkdir("gpu-bundle-wheels")) if pytest_cache else tmp_path / "wheels"
    bundle = tmp_path / "bundle"
    built = _build_bundle(bundle, cache)

    wheels = {path.name.split("-")[0].replace("_", "-").lower() for path in bundle.glob("*.whl")}
    assert wheels == BUNDLED  # never torch: the machine's CUDA build stays
    assert (bundle / "requirements.txt").read_text().splitlines()[1:] == [
        _pin("pydantic"), _pin("av"), _pin("deepspeed")]
    assert "of 64.0 MiB" in built.stdout

    python = _machine_python(tmp_path / "machine-venv")
    out = tmp_path / "out"
    env = {key: value for key, value in os.environ.items()
           if key not in ("PYTHONPATH", "VITO_COMPILE_BACKEND") and not key.lower().endswith("_proxy")}
    env.update(PIP_NO_INDEX="1", HTTP_PROXY=DEAD_PROXY, HTTPS_PROXY=DEAD_PROXY, http_proxy=DEAD_PROXY,
               https_proxy=DEAD_PROXY, GPU_BUNDLE=str(bundle), GPU_PYTHON=str(python), GPU_VENV=str(tmp_path / "venv"),
               OUT=str(out))
    proc = _run(["bash", str(REPO / "benchmarks" / "gpu_run.sh"), "--cpu", "--tiny", "--work-dir", str(tmp_path)],
                timeout=900, env=env, cwd=tmp_path)
    log = (out / "gpu_run.log").read_text()
    assert proc.returncode == 0, log[-6000:] + proc.stderr[-2000:]

    assert sorted(path.name for path in out.iterdir()) == ["gpu_check.json", "gpu_run.log"]  # the device returns 8 at most
    for step in ("venv", "install (offline)", "verify", "gpu_check"):
        assert f"] {step}: done in " in log
    torch_lines = re.findall(r"torch (?:before|after): +(.*)", log)  # version, CUDA version, where it was imported from
    assert len(torch_lines) == 2 and torch_lines[0] == torch_lines[1] and str(tmp_path / "machine-venv") in torch_lines[0]
    assert "Successfully installed annotated-types" in log and "deepspeed-" in log and "Successfully installed vitolaunch" in log

    report = json.loads((out / "gpu_check.json").read_text())
    assert report["finished"] and not report.get("timed_out")
    assert report["mode"]["torch"] == importlib.metadata.version("torch") and report["mode"]["backend"] == "gloo"
    assert 30 <= report["mode"]["timeout_s"] <= 360  # what the runner's budget left for the check
    assert list(report["sections"]) == SECTIONS
    assert all(values["ok"] for values in report["sections"].values()), {
        name: values.get("error") for name, values in report["sections"].items()}
