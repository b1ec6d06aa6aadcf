"""Helpers for end-to-end tests that drive the real `vitolaunch` command (on the local backend unless a test's
spec says otherwise) and read what it recorded in the home's MLflow store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

TINY_BASE = {
    "data": {
        "synthetic": {"num_videos": 16, "num_frames": 16, "fps": 8, "size": 48, "num_classes": 4},
        "crop_size": 32,
        "batch_size": 16,
        "max_gap_s": 1.0,
    },
    "model": {"width": 8, "pool_hidden": 32, "proj_hidden": 64, "proj_dim": 32, "pred_hidden": 64},
    "optim": {"name": "adamw", "lr": 0.01, "weight_decay": 1e-4, "warmup_steps": 2},
    "train": {"steps": 12, "log_every": 2, "zero_stage": 2, "seed": 0},
    "checkpoint": {"every_steps": 4, "keep_last": 2},
    "eval": {"train_clips": 16, "test_clips": 8, "frames_per_clip": 2, "probe_epochs": 30},
}


def write_spec(
    folder: Path,
    name: str,
    parameters: dict,
    tasks_per_node: int = 2,
    storage: dict | None = None,
    tracking: dict | None = None,
    **base_updates,
) -> Path:
    base = json.loads(json.dumps(TINY_BASE))
    for section, values in base_updates.items():
        base.setdefault(section, {}).update(values)
    spec = {
        "name": name,
        "task": "pretrain",
        "base": base,
        "parameters": parameters,
        "resources": {"cluster": "local", "tasks_per_node": tasks_per_node, "timeout_min": 20},
        "tracking": {"experiment": "tests", **(tracking or {})},
    }
    if storage:
        spec["storage"] = storage
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def mlflow_client(home: Path):
    """An MlflowClient on the sqlite store of the VITOLAUNCH_HOME `home` (mlflow is imported only when called)."""
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{home / 'mlflow.db'}")


def logged_loss_steps(home: Path, run_id: str) -> list[int]:
    """The steps at which run `run_id` logged train/loss, sorted, a step logged twice (redone after a crash) twice."""
    return sorted(m.step for m in mlflow_client(home).get_metric_history(run_id, "train/loss"))


def vitolaunch(
    home: Path, *args: str, check: bool = True, timeout: float = 120, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    extra = env or {}
    env = {**os.environ, **extra, "VITOLAUNCH_HOME": str(home),
           "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
    if "MLFLOW_TRACKING_URI" not in extra:
        env.pop("MLFLOW_TRACKING_URI", None)
    result = subprocess.run(
        [sys.executable, "-m", "vitolaunch.cli", *args], env=env, capture_output=True, text=True, timeout=timeout
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"vitolaunch {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
        )
    return result


def status_rows(home: Path, sweep: str | None = None, env: dict[str, str] | None = None) -> list[dict]:
    args = ["status", "--json"] + ([sweep] if sweep else [])
    return json.loads(vitolaunch(home, *args, env=env).stdout)


def wait_until(
    home: Path, sweep: str, predicate, timeout: float, what: str, env: dict[str, str] | None = None
) -> list[dict]:
    """Poll `vitolaunch status` until `predicate(rows)`; a status call that fails (tracking down) is retried."""
    deadline = time.monotonic() + timeout
    rows: list[dict] = []
    last_error = ""
    while time.monotonic() < deadline:
        try:
            rows = status_rows(home, sweep, env)
        except AssertionError as problem:
            last_error = str(problem)[-2000:]
            time.sleep(2)
            continue
        if rows and predicate(rows):
            return rows
        time.sleep(2)
    logs = "\n".join(p.read_text()[-3000:] for p in (home / "logs").rglob("*.err"))
    raise AssertionError(f"timed out waiting for {what}; last status: {rows}\nlast error: {last_error}\nlogs:\n{logs}")


def all_ended(rows: list[dict]) -> bool:
    return all(r["state"] in ("COMPLETED", "FAILED", "CANCELLED", "INTERRUPTED", "PRUNED") for r in rows)
