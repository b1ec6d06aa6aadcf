"""What every scheduler backend offers: submit trial jobs, report their state, cancel them."""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from vitolaunch.spec.resources import Resources


@dataclass(frozen=True)
class JobHandle:
    job_id: str
    log_dir: str


class SchedulerState(str, enum.Enum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    INTERRUPTED = "INTERRUPTED"  # ended without a result: killed, or the machine went away
    UNKNOWN = "UNKNOWN"  # could not ask: never to be read as FAILED

    @property
    def active(self) -> bool:
        return self in (SchedulerState.PENDING, SchedulerState.RUNNING)


@dataclass
class SchedulerView:
    """One query of the scheduler: each job's state, when the running ones started (epoch s, where known),
    and what kept the query from seeing everything (a service that did not answer; empty when nothing did)."""

    states: dict[str, SchedulerState]
    start_times: dict[str, float] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    # Why a job is in its state, where the scheduler's own record says more than the state does (e.g. queued
    # again because SLURM requeued it after a node failed): a line a user can act on, by job id.
    reasons: dict[str, str] = field(default_factory=dict)


class Backend(ABC):
    name: str

    @abstractmethod
    def check(self, resources: Resources) -> None:
        """Raise VitolaunchError if these resources cannot run here, before anything is submitted."""

    @abstractmethod
    def submit(
        self, jobs: Sequence[Callable[[], object]], names: Sequence[str], resources: Resources, log_dir: Path,
        dependencies: Sequence[str | None] | None = None,
    ) -> list[JobHandle]:
        """Queue one job per callable; returns at once. `dependencies`: per job, a job id of this scheduler it
        may start only after that one succeeded (None: none); a backend without dependencies leaves the waiting
        to the job (vitolaunch.job.chained_wait)."""

    @abstractmethod
    def states(self, handles: Sequence[JobHandle]) -> dict[str, SchedulerState]:
        """Scheduler state by job id; UNKNOWN where the scheduler could not be asked."""

    def observe(self, handles: Sequence[JobHandle]) -> SchedulerView:
        """The states with what else the same query learnt; a backend that learns more overrides this."""
        return SchedulerView(self.states(handles))

    @abstractmethod
    def cancel(self, handles: Sequence[JobHandle]) -> None: ...

    @abstractmethod
    def log_files(self, handle: JobHandle, rank: int) -> tuple[Path, Path]:
        """(stdout, stderr) of one rank of a job."""
