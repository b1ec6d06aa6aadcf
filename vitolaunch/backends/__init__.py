"""Executors that run trials: one module per scheduler, behind the small interface in base.py."""

from __future__ import annotations

from vitolaunch.backends.base import Backend, JobHandle, JobResources, SchedulerState


def make_backend(cluster: str) -> Backend:
    if cluster == "local":
        from vitolaunch.backends.local import LocalBackend

        return LocalBackend()
    from vitolaunch.errors import VitolaunchError

    raise VitolaunchError(f"no backend for cluster '{cluster}' in this version: use resources.cluster: local")


__all__ = ["Backend", "JobHandle", "JobResources", "SchedulerState", "make_backend"]
