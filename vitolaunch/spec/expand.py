"""A validated spec -> its trials: the grid or random assignments of its axes, each a validated VitoConfig.

A trial is the base vito config with some dotted keys set; its key is the hash of the resolved config, so the
same config reached through different specs is the same trial.
"""

from __future__ import annotations

import copy
import itertools
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from vito.config import VitoConfig, set_dotted
from vitolaunch.errors import SpecError
from vitolaunch.spec.locate import DocPath, dotted, short_repr
from vitolaunch.spec.parameters import Axis
from vitolaunch.spec.resources import Resources, with_signal_delay
from vitolaunch.spec.schema import SweepSpec


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
    if spec.method == "random":
        assignments = _random_assignments(spec.axes, spec.count or 0, spec.seed)
    else:
        assignments = _grid_assignments(spec.axes)
    base = spec.base_config()
    base_tree = base.to_dict()
    trials: list[Trial] = []
    first_with_key: dict[str, tuple[Trial, _Assignment]] = {}
    for index, assignment in enumerate(assignments):
        config = _config(base, base_tree, assignment, spec)
        trial = Trial(index=index, params=dict(assignment.values), config=config, key=config.fingerprint())
        if trial.key in first_with_key:
            raise _duplicate_error(spec, *first_with_key[trial.key], trial, assignment)
        first_with_key[trial.key] = (trial, assignment)
        trials.append(trial)
    return trials


def _config(base: VitoConfig, base_tree: dict[str, Any], assignment: _Assignment, spec: SweepSpec) -> VitoConfig:
    """The base with the assignment's values set, validated once; the base itself when nothing is swept."""
    if not assignment.values:
        return base
    tree = copy.deepcopy(base_tree)
    for name, value in assignment.values:
        set_dotted(tree, name, copy.deepcopy(value))
    try:
        return VitoConfig.model_validate(tree)
    except ValidationError as exc:
        raise _trial_error(exc, assignment, spec) from None


def _grid_assignments(axes: list[Axis]) -> list[_Assignment]:
    assignments = []
    for positions in itertools.product(*(range(len(axis.rows)) for axis in axes)):  # first axis varies slowest
        values, sources = [], {}
        for axis, position in zip(axes, positions):
            for name, value, source in zip(axis.keys, axis.rows[position], axis.row_paths[position]):
                values.append((name, value))
                sources[name] = source
        assignments.append(_Assignment(tuple(values), sources))
    return assignments


def _random_assignments(axes: list[Axis], count: int, seed: int) -> list[_Assignment]:
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
    loc = dotted(detail["loc"])
    for name, value in assignment.values:
        if loc == name or loc.startswith(f"{name}.") or name.startswith(f"{loc}."):
            message = detail["msg"].removeprefix("Value error, ")
            if not isinstance(value, (dict, list)):
                message += f" (got {short_repr(value)})"
            hint = None
            if detail["type"] in ("list_type", "tuple_type") and not isinstance(value, list):
                hint = f"'{name}' takes a list, so each value to try is itself a list: write [[...], [...]]."
            return spec.error_at(assignment.sources[name], message, key=name, hint=hint)
    # Not caused by a swept value: the base and the swept values are invalid together.
    message = f"{detail['msg'].removeprefix('Value error, ')} with parameters {dict(assignment.values)}"
    return spec.error_at(("base",), message, key=loc or None)


def _duplicate_error(
    spec: SweepSpec, first: Trial, first_assignment: _Assignment, trial: Trial, assignment: _Assignment
) -> SpecError:
    message = f"trials {first.index} and {trial.index} resolve to the same config ({short_repr(trial.params)})"
    if spec.method == "random":
        hint = "Random draws repeated a config: lower count, widen the choices, or use method: grid."
        return spec.error_at(("count",), message, key="count", hint=hint)
    # In a grid, the culprit is a value written twice (or two spellings of one value, like 1 and 1.0).
    name = next(
        (n for n, _ in assignment.values if assignment.sources[n] != first_assignment.sources[n]),
        assignment.values[0][0] if assignment.values else None,
    )
    path = assignment.sources[name] if name else ("parameters",)
    return spec.error_at(path, message, key=name, hint="Remove the repeated value.")


def check_trials_fit_resources(spec: SweepSpec, trials: Sequence[Trial]) -> None:
    """Each trial's global batch must split evenly over its ranks; caught here, before submission."""
    ranks = spec.resources.ranks
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


def trial_resources(spec: SweepSpec, trials: Sequence[Trial]) -> Resources:
    """The spec's resources with what depends on the trials resolved: the warning before the time limit, from
    the largest checkpoint among them (resources.with_signal_delay) unless the spec sets signal_delay_s."""
    return with_signal_delay(spec.resources, [(t.config.model.arch, t.config.model.width) for t in trials])
