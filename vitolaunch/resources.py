"""What one trial asks of the scheduler: the `resources:` section of a spec, and what backends are given.

Defined once, below both the spec and the backends, so the fields and their defaults are said in one place.
Each trial's MLflow run keeps them as a flat JSON record (the `vitolaunch.resources` tag) that resume and
`logs` read back; `to_record` / `from_record` are that format, which existing runs already carry.
"""

from __future__ import annotations

import shutil
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


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

    @model_validator(mode="after")
    def _one_rank_per_gpu_by_default(self) -> Resources:
        if "tasks_per_node" not in self.model_fields_set and self.gpus_per_node > 0:
            self.tasks_per_node = self.gpus_per_node
        return self

    @property
    def ranks(self) -> int:
        return self.nodes * self.tasks_per_node

    def to_record(self) -> dict[str, Any]:
        """The flat dict of the `vitolaunch.resources` tag (its keys and their order are a stored format)."""
        record = self.model_dump(exclude={"cluster", "retries"})
        record["retries_timeout"] = self.retries.timeout
        record["retries_crash"] = self.retries.crash
        return record

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Resources:
        """Read a `to_record` dict back; keys it lacks take their defaults, as the old dataclass did."""
        fields = dict(record)
        retries = {
            cause: fields.pop(f"retries_{cause}") for cause in ("timeout", "crash") if f"retries_{cause}" in fields
        }
        return cls.model_validate({**fields, "retries": retries})


def resolve_cluster(resources: Resources) -> Literal["local", "slurm"]:
    """`auto` means slurm where `sbatch` is on PATH; checked when asked, not when the spec is parsed."""
    if resources.cluster != "auto":
        return resources.cluster
    return "slurm" if shutil.which("sbatch") else "local"
