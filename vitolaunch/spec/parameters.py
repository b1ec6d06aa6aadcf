"""The `parameters:` section parsed into axes: the independent dimensions a sweep varies.

Parsed once, while the spec is validated; the axes stay on the spec for expansion into trials. Every
problem (unknown key, empty list, unequal zip group, bad distribution) is a located SpecError.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from vitolaunch.spec.locate import (
    DocPath,
    Locator,
    did_you_mean,
    dotted,
    located_validation_error,
    short_repr,
)
from vitolaunch.spec.vito_keys import VITO_LEAVES, VITO_SECTIONS

ZIP_KEY = "zip"  # under `parameters:`, a list of groups whose lists vary together


class RandomDistribution(BaseModel):
    """A distribution a random sweep draws one parameter from."""

    model_config = ConfigDict(extra="forbid")

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


@dataclass(frozen=True)
class Axis:
    """One independent dimension of a sweep: one key, or a zip group's keys varying together."""

    keys: tuple[str, ...]
    path: DocPath  # where it is declared, for errors
    rows: tuple[tuple[Any, ...], ...] = ()  # one value per key, per position along the axis
    row_paths: tuple[tuple[DocPath, ...], ...] = ()  # where each of those values is written
    distribution: RandomDistribution | None = None


def parse_parameters(parameters: dict[str, Any], method: str, locator: Locator) -> list[Axis]:
    axes: list[Axis] = []
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
                raise located_validation_error(
                    exc, locator, path, lambda loc, valid=valid, name=name: did_you_mean(dotted(loc), valid, prefix=f"{name}."), name
                ) from None
            axes.append(Axis(keys=(name,), path=path, distribution=distribution))
        else:
            _check_value_list(values, name, path, locator)
            axes.append(
                Axis(
                    keys=(name,),
                    path=path,
                    rows=tuple((value,) for value in values),
                    row_paths=tuple(((*path, i),) for i in range(len(values))),
                )
            )
    return axes


def _parse_zip(groups: Any, locator: Locator, declared: dict[str, DocPath]) -> list[Axis]:
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
            Axis(
                keys=names,
                path=group_path,
                rows=tuple(zip(*(group[n] for n in names))),
                row_paths=tuple(tuple((*group_path, n, i) for n in names) for i in range(lengths[names[0]])),
            )
        )
    return axes


def _check_parameter_name(name: Any, path: DocPath, locator: Locator, declared: dict[str, DocPath]) -> None:
    if name in declared:
        first = locator.error(declared[name], "")
        where = f" (first on line {first.line})" if first.line else ""
        raise locator.error(path, f"swept twice{where}", key=str(name), hint="Keep one list of values per key.")
    if name not in VITO_LEAVES:
        if name in VITO_SECTIONS:
            inside = [leaf for leaf in VITO_LEAVES if leaf.startswith(f"{name}.")]
            hint = f"Sweep a key inside it, e.g. '{inside[0]}'."
            raise locator.error(path, "is a section of the vito config, not a value", key=str(name), hint=hint)
        hint = did_you_mean(str(name), VITO_LEAVES) or "The settable keys are the fields of vito/config.py."
        raise locator.error(path, "unknown parameter", key=str(name), hint=hint)
    declared[name] = path


def _check_value_list(values: Any, name: str, path: DocPath, locator: Locator) -> None:
    if isinstance(values, dict):
        raise locator.error(path, "zip groups take lists of values, not distributions", key=name)
    if not isinstance(values, list):
        raise locator.error(
            path,
            f"expected a list of values to try, got {short_repr(values)}",
            key=name,
            hint=f"Write [{short_repr(values)}], or set a fixed value under 'base:'.",
        )
    if not values:
        raise locator.error(path, "empty list of values: the sweep would have no trials", key=name)
