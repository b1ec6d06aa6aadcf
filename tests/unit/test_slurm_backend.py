"""The SLURM backend's pure parts: the sbatch script, parsing scheduler output, retry decisions and STALLED.
No cluster needed (SLURM is hidden from PATH where it matters)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.unit.fake_registry import OneSweepStore
from tests.unit.run_records import run_record
from vitolaunch.backends import SchedulerState as S, SchedulerView, slurm_retry
from vitolaunch.backends.slurm import (
    parse_job_table,
    parse_max_array_size,
    parse_partitions,
    render_script,
    signal_delay_s,
    slurm_state,
)
from vitolaunch.results.states import TrialState as T, trial_states
from vitolaunch.spec.resources import Resources
from vitolaunch.tracking.records import TAG_JOB_STARTED_AT
from vitolaunch.tracking.store import RunRecord

REPO = Path(__file__).resolve().parents[2]


def test_dry_run_of_the_cluster_spec_prints_the_sbatch_script(tmp_path):
    secrets = {"AWS_ACCESS_KEY_ID": "AKIAUNITTESTKEY12345", "AWS_SECRET_ACCESS_KEY": "unit/test+secret/value0123456789"}
    env = {**os.environ, **secrets, "VITOLAUNCH_HOME": str(tmp_path / "home"), "PATH": str(tmp_path)}  # no SLURM here
    result = subprocess.run(
        [sys.executable, "-m", "vitolaunch.cli", "sweep", "sweeps/temperature_ablation.yaml", "--dry-run"],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for line in ("#SBATCH --array=0-3%2", "#SBATCH --nodes=4", "#SBATCH --ntasks-per-node=8",
                 "#SBATCH --gpus-per-node=8", "#SBATCH --signal=USR2@180", "#SBATCH --partition=gpu",
                 "#SBATCH --time=2880", "#SBATCH --job-name=temperature_ablation", "#SBATCH --requeue",
                 "#SBATCH --exclusive", "\nmodule load cuda/12.4 nccl/2.21\n", "\nexport NCCL_SOCKET_IFNAME=ib0\n"):
        assert line in out, out
    # What an admin checks: srun repeats --cpus-per-task (22.05 srun does not inherit it), site lines come
    # before srun, and the merged resources say where each value came from.
    srun = next(line for line in out.splitlines() if line.startswith("srun "))
    assert "--cpus-per-task=10" in srun, srun
    assert out.index("module load cuda") < out.index("\nsrun ") and out.index("export OMP_NUM_THREADS=10") < out.index("\nsrun ")
    assert "signal_delay_s = 180  (derived from the checkpoint size class)" in out
    assert "exclusive = true  (sweeps/temperature_ablation.yaml:" in out
    # one log file per rank, in the trial's own folder; crash retries after srun
    assert "%A_%a/%A_%a_%t_log.out" in out and "--kill-on-bad-exit=1" in out
    assert "vitolaunch.backends.slurm_retry after-step" in out
    assert "sbatch --test-only skipped" in out and "nothing submitted" in out
    assert not (tmp_path / "home").exists()
    # The job gets credentials from the environment it runs in: the script never carries them.
    for secret in secrets.values():
        assert secret not in out and secret not in result.stderr


def test_script_for_a_cpu_trial_has_no_gpus_and_a_short_warning():
    script = render_script(Resources(nodes=2, timeout_min=5, mem_gb=1.5), ["s.000.a", "s.001.b"], Path("/logs/s"))
    assert "--gpus-per-node" not in script
    assert "#SBATCH --signal=USR2@60" in script  # a fifth of 5 min
    assert "#SBATCH --mem=1536MB" in script and "#SBATCH --array=0-1%2" in script
    assert "#SBATCH --job-name=s" in script


def test_signal_delay_can_be_set_from_the_environment(monkeypatch):
    monkeypatch.setenv(slurm_retry.SIGNAL_DELAY_ENV, "300")
    assert signal_delay_s(Resources(timeout_min=2880)) == 300


PARTITIONS = (
    "PartitionName=debug AllowGroups=ALL Default=YES MaxNodes=UNLIMITED MaxTime=UNLIMITED Nodes=n[1-2] "
    "State=UP TotalCPUs=8 TotalNodes=2\n"
    "PartitionName=short Default=NO MaxNodes=1 MaxTime=00:10:00 State=UP TotalNodes=2\n"
    "PartitionName=long Default=NO MaxTime=2-00:00:00 TotalNodes=64\n"
)


def test_partitions_and_config_parse():
    parts = parse_partitions(PARTITIONS)
    assert parts["debug"].default and parts["debug"].max_time_min is None and parts["debug"].total_nodes == 2
    assert parts["short"].max_time_min == 10 and parts["short"].max_nodes == 1
    assert parts["long"].max_time_min == 2 * 24 * 60
    assert parse_max_array_size("MailProg = /bin/true\nMaxArraySize            = 1001\n") == 1001


@pytest.mark.parametrize(
    ("resources", "message"),
    [
        (Resources(partition="gpu"), "resources.partition 'gpu' does not exist"),
        (Resources(nodes=3), "resources.nodes is 3"),
        (Resources(partition="short", nodes=2, timeout_min=5), "MaxNodes=1"),
        (Resources(partition="short", timeout_min=20), "resources.timeout_min is 20"),
    ],
)
def test_check_names_the_spec_key(monkeypatch, resources, message):
    from vitolaunch.backends.slurm import SlurmBackend
    from vitolaunch.errors import VitolaunchError

    backend = SlurmBackend()
    monkeypatch.setattr(backend, "partitions", lambda: parse_partitions(PARTITIONS))
    with pytest.raises(VitolaunchError, match=message.replace("(", r"\(")):
        backend.check(resources)
    backend.check(Resources(partition="short", timeout_min=10))  # at the limit is fine


def test_sacct_and_squeue_lines_parse_with_array_ranges():
    table = parse_job_table(
        "12_0|COMPLETED|2026-01-01T10:00:00\n"
        "12_1|RUNNING|2026-01-01T10:00:05\n"
        "12_[2-4,7%2]|PENDING|Unknown\n"
        "12_5|CANCELLED by 0|2026-01-01T10:00:00\n"
        "12_6|REQUEUED|2026-01-01T10:00:00\n"
        "12_1.batch|RUNNING|2026-01-01T10:00:05\n"
        "13|PENDING|N/A\n"
    )
    assert table["12_0"][0] is S.COMPLETED and table["12_0"][1] is None
    assert table["12_1"][0] is S.RUNNING and table["12_1"][1] is not None
    assert [table[f"12_{k}"][0] for k in (2, 3, 4, 7)] == [S.PENDING] * 4 and "12_8" not in table
    assert table["12_5"][0] is S.CANCELLED and table["12_6"][0] is S.PENDING and table["13"][0] is S.PENDING


@pytest.mark.parametrize(
    ("text", "state"),
    [("PREEMPTED", S.PENDING), ("REQUEUE_HOLD", S.PENDING), ("TIMEOUT", S.INTERRUPTED), ("NODE_FAIL", S.INTERRUPTED),
     ("OUT_OF_MEMORY", S.FAILED), ("COMPLETING", S.RUNNING), ("SOMETHING_NEW", S.UNKNOWN), ("CANCELLED+", S.CANCELLED)],
)
def test_scheduler_states_map_to_what_a_trial_needs(text, state):
    assert slurm_state(text) is state


def test_unreachable_scheduler_is_unknown_never_failed(monkeypatch, tmp_path):
    from vitolaunch.backends import JobHandle
    from vitolaunch.backends.slurm import SlurmBackend

    monkeypatch.setenv("PATH", str(tmp_path))  # neither sacct nor squeue
    states = SlurmBackend().states([JobHandle("12_0", ""), JobHandle("12_1", "")])
    assert set(states.values()) == {S.UNKNOWN}


@pytest.mark.parametrize(("duration", "seconds"), [("1:30", 90), ("2:00:00", 7200), ("1-00:00:01", 86401), ("5", 300),
                                                   ("UNLIMITED", None), ("INVALID", None), ("", None)])
def test_slurm_durations(duration, seconds):
    assert slurm_retry.parse_duration_s(duration) == seconds


def test_retry_decisions_by_cause(monkeypatch, tmp_path):
    monkeypatch.setenv("SLURM_JOB_ID", "40")
    monkeypatch.setenv(slurm_retry.SIGNAL_DELAY_ENV, "120")
    monkeypatch.setattr(slurm_retry, "time_left_s", lambda: 600.0)  # far from the limit: preemption
    for _ in range(5):
        decision = slurm_retry.decide_after_stop(tmp_path, max_timeouts=0)
        assert decision.cause == "preemption" and decision.requeue
        decision.state.save(tmp_path)
    monkeypatch.setattr(slurm_retry, "time_left_s", lambda: 100.0)  # the warning before the limit: timeout
    decision = slurm_retry.decide_after_stop(tmp_path, max_timeouts=1)
    assert decision.cause == "timeout" and decision.requeue
    decision.state.save(tmp_path)
    decision = slurm_retry.decide_after_stop(tmp_path, max_timeouts=1)
    assert decision.cause == "timeout" and not decision.requeue and "retries.timeout: 1" in decision.reason
    assert slurm_retry.RetryState.load(tmp_path).counts() == {"preemption": 5, "timeout": 1, "crash": 0}
    assert slurm_retry.crash_retries_left(tmp_path, 1) and not slurm_retry.crash_retries_left(tmp_path, 0)


def test_after_step_leaves_a_task_alone_that_requeued_itself(monkeypatch, tmp_path):
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "40")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "2")
    slurm_retry.RetryState(preemption=2, requeued_at_restart=2).save(tmp_path / "40_3")
    monkeypatch.setattr(slurm_retry, "requeue", lambda job: pytest.fail("must not requeue twice"))
    assert slurm_retry.after_step(143, str(tmp_path)) == 0
    assert slurm_retry.after_step(0, str(tmp_path)) == 0


# A trial run queued as job 1_0 on the backend that the test replaces with a fake.
FAKE_JOB_TAGS = {"vitolaunch.job_id": "1_0", "vitolaunch.backend": "fake"}


def test_a_running_trial_quiet_for_too_long_is_stalled(monkeypatch):
    import vitolaunch.results.states as states

    class Fake:
        def observe(self, handles):
            return SchedulerView({h.job_id: S.RUNNING for h in handles}, start_times={"1_0": 1000.0})

    monkeypatch.setattr(states, "make_backend", lambda name: Fake())
    quiet = run_record("RUNNING", FAKE_JOB_TAGS)
    assert trial_states([quiet], stalled_after=600, now=1500.0)["r"] is T.RUNNING
    assert trial_states([quiet], stalled_after=600, now=1700.0)["r"] is T.STALLED
    quiet.last_metric_time = 1650.0
    assert trial_states([quiet], stalled_after=600, now=1700.0)["r"] is T.RUNNING
    restarted = run_record("RUNNING", {**FAKE_JOB_TAGS, TAG_JOB_STARTED_AT: "1690"})
    assert trial_states([restarted], stalled_after=5, now=1700.0)["r"] is T.STALLED
    assert trial_states([restarted], stalled_after=60, now=1700.0)["r"] is T.RUNNING
    assert T.STALLED.is_active and not T.STALLED.is_terminal


def test_cancel_takes_whole_arrays_by_id_and_lone_tasks_by_task_id(tmp_path):
    from vitolaunch.backends.base import JobHandle
    from vitolaunch.backends.slurm import cancel_targets

    (tmp_path / "array_7.tsv").write_text("0\ts.000.aaaa\n1\ts.001.bbbb\n2\ts.002.cccc\n")
    (tmp_path / "array_8.tsv").write_text("0\ts.003.dddd\n1\ts.004.eeee\n")
    handles = {j: JobHandle(j, str(tmp_path / j)) for j in ("7_0", "7_1", "7_2", "8_0", "8_1")}
    assert cancel_targets(list(handles.values())) == ["7", "8"]
    assert cancel_targets([handles["7_0"], handles["7_2"], handles["8_0"], handles["8_1"]]) == ["7_0", "7_2", "8"]
    # No record of what the array held (submitted by an older version): never cancel more than asked.
    assert cancel_targets([JobHandle("9_0", str(tmp_path / "9_0"))]) == ["9_0"]


def _makespan(arrays) -> int:
    """Wall time of equal-length trials in trial-units: a lane runs its arrays one after the other, an array of
    n tasks at %k takes ceil(n / k) units; lanes run side by side."""
    lanes: dict[int, int] = {}
    for array in arrays:
        lanes[array.lane] = lanes.get(array.lane, 0) + -(-len(array.trials) // array.limit)
    return max(lanes.values())


def _plan_before_issue_21(count: int, parallelism: int, max_array_size: int):
    """The plan as it was: arrays of MaxArraySize first, then dealt round-robin into lanes."""
    from vitolaunch.backends.slurm import PlannedArray

    chunks = [tuple(range(s, min(s + max_array_size, count))) for s in range(0, count, max_array_size)]
    lanes = min(len(chunks), parallelism)
    shares = [parallelism // lanes + (1 if lane < parallelism % lanes else 0) for lane in range(lanes)]
    return [PlannedArray(chunk, shares[k % lanes], k % lanes, k - lanes if k >= lanes else None)
            for k, chunk in enumerate(chunks)]


def test_a_split_sweep_is_dealt_into_balanced_lanes_first():
    """12 equal trials, array_parallelism 2, MaxArraySize 5: the lanes were 7 and 5 trials (one slot idle for the
    last 2 units): 7 units of wall time. Lanes of 6 and 6: 6 units, the least 2 slots can do."""
    from vitolaunch.backends.slurm import plan_arrays

    plan = plan_arrays(12, 2, 5)
    assert [(a.array_range, a.lane, a.after) for a in plan] == [
        ("0-4%1", 0, None), ("0-0%1", 0, 0), ("0-4%1", 1, None), ("0-0%1", 1, 2)]
    assert _makespan(_plan_before_issue_21(12, 2, 5)) == 7
    assert _makespan(plan) == 6


@pytest.mark.parametrize("count", [1, 5, 6, 11, 12, 13, 40, 2003])
@pytest.mark.parametrize("parallelism", [1, 2, 3, 4, 7, 16, 100])
@pytest.mark.parametrize("max_array_size", [2, 5, 1001])
def test_split_arrays_share_the_parallelism_exactly_and_end_together(count, parallelism, max_array_size):
    from vitolaunch.backends.slurm import plan_arrays

    plan = plan_arrays(count, parallelism, max_array_size)
    assert [k for array in plan for k in array.trials] == list(range(count))  # each trial once, in order
    assert all(1 <= len(a.trials) <= max_array_size and a.limit >= 1 for a in plan)
    heads = [a for a in plan if a.after is None]  # one per lane: what can run at the same time
    if len(plan) == 1:
        assert plan[0].limit == parallelism  # one array: %N is array_parallelism itself
    else:
        assert sum(a.limit for a in heads) == min(parallelism, count)  # %N exact, never over
        assert len({a.lane for a in heads}) == len(heads)
    for k, array in enumerate(plan):  # an array that waits waits for the one before it in its lane
        if array.after is not None:
            assert array.after < k and plan[array.after].lane == array.lane and plan[array.after].limit == array.limit
    # Equal-length trials end in the fewest units the slots allow, never later than the plan before.
    assert _makespan(plan) == -(-count // min(parallelism, count))
    assert _makespan(plan) <= _makespan(_plan_before_issue_21(count, parallelism, max_array_size))


def _fake_slurm_commands(folder: Path, sacct: str, squeue: str) -> None:
    for name, body in (("sacct", sacct), ("squeue", squeue)):
        path = folder / name
        path.write_text(f"#!/bin/sh\n{body}\n")
        path.chmod(0o755)


@pytest.mark.timeout(10)  # squeue below hangs for a minute: the query must give up on it by itself
def test_a_hung_controller_leaves_final_states_and_marks_the_rest_unknown(monkeypatch, tmp_path):
    from vitolaunch.backends import JobHandle
    from vitolaunch.backends.slurm import SlurmBackend

    _fake_slurm_commands(tmp_path, sacct="printf '12_0|RUNNING|2026-11-29T01:00:00\\n12_1|COMPLETED|\\n'",
                         squeue="sleep 60")
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    view = SlurmBackend().observe([JobHandle("12_0", ""), JobHandle("12_1", "")])
    assert view.states == {"12_0": S.UNKNOWN, "12_1": S.COMPLETED}  # sacct's RUNNING is only its last word
    (problem,) = view.problems
    assert "controller did not answer" in problem


@pytest.mark.timeout(10)
def test_hung_accounting_keeps_what_the_controller_knows(monkeypatch, tmp_path):
    from vitolaunch.backends import JobHandle
    from vitolaunch.backends.slurm import SlurmBackend

    _fake_slurm_commands(tmp_path, sacct="sleep 60", squeue="printf '12_0|RUNNING|2026-11-29T01:00:00\\n'")
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    view = SlurmBackend().observe([JobHandle("12_0", ""), JobHandle("12_1", "")])
    assert view.states == {"12_0": S.RUNNING, "12_1": S.UNKNOWN}
    (problem,) = view.problems
    assert "accounting" in problem


@pytest.mark.timeout(10)
def test_a_silent_daemon_is_named_with_the_real_bound_and_what_to_check(monkeypatch, tmp_path):
    """With slurmdbd frozen the message read "`sacct --parsable2 -n` did not answer within 2 s: is slurmctld up?":
    the wrong daemon, and the 1.5 s bound rounded to 2."""
    from vitolaunch.backends import JobHandle
    from vitolaunch.backends.slurm import SlurmBackend

    _fake_slurm_commands(tmp_path, sacct="sleep 60", squeue="sleep 60")
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    monkeypatch.delenv("VITOLAUNCH_SLURM_STATUS_TIMEOUT_S", raising=False)
    accounting, controller = SlurmBackend().observe([JobHandle("12_0", "")]).problems
    assert "sacct" in accounting and "slurmdbd within 1.5 s" in accounting, accounting
    assert "slurmctld" not in accounting and "2 s" not in accounting, accounting
    assert "sacctmgr show cluster" in accounting and "VITOLAUNCH_SLURM_STATUS_TIMEOUT_S" in accounting, accounting
    assert "squeue" in controller and "slurmctld within 1.5 s" in controller and "scontrol ping" in controller, controller
    assert "slurmdbd" not in controller, controller




@pytest.mark.timeout(20)
def test_a_task_slurm_requeued_after_a_node_failure_says_so_under_the_table(monkeypatch, tmp_path):
    """After SLURM requeued a job for a node failure, status showed QUEUED with no reason. sacct -D keeps the
    attempt that failed (NODE_FAIL); slurmdbd's node events say which node went down."""
    from rich.console import Console

    from vitolaunch.results.status_table import collect_rows, render_table
    from vitolaunch.tracking.records import TAG_BACKEND, TAG_JOB_ID

    # What the loopback cluster's sacct -D prints: the requeued task's old record first, then its current one.
    _fake_slurm_commands(
        tmp_path,
        sacct="printf '12_0|NODE_FAIL|2026-11-29T01:00:00|2026-11-29T01:05:00|n[1-2]\\n"
              "12_1|RUNNING|2026-11-29T01:00:00|Unknown|n1\\n12_0|PENDING|Unknown|Unknown|None assigned\\n'",
        squeue="printf '12_0|PENDING|N/A\\n12_1|RUNNING|2026-11-29T01:00:00\\n'",
    )
    sacctmgr = tmp_path / "sacctmgr"
    events = "n2|2026-11-29T01:04:58|DOWN\\nn1|2026-11-29T03:00:00|DOWN\\n"  # n1 went down hours later
    sacctmgr.write_text(f'#!/bin/sh\necho "$@" > "$(dirname "$0")/sacctmgr.args"\nprintf "{events}"\n')
    sacctmgr.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    trials = [RunRecord(f"run{k}", f"run{k}", "RUNNING" if k else "SCHEDULED", 0.0, None,
                        {TAG_BACKEND: "slurm", TAG_JOB_ID: f"12_{k}", "vitolaunch.trial_index": str(k),
                         TAG_JOB_STARTED_AT: "1.0"}) for k in range(2)]
    rows = collect_rows(OneSweepStore(trials), stalled_after=1e12).rows
    assert [(r.state, r.note) for r in rows] == [
        ("QUEUED", "requeued by SLURM after node n2 failed (restart 1); it resumes from its last committed checkpoint"),
        ("RUNNING", None)]
    args = (tmp_path / "sacctmgr.args").read_text()
    assert "nodes=n[1-2]" in args and "start=2026-11-29T01:00:00" in args, args
    console = Console(width=250, record=True)
    console.print(render_table(rows))
    text = console.export_text()
    assert "s trial 000 (run0, QUEUED): requeued by SLURM after node n2 failed (restart 1)" in text, text
