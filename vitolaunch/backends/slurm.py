"""SLURM through submitit: one job array per submission, each array task one multi-node trial.

- An array task runs `nodes x tasks_per_node` ranks through srun (submitit's `%j_%t` log file per rank);
  the ranks find each other from the SLURM environment (see vitolaunch.job.trial).
- Arrays are submitted held, their pickles put in place, then released: a task can never start before
  its folder and pickle exist, and a failure half-way cancels what was queued (nothing half-submitted).
- More trials than the cluster's MaxArraySize (the highest index + 1, from `scontrol show config`) go
  into several arrays; `resources.array_parallelism` is shared between them in lanes (plan_arrays, which the
  dry run prints too).
- `--signal=USR2@<delay>` warns the ranks before the time limit; the batch script itself ignores USR2,
  and after srun fails it runs the crash-retry hook (vitolaunch.backends.slurm_retry).
- Status: one `sacct` call for all the arrays asked about, then one `squeue` call for the tasks sacct shows
  as pending/running or not at all (it lags the controller), UNKNOWN when both fail. Requeued, preempted and
  held tasks are PENDING: not terminal.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from vitolaunch.backends import slurm_site
from vitolaunch.backends.base import Backend, JobHandle, SchedulerState, SchedulerView
from vitolaunch.backends.slurm_retry import SIGNAL_DELAY_ENV, parse_duration_s
from vitolaunch.backends.submitit_compat import sbatch_script
from vitolaunch.errors import ResourceError, VitolaunchError
from vitolaunch.spec.resources import Resources
from vitolaunch.tracking.records import sweep_of_job_name
from vitolaunch.workspace import env_float

S = SchedulerState
_STATE_MAP = {
    "PENDING": S.PENDING,
    "REQUEUED": S.PENDING,
    "REQUEUE_HOLD": S.PENDING,
    "REQUEUE_FED": S.PENDING,
    "PREEMPTED": S.PENDING,  # requeued by the scheduler, or by the task itself after saving
    "RESIZING": S.PENDING,
    "SUSPENDED": S.PENDING,
    "CONFIGURING": S.RUNNING,
    "RUNNING": S.RUNNING,
    "COMPLETING": S.RUNNING,
    "STAGE_OUT": S.RUNNING,
    "SIGNALING": S.RUNNING,
    "COMPLETED": S.COMPLETED,
    "FAILED": S.FAILED,
    "OUT_OF_MEMORY": S.FAILED,
    "BOOT_FAIL": S.FAILED,
    "DEADLINE": S.FAILED,
    "CANCELLED": S.CANCELLED,
    "REVOKED": S.CANCELLED,
    "TIMEOUT": S.INTERRUPTED,  # killed at the limit before it could requeue: resumable
    "NODE_FAIL": S.INTERRUPTED,
}
CLI_TIMEOUT_S = 30
STATUS_TIMEOUT_ENV = "VITOLAUNCH_SLURM_STATUS_TIMEOUT_S"
DEFAULT_STATUS_TIMEOUT_S = 1.5  # an answering controller or slurmdbd replies in tens of milliseconds
DEFAULT_SIGNAL_DELAY_S = 120


def slurm_state(text: str) -> SchedulerState:
    """sacct/squeue state text ('CANCELLED by 0', 'RUNNING', ...) -> SchedulerState."""
    word = text.strip().split(" ")[0].rstrip("+").upper()
    return _STATE_MAP.get(word, S.UNKNOWN)


class SlurmUnavailable(VitolaunchError):
    pass


def status_timeout_s() -> float:
    return env_float(STATUS_TIMEOUT_ENV, DEFAULT_STATUS_TIMEOUT_S)


# Which daemon answers each command: the accounting commands ask slurmdbd, the others slurmctld.
_ACCOUNTING_COMMANDS = frozenset({"sacct", "sacctmgr", "sreport"})


def answering_daemon(command: str) -> str:
    """The SLURM daemon a command waits on: 'slurmdbd' for sacct/sacctmgr/sreport, else 'slurmctld'."""
    return "slurmdbd" if Path(command).name in _ACCOUNTING_COMMANDS else "slurmctld"


def _no_answer(args: Sequence[str], timeout: float) -> str:
    """What to say when a SLURM command timed out: the daemon it waited on, the real bound, what to check."""
    daemon = answering_daemon(args[0])
    if daemon == "slurmdbd":
        check = ("check that slurmdbd and its database are up (`sacctmgr show cluster` should answer at once; "
                 "its log, SlurmdbdLogFile in slurmdbd.conf)")
    else:
        check = "check that slurmctld is up (`scontrol ping`; its log, SlurmctldLogFile in slurm.conf)"
    if timeout == status_timeout_s():
        check += f"; if it is only slow, raise the bound with {STATUS_TIMEOUT_ENV}"
    return f"`{' '.join(args[:3])}` got no answer from {daemon} within {timeout:g} s: {check}"


def _run(args: Sequence[str], timeout: float = CLI_TIMEOUT_S, check: bool = True) -> subprocess.CompletedProcess[str]:
    try:
        proc = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError as problem:
        raise SlurmUnavailable(f"`{args[0]}` is not on PATH: is this a SLURM login node?") from problem
    except subprocess.TimeoutExpired as problem:
        raise SlurmUnavailable(_no_answer(args, timeout)) from problem
    if check and proc.returncode != 0:
        raise SlurmUnavailable(f"`{' '.join(args[:3])}` failed: {(proc.stderr or proc.stdout).strip()[:300]}")
    return proc


# ---------------------------------------------------------------- cluster facts


@dataclass(frozen=True)
class Partition:
    name: str
    default: bool
    total_nodes: int
    max_nodes: int | None
    max_time_min: float | None
    state: str


def parse_partitions(text: str) -> dict[str, Partition]:
    """`scontrol show partition -o` -> partitions by name."""
    parts = {}
    for line in text.splitlines():
        fields = dict(tok.split("=", 1) for tok in line.split() if "=" in tok)
        if "PartitionName" not in fields:
            continue
        max_time = parse_duration_s(fields.get("MaxTime", "UNLIMITED"))
        max_nodes = fields.get("MaxNodes", "UNLIMITED")
        parts[fields["PartitionName"]] = Partition(
            name=fields["PartitionName"],
            default=fields.get("Default", "NO") == "YES",
            total_nodes=int(fields.get("TotalNodes", "0") or 0),
            max_nodes=int(max_nodes) if max_nodes.isdigit() else None,
            max_time_min=max_time / 60 if max_time is not None else None,
            state=fields.get("State", "UP"),
        )
    return parts


def parse_max_array_size(config_text: str) -> int:
    for line in config_text.splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "MaxArraySize" and value.strip().isdigit():
            return int(value.strip())
    return 1001  # SLURM's default


def _expand_ids(job_id: str) -> list[str]:
    """'12_3' -> ['12_3']; '12_[0-2,5%2]' -> ['12_0', '12_1', '12_2', '12_5']; '12' -> ['12']."""
    if "_[" not in job_id:
        return [job_id]
    array, _, rest = job_id.partition("_[")
    ranges = rest.rstrip("]").split("%")[0]
    ids = []
    for part in ranges.split(","):
        low, _, high = part.partition("-")
        if not low.isdigit():
            continue
        ids.extend(f"{array}_{k}" for k in range(int(low), int(high or low) + 1))
    return ids


def _timestamp(text: str) -> float | None:
    try:
        return datetime.fromisoformat(text.strip()).timestamp()
    except ValueError:
        return None


def parse_job_table(text: str) -> dict[str, tuple[SchedulerState, float | None]]:
    """Lines of `JobID|State|Start` (sacct --parsable2, or squeue -o '%i|%T|%S') -> state and start by task."""
    table: dict[str, tuple[SchedulerState, float | None]] = {}
    for line in text.splitlines():
        fields = line.strip().split("|")
        if len(fields) < 2 or not fields[0] or "." in fields[0]:
            continue
        state = slurm_state(fields[1])
        start = _timestamp(fields[2]) if len(fields) > 2 and state is S.RUNNING else None
        for job in _expand_ids(fields[0]):
            table[job] = (state, start)
    return table


def earlier_records(text: str) -> dict[str, list[list[str]]]:
    """`sacct -D` lines (JobID|State|Start|End|NodeList, oldest record first) -> each task's records before its
    current one, the ones a requeue left (REQUEUED, NODE_FAIL, PREEMPTED); tasks never requeued are absent."""
    records: dict[str, list[list[str]]] = {}
    for line in text.splitlines():
        fields = line.strip().split("|")
        if len(fields) < 2 or not fields[0] or "." in fields[0] or "_[" in fields[0]:
            continue
        records.setdefault(fields[0], []).append(fields)
    return {job: rows[:-1] for job, rows in records.items() if len(rows) > 1}


def signal_delay_s(resources: Resources) -> int:
    """Seconds of warning (USR2) before the time limit: enough to reach a step boundary, save and commit.

    `resources.signal_delay_s`, which a sweep resolves from its checkpoint size class when the spec leaves it
    out (resources.with_signal_delay); records written before that key existed keep the old rule.
    """
    if os.environ.get(SIGNAL_DELAY_ENV):
        return int(os.environ[SIGNAL_DELAY_ENV])
    if resources.signal_delay_s is not None:
        return resources.signal_delay_s
    return max(10, min(DEFAULT_SIGNAL_DELAY_S, resources.timeout_min * 60 // 5))


def _array_name(names: Sequence[str]) -> str:
    """One name per array: the sweep of its trials' job names (`records.trial_job_name`)."""
    prefix = os.path.commonprefix([sweep_of_job_name(n) for n in names]) if names else ""
    return prefix or "vitolaunch"


