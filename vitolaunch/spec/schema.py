"""The sweep spec's schema (v1): the pydantic models of a spec and the checks between their keys.

A `SweepSpec` is validated once: its parameters are parsed into axes then, and kept for expansion. Build one
with `load_spec` so errors can name lines; the located errors of a spec come from its `locator`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    PrivateAttr,
    Tag,
    ValidationInfo,
    field_validator,
    model_validator,
)

from vito.config import VitoConfig
from vitolaunch.errors import SpecError
from vitolaunch.spec.base import resolve_base
from vitolaunch.spec.early_stop import EarlyStop
from vitolaunch.spec.locate import DocPath, Locator, did_you_mean, dotted
from vitolaunch.spec.parameters import Axis, parse_parameters
from vitolaunch.spec.resources import Resources
from vitolaunch.spec.vito_keys import VITO_LEAVES, VITO_SECTIONS

if TYPE_CHECKING:
    from vitolaunch.workspace import Workspace


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Storage(_Strict):
    checkpoint_root: str | None = Field(None, min_length=1, description="path or URL; None = <workspace>/checkpoints")
    # An S3-compatible endpoint (MinIO, SeaweedFS, Ceph...). Credentials never go here: they come from the
    # standard AWS environment variables or config files of whoever runs the jobs.
    endpoint_url: str | None = Field(None, min_length=1, pattern=r"^https?://")
    # Where ranks stage checkpoint files on their way to and from checkpoint_root: a node-local path, resolved
    # inside the job (so `$VARS` expand on the node). None: $SLURM_TMPDIR, else $TMPDIR, else /tmp on SLURM;
    # the workspace's scratch folder on the local backend.
    scratch: str | None = Field(None, min_length=1, description="node-local staging folder for checkpoint files")

    def storage_options(self) -> dict[str, str]:
        """fsspec options for the checkpoint root: only non-secret settings."""
        return {"endpoint_url": self.endpoint_url} if self.endpoint_url else {}


class PublishedWeights(_Strict):
    """An `evaluate.checkpoints` entry that is a file of published weights (vito/eval/foreign_weights.py), scored
    beside the project's checkpoints: the released VITO weights (their PyTorch port's layout) or a torchvision /
    timm ResNet-50."""

    weights: str = Field(min_length=1, description="path or URL of the weights file")
    kind: Literal["torchvision", "timm", "vito_port"] | None = Field(None, description="None: detected from the keys")
    name: str | None = Field(None, min_length=1, description="the row's label; None: the file name")

    @property
    def label(self) -> str:
        return self.name or self.weights.rstrip("/").rsplit("/", 1)[-1]


def _checkpoint_entry(value: Any) -> str:
    return "<published weights>" if isinstance(value, (dict, PublishedWeights)) else "<checkpoint root>"


# A checkpoint root (a string), or a mapping of published weights: errors name the mapping's own keys.
CheckpointEntry = Annotated[
    Union[Annotated[str, Tag("<checkpoint root>")], Annotated[PublishedWeights, Tag("<published weights>")]],
    Discriminator(_checkpoint_entry),
]


class EvaluateTargets(_Strict):
    """What a `task: evaluate` sweep evaluates; each target is crossed with the parameter grid."""

    # Pretraining trials by MLflow run id (or unique prefix), or every trial of a sweep by its name.
    runs: list[str] = Field(default_factory=list)
    # Trials' checkpoint roots (path or URL), e.g. s3://bucket/sweeps/<sweep>/<trial key>, or published weights:
    # {weights: <file>, kind: torchvision | timm | vito_port, name: <row label>}.
    checkpoints: list[CheckpointEntry] = Field(default_factory=list)
    step: int | None = Field(None, ge=1, description="the committed step to evaluate; None: the newest")
    include_unfinished: bool = Field(False, description="also evaluate trials still running or stopped early")

    @model_validator(mode="after")
    def _some_target(self) -> EvaluateTargets:
        if not self.runs and not self.checkpoints:
            raise ValueError("evaluate needs 'runs' (run ids or sweep names) or 'checkpoints' (checkpoint roots)")
        return self


class Tracking(_Strict):
    uri: str | None = Field(None, min_length=1, description="MLflow tracking URI; None = sqlite in the workspace")
    experiment: str = Field("vitolaunch", min_length=1)


# The metric each task's trials are ranked by when the spec names none: the linear probe is the headline
# number of both pretraining (VITO's own eval at the end) and the evaluate suite.
DEFAULT_OBJECTIVES = {"pretrain": ("eval/linear_probe_acc", "max"), "evaluate": ("eval/linear_probe_acc", "max")}


class Objective(_Strict):
    """How a sweep's trials are ranked (`compare`, and the best trial on the sweep's parent run)."""

    metric: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_./ -]+$",
                        description="an MLflow metric key, e.g. eval/linear_probe_acc")
    mode: Literal["max", "min"] = "max"


class SweepSpec(_Strict):
    """A validated sweep spec. Build it with `load_spec` so errors can name lines."""

    name: str = Field(pattern=r"^[a-z0-9_-]+$")
    description: str | None = None
    task: Literal["pretrain", "evaluate"] = "pretrain"
    base: str | dict[str, Any] = Field(default_factory=dict, description="YAML path (relative to the spec) or mapping")
    method: Literal["grid", "random"] = "grid"
    count: int | None = Field(None, ge=1)
    seed: int = 0
    parameters: dict[str, Any] = Field(default_factory=dict)
    resources: Resources = Resources()
    storage: Storage = Storage()
    tracking: Tracking = Tracking()
    evaluate: EvaluateTargets | None = None  # task: evaluate only (see vitolaunch/launch/evaluate_targets.py)
    objective: Objective | None = None  # None: DEFAULT_OBJECTIVES[task]; see `resolved_objective`
    early_stop: EarlyStop | None = None  # asynchronous successive halving (see vitolaunch/job/rungs.py)
    # An evaluate spec (path relative to this one) queued by the same `vitolaunch sweep`, its trials waiting for
    # the pretraining trials they evaluate (see vitolaunch/job/chained_wait.py).
    then: str | None = Field(None, min_length=1)
    source_file: str | None = Field(None, exclude=True)

    _locator: Locator = PrivateAttr(default_factory=Locator)
    _axes: list[Axis] = PrivateAttr(default_factory=list)
    _base_config: VitoConfig | None = PrivateAttr(default=None)
    _resource_sources: dict[str, str] = PrivateAttr(default_factory=dict)

    @field_validator("base", mode="before")
    @classmethod
    def _base_is_path_or_mapping(cls, value: Any) -> Any:
        if value is None:  # `base:` left empty means the vito defaults
            return {}
        if not isinstance(value, (str, dict)):
            raise ValueError("base must be a path to a YAML file of vito config, or a mapping of vito config")
        return value

    @model_validator(mode="after")
    def _consistent(self, info: ValidationInfo) -> SweepSpec:
        # SpecError is not a ValueError, so pydantic lets it through with its file and line intact.
        locator = (info.context or {}).get("locator") or Locator(self.source_file)
        given = self.model_fields_set
        if self.method == "random" and self.count is None:
            raise locator.error(("method",), "method: random needs 'count' (the number of trials)", key="count")
        if self.method == "grid":
            for key in ("count", "seed"):
                if key in given:
                    hint = "To seed training, set base train.seed or sweep it." if key == "seed" else None
                    raise locator.error((key,), f"'{key}' applies only to method: random", key=key, hint=hint)
        self._axes = parse_parameters(self.parameters, self.method, locator)
        _check_task(self, locator)
        self._locator = locator
        if "base_overrides" in (info.context or {}):  # load_spec: resolve now, so a bad base fails the load
            self._base_config = resolve_base(self, info.context["base_overrides"])
        return self

    @property
    def locator(self) -> Locator:
        """Where each value of this spec came from: a line of its file, or a `-o` override."""
        return self._locator

    def error_at(self, path: DocPath, message: str, *, key: str | None = None, hint: str | None = None) -> SpecError:
        """A SpecError located at `path` of the spec document (e.g. ("base", "data")), to raise."""
        return self._locator.error(path, message, key=key, hint=hint)

    @property
    def resource_sources(self) -> dict[str, str]:
        """Where each given `resources` value came from (`file:line`, a cluster profile, or `-o`), by dotted key."""
        return self._resource_sources

    @property
    def axes(self) -> list[Axis]:
        """The parsed `parameters:`, in spec order (parsed when the spec was validated)."""
        return self._axes

    @property
    def folder(self) -> Path:
        """The spec file's folder: relative paths in the spec (base, checkpoint_root) start there."""
        return Path(self.source_file).parent if self.source_file else Path.cwd()

    def base_config(self) -> VitoConfig:
        """The resolved base vito config (defaults filled in, `base.*` overrides applied), validated once."""
        if self._base_config is None:
            self._base_config = resolve_base(self, [])
        return self._base_config

    def base_config_dict(self) -> dict[str, Any]:
        """The resolved base vito config as a fresh dict."""
        return self.base_config().to_dict()

    def resolved_objective(self) -> Objective:
        """The objective the spec names, else the task's default."""
        if self.objective is not None:
            return self.objective
        metric, mode = DEFAULT_OBJECTIVES[self.task]
        return Objective(metric=metric, mode=mode)

    def spec_hash(self) -> str:
        """sha256[:12] of the spec's content, with the base resolved (a path and its inline copy hash alike)."""
        content = self.model_dump(mode="json")
        if content.get("evaluate") is None:
            content.pop("evaluate", None)  # pretraining specs hash as they did before evaluate existed
        # The objective says how results are read, not what runs: changing it must not make a new sweep.
        content.pop("objective", None)
        for optional in ("early_stop", "then"):  # specs without them hash as they did before these keys existed
            if content.get(optional) is None:
                content.pop(optional, None)
        content["base"] = self.base_config_dict()
        content["parameters"] = [[key, value] for key, value in self.parameters.items()]  # order names trials
        canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(canonical.encode()).hexdigest()[:12]

    def resolved_checkpoint_root(self, workspace: Workspace) -> str:
        """Where checkpoints go: the URL or absolute path as given, a relative path from the spec's folder."""
        root = self.storage.checkpoint_root
        if root is None:
            return str(workspace.checkpoint_root.resolve())
        if "://" in root or Path(root).is_absolute():
            return root
        return str((self.folder / root).resolve())


