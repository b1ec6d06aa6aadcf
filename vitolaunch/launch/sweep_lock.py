"""One `vitolaunch sweep` of a given sweep at a time: two shells sweeping the same spec at once submit each
trial once.

Finding or creating the sweep's run, deciding which trials are new, creating their runs and recording their
job ids is a read-then-write on the tracking store, which has no compare-and-set. An exclusive lock per
(tracking store, experiment, sweep) around all of it makes the second sweep wait, then find the first's
trials with their job ids and skip them.

Where the lock lives, and what it covers:
- a sqlite store: a file next to the database, so every workspace that shares the file shares the lock
  (flock; on NFS that needs working lock support, and a shared SQLite on NFS is fragile anyway);
- a tracking server: a file in this workspace (VITOLAUNCH_HOME), so two shells of one user on one machine
  are serialized; sweeps of the same name submitted from different machines or workspaces are not, as
  MLflow's API offers nothing to lock with.
The lock goes with the process: a killed sweep never leaves it held.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from vitolaunch.errors import VitolaunchError
from vitolaunch.workspace import sqlite_path

WAIT_S = 600.0  # far longer than a sweep of thousands of trials takes to submit


def lock_path(tracking_uri: str, workspace_root: Path, experiment: str, sweep: str) -> Path:
    if (database := sqlite_path(tracking_uri)) is not None:
        folder = database.parent / ".vitolaunch-locks"
        identity = f"{experiment}\0{sweep}"
    else:
        folder = workspace_root / "locks"
        identity = f"{tracking_uri}\0{experiment}\0{sweep}"
    return folder / f"{sweep}-{hashlib.sha256(identity.encode()).hexdigest()[:16]}.lock"


@contextlib.contextmanager
def sweep_lock(tracking_uri: str, workspace_root: Path, experiment: str, sweep: str, wait_s: float = WAIT_S) -> Iterator[None]:
    path = lock_path(tracking_uri, workspace_root, experiment, sweep)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        deadline = time.monotonic() + wait_s
        told = False
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not told:
                    print(f"another `vitolaunch sweep` of {sweep} is submitting: waiting for it to finish", file=sys.stderr)
                    told = True
                if time.monotonic() > deadline:
                    raise VitolaunchError(
                        f"another `vitolaunch sweep` of {sweep} has held {path} for {wait_s:.0f} s: nothing was submitted; "
                        "retry when it has finished"
                    ) from None
                time.sleep(0.1)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