def sbatch_parameters(resources: Resources, name: str, log_root: Path, count: int, python: str) -> dict:
    """Parameters of submitit's sbatch template for one array of `count` trials."""
    delay = signal_delay_s(resources)
    params: dict = {
        "job_name": name,
        "time": resources.timeout_min,
        "nodes": resources.nodes,
        "ntasks_per_node": resources.tasks_per_node,
        "cpus_per_task": resources.cpus_per_task,
        "mem": _mem(resources.mem_gb),
        "signal_delay_s": delay,  # -> --signal=USR2@<delay>, sent to every rank
        "array_parallelism": resources.array_parallelism,
        "wckey": "vitolaunch",
        "stderr_to_stdout": False,
        # One rank dying ends the step at once (its peers would wait in a collective), and the hook runs.
        "srun_args": srun_arguments(resources),
        "additional_parameters": {**sbatch_extra(resources), "requeue": True},
        "setup": [
            "# vitolaunch: USR2 is meant for the ranks (save, requeue); the batch shell must survive it",
            "trap 'echo \"vitolaunch: batch shell ignored SIGUSR2\" >&2' USR2",
            f"export {SIGNAL_DELAY_ENV}={delay}",
            *site_setup(resources),
        ],
        "teardown": [
            "vitolaunch_rc=$?  # srun's exit status",
            'if [ "$vitolaunch_rc" -ne 0 ]; then',
            f"  {python} -m vitolaunch.backends.slurm_retry after-step \"$vitolaunch_rc\" {shlex.quote(str(log_root))}",
            "  exit $?",
            "fi",
        ],
    }
    if resources.partition:
        params["partition"] = resources.partition
    if resources.gpus_per_task:
        params["gpus_per_task"] = resources.gpus_per_task
    elif resources.gpus_per_node:
        params["gpus_per_node"] = resources.gpus_per_node
    for key in ("account", "qos", "constraint", "exclude"):
        if getattr(resources, key):
            params[key] = getattr(resources, key)
    if resources.exclusive:
        params["exclusive"] = True
    if count:
        params["map_count"] = count
    return params


