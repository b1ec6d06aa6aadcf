"""What one trial asks of the scheduler: the `resources:` section of a spec, and what backends are given.

Defined once, below both the spec and the backends, so the fields and their defaults are said in one place.
Each trial's MLflow run keeps them as a flat JSON record (the `vitolaunch.spec.resources` tag) that resume and
`logs` read back; `to_record` / `from_record` are that format, which existing runs already carry.

Site settings (account, qos, constraint, setup lines, env, ...) are fields here too, usually given once per
cluster in a profile file (vitolaunch/spec/profile.py) rather than in every spec. Options vitolaunch manages
itself are refused in `sbatch_extra`, and nothing that looks like a credential is accepted anywhere: these
values end up in batch scripts and run records.
"""

from __future__ import annotations

import re
import shutil
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

from vitolaunch.spec.credentials import WHERE_CREDENTIALS_GO, credential_in_line, secret_name, secret_shape

# sbatch options vitolaunch sets itself, and the spec key (or mechanism) that controls each. Short forms too.
MANAGED_SBATCH_OPTIONS: dict[str, str] = {
    "array": "each trial is one task of the array vitolaunch submits; concurrency is resources.array_parallelism",
    "signal": "the warning before the time limit is resources.signal_delay_s",
    "requeue": "vitolaunch requeues by cause: resources.retries",
    "no-requeue": "vitolaunch requeues by cause: resources.retries",
    "output": "logs go to <VITOLAUNCH_HOME>/logs/<sweep>/<job>, one file per rank (`vitolaunch logs` finds them)",
    "error": "logs go to <VITOLAUNCH_HOME>/logs/<sweep>/<job>, one file per rank (`vitolaunch logs` finds them)",
    "open-mode": "logs are appended across requeues by vitolaunch",
    "job-name": "the job name is the sweep's name (spec key `name`)",
    "dependency": "vitolaunch chains the arrays of a split sweep itself",
    "hold": "vitolaunch submits held and releases once the job files are in place",
    "wckey": "vitolaunch tags its jobs with wckey=vitolaunch",
    "export": "every rank inherits the submitting environment; add variables with resources.env",
    "nodes": "resources.nodes",
    "ntasks-per-node": "resources.tasks_per_node",
    "ntasks": "resources.nodes x resources.tasks_per_node",
    "cpus-per-task": "resources.cpus_per_task",
    "mem": "resources.mem_gb",
    "mem-per-cpu": "resources.mem_gb",
    "mem-per-gpu": "resources.mem_gb",
    "time": "resources.timeout_min",
    "partition": "resources.partition",
    "account": "resources.account",
    "qos": "resources.qos",
    "constraint": "resources.constraint",
    "reservation": "resources.reservation",
    "exclusive": "resources.exclusive",
    "exclude": "resources.exclude",
    "gpus-per-node": "resources.gpus_per_node",
    "gpus-per-task": "resources.gpus_per_task",
    "gpus": "resources.gpus_per_node or resources.gpus_per_task",
    "gres": "resources.gpus_per_node or resources.gpus_per_task",
}
_SHORT_OPTIONS = {"a": "array", "J": "job-name", "o": "output", "e": "error", "d": "dependency", "N": "nodes",
                  "n": "ntasks", "c": "cpus-per-task", "t": "time", "p": "partition", "A": "account", "q": "qos",
                  "C": "constraint", "x": "exclude", "G": "gpus", "H": "hold"}

