"""The sweep spec (v1): YAML -> validated `SweepSpec` -> list of `Trial`s.

A trial is the base vito config with some dotted keys set; its key is the hash of the resolved config, so the
same config reached through different specs is the same trial. Every mistake becomes one `SpecError` naming
the file, the line (or the `-o` override) and the key, before anything is submitted.

Deliberately light: pydantic and yaml only, no torch/deepspeed/mlflow, so the CLI starts instantly.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import itertools
import json
import math
import os
import random
import shutil
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, ValidationInfo
from pydantic import field_validator, model_validator

from vito.config import VitoConfig, leaf_paths, set_dotted
from vitolaunch.errors import SpecError
from vitolaunch.yaml_lines import load_with_lines, parse_value

ZIP_KEY = "zip"  # under `parameters:`, a list of groups whose lists vary together
_VITO_LEAVES = leaf_paths()
# Every proper prefix of a leaf, e.g. 'loss', 'data.synthetic': valid in a base config, not as a swept key.
_VITO_SECTIONS = sorted({leaf.rsplit(".", n)[0] for leaf in _VITO_LEAVES for n in range(1, leaf.count(".") + 1)})

DocPath = tuple[Any, ...]


# ---------------------------------------------------------------- where things came from


@dataclass
class _Locator:
    """Maps a path in a loaded document to its origin: a line of `file`, or a `-o key=value` override."""

    file: str | None = None
    lines: dict[DocPath, int] = field(default_factory=dict)
    overrides: dict[DocPath, str] = field(default_factory=dict)
    # A base file's `-o base.x=v` overrides were typed against the spec: name the spec and the spec-level key.
    override_file: str | None = None
    override_key_prefix: str = ""

    def error(self, path: DocPath, message: str, *, key: str | None = None, hint: str | None = None) -> SpecError:
        # The innermost known ancestor is the most precise place we can point at (a missing key has no line).
        for end in range(len(path), -1, -1):
            prefix = tuple(path[:end])
            if prefix in self.overrides:
                file = self.override_file or self.file
                key = f"{self.override_key_prefix}{key}" if key else key
                return SpecError(message, file=file, key=key, hint=hint, override=self.overrides[prefix])
            if prefix in self.lines:
                return SpecError(message, file=self.file, line=self.lines[prefix], key=key, hint=hint)
        return SpecError(message, file=self.file, key=key, hint=hint)

    def record_override(self, path: DocPath, text: str) -> None:
        # Lines under a replaced value describe the file's old value, not the one in effect.
        for known in [p for p in self.lines if p[: len(path)] == path]:
            del self.lines[known]
        self.overrides[path] = text


def _dotted(path: Iterable[Any]) -> str:
    return ".".join(str(part) for part in path)


def _closest(name: str, candidates: Sequence[str]) -> str | None:
    """The valid key the user most likely meant: same last part first ('lr' -> 'optim.lr'), then spelling."""
    last = name.rsplit(".", 1)[-1]
    same_leaf = [c for c in candidates if c.rsplit(".", 1)[-1] == last and c != name]
    if len(same_leaf) == 1:
        return same_leaf[0]
    matches = difflib.get_close_matches(name, candidates, n=1)
    return matches[0] if matches else None


def _did_you_mean(name: str, candidates: Sequence[str], prefix: str = "") -> str | None:
    match = _closest(name, candidates)
    return f"Did you mean '{prefix}{match}'?" if match else None


def _short_repr(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# ---------------------------------------------------------------- the spec model


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Retries(_Strict):
    """How often a trial is requeued, by cause. Preemption always requeues and is not counted."""

    timeout: int = Field(3, ge=0)
    crash: int = Field(1, ge=0)


class Resources(_Strict):
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


class Storage(_Strict):
    checkpoint_root: str | None = Field(None, min_length=1, description="path or URL; None = <workspace>/checkpoints")
    # An S3-compatible endpoint (MinIO, SeaweedFS, Ceph...). Credentials never go here: they come from the
    # standard AWS environment variables or config files of whoever runs the jobs.
    endpoint_url: str | None = Field(None, min_length=1, pattern=r"^https?://")

    def storage_options(self) -> dict[str, str]:
        """fsspec options for the checkpoint root: only non-secret settings."""
        return {"endpoint_url": self.endpoint_url} if self.endpoint_url else {}


class EvaluateTargets(_Strict):
    """What a `task: evaluate` sweep evaluates; each target is crossed with the parameter grid."""

    # Pretraining trials by MLflow run id (or unique prefix), or every trial of a sweep by its name.
    runs: list[str] = Field(default_factory=list)
    # Trials' checkpoint roots (path or URL), e.g. s3://bucket/sweeps/<sweep>/<trial key>.
    checkpoints: list[str] = Field(default_factory=list)
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


class RandomDistribution(_Strict):
    """A distribution a random sweep draws one parameter from."""

    distribution: Literal["uniform", "log_uniform", "int_uniform"]
    low: float
    high: float

    @model_validator(mode="after")
    def _valid_bounds(self) -> RandomDistribution:
        if self.low >= self.high:
            raise ValueError(f"low ({self.low:g}) must be below high ({self.high:g})")
        if self.distribution == "log_uniform" and self.low <= 0:
            raise ValueError("log_uniform needs low > 0")
        if self.distribution == "int_uniform" and not (self.low.is_integer() and self.high.is_integer()):
            raise ValueError("int_uniform needs whole-number low and high")
        return self

    def sample(self, rng: random.Random) -> float | int:
        if self.distribution == "int_uniform":
            return rng.randint(int(self.low), int(self.high))  # inclusive on both ends
        if self.distribution == "log_uniform":
            return math.exp(rng.uniform(math.log(self.low), math.log(self.high)))
        return rng.uniform(self.low, self.high)


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
    evaluate: EvaluateTargets | None = None  # task: evaluate only (see vitolaunch/evaluate_targets.py)
    source_file: str | None = Field(None, exclude=True)

    _locator: _Locator = PrivateAttr(default_factory=_Locator)
    _base_dict: dict[str, Any] | None = PrivateAttr(default=None)

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
        locator = (info.context or {}).get("locator") or _Locator(self.source_file)
        given = self.model_fields_set
        if self.method == "random" and self.count is None:
            raise locator.error(("method",), "method: random needs 'count' (the number of trials)", key="count")
        if self.method == "grid":
            for key in ("count", "seed"):
                if key in given:
                    hint = "To seed training, set base train.seed or sweep it." if key == "seed" else None
                    raise locator.error((key,), f"'{key}' applies only to method: random", key=key, hint=hint)
        _parse_parameters(self.parameters, self.method, locator)
        _check_task(self, locator)
        self._locator = locator
        return self

    def error_at(self, path: DocPath, message: str, *, key: str | None = None, hint: str | None = None) -> SpecError:
        """A SpecError located at `path` in this spec's file (its line, or the -o override that set it)."""
        return self._locator.error(path, message, key=key, hint=hint)

    def base_config_dict(self) -> dict[str, Any]:
        """The resolved base vito config (defaults filled in, `base.*` overrides applied), as a fresh dict."""
        if self._base_dict is None:
            self._base_dict = _resolve_base(self, [])
        return copy.deepcopy(self._base_dict)

    def spec_hash(self) -> str:
        """sha256[:12] of the spec's content, with the base resolved (a path and its inline copy hash alike)."""
        content = self.model_dump(mode="json")
        if content.get("evaluate") is None:
            content.pop("evaluate", None)  # pretraining specs hash as they did before evaluate existed
        content["base"] = self.base_config_dict()
        content["parameters"] = [[key, value] for key, value in self.parameters.items()]  # order names trials
        canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(canonical.encode()).hexdigest()[:12]

    def resolved_checkpoint_root(self, workspace: str | Path) -> str:
        """Where checkpoints go: the URL or absolute path as given, a relative path from the spec's folder."""
        root = self.storage.checkpoint_root
        if root is None:
            return str(Path(workspace).resolve() / "checkpoints")
        if "://" in root or Path(root).is_absolute():
            return root
        return str((_spec_dir(self) / root).resolve())

    def resolved_tracking_uri(self, workspace: str | Path) -> str:
        return self.tracking.uri or f"sqlite:///{Path(workspace).resolve() / 'mlflow.db'}"