def srun_arguments(resources: Resources) -> list[str]:
    """What srun needs said again: SLURM 22.05-23.02 srun does not take --cpus-per-task from the job, so
    each rank (and its data workers) would get one CPU."""
    args = ["--kill-on-bad-exit=1", f"--cpus-per-task={resources.cpus_per_task}"]
    if resources.gpus_per_task:
        args.append(f"--gpus-per-task={resources.gpus_per_task}")
    return args


def sbatch_extra(resources: Resources) -> dict:
    """`resources.sbatch_extra` and `reservation` as sbatch options (managed options were refused by the spec)."""
    extra = {key: value for key, value in resources.sbatch_extra.items() if value is not False}
    if resources.reservation:
        extra["reservation"] = resources.reservation
    return extra


def site_setup(resources: Resources) -> list[str]:
    """The site's `setup` lines, then `env` exported for every rank (srun passes the batch environment on)."""
    lines = []
    if resources.setup:
        lines += ["# site setup (resources.setup)", *resources.setup]
    if resources.env:
        lines += ["# environment of every rank (resources.env)"]
        lines += [f"export {name}={shlex.quote(value)}" for name, value in resources.env.items()]
    return lines


def _mem(mem_gb: float) -> str:
    return f"{int(mem_gb)}GB" if float(mem_gb).is_integer() else f"{int(mem_gb * 1024)}MB"


