"""Fixtures shared by the integration modules: the real services they need, checked once per module, and what
the SLURM jobs they queue inherit (job_environment)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from tests.conftest import service_unavailable

SLURM_HINT = "start it with: sudo scripts/slurm-up.sh"


def _slurm_unavailable(reason: str):
    service_unavailable("SLURM cluster", reason, SLURM_HINT)


def _controller_refuses() -> str | None:
    """A quick TCP probe of slurmctld (sinfo retries for ~10 s before it gives up on a dead controller)."""
    conf = Path(os.environ.get("SLURM_CONF", "/etc/slurm/slurm.conf"))
    try:
        text = conf.read_text()
    except OSError:
        return None  # configless or unreadable: let sinfo decide
    host, port = None, 6817
    for line in text.splitlines():
        key, _, value = line.split("#", 1)[0].strip().partition("=")
        if key.lower() == "slurmctldhost" and host is None:
            name, _, addr = value.partition("(")
            host = (addr.rstrip(")") or name).strip()
        elif key.lower() == "slurmctldport" and value.strip().isdigit():
            port = int(value.strip())
    if not host:
        return None
    try:
        socket.create_connection((host, port), timeout=3).close()
    except OSError as exc:
        return f"slurmctld at {host}:{port} (from {conf}) does not accept connections: {exc}"
    return None


def _query(args: list[str]) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(args, capture_output=True, text=True, timeout=15)
    except subprocess.TimeoutExpired:
        _slurm_unavailable(f"`{args[0]}` did not answer within 15 s (its daemon down?)")


@pytest.fixture(scope="module")
def slurm_cluster() -> None:
    """Skip (or fail under CI) unless sinfo shows nodes n1 and n2 up and sacct answers."""
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        _slurm_unavailable("`sinfo`/`sbatch` not on PATH")
    refused = _controller_refuses()
    if refused:
        _slurm_unavailable(refused)
    info = _query(["sinfo", "-h", "-N", "-o", "%N %t"])
    if info.returncode != 0:
        _slurm_unavailable(f"`sinfo` failed: {info.stderr.strip()}")
    states = dict(line.split()[:2] for line in info.stdout.splitlines() if len(line.split()) >= 2)
    for node in ("n1", "n2"):
        state = states.get(node)
        if state is None or state.rstrip("*~#!%$@^-+").lower() not in {"idle", "mix", "alloc", "comp"}:
            _slurm_unavailable(f"node {node} is not up (sinfo: {states or info.stdout.strip()!r})")
    acct = _query(["sacct", "-n", "-X", "-S", "now"])
    if acct.returncode != 0:
        _slurm_unavailable(f"`sacct` failed (accounting down?): {acct.stderr.strip()}")


@pytest.fixture
def cancel_on_exit():
    """Whatever a test queued is cancelled when it ends, passed or not."""
    names: list[str] = []
    yield names.append
    for name in names:
        subprocess.run(["scancel", "--name", name], capture_output=True, timeout=30)


@pytest.fixture(scope="module")
def job_environment(module_monkeypatch):
    """What SLURM jobs inherit through sbatch (--export=ALL): gloo over loopback, and a short collective
    timeout so that a rank left alone by a killed peer fails fast instead of waiting 10 minutes."""
    module_monkeypatch.setenv("GLOO_SOCKET_IFNAME", "lo")
    module_monkeypatch.setenv("VITO_DIST_TIMEOUT_S", "60")