def _check_task(spec: SweepSpec, locator: _Locator) -> None:
    """`evaluate:` belongs to evaluate sweeps, and an evaluate sweep must say what it evaluates."""
    if spec.task == "pretrain" and spec.evaluate is not None:
        raise locator.error(("evaluate",), "applies only to task: evaluate", key="evaluate",
                            hint="Set task: evaluate, or remove the evaluate section.")
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


def resolve_cluster(resources: Resources) -> Literal["local", "slurm"]:
    """`auto` means slurm where `sbatch` is on PATH; checked when asked, not when the spec is parsed."""
    if resources.cluster != "auto":
        return resources.cluster
    return "slurm" if shutil.which("sbatch") else "local"


def _spec_dir(spec: SweepSpec) -> Path:
    return Path(spec.source_file).parent if spec.source_file else Path.cwd()


# ---------------------------------------------------------------- pydantic errors -> SpecError


def _spec_error_from(
    exc: ValidationError,
    locator: _Locator,
    prefix: DocPath,
    unknown_key_hint: Callable[[DocPath], str | None],
    key_prefix: str | None = None,
) -> SpecError:
    """The first problem (by line) of a ValidationError, as a located SpecError.

    `prefix` is where the validated value sits in the document; errors name the key `key_prefix` + loc
    (by default the document path). `unknown_key_hint(loc)` suggests a key for an unknown key at `loc`.
    """
    errors = []
    for detail in exc.errors():
        loc = tuple(detail["loc"])
        key = (_dotted(prefix + loc) if key_prefix is None else _dotted((key_prefix, *loc))) or None
        kind = detail["type"]
        hint = None
        if kind == "extra_forbidden":
            message, hint = "unknown key", unknown_key_hint(loc)
        elif kind == "missing":
            message = "required key is missing"
        else:
            message = detail["msg"].removeprefix("Value error, ")
            if not isinstance(detail["input"], (dict, list)):
                message += f" (got {_short_repr(detail['input'])})"
            if kind == "string_pattern_mismatch" and loc == ("name",):
                hint = "Use lowercase letters, digits, '_' and '-': the name labels folders and jobs."
        errors.append(locator.error(prefix + loc, message, key=key, hint=hint))
    return min(errors, key=lambda e: (e.line is None, e.line or 0))