# Variables vitolaunch, submitit or SLURM set for each rank: a value from the spec would break the job.
_MANAGED_ENV = {"RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                "MLFLOW_RUN_ID", "CUDA_VISIBLE_DEVICES"}
_MANAGED_ENV_PREFIXES = ("SLURM_", "SUBMITIT_", "VITOLAUNCH_")

# The warning before the time limit, by checkpoint size class (see `checkpoint_size_class`). It must cover
# reaching a step boundary, every rank's save, the upload of the largest rank's files, the commit marker and
# the MLflow drain; SLURM itself may deliver the signal up to a minute off.
SIGNAL_DELAY_S_BY_SIZE = {"small": 60, "medium": 180, "large": 300}
# Backbone parameters at width 64 (the standard ResNets); width scales them quadratically.
_BACKBONE_PARAMS = {"resnet18": 11.7e6, "resnet50": 25.6e6}


def _credential_error(where: str, why: str) -> PydanticCustomError:
    # The value itself is never repeated: the message would print it.
    return PydanticCustomError("credential", "{where} {why}. {hint}", {"where": where, "why": why,
                                                                      "hint": WHERE_CREDENTIALS_GO})


def _env_name(name: str) -> str:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise PydanticCustomError("env_name", "'{name}' is not an environment variable name (letters, digits, '_')",
                                  {"name": name})
    if name in _MANAGED_ENV or name.startswith(_MANAGED_ENV_PREFIXES):
        raise PydanticCustomError("env_name", "{name} is set for each rank by vitolaunch/SLURM and cannot be overridden",
                                  {"name": name})
    if secret_name(name):
        raise _credential_error(name, "is a credential's name")
    return name


def _env_value(value: Any) -> str:
    if isinstance(value, bool):
        # YAML 1.1 reads an unquoted yes/no/on/off/true/false as a boolean; someone writing an environment value
        # means the text, and exporting 1 or 0 instead would be a silent guess.
        raise PydanticCustomError(
            "env_value",
            "is the YAML boolean {value} (an unquoted yes, no, on, off, true or false): quote the value to export "
            "it as written, e.g. X: 'yes' (or write 1 or 0)",
            {"value": str(value).lower()},
        )
    if not isinstance(value, (str, int, float)):
        raise PydanticCustomError("env_value", "an env value must be a string or a number")
    kind = secret_shape(str(value))
    if kind:
        raise _credential_error("the value", f"looks like {kind}")
    return str(value)


def _setup_line(line: str) -> str:
    if "\n" in line.strip():
        raise PydanticCustomError("setup_line", "one shell line per item (this one has several)")
    why = credential_in_line(line)
    if why:
        raise _credential_error("the line", why)
    return line.strip()


def _sbatch_option(name: str) -> str:
    option = name.strip().lstrip("-")
    option = _SHORT_OPTIONS.get(option, option).replace("_", "-")
    if not re.fullmatch(r"[a-z][a-z0-9-]*", option):
        raise PydanticCustomError("sbatch_option", "'{name}' is not an sbatch option name (e.g. mail-type)", {"name": name})
    if option in MANAGED_SBATCH_OPTIONS:
        raise PydanticCustomError("sbatch_option", "--{option} is managed by vitolaunch: {why}",
                                  {"option": option, "why": MANAGED_SBATCH_OPTIONS[option]})
    return option


def _sbatch_value(value: Any) -> str | int | float | bool:
    if not isinstance(value, (str, int, float, bool)):
        raise PydanticCustomError("sbatch_value", "an sbatch option takes a string, a number or true")
    if isinstance(value, str) and "\n" in value:
        raise PydanticCustomError("sbatch_value", "an sbatch option value is one line")
    kind = secret_shape(str(value))
    if kind:
        raise _credential_error("the value", f"looks like {kind}")
    return value


def _join_hosts(value: Any) -> Any:
    return ",".join(str(v) for v in value) if isinstance(value, list) else value


EnvName = Annotated[str, AfterValidator(_env_name)]
EnvValue = Annotated[str, BeforeValidator(_env_value)]
SetupLine = Annotated[str, AfterValidator(_setup_line)]
SbatchOption = Annotated[str, AfterValidator(_sbatch_option)]
SbatchValue = Annotated[str | int | float | bool, BeforeValidator(_sbatch_value)]
_Word = Annotated[str, Field(min_length=1, pattern=r"^[^\s,;'\"]+$")]


class Retries(BaseModel):
    """How often a trial is requeued, by cause. Preemption always requeues and is not counted."""

    model_config = ConfigDict(extra="forbid")

    timeout: int = Field(3, ge=0)  # requeues after a time limit (SLURM)
    crash: int = Field(1, ge=0)  # requeues after a non-zero exit (SLURM), resumed from the last checkpoint


class Resources(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cluster: Literal["auto", "local", "slurm"] = "auto"
    nodes: int = Field(1, ge=1)
    tasks_per_node: int = Field(1, ge=1, description="ranks per node; defaults to gpus_per_node when > 0")
    gpus_per_node: int = Field(0, ge=0)
    cpus_per_task: int = Field(1, ge=1)
    mem_gb: float = Field(4, gt=0)
    timeout_min: int = Field(60, ge=1)
    partition: str | None = None
    array_parallelism: int = Field(8, ge=1)
    retries: Retries = Retries()
    # -- site settings (SLURM); usually from a cluster profile --------------------------------------------
    profile: str | None = Field(None, min_length=1, description="a named set of these defaults in the cluster profile file")
    account: _Word | None = None
    qos: _Word | None = None
    constraint: str | None = Field(None, min_length=1, description="node features, SLURM syntax: 'a100&ib' or 'a100|h100'")
    reservation: _Word | None = None
    exclusive: bool = False
    # GPUs bound to each rank (each rank sees only its own); unset: every rank sees all GPUs of its node.
    gpus_per_task: int | None = Field(None, ge=1)
    exclude: Annotated[str | None, BeforeValidator(_join_hosts)] = Field(None, min_length=1, description="nodes never to use")
    sbatch_extra: dict[SbatchOption, SbatchValue] = Field(default_factory=dict)
    setup: list[SetupLine] = Field(default_factory=list, description="shell lines run in the batch script before srun")
    env: dict[EnvName, EnvValue] = Field(default_factory=dict, description="non-secret variables for every rank")
    # Seconds of warning (SIGUSR2) before the time limit; None: by checkpoint size class (`default_signal_delay_s`).
    signal_delay_s: int | None = Field(None, ge=10)

    @model_validator(mode="after")
    def _ranks_and_gpus_agree(self) -> Resources:
        given = self.model_fields_set
        if self.gpus_per_task:
            if "tasks_per_node" not in given and self.gpus_per_node:
                if self.gpus_per_node % self.gpus_per_task:
                    raise ValueError(f"gpus_per_node {self.gpus_per_node} is not a multiple of gpus_per_task {self.gpus_per_task}")
                self.tasks_per_node = self.gpus_per_node // self.gpus_per_task
            if not self.gpus_per_node:
                self.gpus_per_node = self.tasks_per_node * self.gpus_per_task
            elif self.gpus_per_node != self.tasks_per_node * self.gpus_per_task:
                raise ValueError(f"gpus_per_node {self.gpus_per_node} != tasks_per_node {self.tasks_per_node} x gpus_per_task "
                                 f"{self.gpus_per_task}: give two of the three")
        elif "tasks_per_node" not in given and self.gpus_per_node > 0:
            self.tasks_per_node = self.gpus_per_node
        if self.signal_delay_s is not None and self.signal_delay_s >= self.timeout_min * 60:
            raise ValueError(f"signal_delay_s {self.signal_delay_s} is not shorter than the time limit "
                             f"(timeout_min {self.timeout_min} = {self.timeout_min * 60} s)")
        return self

    @property
    def ranks(self) -> int:
        return self.nodes * self.tasks_per_node

    def slurm_only_keys(self) -> list[str]:
        """The site settings given here that only a SLURM cluster can honour (the local backend ignores them)."""
        keys = ("account", "qos", "constraint", "reservation", "exclusive", "gpus_per_task", "exclude", "sbatch_extra",
                "setup", "partition")
        return [f"resources.{key}" for key in keys if getattr(self, key)]

    def to_record(self) -> dict[str, Any]:
        """The flat dict of the `vitolaunch.spec.resources` tag (its keys and their order are a stored format)."""
        record = self.model_dump(exclude={"cluster", "retries", *_SITE_KEYS})
        record["retries_timeout"] = self.retries.timeout
        record["retries_crash"] = self.retries.crash
        # Site settings follow, only where given: records of runs that use none keep their old form.
        site = self.model_dump(include=set(_SITE_KEYS))
        record.update({key: site[key] for key in _SITE_KEYS if site[key] not in (None, False, [], {})})
        return record

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Resources:
        """Read a `to_record` dict back; keys it lacks take their defaults, as the old dataclass did."""
        fields = dict(record)
        retries = {
            cause: fields.pop(f"retries_{cause}") for cause in ("timeout", "crash") if f"retries_{cause}" in fields
        }
        return cls.model_validate({**fields, "retries": retries})


_SITE_KEYS = ("profile", "account", "qos", "constraint", "reservation", "exclusive", "gpus_per_task", "exclude",
              "sbatch_extra", "setup", "env", "signal_delay_s")


def checkpoint_size_class(arch: str, width: int) -> Literal["small", "medium", "large"]:
    """A checkpoint is about three fp32 copies of the weights (online network, EMA target, optimizer state).

    By backbone parameters (the heads add a similar, fixed amount): under 15 M is small (ResNet-18 at width 64,
    ~0.2 GB), under 60 M medium (ResNet-50 at 64, ~0.8 GB with heads), above that large (ResNet-50 at 128).
    """
    params = _BACKBONE_PARAMS.get(arch, max(_BACKBONE_PARAMS.values())) * (width / 64) ** 2
    return "small" if params < 15e6 else "medium" if params < 60e6 else "large"


def default_signal_delay_s(size_class: str, timeout_min: int) -> int:
    """The warning for a checkpoint size class, but never more than a fifth of the time limit (at least 10 s)."""
    return max(10, min(SIGNAL_DELAY_S_BY_SIZE[size_class], timeout_min * 60 // 5))


def with_signal_delay(resources: Resources, models: list[tuple[str, int]]) -> Resources:
    """`resources` with signal_delay_s resolved from the largest checkpoint among `models` ((arch, width) pairs)."""
    if resources.signal_delay_s is not None or not models:
        return resources
    order = list(SIGNAL_DELAY_S_BY_SIZE)
    largest = max((checkpoint_size_class(arch, width) for arch, width in models), key=order.index)
    return resources.model_copy(update={"signal_delay_s": default_signal_delay_s(largest, resources.timeout_min)})


def resolve_cluster(resources: Resources) -> Literal["local", "slurm"]:
    """`auto` means slurm where `sbatch` is on PATH; checked when asked, not when the spec is parsed."""
    if resources.cluster != "auto":
        return resources.cluster
    return "slurm" if shutil.which("sbatch") else "local"
