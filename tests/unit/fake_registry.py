"""A stand-in for the tracking Registry (vitolaunch.tracking) over a fixed set of RunRecords.

It imports neither torch nor mlflow, so a test may use it in a fresh process that checks what gets imported.
"""

from __future__ import annotations

from tests.unit.run_records import RunRecord, run_record
from vitolaunch.errors import VitolaunchError
from vitolaunch.tracking.records import TAG_KIND, TAG_SWEEP


class FakeRegistry:
    """The registry's public queries over a fixed set of records, answered as the real Registry answers them."""

    def __init__(self, sweeps: dict[str, list[RunRecord]], configs: dict[str, dict]):
        self.sweeps = sweeps
        self.configs = configs

    def resolve(self, reference: str) -> RunRecord:
        if reference in self.sweeps:
            return run_record("RUNNING", {TAG_KIND: "sweep", TAG_SWEEP: reference}, run_id=f"sweep-{reference}",
                              name=reference, start_time=None, experiment_id="7")
        for trials in self.sweeps.values():
            for trial in trials:
                if trial.run_id.startswith(reference):
                    return trial
        raise VitolaunchError(f"no sweep or trial '{reference}'")

    def trials(self, sweep: RunRecord) -> list[RunRecord]:
        return self.sweeps[sweep.sweep]

    def config_of(self, trial: RunRecord) -> dict:
        return self.configs[trial.run_id]

    def all_trials(self) -> list[RunRecord]:
        return [trial for trials in self.sweeps.values() for trial in trials]

    def experiment_name(self, experiment_id: str) -> str:
        return f"exp-{experiment_id}"


class OneSweepStore:
    """A run store holding one sweep and the given trials: what `status`'s collect_rows asks of one."""

    def __init__(self, trials: list[RunRecord]):
        self.sweep, self._trials = run_record("RUNNING", {TAG_SWEEP: "s"}, run_id="p"), trials

    def sweeps(self) -> list[RunRecord]:
        return [self.sweep]

    def trials(self, sweep: RunRecord) -> list[RunRecord]:
        return self._trials