def _spec_key_hint(loc: DocPath) -> str | None:
    *parents, name = loc
    model: type[BaseModel] = SweepSpec
    for part in parents:  # walk down to the sub-model that holds the unknown key
        annotation = model.model_fields[part].annotation if part in model.model_fields else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    fields = [f for f in model.model_fields if f != "source_file"]
    hint = _did_you_mean(str(name), fields, prefix=_dotted(parents) + "." if parents else "")
    if hint is None and not parents and (name in _VITO_LEAVES or name in _VITO_SECTIONS):
        return f"'{name}' is vito config: set it under 'base:' or sweep it under 'parameters:'."
    return hint or f"Valid keys here: {', '.join(fields)}."


def _vito_key_hint(prefix: str) -> Callable[[DocPath], str | None]:
    def hint(loc: DocPath) -> str | None:
        return _did_you_mean(_dotted(loc), _VITO_LEAVES + _VITO_SECTIONS, prefix=prefix)

    return hint


# ---------------------------------------------------------------- parameters


@dataclass(frozen=True)
class _Axis:
    """One independent dimension of a sweep: one key, or a zip group's keys varying together."""

    keys: tuple[str, ...]
    path: DocPath  # where it is declared, for errors
    rows: tuple[tuple[Any, ...], ...] = ()  # one value per key, per position along the axis
    row_paths: tuple[tuple[DocPath, ...], ...] = ()  # where each of those values is written
    distribution: RandomDistribution | None = None


def _parse_parameters(parameters: dict[str, Any], method: str, locator: _Locator) -> list[_Axis]:
    axes: list[_Axis] = []
    declared: dict[str, DocPath] = {}
    for name, values in parameters.items():
        path = ("parameters", name)
        if name == ZIP_KEY:
            axes.extend(_parse_zip(values, locator, declared))
            continue
        _check_parameter_name(name, path, locator, declared)
        if isinstance(values, dict):
            if method != "random":
                raise locator.error(
                    path,
                    "a distribution needs method: random",
                    key=name,
                    hint="Under method: grid list the values to try, e.g. [0.1, 0.2].",
                )
            try:
                distribution = RandomDistribution.model_validate(values)
            except ValidationError as exc:
                valid = list(RandomDistribution.model_fields)
                raise _spec_error_from(
                    exc, locator, path, lambda loc: _did_you_mean(_dotted(loc), valid, prefix=f"{name}."), name
                ) from None
            axes.append(_Axis(keys=(name,), path=path, distribution=distribution))
        else:
            _check_value_list(values, name, path, locator)
            axes.append(
                _Axis(
                    keys=(name,),
                    path=path,
                    rows=tuple((value,) for value in values),
                    row_paths=tuple(((*path, i),) for i in range(len(values))),
                )
            )
    return axes


