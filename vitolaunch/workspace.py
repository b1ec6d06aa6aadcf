"""Where vitolaunch keeps things on this machine when the spec does not say: one folder, VITOLAUNCH_HOME."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Workspace:
    root: Path

    @classmethod
    def from_env(cls) -> Workspace:
        return cls(Path(os.environ.get("VITOLAUNCH_HOME", "~/.vitolaunch")).expanduser().resolve())

    @property
    def tracking_uri(self) -> str:
        """The embedded default: MLflow in a sqlite file (MLflow 3.17 refuses the old ./mlruns store)."""
        return f"{SQLITE_URI_PREFIX}{self.root / 'mlflow.db'}"

    @property
    def artifact_root(self) -> Path:
        return self.root / "mlartifacts"

    @property
    def checkpoint_root(self) -> Path:
        return self.root / "checkpoints"

    @property
    def data_root(self) -> Path:
        return self.root / "data"

    @property
    def scratch_root(self) -> Path:
        return self.root / "scratch"

    def log_dir(self, sweep_name: str) -> Path:
        return self.root / "logs" / sweep_name

    def tracking_uri_or_default(self, uri: str | None) -> str:
        return uri or os.environ.get("MLFLOW_TRACKING_URI") or self.tracking_uri


SQLITE_URI_PREFIX = "sqlite:///"


def sqlite_path(tracking_uri: str) -> Path | None:
    """The database file of a `sqlite:///` tracking URI; None for any other store."""
    if not tracking_uri.startswith(SQLITE_URI_PREFIX):
        return None
    return Path(tracking_uri[len(SQLITE_URI_PREFIX):])


def env_float(name: str, default: float) -> float:
    """A number from the environment; the default when unset or not a number (a typo must not crash a job)."""
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        return default


def quiet_mlflow_environment() -> None:
    """MLflow 3 phones home unless told not to; and a command must not hang on a server that is down.

    MLflow's HTTP client retries 7 times with exponential backoff (minutes) by default: an interactive
    command should say "unreachable" within seconds instead. Its INFO lines (creating the sqlite tables on
    the first sweep) are noise between the lines a user reads.
    """
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("DO_NOT_TRACK", "true")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
    # Ending a run on a tracking server prints "View run ... at: URL" to stdout, which `status` and
    # `compare` keep for their own table and JSON (status ends the sweep's parent run, sweep_summary.py).
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
