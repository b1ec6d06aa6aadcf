"""The local backend's array parallelism: at most N trials of a sweep run at once, in submission order, and a
slot comes back however its job ends. Real processes (the slot waiter execs into the job), no training."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vitolaunch.backends import local_slots
from vitolaunch.backends.base import SchedulerState
from vitolaunch.backends.local import LocalBackend
from vitolaunch.spec.resources import Resources

pytestmark = pytest.mark.timeout(120)

# A job that records its start, waits for a file named by its second argument (or gives up after 30 s, so a
# deadlock shows up as a late end instead of a hang), and records its end.
_JOB = """
import os, sys, time
events, wait_for, name = sys.argv[1], sys.argv[2], sys.argv[3]
def note(what):
    with open(events, "a") as handle:
        handle.write(f"{what} {name} {time.time()}\\n")
note("start")
deadline = time.time() + 30
while wait_for != "-" and not os.path.exists(wait_for) and time.time() < deadline:
    time.sleep(0.05)
note("end")
"""


def _events(path: Path) -> list[tuple[str, str]]:
    if not path.exists():
        return []
    return [tuple(line.split()[:2]) for line in path.read_text().splitlines()]


def _waiter(slots: Path, parallelism: int, ticket: int, command: list[str]) -> subprocess.Popen:
    return local_slots.start(str(slots), parallelism, command, ticket=f"{ticket:020d}")


def _wait(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        assert process.wait(timeout=60) == 0


def _wait_for(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def test_one_slot_runs_jobs_one_at_a_time_in_ticket_order(tmp_path):
    events, release, slots = tmp_path / "events", tmp_path / "release", tmp_path / "slots"
    blocker = _waiter(slots, 1, 0, [sys.executable, "-c", _JOB, str(events), str(release), "job0"])
    _wait_for(lambda: ("start", "job0") in _events(events))
    # Queued youngest ticket first: the order must come from the tickets, not from who asked first.
    processes = [
        _waiter(slots, 1, ticket, [sys.executable, "-c", _JOB, str(events), "-", f"job{ticket}"])
        for ticket in (3, 2, 1)
    ]
    _wait_for(lambda: len(os.listdir(slots / local_slots.WAITING)) == 3)
    release.touch()
    _wait([blocker, *processes])
    assert _events(events) == [
        ("start", "job0"), ("end", "job0"),
        ("start", "job1"), ("end", "job1"), ("start", "job2"), ("end", "job2"), ("start", "job3"), ("end", "job3"),
    ]


def test_two_slots_run_two_jobs_together_and_hold_the_third(tmp_path):
    events, release = tmp_path / "events", tmp_path / "release"
    # job1 and job2 each wait for the other to have started: with fewer than 2 slots they would time out
    # after 30 s and end one after the other.
    commands = {
        1: [sys.executable, "-c", _JOB, str(events), str(tmp_path / "started2"), "job1"],
        2: [sys.executable, "-c", _JOB, str(events), str(release), "job2"],
        3: [sys.executable, "-c", _JOB, str(events), "-", "job3"],
    }
    processes = [_waiter(tmp_path / "slots", 2, ticket, command) for ticket, command in commands.items()]
    _wait_for(lambda: ("start", "job2") in _events(events))
    (tmp_path / "started2").touch()
    _wait_for(lambda: ("end", "job1") in _events(events))
    time.sleep(0.5)
    # job1's slot is free, but job2 still holds the other one: job3 got job1's, never a third.
    seen = _events(events)
    assert seen.index(("start", "job2")) < seen.index(("end", "job1"))
    release.touch()
    _wait(processes)
    seen = _events(events)
    assert seen.index(("start", "job3")) > seen.index(("end", "job1"))
    running, peak = 0, 0
    for what, _ in seen:
        running += 1 if what == "start" else -1
        peak = max(peak, running)
    assert peak == 2


def test_a_killed_job_gives_its_slot_back(tmp_path):
    events = tmp_path / "events"
    never = str(tmp_path / "never")
    first = _waiter(tmp_path / "slots", 1, 1, [sys.executable, "-c", _JOB, str(events), never, "job1"])
    second = _waiter(tmp_path / "slots", 1, 2, [sys.executable, "-c", _JOB, str(events), "-", "job2"])
    _wait_for(lambda: ("start", "job1") in _events(events))
    first.send_signal(signal.SIGKILL)  # the job itself: the waiter exec'd into it, same pid
    first.wait(timeout=10)
    assert second.wait(timeout=20) == 0
    assert _events(events) == [("start", "job1"), ("start", "job2"), ("end", "job2")]


def test_a_dead_waiters_ticket_does_not_block_younger_ones(tmp_path):
    waiting = tmp_path / "slots" / local_slots.WAITING
    waiting.mkdir(parents=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (waiting / f"{0:020d}.{dead.pid}").touch()  # left by a waiter killed with SIGKILL
    events = tmp_path / "events"
    _wait([_waiter(tmp_path / "slots", 1, 1, [sys.executable, "-c", _JOB, str(events), "-", "job1"])])
    assert _events(events) == [("start", "job1"), ("end", "job1")]
    assert os.listdir(waiting) == []


def _sleep_then_report(seconds: float) -> float:
    started = time.time()
    time.sleep(seconds)
    return started


def test_local_backend_queues_trials_beyond_array_parallelism(tmp_path):
    backend = LocalBackend()
    resources = Resources(array_parallelism=1, timeout_min=5)
    jobs = [lambda: _sleep_then_report(2.0), lambda: _sleep_then_report(0.1)]
    first, second = backend.submit(jobs, ["a", "b"], resources, tmp_path / "logs")

    _wait_for(lambda: backend.states([first])[first.job_id] == SchedulerState.RUNNING)
    assert backend.states([second])[second.job_id] == SchedulerState.PENDING
    _wait_for(lambda: all(s == SchedulerState.COMPLETED for s in backend.states([first, second]).values()), 60)

    from submitit.core.utils import JobPaths, pickle_load

    def result(handle):
        return pickle_load(JobPaths(handle.log_dir, handle.job_id, 0).result_pickle)[1]

    assert result(second) >= result(first) + 2.0  # the second trial started only after the first had ended


def test_cancel_removes_a_waiting_trial(tmp_path):
    backend = LocalBackend()
    resources = Resources(array_parallelism=1, timeout_min=5)
    running, waiting = backend.submit(
        [lambda: _sleep_then_report(60), lambda: _sleep_then_report(0.1)], ["a", "b"], resources, tmp_path / "logs"
    )
    _wait_for(lambda: backend.states([waiting])[waiting.job_id] == SchedulerState.PENDING)
    backend.cancel([waiting, running])
    states = backend.states([running, waiting])
    assert states[waiting.job_id] == SchedulerState.INTERRUPTED
    assert states[running.job_id] == SchedulerState.INTERRUPTED
    assert os.listdir(tmp_path / "logs" / ".slots" / local_slots.WAITING) == []


def test_a_sweep_with_array_parallelism_one_runs_its_trials_one_after_the_other(tmp_path):
    import yaml
    from mlflow.tracking import MlflowClient

    from tests.integration.local_sweeps import all_ended, status_rows, vitolaunch, wait_until, write_spec

    home = tmp_path / "home"
    spec_path = write_spec(tmp_path, "serial", {"loss.temperature": [0.1, 0.2]}, tasks_per_node=1,
                           train={"steps": 30, "log_every": 2})
    spec = yaml.safe_load(spec_path.read_text())
    spec["resources"]["array_parallelism"] = 1
    spec_path.write_text(yaml.safe_dump(spec))

    out = vitolaunch(home, "sweep", str(spec_path)).stdout
    assert "at most 1 trials run at once" in out
    rows = status_rows(home, "serial")
    assert sorted(r["state"] for r in rows) in (["QUEUED", "RUNNING"], ["QUEUED", "QUEUED"]), rows

    rows = wait_until(home, "serial", all_ended, timeout=300, what="both trials to end")
    assert [r["state"] for r in rows] == ["COMPLETED", "COMPLETED"], rows
    client = MlflowClient(tracking_uri=f"sqlite:///{home / 'mlflow.db'}")
    first, second = (client.get_run(r["run_id"]) for r in sorted(rows, key=lambda r: r["index"]))
    # In submission order, and the second started only once the first had ended.
    assert float(second.data.tags["vitolaunch.job_started_at"]) * 1000 >= first.info.end_time