def _parse_zip(groups: Any, locator: _Locator, declared: dict[str, DocPath]) -> list[_Axis]:
    example = "For example: zip: [{optim.lr: [0.1, 0.3], optim.warmup_steps: [5, 10]}]"
    if not isinstance(groups, list) or not groups:
        raise locator.error(
            ("parameters", ZIP_KEY), "zip takes a list of groups", key=ZIP_KEY, hint=example
        )
    axes = []
    for g, group in enumerate(groups):
        group_path = ("parameters", ZIP_KEY, g)
        if not isinstance(group, dict) or not group:
            raise locator.error(
                group_path, "a zip group is a mapping of keys to lists", key=f"zip[{g}]", hint=example
            )
        lengths: dict[str, int] = {}
        for name, values in group.items():
            path = (*group_path, name)
            _check_parameter_name(name, path, locator, declared)
            _check_value_list(values, name, path, locator)
            first_name, first_length = next(iter(lengths.items()), (name, len(values)))
            if len(values) != first_length:
                raise locator.error(
                    path,
                    f"has {len(values)} values but '{first_name}' has {first_length}",
                    key=name,
                    hint="Lists in one zip group vary together, so they need equal lengths.",
                )
            lengths[name] = len(values)
        names = tuple(group)
        axes.append(
            _Axis(
                keys=names,
                path=group_path,
                rows=tuple(zip(*(group[n] for n in names))),
                row_paths=tuple(tuple((*group_path, n, i) for n in names) for i in range(lengths[names[0]])),
            )
        )
    return axes


def _check_parameter_name(name: Any, path: DocPath, locator: _Locator, declared: dict[str, DocPath]) -> None:
    if name in declared:
        first = locator.error(declared[name], "")
        where = f" (first on line {first.line})" if first.line else ""
        raise locator.error(path, f"swept twice{where}", key=str(name), hint="Keep one list of values per key.")
    if name not in _VITO_LEAVES:
        if name in _VITO_SECTIONS:
            inside = [leaf for leaf in _VITO_LEAVES if leaf.startswith(f"{name}.")]
            hint = f"Sweep a key inside it, e.g. '{inside[0]}'."
            raise locator.error(path, "is a section of the vito config, not a value", key=str(name), hint=hint)
        hint = _did_you_mean(str(name), _VITO_LEAVES) or "The settable keys are the fields of vito/config.py."
        raise locator.error(path, "unknown parameter", key=str(name), hint=hint)
    declared[name] = path


def _check_value_list(values: Any, name: str, path: DocPath, locator: _Locator) -> None:
    if isinstance(values, dict):
        raise locator.error(path, "zip groups take lists of values, not distributions", key=name)
    if not isinstance(values, list):
        raise locator.error(
            path,
            f"expected a list of values to try, got {_short_repr(values)}",
            key=name,
            hint=f"Write [{_short_repr(values)}], or set a fixed value under 'base:'.",
        )
    if not values:
        raise locator.error(path, "empty list of values: the sweep would have no trials", key=name)


# ---------------------------------------------------------------- the base config


def _resolve_base(spec: SweepSpec, base_overrides: list[tuple[str, Any, str]]) -> dict[str, Any]:
    """Load (if a path), apply `-o base.x=v`, validate as VitoConfig; errors name the base's own file and line."""
    spec_locator = spec._locator
    if isinstance(spec.base, str):
        path = _spec_dir(spec) / spec.base
        shown = os.path.normpath(path) if spec.source_file else spec.base
        try:
            text = path.read_text()
        except OSError as exc:
            raise spec_locator.error(
                ("base",), f"cannot read the base config {shown}: {exc.strerror}", key="base",
                hint="A relative base path is resolved from the spec file's folder.",
            ) from None
        tree, lines = load_with_lines(text, shown)
        if tree is None:
            tree = {}
        if not isinstance(tree, dict):
            raise SpecError("a base config must be a mapping of vito settings", file=shown, line=1)
        locator, prefix = _Locator(shown, lines, override_file=spec.source_file, override_key_prefix="base."), ()
    else:
        tree, locator, prefix = copy.deepcopy(spec.base), spec_locator, ("base",)
    for dotted, value, text in base_overrides:
        set_dotted(tree, dotted, value)
        locator.record_override(prefix + tuple(dotted.split(".")), text)
    try:
        config = VitoConfig.model_validate(tree)
    except ValidationError as exc:
        raise _spec_error_from(exc, locator, prefix, _vito_key_hint(_dotted(prefix) + "." if prefix else "")) from None
    return config.to_dict()


