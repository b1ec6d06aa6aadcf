"""Build, here, the wheels that the lent GPU machine lacks for benchmarks/gpu_check.py, into one folder that the
device tool's `run` carries there (docs/gpu-check.md).

    .venv/bin/python benchmarks/gpu_bundle.py                        # for the lent machine: cp312, manylinux x86_64
    .venv/bin/python benchmarks/gpu_bundle.py --python-version 3.11  # for this machine's Python (the CI test)

That machine has Python 3.12 with its own CUDA torch, and no network. gpu_check.py's imports need three things
it lacks: pydantic (vito.config, vitolaunch.spec), deepspeed (the engine) and PyAV (the synthetic clips). The
versions are those installed in the Python that runs this script: the ones this project's tests ran with.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from packaging import tags
from packaging.utils import canonicalize_name, parse_wheel_filename

REPO = Path(__file__).resolve().parents[1]
DEFAULT_BUNDLE = REPO / ".gpu-bundle"
DEFAULT_CACHE = Path.home() / ".cache" / "vitolaunch" / "gpu-bundle"
# What a device call may carry: the working tree and the carried folders together (/work/.library/device/README.md).
CARRY_LIMIT_BYTES = 64 * 2**20
# pip matches platform tags exactly: the ladder the device notes give for the machine's glibc.
DEFAULT_PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
                     "manylinux1_x86_64")

# What the runner installs by name; pip takes their requirements from the machine where it has them, else from here.
TOP_LEVEL = ("pydantic", "av", "deepspeed")
# Binary wheels downloaded for the target, each one the machine lacks or may hold too old:
BINARY = (
    "pydantic", "pydantic-core", "annotated-types", "typing-inspection",  # pydantic and its requirements
    "typing-extensions",  # on the machine, at a version not recorded; pydantic wants >= 4.16, pip uses this one only if needed
    "hjson",  # deepspeed's one requirement the machine lacks (einops, msgpack, ninja, numpy, psutil, ... are there)
    "av",  # ~35 MB, most of the bundle
)
# Not carried: mlflow (deepspeed's autotuner imports it inside a try; vito.metrics only with a run id, which the check
# never has), submitit and s3fs (the launcher's, not imported by the check). torch never: the machine's CUDA build stays.
BUILT = "deepspeed"  # only an sdist on PyPI: built here without its C++/CUDA ops (DS_BUILD_OPS=0), pure Python


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_BUNDLE, help="the bundle folder, replaced (default: .gpu-bundle)")
    parser.add_argument("--python-version", default="3.12", help="the target's Python, MAJOR.MINOR (default: 3.12)")
    parser.add_argument("--platform", action="append", dest="platforms",
                        help=f"a wheel platform tag of the target, repeatable (default: {' '.join(DEFAULT_PLATFORMS)})")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE,
                        help="downloaded and built wheels kept between builds (default: ~/.cache/vitolaunch/gpu-bundle)")
    args = parser.parse_args(argv)
    args.platforms = tuple(args.platforms or DEFAULT_PLATFORMS)
    return args


def installed_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        sys.exit(f"gpu_bundle: {name} is not installed in {sys.executable}: run this with the project's Python (.venv)")


def supported_tags(python_version: str, platforms: tuple[str, ...]) -> set[tags.Tag]:
    """The wheel tags a CPython of `python_version` on `platforms` accepts (abi3 and pure-Python wheels included)."""
    version = tuple(int(part) for part in python_version.split("."))
    interpreter = f"cp{version[0]}{version[1]}"
    return set(tags.cpython_tags(version, abis=[interpreter], platforms=platforms)) | set(
        tags.compatible_tags(version, interpreter, platforms))


def cached_wheel(folder: Path, name: str, version: str, accepted: set[tags.Tag]) -> Path | None:
    for path in sorted(folder.glob("*.whl")):
        wheel_name, wheel_version, _, wheel_tags = parse_wheel_filename(path.name)
        if wheel_name == canonicalize_name(name) and str(wheel_version) == version and wheel_tags & accepted:
            return path
    return None


def pip(*args: str, env: dict[str, str] | None = None) -> None:
    command = [sys.executable, "-m", "pip", *args, "--disable-pip-version-check"]
    proc = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if proc.returncode:
        sys.exit(f"gpu_bundle: `pip {' '.join(args)}` failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")


def binary_wheels(pins: dict[str, str], python_version: str, platforms: tuple[str, ...], cache: Path) -> list[Path]:
    """One wheel per pin for the target, from the cache or downloaded into it."""
    accepted = supported_tags(python_version, platforms)
    cache.mkdir(parents=True, exist_ok=True)
    missing = [f"{name}=={version}" for name, version in pins.items() if not cached_wheel(cache, name, version, accepted)]
    if missing:
        nodot = python_version.replace(".", "")
        platform_args = [arg for platform in platforms for arg in ("--platform", platform)]
        pip("download", "--only-binary=:all:", "--no-deps", "--python-version", python_version, "--implementation", "cp",
            "--abi", f"cp{nodot}", *platform_args, "--dest", str(cache), *missing)
    wheels = []
    for name, version in pins.items():
        wheel = cached_wheel(cache, name, version, accepted)
        if wheel is None:
            sys.exit(f"gpu_bundle: pip found no {name}=={version} wheel for cp{python_version} on {', '.join(platforms)}")
        wheels.append(wheel)
    return wheels


def deepspeed_wheel(version: str, cache: Path) -> Path:
    """deepspeed built here with no ops compiled in, so it carries no code built against this machine's torch."""
    folder = cache / "deepspeed-no-ops"
    wheel = folder / f"deepspeed-{version}-py3-none-any.whl"
    if not wheel.exists():
        folder.mkdir(parents=True, exist_ok=True)
        # DS_BUILD_<OP>=1 would switch single ops back on; --no-cache-dir: pip's wheel cache may hold a build made
        # with other settings; no isolation: deepspeed's setup.py imports torch, which an isolated build would fetch.
        env = {key: value for key, value in os.environ.items() if not key.startswith("DS_BUILD_")}
        env["DS_BUILD_OPS"] = "0"
        with tempfile.TemporaryDirectory() as build:
            pip("wheel", "--no-deps", "--no-build-isolation", "--no-cache-dir", "--no-binary", BUILT, f"{BUILT}=={version}",
                "--wheel-dir", build, env=env)
            built = next(Path(build).glob("deepspeed-*.whl"))
            if built.name != wheel.name:
                sys.exit(f"gpu_bundle: the deepspeed build is {built.name}, not the pure-Python {wheel.name}")
            shutil.move(built, wheel)
    with zipfile.ZipFile(wheel) as archive:
        info = archive.read("deepspeed/git_version_info_installed.py").decode()
    if ": True" in info:
        sys.exit(f"gpu_bundle: {wheel} has compiled ops ({info.strip()}); delete it and build again")
    return wheel


