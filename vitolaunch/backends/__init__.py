"""Executors that run trials: one module per scheduler (slurm, local), behind the small interface in base.py.

May import: spec (the Resources a job asks for), tracking (run records a requeue updates) and the foundation.
"""

from __future__ import annotations

from vitolaunch.backends.base import Backend, JobHandle, SchedulerState, SchedulerView
from vitolaunch.spec.resources import Resources


def make_backend(cluster: str) -> Backend:
    if cluster == "local":
        from vitolaunch.backends.local import LocalBackend

        return LocalBackend()
    if cluster == "slurm":
        from vitolaunch.backends.slurm import SlurmBackend

        return SlurmBackend()
    from vitolaunch.errors import VitolaunchError

    raise VitolaunchError(f"no backend for cluster '{cluster}': use resources.cluster: local or slurm")


__all__ = ["Backend", "JobHandle", "Resources", "SchedulerState", "SchedulerView", "make_backend"]
