"""What runs inside a scheduled task: the trial job, its rung decisions, the wait on a chained target.

May import: spec, tracking, backends, results, the foundation (errors, workspace) and vito; never launch or cli.
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    # Jobs pickled before the layout change name `vitolaunch.job.TrialJob`: they must still load when a queued
    # task starts after an upgrade. Lazy, so importing a sibling module does not pull in the trial job.
    if name == "TrialJob":
        from vitolaunch.job.trial import TrialJob

        return TrialJob
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