def project_wheel(dest: Path) -> Path:
    """This project's wheel, from a clean copy of its sources (setuptools' build/ folder keeps deleted modules)."""
    with tempfile.TemporaryDirectory() as source:
        for name in ("pyproject.toml", "setup.cfg", "README.md"):
            shutil.copy2(REPO / name, source)
        for package in ("vito", "vitolaunch"):
            shutil.copytree(REPO / package, Path(source) / package, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        pip("wheel", "--no-deps", "--no-build-isolation", "--no-cache-dir", source, "--wheel-dir", str(dest))
    return next(dest.glob("vitolaunch-*.whl"))


def working_tree_bytes() -> int | None:
    """What travels besides the carried folders: tracked files and untracked ones git does not ignore."""
    try:
        listed = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                                capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    files = (REPO / name for name in listed.decode().split("\0") if name)
    return sum(path.stat().st_size for path in files if path.is_file())


def mib(size: int) -> str:
    return f"{size / 2**20:.1f} MiB"


def build(args: argparse.Namespace) -> int:
    pins = {name: installed_version(name) for name in BINARY}
    ds_version = installed_version(BUILT)
    wheels = binary_wheels(pins, args.python_version, args.platforms, args.cache_dir / "wheels")
    wheels.append(deepspeed_wheel(ds_version, args.cache_dir))

    bundle = args.out.resolve()
    shutil.rmtree(bundle, ignore_errors=True)
    bundle.mkdir(parents=True)
    for wheel in wheels:
        shutil.copy2(wheel, bundle / wheel.name)
    project_wheel(bundle)
    versions = {**pins, BUILT: ds_version}
    (bundle / "requirements.txt").write_text(
        f"# gpu_bundle.py for cp{args.python_version} {' '.join(args.platforms)}; the runner installs these offline\n"
        + "".join(f"{name}=={versions[name]}\n" for name in TOP_LEVEL))

    files = sorted(bundle.iterdir())
    for path in files:
        print(f"  {path.stat().st_size / 2**20:7.2f} MiB  {path.name}")
    bundle_bytes = sum(path.stat().st_size for path in files)
    tree = working_tree_bytes()
    total = bundle_bytes + (tree or 0)
    print(f"gpu_bundle: {bundle} holds {len(files)} files, {mib(bundle_bytes)}"
          + (f"; with the working tree ({mib(tree)}) a call carries {mib(total)} of {mib(CARRY_LIMIT_BYTES)}" if tree else ""))
    if total > CARRY_LIMIT_BYTES:
        print(f"gpu_bundle: over the {mib(CARRY_LIMIT_BYTES)} a device call may carry", file=sys.stderr)
        return 2
    print_device_call(bundle)
    return 0


def print_device_call(bundle: Path) -> None:
    try:
        carried = bundle.relative_to(REPO).as_posix()
    except ValueError:
        print(f"gpu_bundle: {bundle} is outside the repository, so it cannot travel: build into it (--out .gpu-bundle)")
        return
    ignored = subprocess.run(["git", "-C", str(REPO), "check-ignore", "-q", carried], check=False).returncode == 0
    if not ignored:
        print(f"gpu_bundle: {carried} is not git-ignored: it would travel as part of the tree and could be committed")
    env = "" if bundle == DEFAULT_BUNDLE.resolve() else f"GPU_BUNDLE={carried} "
    print("\nOn the lent machine, with the device tool:")
    print(f'  run(command="{env}bash benchmarks/gpu_run.sh", carry=["{carried}"], timeout_s=480)')


def main(argv: list[str] | None = None) -> int:
    return build(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
