"""benchmarks/gpu_bundle.py's choices that need no network: which cached wheel fits the target, and what it carries.
(tests/integration/test_gpu_bundle.py builds and installs a whole bundle.)"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def gpu_bundle():
    spec = importlib.util.spec_from_file_location("gpu_bundle", REPO / "benchmarks" / "gpu_bundle.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_cached_wheel_is_reused_only_for_a_target_it_fits(gpu_bundle, tmp_path):
    for name in ("pydantic_core-2.50.5-cp311-cp311-manylinux2014_x86_64.manylinux_2_17_x86_64.whl",
                 "av-18.1.0-cp311-abi3-manylinux_2_28_x86_64.whl", "hjson-3.1.0-py3-none-any.whl"):
        (tmp_path / name).touch()
    cp312 = gpu_bundle.supported_tags("3.12", gpu_bundle.DEFAULT_PLATFORMS)
    assert gpu_bundle.cached_wheel(tmp_path, "pydantic-core", "2.50.5", cp312) is None  # a cp311 build
    assert gpu_bundle.cached_wheel(tmp_path, "av", "18.1.0", cp312).name.startswith("av-")  # abi3 from 3.11 on
    assert gpu_bundle.cached_wheel(tmp_path, "hjson", "3.1.0", cp312) is not None
    assert gpu_bundle.cached_wheel(tmp_path, "hjson", "3.0.0", cp312) is None
    cp311 = gpu_bundle.supported_tags("3.11", gpu_bundle.DEFAULT_PLATFORMS)
    assert gpu_bundle.cached_wheel(tmp_path, "pydantic_core", "2.50.5", cp311) is not None
    old_glibc = gpu_bundle.supported_tags("3.12", ("manylinux_2_17_x86_64",))
    assert gpu_bundle.cached_wheel(tmp_path, "av", "18.1.0", old_glibc) is None  # needs glibc 2.28


def test_the_bundle_never_carries_torch_and_installs_only_what_the_check_imports(gpu_bundle):
    carried = {*gpu_bundle.BINARY, gpu_bundle.BUILT}
    assert not carried & {"torch", "mlflow", "submitit", "s3fs", "numpy"}
    assert set(gpu_bundle.TOP_LEVEL) == {"pydantic", "av", "deepspeed"} <= carried
