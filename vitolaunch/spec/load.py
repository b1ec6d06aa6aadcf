"""Reading a spec file: YAML with line numbers, `-o key=value` overrides applied, then validation."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from vito.config import set_dotted
from vitolaunch.errors import SpecError
from vitolaunch.spec.base import BaseOverride
from vitolaunch.spec.locate import (
    DocPath,
    Locator,
    did_you_mean,
    located_validation_error,
)
from vitolaunch.spec.parameters import ZIP_KEY
from vitolaunch.spec.profile import apply_profile
from vitolaunch.spec.schema import SweepSpec, spec_key_hint
from vitolaunch.spec.vito_keys import VITO_LEAVES, VITO_SECTIONS
from vitolaunch.spec.yaml_lines import load_with_lines, parse_value


def load_spec(path: str | Path, overrides: Sequence[str] = ()) -> SweepSpec:
    """Read and validate a sweep spec, applying `-o key=value` overrides (keys are dotted paths into the spec)."""
    file = str(path)
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise SpecError(f"cannot read the sweep spec: {exc.strerror}", file=file) from None
    data, lines = load_with_lines(text, file)
    locator = Locator(file, lines)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SpecError("a sweep spec must be a mapping (name:, base:, parameters:, ...)", file=file, line=1)
    if "source_file" in data:  # a field of the model, but the file system sets it, not the spec
        raise locator.error(("source_file",), "unknown key", key="source_file")

    base_overrides: list[BaseOverride] = []
    for override in overrides:
        key, value = _parse_override(override, file)
        if key.startswith("base."):
            dotted_key = key.removeprefix("base.")
            if dotted_key not in VITO_LEAVES and dotted_key not in VITO_SECTIONS:
                hint = did_you_mean(dotted_key, VITO_LEAVES + VITO_SECTIONS, prefix="base.")
                raise SpecError("unknown key", file=file, key=key, hint=hint, override=override)
            base_overrides.append((dotted_key, value, override))
        else:
            _apply_override(data, key, value, override, locator)

    sources = apply_profile(data, locator)  # the cluster profile's site settings, under the spec's own
    context = {"locator": locator, "base_overrides": base_overrides}
    try:
        spec = SweepSpec.model_validate({**data, "source_file": file}, context=context)
    except ValidationError as exc:
        raise located_validation_error(exc, locator, (), spec_key_hint) from None
    spec._resource_sources = sources
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


def _apply_override(data: dict[str, Any], key: str, value: Any, text: str, locator: Locator) -> None:
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