def _check_task(spec: SweepSpec, locator: Locator) -> None:
    """`evaluate:` belongs to evaluate sweeps, and an evaluate sweep must say what it evaluates."""
    if spec.task == "pretrain" and spec.evaluate is not None:
        raise locator.error(("evaluate",), "applies only to task: evaluate", key="evaluate",
                            hint="Set task: evaluate, or remove the evaluate section.")
    if spec.task == "evaluate" and spec.then is not None:
        raise locator.error(("then",), "applies only to task: pretrain (it names the evaluation of this pretraining)",
                            key="then", hint="Remove it.")
    if spec.task == "pretrain" and "eval.checkpoint" in spec.parameters:
        raise locator.error(("parameters", "eval.checkpoint"), "names a checkpoint to evaluate: that is an evaluate sweep",
                            key="eval.checkpoint", hint="Set task: evaluate.")
    if spec.task == "evaluate" and spec.evaluate is None and "eval.checkpoint" not in spec.parameters:
        base_checkpoint = isinstance(spec.base, dict) and (spec.base.get("eval") or {}).get("checkpoint")
        if not base_checkpoint and not isinstance(spec.base, str):
            raise locator.error(
                ("task",), "task: evaluate needs something to evaluate", key="task",
                hint="Add evaluate: {runs: [<run id or sweep name>]} or evaluate: {checkpoints: [<uri>]}, "
                "or sweep eval.checkpoint under parameters.",
            )


def spec_key_hint(loc: DocPath) -> str | None:
    """For an unknown key at `loc` of a spec: the key most likely meant, or the keys valid there."""
    *parents, name = loc
    model: type[BaseModel] = SweepSpec
    for part in parents:  # walk down to the sub-model that holds the unknown key
        annotation = model.model_fields[part].annotation if part in model.model_fields else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    fields = [f for f in model.model_fields if f != "source_file"]
    hint = did_you_mean(str(name), fields, prefix=dotted(parents) + "." if parents else "")
    if hint is None and not parents and (name in VITO_LEAVES or name in VITO_SECTIONS):
        return f"'{name}' is vito config: set it under 'base:' or sweep it under 'parameters:'."
    return hint or f"Valid keys here: {', '.join(fields)}."
