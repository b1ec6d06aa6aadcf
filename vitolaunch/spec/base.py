"""The spec's base vito config: loaded (when a path), `-o base.x=v` applied, validated once as a VitoConfig."""

from __future__ import annotations

import copy
import os
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from vito.config import VitoConfig, set_dotted
from vitolaunch.errors import SpecError
from vitolaunch.spec.locate import Locator, dotted, located_validation_error
from vitolaunch.spec.vito_keys import vito_key_hint
from vitolaunch.spec.yaml_lines import load_with_lines

if TYPE_CHECKING:
    from vitolaunch.spec.schema import SweepSpec

BaseOverride = tuple[str, Any, str]  # (dotted vito key, value, the `-o` text that set it)


def resolve_base(spec: SweepSpec, base_overrides: list[BaseOverride]) -> VitoConfig:
    """Errors name the base's own file and line, or the spec's line for an inline base."""
    spec_locator = spec.locator
    if isinstance(spec.base, str):
        path = spec.folder / spec.base
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
        locator, prefix = Locator(shown, lines, override_file=spec.source_file, override_key_prefix="base."), ()
    else:
        tree, locator, prefix = copy.deepcopy(spec.base), spec_locator, ("base",)
    for key, value, text in base_overrides:
        set_dotted(tree, key, value)
        locator.record_override(prefix + tuple(key.split(".")), text)
    try:
        return VitoConfig.model_validate(tree)
    except ValidationError as exc:
        raise located_validation_error(exc, locator, prefix, vito_key_hint(dotted(prefix) + "." if prefix else "")) from None