@dataclass(frozen=True)
class PlannedArray:
    """One sbatch array of a submission, as planned before anything is queued (plan_arrays)."""

    trials: tuple[int, ...]  # positions, in the submission, of the trials it holds: task k runs trials[k]
    limit: int  # its %N
    lane: int  # the lane it belongs to (0-based); a lane's arrays run one after the other
    after: int | None  # position, in the plan, of the array it waits for (afterany), if any

    @property
    def array_range(self) -> str:
        """sbatch's --array value: '0-4%1'."""
        return f"0-{len(self.trials) - 1}%{self.limit}"


def plan_arrays(count: int, parallelism: int, max_array_size: int) -> list[PlannedArray]:
    """The arrays, lanes and dependencies that submit() queues for `count` trials; the dry run prints this plan.

    Up to `max_array_size` trials are one array with %parallelism. More are split into lanes *first*: SLURM limits
    concurrency per array only, so `parallelism` (up to one slot per trial) is divided into lanes whose %N add up
    to it exactly, as few lanes as the split needs (one per array of the smallest split, at most one per slot).
    The trials are dealt to the lanes in proportion to their %N, so that equal-length trials make the lanes end
    together; then each lane is cut into arrays of at most `max_array_size` (a multiple of its %N, so no slot
    idles at an array's end), each waiting for the one before it in its lane (`--dependency=afterany`). Never
    more than `parallelism` trials run at once; the plan's order is the submission's (lane by lane).
    """
    if count <= 0:
        return []
    if count <= max_array_size:
        return [PlannedArray(tuple(range(count)), parallelism, 0, None)]
    slots = min(parallelism, count)
    lanes = min(slots, -(-count // max_array_size))
    limits = [slots // lanes + (1 if lane < slots % lanes else 0) for lane in range(lanes)]
    # Largest remainders: each lane's share of the trials in proportion to its slots.
    shares = [count * limit / slots for limit in limits]
    sizes = [int(share) for share in shares]
    by_remainder = sorted(range(lanes), key=lambda lane: (-(shares[lane] - sizes[lane]), lane))
    for lane in by_remainder[: count - sum(sizes)]:
        sizes[lane] += 1
    plan: list[PlannedArray] = []
    first = 0
    for lane, (limit, size) in enumerate(zip(limits, sizes)):
        step = max_array_size // limit * limit
        previous = None
        for start in range(first, first + size, step):
            plan.append(PlannedArray(tuple(range(start, min(start + step, first + size))), limit, lane, previous))
            previous = len(plan) - 1
        first += size
    return plan


def array_parameters(
    resources: Resources, name: str, log_root: Path, planned: PlannedArray, python: str,
    after: str | None = None, previous: str | None = None,
) -> dict:
    """sbatch_parameters of one planned array: its size and %N, and what it waits for (`afterok:<after>`, the
    pretraining task of a chained evaluation; `afterany:<previous>`, the array before it in its lane)."""
    params = sbatch_parameters(resources, name, log_root, len(planned.trials), python)
    params["array_parallelism"] = planned.limit
    waits = ([f"afterok:{after}"] if after else []) + ([f"afterany:{previous}"] if previous else [])
    if waits:
        extra = {"dependency": ",".join(waits)}
        if after:
            extra["kill_on_invalid_dep"] = "yes"
        params["additional_parameters"] = {**params["additional_parameters"], **extra}
    return params


def render_script(
    resources: Resources, names: Sequence[str], log_root: Path, python: str | None = None,
    planned: PlannedArray | None = None, previous: str | None = None,
) -> str:
    """The sbatch script of one array of these trials: `planned` (by default all of them, as one array)."""
    python = python or shlex.quote(sys.executable)
    planned = planned or PlannedArray(tuple(range(len(names))), resources.array_parallelism, 0, None)
    params = array_parameters(resources, _array_name(names), log_root, planned, python, previous=previous)
    return sbatch_script(python, log_root / "%j", **params)


# ---------------------------------------------------------------- the backend


class SlurmBackend(Backend):
    name = "slurm"

    def __init__(self, max_array_size: int | None = None):
        self._max_array_size = max_array_size
        self._config_text: str | None = None
        self.queries: list[list[str]] = []  # the scheduler commands states() ran (benchmarks and tests read it)

    # -- facts from the controller ---------------------------------------------------------------
    def max_array_size(self) -> int:
        if self._max_array_size is None:
            self._max_array_size = parse_max_array_size(self.config_text())
        return self._max_array_size

    def config_text(self) -> str:
        """`scontrol show config`, asked once."""
        if self._config_text is None:
            self._config_text = _run(["scontrol", "show", "config"]).stdout
        return self._config_text

    def partitions(self) -> dict[str, Partition]:
        return parse_partitions(_run(["scontrol", "show", "partition", "-o"]).stdout)

    def reachable(self) -> bool:
        if shutil.which("sbatch") is None or shutil.which("scontrol") is None:
            return False
        try:
            _run(["scontrol", "ping"], timeout=15)
        except SlurmUnavailable:
            return False
        return True

    # -- before anything is queued ---------------------------------------------------------------
    def check(self, resources: Resources) -> None:
        try:
            partitions = self.partitions()
        except SlurmUnavailable as problem:
            raise VitolaunchError(f"SLURM is unreachable ({problem}): nothing was submitted") from problem
        known = ", ".join(sorted(partitions)) or "none"
        if resources.partition:
            partition = partitions.get(resources.partition)
            if partition is None:
                raise ResourceError(
                    f"resources.partition '{resources.partition}' does not exist on this cluster (partitions: {known})",
                    key="resources.partition",
                )
        else:
            partition = next((p for p in partitions.values() if p.default), None)
            if partition is None:
                raise ResourceError(f"resources.partition is not set and the cluster has no default partition: "
                                    f"choose one of {known}", key="resources.partition")
        where = f"partition '{partition.name}'"
        if resources.nodes > partition.total_nodes:
            raise ResourceError(f"resources.nodes is {resources.nodes}, but {where} has {partition.total_nodes} node(s)",
                                key="resources.nodes", hint=f"Ask for at most {partition.total_nodes}")
        if partition.max_nodes is not None and resources.nodes > partition.max_nodes:
            raise ResourceError(f"resources.nodes is {resources.nodes}, over the MaxNodes={partition.max_nodes} of {where}",
                                key="resources.nodes", hint=f"Ask for at most {partition.max_nodes}, or another partition")
        if partition.max_time_min is not None and resources.timeout_min > partition.max_time_min:
            raise ResourceError(
                f"resources.timeout_min is {resources.timeout_min}, over the {partition.max_time_min:g} min "
                f"time limit (MaxTime) of {where}",
                key="resources.timeout_min",
            )
        self._check_site(resources, partition.name)

    def _check_site(self, resources: Resources, partition: str) -> None:
        """Account, QOS, constraint and the other site settings, asked of the cluster (see slurm_site)."""
        try:
            slurm_site.check_association(resources, _run, self.config_text, partition)
        except SlurmUnavailable as problem:
            raise VitolaunchError(f"SLURM is unreachable ({problem}): nothing was submitted") from problem
        slurm_site.check_constraint(resources, _run, partition)
        if slurm_site.needs_test_only(resources):
            try:
                self.test_only(resources, ["vitolaunch-check"], Path(tempfile.gettempdir()) / "vitolaunch-check")
            except VitolaunchError as refused:
                raise VitolaunchError(f"SLURM refuses these resources' site settings ({refused}); check resources.account, "
                                      "qos, reservation, exclude and sbatch_extra: nothing was submitted") from refused

    def test_only(self, resources: Resources, names: Sequence[str], log_root: Path) -> str:
        """`sbatch --test-only` of the script: where and when it would start. Raises if SLURM refuses it."""
        first = plan_arrays(len(names), resources.array_parallelism, self.max_array_size())[0]
        script = render_script(resources, [names[k] for k in first.trials], log_root, planned=first)
        with tempfile.NamedTemporaryFile("w", suffix=".sh", delete=False) as handle:
            handle.write(script)
        try:
            proc = _run(["sbatch", "--test-only", handle.name], check=False)
        finally:
            os.unlink(handle.name)
        message = (proc.stderr + proc.stdout).strip()
        if proc.returncode != 0:
            raise VitolaunchError(f"sbatch --test-only refused the script: {message}")
        return message

    # -- submit ----------------------------------------------------------------------------------
    def submit(
        self, jobs: Sequence[Callable[[], object]], names: Sequence[str], resources: Resources, log_dir: Path,
        dependencies: Sequence[str | None] | None = None,
    ) -> list[JobHandle]:
        """One array per distinct dependency (sbatch's --dependency is per array): `afterok:<array>_<task>` with
        --kill-on-invalid-dep, so a task whose pretraining failed is cancelled instead of pending forever. Arrays
        already queued are cancelled if a later one cannot be (nothing half-submitted)."""
        groups: dict[str | None, list[int]] = {}
        for index, after in enumerate(dependencies or [None] * len(jobs)):
            groups.setdefault(after, []).append(index)
        handles: list[JobHandle | None] = [None] * len(jobs)
        done: list[JobHandle] = []
        try:
            for after, indexes in groups.items():
                group = self._submit_arrays([jobs[k] for k in indexes], [names[k] for k in indexes], resources, log_dir, after)
                done.extend(group)
                for k, handle in zip(indexes, group):
                    handles[k] = handle
        except BaseException:
            if done:
                subprocess.run(["scancel", *cancel_targets(done)], capture_output=True, timeout=CLI_TIMEOUT_S)
            raise
        return handles  # type: ignore[return-value]

    def _submit_arrays(
        self, jobs: Sequence[Callable[[], object]], names: Sequence[str], resources: Resources, log_dir: Path,
        after: str | None,
    ) -> list[JobHandle]:
        from submitit.core.utils import DelayedSubmission, JobPaths

        log_dir = Path(log_dir)
        log_dir.mkdir(parents=True, exist_ok=True)
        plan = plan_arrays(len(jobs), resources.array_parallelism, self.max_array_size())
        name = _array_name(names)
        python = shlex.quote(sys.executable)
        submitted: list[str] = []
        handles: list[JobHandle | None] = [None] * len(jobs)
        staging = log_dir / ".submitting"
        staging.mkdir(exist_ok=True)
        try:
            for planned in plan:
                chunk = planned.trials
                previous = submitted[planned.after] if planned.after is not None else None
                params = array_parameters(resources, name, log_dir, planned, python, after, previous)
                # Pickles first (the slow part), then sbatch --hold, then move them into place, then release.
                pickles = []
                for index in chunk:
                    path = staging / f"{uuid.uuid4().hex}.pkl"
                    delayed = DelayedSubmission(jobs[index])
                    delayed.set_timeout(resources.timeout_min, 0)
                    delayed.dump(path)
                    pickles.append(path)
                array_id = self._sbatch_held(params, log_dir, python)
                submitted.append(array_id)
                for task, (index, path) in enumerate(zip(chunk, pickles)):
                    job_id = f"{array_id}_{task}"
                    paths = JobPaths(log_dir / "%j", job_id)
                    paths.folder.mkdir(parents=True, exist_ok=True)
                    os.replace(path, paths.submitted_pickle)
                    handles[index] = JobHandle(job_id=job_id, log_dir=str(paths.folder))
                with open(log_dir / f"array_{array_id}.tsv", "w") as mapping:
                    mapping.writelines(f"{task}\t{names[index]}\n" for task, index in enumerate(chunk))
            _run(["scontrol", "release", ",".join(submitted)])
        except BaseException:
            if submitted:
                subprocess.run(["scancel", *submitted], capture_output=True, timeout=CLI_TIMEOUT_S)
            raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return handles  # type: ignore[return-value]

    def _sbatch_held(self, params: dict, log_dir: Path, python: str) -> str:
        script = sbatch_script(python, log_dir / "%j", **params)
        path = log_dir / f".sbatch_{uuid.uuid4().hex}.sh"
        path.write_text(script)
        proc = _run(["sbatch", "--parsable", "--hold", str(path)], timeout=60)
        array_id = proc.stdout.strip().split(";")[0]
        if not array_id.isdigit():
            raise SlurmUnavailable(f"could not read a job id from sbatch: {proc.stdout!r}")
        path.rename(log_dir / f"array_{array_id}.sbatch.sh")
        return array_id

    # -- state -----------------------------------------------------------------------------------
    def states(self, handles: Sequence[JobHandle]) -> dict[str, SchedulerState]:
        return self.observe(handles).states

    def observe(self, handles: Sequence[JobHandle]) -> SchedulerView:
        """sacct (accounting) and squeue (the controller) asked at once, each for every array in one call.

        Each gets `status_timeout_s()`: a controller or slurmdbd that is down must cost a status call a second
        or two, not the tens of seconds the commands wait by themselves. What neither can vouch for now is
        UNKNOWN (never FAILED), and the view's `problems` say which service did not answer.
        """
        from concurrent.futures import ThreadPoolExecutor

        arrays = sorted({h.job_id.split("_")[0] for h in handles})
        view = SchedulerView({})
        if not arrays:
            return view
        timeout = status_timeout_s()
        with ThreadPoolExecutor(2) as pool:
            # -D: a requeued task's earlier records too (oldest first), to say why it is queued again.
            accounting = pool.submit(self._query, ["sacct", "--parsable2", "-n", "-X", "-D", "-o",
                                                   "JobID,State,Start,End,NodeList", "-j", ",".join(arrays)], True, timeout)
            controller = pool.submit(self._query, ["squeue", "-h", "-r", "-t", "all", "-o", "%i|%T|%S",
                                                   "-j", ",".join(arrays)], False, timeout)
        table: dict[str, tuple[SchedulerState, float | None]] = {}
        earlier: dict[str, list[list[str]]] = {}
        try:
            text = accounting.result()
            table, earlier = parse_job_table(text), earlier_records(text)
        except SlurmUnavailable as problem:
            view.problems.append(f"SLURM accounting (sacct/slurmdbd) did not answer: {problem}")
        # sacct lags the controller by seconds (more on a busy slurmdbd): for a task the controller still
        # knows, its live answer wins.
        try:
            proc = controller.result()
            if proc.returncode != 0 and "Invalid job id" not in proc.stderr:  # all ended and purged: not a fault
                raise SlurmUnavailable(f"`squeue` failed: {(proc.stderr or proc.stdout).strip()[:200]}")
            table.update(parse_job_table(proc.stdout))
        except SlurmUnavailable as problem:
            view.problems.append(f"the SLURM controller did not answer: {problem}")
            # Only accounting's word is left: a final state stands, a queued or running one is last known.
            table = {job: (state, start) if not state.active else (S.UNKNOWN, start)
                     for job, (state, start) in table.items()}
        for handle in handles:
            state, start = table.get(handle.job_id, (S.UNKNOWN, None))
            view.states[handle.job_id] = state
            if start is not None:
                view.start_times[handle.job_id] = start
            if state is S.PENDING and earlier.get(handle.job_id):
                view.reasons[handle.job_id] = self._requeue_reason(earlier[handle.job_id], timeout)
        return view

    def _requeue_reason(self, records: list[list[str]], timeout: float) -> str:
        """Why a pending task is queued again, from its earlier accounting records (JobID|State|Start|End|NodeList)."""
        last = records[-1] + [""] * 5
        word, start, end, nodes = last[1].split(" ")[0].rstrip("+").upper(), last[2], last[3], last[4]
        restarts = f"(restart {len(records)})"
        if word == "NODE_FAIL":
            failed = self._failed_nodes(nodes, start, end, timeout)
            what = f"node {failed} failed" if failed else f"a node of {nodes or 'its allocation'} failed"
            return f"requeued by SLURM after {what} {restarts}; it resumes from its last committed checkpoint"
        if word == "PREEMPTED":
            return f"requeued by SLURM after it was preempted {restarts}; it resumes from its last committed checkpoint"
        if word == "REQUEUED":
            return (f"requeued with `scontrol requeue` (by vitolaunch's retry hook or an admin) {restarts}; "
                    "it resumes from its last committed checkpoint")
        return f"queued again after it ended {word or 'without a state'} {restarts}"

    def _failed_nodes(self, nodes: str, start: str, end: str, timeout: float) -> str | None:
        """The node(s) of `nodes` that went down while the task ran (slurmdbd's node events), None if unknown."""
        if not nodes or not start or start == "Unknown":
            return None
        args = ["sacctmgr", "-n", "-P", "show", "event", f"nodes={nodes}", f"start={start}",
                "format=NodeName,TimeStart,State"]
        try:
            out = self._query(args, True, timeout)
        except SlurmUnavailable:
            return None
        # The node is marked down as the task is killed: an event that began by (about) the record's end.
        until = _timestamp(end)
        down = set()
        for line in out.splitlines():
            name, _, began = line.partition("|")
            began_s = _timestamp(began.split("|")[0])
            if name and (until is None or began_s is None or began_s <= until + 60):
                down.add(name)
        return ", ".join(sorted(down)) or None

    def _query(self, args: list[str], check: bool = True, timeout: float = CLI_TIMEOUT_S):
        self.queries.append(args)
        proc = _run(args, timeout=timeout, check=check)
        return proc.stdout if check else proc

    def cancel(self, handles: Sequence[JobHandle]) -> None:
        targets = cancel_targets(handles)
        if targets:
            _run(["scancel", *targets])

    def log_files(self, handle: JobHandle, rank: int) -> tuple[Path, Path]:
        from submitit.core.utils import JobPaths

        paths = JobPaths(handle.log_dir, handle.job_id, rank)
        return paths.stdout, paths.stderr


def cancel_targets(handles: Sequence[JobHandle]) -> list[str]:
    """What to scancel: a whole array by its id where every task it was submitted with goes (one controller
    operation instead of thousands), the tasks one by one elsewhere. An array's tasks are listed in the
    `array_<id>.tsv` that `submit` wrote next to their folders."""
    by_array: dict[str, list[JobHandle]] = {}
    for handle in handles:
        by_array.setdefault(handle.job_id.split("_")[0], []).append(handle)
    targets: list[str] = []
    for array_id, group in by_array.items():
        mapping = Path(group[0].log_dir).parent / f"array_{array_id}.tsv"
        try:
            submitted = {f"{array_id}_{line.split(chr(9))[0]}" for line in mapping.read_text().splitlines() if line}
        except OSError:
            submitted = set()
        asked = {h.job_id for h in group}
        targets.extend([array_id] if submitted and submitted <= asked else sorted(asked))
    return targets
