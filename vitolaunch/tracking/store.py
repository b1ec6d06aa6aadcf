"""The run-store interface: what every transport of run records offers, and the records it returns.

A sweep is a parent run and each trial a child run. Three transports implement `RunStore`: MLflow's client
(mlflow_store.Registry, any store), the standard library on a verified sqlite schema (sqlite_store), and a
tracking server's REST API (rest_store); `chooser` picks one. The launcher, the sweep summary, cancel, resume and
the job are typed against these protocols, and tests/integration/test_run_store_contract.py runs every method
against every transport, so a transport that lacks one fails a test, not a user.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar, runtime_checkable

from vitolaunch.errors import VitolaunchError
from vitolaunch.tracking.records import (
    KIND_SWEEP,
    KIND_TRIAL,
    TAG_KIND,
    TAG_PARENT,
    TAG_RESOURCES,
    TAG_SWEEP,
    TAG_SWEPT,
    TAG_TRIAL_INDEX,
    TAG_TRIAL_KEY,
    RunStatus,
)

T = TypeVar("T")

# sqlite's bound-variable limit is 999: an IN (...) over more ids is split into chunks of this many.
SQLITE_IN_CHUNK = 900


@dataclass
class RunRecord:
    run_id: str
    name: str
    status: str  # a RunStatus value: SCHEDULED, RUNNING, FINISHED, FAILED, KILLED
    start_time: float | None  # seconds since epoch
    end_time: float | None
    tags: dict[str, str]
    params: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    experiment_id: str = ""
    last_metric_time: float | None = None  # seconds since epoch of the newest logged metric value

    @property
    def kind(self) -> str:
        return self.tags.get(TAG_KIND, "")

    @property
    def sweep(self) -> str:
        return self.tags.get(TAG_SWEEP, "")

    @property
    def parent_run_id(self) -> str | None:
        return self.tags.get(TAG_PARENT)

    @property
    def trial_key(self) -> str:
        return self.tags.get(TAG_TRIAL_KEY, "")

    @property
    def trial_index(self) -> int:
        return int(self.tags.get(TAG_TRIAL_INDEX, "-1"))

    @property
    def swept(self) -> dict[str, Any]:
        return json.loads(self.tags.get(TAG_SWEPT, "{}"))

    @property
    def resources(self) -> dict[str, Any]:
        return json.loads(self.tags.get(TAG_RESOURCES, "{}"))


@dataclass
class NewTrialRun:
    """A trial run to create: its name, its params (shown as MLflow columns), its tags and full config."""

    name: str
    params: dict[str, Any]
    tags: dict[str, str]
    config: dict[str, Any]


class TrackingUnreachable(VitolaunchError):
    pass


class RunQueries:
    """The read side of the registry, built on two primitives a store implements: `find_run` and `find_runs`."""

    tracking_uri: str

    def find_run(self, run_id: str) -> RunRecord | None:
        """The run with this exact id, or None if the store has none (a store that cannot be read raises)."""
        raise NotImplementedError

    def find_runs(self, tags: dict[str, str], experiment_ids: list[str] | None = None) -> list[RunRecord]:
        """Active runs carrying all these tag values (in the given experiments, or all)."""
        raise NotImplementedError

    def get(self, run_id: str) -> RunRecord:
        record = self.find_run(run_id)
        if record is None:
            raise VitolaunchError(f"no run {run_id} in {self.tracking_uri}")
        return record

    def find_sweep(self, experiment_id: str, sweep_name: str) -> RunRecord | None:
        runs = self.find_runs({TAG_KIND: KIND_SWEEP, TAG_SWEEP: sweep_name}, [experiment_id])
        return runs[0] if runs else None

    def sweeps(self) -> list[RunRecord]:
        return self.find_runs({TAG_KIND: KIND_SWEEP})

    def all_trials(self) -> list[RunRecord]:
        return self.find_runs({TAG_KIND: KIND_TRIAL})

    def trials(self, sweep: RunRecord) -> list[RunRecord]:
        runs = self.find_runs({TAG_PARENT: sweep.run_id}, [sweep.experiment_id])
        return sorted(runs, key=lambda r: (r.trial_index, r.start_time or 0))

    def sweep_of(self, record: RunRecord) -> RunRecord:
        """A sweep itself, or the sweep a trial belongs to."""
        if record.kind == KIND_SWEEP or not record.parent_run_id:
            return record
        return self.get(record.parent_run_id)

    def resolve(self, run_or_sweep: str) -> RunRecord:
        """A run by full id, by unique id prefix, or a sweep by name."""
        exact = self.find_run(run_or_sweep)
        if exact is not None:
            return exact
        candidates = [s for s in self.sweeps() if s.sweep == run_or_sweep or s.run_id.startswith(run_or_sweep)]
        if not candidates:
            candidates = [r for r in self.all_trials() if r.run_id.startswith(run_or_sweep)]
        if len(candidates) == 1:
            return candidates[0]
        if not candidates:
            raise VitolaunchError(f"no sweep or trial '{run_or_sweep}' in {self.tracking_uri}: see `vitolaunch status`")
        raise VitolaunchError(f"'{run_or_sweep}' is ambiguous ({len(candidates)} matches): give more of the run id")


@runtime_checkable
class RunReader(Protocol):
    """Queries over sweeps and trials; `RunQueries` derives all but the first two from them."""

    tracking_uri: str

    def find_run(self, run_id: str) -> RunRecord | None: ...
    def find_runs(self, tags: dict[str, str], experiment_ids: list[str] | None = None) -> list[RunRecord]: ...
    def get(self, run_id: str) -> RunRecord: ...
    def find_sweep(self, experiment_id: str, sweep_name: str) -> RunRecord | None: ...
    def sweeps(self) -> list[RunRecord]: ...
    def all_trials(self) -> list[RunRecord]: ...
    def trials(self, sweep: RunRecord) -> list[RunRecord]: ...
    def sweep_of(self, record: RunRecord) -> RunRecord: ...
    def resolve(self, run_or_sweep: str) -> RunRecord: ...


@runtime_checkable
class RunStore(RunReader, Protocol):
    """Reads and writes: what the launcher, the sweep summary, cancel, resume and the job call."""

    def experiment_id(self, name: str) -> str:
        """The id of the experiment with this name, created if missing."""
        ...

    def experiment_name(self, experiment_id: str) -> str: ...
    def create_sweep(self, experiment_id: str, sweep_name: str, tags: dict[str, str]) -> RunRecord: ...

    def create_trials(self, sweep: RunRecord, trials: list[NewTrialRun]) -> list[str]:
        """The trials' runs, SCHEDULED until a job picks them up, in order."""
        ...

    def config_of(self, trial: RunRecord) -> dict[str, Any]: ...
    def set_tags(self, run_id: str, tags: dict[str, str]) -> None: ...
    def set_tags_many(self, tags_by_run: dict[str, dict[str, str]], status: RunStatus | str | None = None) -> None: ...

    def set_status(self, run_id: str, status: RunStatus | str, end_time_s: float | None = None) -> None:
        """A terminal status stamps the end time: `end_time_s`, or now (records.status_change)."""
        ...

    def set_experiment_tags(self, experiment_id: str, tags: dict[str, str]) -> None: ...
    def log_artifact(self, run_id: str, local_file: str) -> None: ...
    def log_artifacts(self, run_id: str, local_dir: str, artifact_path: str | None = None) -> None: ...

    def log_metric(self, run_id: str, key: str, value: float, step: int = 0, timestamp_ms: int | None = None) -> None:
        """One value; the same (key, value, step, timestamp) twice is one point, as in MLflow."""
        ...

    def metric_history(self, run_id: str, key: str) -> list[tuple[int, float]]:
        """(step, value) of every logged value of a metric, in step order."""
        ...


def all_pages(fetch: Callable[[str | None], tuple[Sequence[T], str | None]]) -> list[T]:
    """Every item of a paged query: `fetch(token)` returns one page and the next token (None at the end)."""
    items: list[T] = []
    token: str | None = None
    while True:
        page, token = fetch(token)
        items.extend(page)
        if not token:
            return items


def sqlite_chunks(ids: Sequence[str]) -> Iterator[tuple[Sequence[str], str]]:
    """`ids` in chunks sqlite can bind, each with its "?,?,..." placeholder list."""
    for start in range(0, len(ids), SQLITE_IN_CHUNK):
        part = ids[start : start + SQLITE_IN_CHUNK]
        yield part, ",".join("?" * len(part))