# ---------------------------------------------------------------- loading


def load_spec(path: str | Path, overrides: Sequence[str] = ()) -> SweepSpec:
    """Read and validate a sweep spec, applying `-o key=value` overrides (keys are dotted paths into the spec)."""
    file = str(path)
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise SpecError(f"cannot read the sweep spec: {exc.strerror}", file=file) from None
    data, lines = load_with_lines(text, file)
    locator = _Locator(file, lines)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SpecError("a sweep spec must be a mapping (name:, base:, parameters:, ...)", file=file, line=1)
    if "source_file" in data:  # a field of the model, but the file system sets it, not the spec
        raise locator.error(("source_file",), "unknown key", key="source_file")

    base_overrides = []
    for override in overrides:
        key, value = _parse_override(override, file)
        if key.startswith("base."):
            dotted = key.removeprefix("base.")
            if dotted not in _VITO_LEAVES and dotted not in _VITO_SECTIONS:
                hint = _did_you_mean(dotted, _VITO_LEAVES + _VITO_SECTIONS, prefix="base.")
                raise SpecError("unknown key", file=file, key=key, hint=hint, override=override)
            base_overrides.append((dotted, value, override))
        else:
            _apply_override(data, key, value, override, locator)

    try:
        spec = SweepSpec.model_validate({**data, "source_file": file}, context={"locator": locator})
    except ValidationError as exc:
        raise _spec_error_from(exc, locator, (), _spec_key_hint) from None
    spec._base_dict = _resolve_base(spec, base_overrides)
    return spec


def _parse_override(text: str, file: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key or key.startswith(".") or key.endswith(".") or key == "base.":
        raise SpecError(
            "an override must look like key=value",
            file=file,
            override=text,
            hint="For example: -o resources.nodes=2, -o base.loss.temperature=0.2, "
            "-o parameters.optim.lr=[0.1,0.3].",
        )
    try:
        return key, parse_value(value)
    except yaml.YAMLError as exc:  # name the override, not a position inside a one-line string
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpecError(
            f"cannot parse the value as YAML: {problem}", file=file, key=key, override=text,
            hint="Quote the value if it is meant as text.",
        ) from None


def _apply_override(data: dict[str, Any], key: str, value: Any, text: str, locator: _Locator) -> None:
    if key.startswith("parameters."):
        name = key.removeprefix("parameters.")  # parameter names contain dots: keep them whole
        parameters = data.setdefault("parameters", {})
        if not isinstance(parameters, dict):
            raise locator.error(("parameters",), "parameters must be a mapping", key="parameters")
        path = _zip_member_path(parameters, name) or ("parameters", name)
        target = parameters
        for part in path[1:-1]:
            target = target[part]
        target[name] = value
    else:
        path = tuple(key.split("."))
        set_dotted(data, key, value)
    locator.record_override(path, text)


def _zip_member_path(parameters: dict[str, Any], name: str) -> DocPath | None:
    """Overriding a key that sits in a zip group replaces its list inside the group."""
    groups = parameters.get(ZIP_KEY)
    for g, group in enumerate(groups if isinstance(groups, list) else []):
        if isinstance(group, dict) and name in group:
            return ("parameters", ZIP_KEY, g, name)
    return None


# ---------------------------------------------------------------- trials


@dataclass(frozen=True)
class Trial:
    """One point of a sweep: the swept values (in spec order), the resolved config and its identity."""

    index: int
    params: dict[str, Any]
    config: VitoConfig
    key: str  # config.fingerprint(): names the checkpoint prefix, MLflow tag, job name, log folder


@dataclass(frozen=True)
class _Assignment:
    values: tuple[tuple[str, Any], ...]  # (dotted key, value) in spec order
    sources: dict[str, DocPath]  # where each value is written, for errors


def expand(spec: SweepSpec) -> list[Trial]:
    """Every trial of the sweep, each validated as a full VitoConfig. Duplicate trials are an error."""
    locator = spec._locator
    axes = _parse_parameters(spec.parameters, spec.method, locator)
    if spec.method == "random":
        assignments = _random_assignments(axes, spec.count or 0, spec.seed)
    else:
        assignments = _grid_assignments(axes)
    base = spec.base_config_dict()
    trials: list[Trial] = []
    first_with_key: dict[str, tuple[Trial, _Assignment]] = {}
    for index, assignment in enumerate(assignments):
        tree = copy.deepcopy(base)
        for name, value in assignment.values:
            set_dotted(tree, name, copy.deepcopy(value))
        try:
            config = VitoConfig.model_validate(tree)
        except ValidationError as exc:
            raise _trial_error(exc, assignment, spec) from None
        trial = Trial(index=index, params=dict(assignment.values), config=config, key=config.fingerprint())
        if trial.key in first_with_key:
            raise _duplicate_error(spec, *first_with_key[trial.key], trial, assignment)
        first_with_key[trial.key] = (trial, assignment)
        trials.append(trial)
    return trials


def _grid_assignments(axes: list[_Axis]) -> list[_Assignment]:
    assignments = []
    for positions in itertools.product(*(range(len(axis.rows)) for axis in axes)):  # first axis varies slowest
        values, sources = [], {}
        for axis, position in zip(axes, positions):
            for name, value, source in zip(axis.keys, axis.rows[position], axis.row_paths[position]):
                values.append((name, value))
                sources[name] = source
        assignments.append(_Assignment(tuple(values), sources))
    return assignments


def _random_assignments(axes: list[_Axis], count: int, seed: int) -> list[_Assignment]:
    rng = random.Random(seed)  # draws in a fixed order (trial by trial, axis by axis): reproducible
    assignments = []
    for _ in range(count):
        values, sources = [], {}
        for axis in axes:
            if axis.distribution is not None:
                values.append((axis.keys[0], axis.distribution.sample(rng)))
                sources[axis.keys[0]] = axis.path
                continue
            position = rng.randrange(len(axis.rows))  # a list (or a zip group's rows) is a uniform choice
            for name, value, source in zip(axis.keys, axis.rows[position], axis.row_paths[position]):
                values.append((name, value))
                sources[name] = source
        assignments.append(_Assignment(tuple(values), sources))
    return assignments


def _trial_error(exc: ValidationError, assignment: _Assignment, spec: SweepSpec) -> SpecError:
    """Point a resolved config's validation error at the swept value that caused it, if one did."""
    detail = exc.errors()[0]
    loc = _dotted(detail["loc"])
    for name, value in assignment.values:
        if loc == name or loc.startswith(f"{name}.") or name.startswith(f"{loc}."):
            message = detail["msg"].removeprefix("Value error, ")
            if not isinstance(value, (dict, list)):
                message += f" (got {_short_repr(value)})"
            hint = None
            if detail["type"] in ("list_type", "tuple_type") and not isinstance(value, list):
                hint = f"'{name}' takes a list, so each value to try is itself a list: write [[...], [...]]."
            return spec._locator.error(assignment.sources[name], message, key=name, hint=hint)
    # Not caused by a swept value: the base and the swept values are invalid together.
    message = f"{detail['msg'].removeprefix('Value error, ')} with parameters {dict(assignment.values)}"
    return spec._locator.error(("base",), message, key=loc or None)


def _duplicate_error(
    spec: SweepSpec, first: Trial, first_assignment: _Assignment, trial: Trial, assignment: _Assignment
) -> SpecError:
    message = f"trials {first.index} and {trial.index} resolve to the same config ({_short_repr(trial.params)})"
    if spec.method == "random":
        hint = "Random draws repeated a config: lower count, widen the choices, or use method: grid."
        return spec._locator.error(("count",), message, key="count", hint=hint)
    # In a grid, the culprit is a value written twice (or two spellings of one value, like 1 and 1.0).
    name = next(
        (n for n, _ in assignment.values if assignment.sources[n] != first_assignment.sources[n]),
        assignment.values[0][0] if assignment.values else None,
    )
    path = assignment.sources[name] if name else ("parameters",)
    return spec._locator.error(path, message, key=name, hint="Remove the repeated value.")


def check_trials_fit_resources(spec: SweepSpec, trials: Sequence[Trial]) -> None:
    """Each trial's global batch must split evenly over its ranks; caught here, before submission."""
    ranks = spec.resources.nodes * spec.resources.tasks_per_node
    for trial in trials:
        batch = trial.config.data.batch_size
        if batch % ranks:
            raise SpecError(
                f"data.batch_size {batch} (trial {trial.index}) does not split evenly over {ranks} ranks "
                f"({spec.resources.nodes} nodes x {spec.resources.tasks_per_node} tasks)",
                file=spec.source_file,
                key="data.batch_size",
                hint=f"Use a multiple of {ranks}, or change resources.nodes / tasks_per_node.",
            )
