"""Where a value of a loaded document came from, and errors that point there.

A `Locator` maps a path in a loaded document (a tuple of keys and list indexes) to its origin: a line of the
file, or the `-o key=value` override that set it. Every located `SpecError` of the spec, its base config and
the modules that check a spec further (evaluate targets) is made by one.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from vitolaunch.errors import SpecError

DocPath = tuple[Any, ...]


@dataclass
class Locator:
    """Maps a path in a loaded document to its origin: a line of `file`, or a `-o key=value` override."""

    file: str | None = None
    lines: dict[DocPath, int] = field(default_factory=dict)
    overrides: dict[DocPath, str] = field(default_factory=dict)
    # A base file's `-o base.x=v` overrides were typed against the spec: name the spec and the spec-level key.
    override_file: str | None = None
    override_key_prefix: str = ""
    # Values merged in from another file (a cluster profile's settings): (file, line) of each, so an error about
    # one points where the user wrote it, not at the spec line of the section it was merged into.
    merged_from: dict[DocPath, tuple[str | None, int | None]] = field(default_factory=dict)

    def error(self, path: DocPath, message: str, *, key: str | None = None, hint: str | None = None) -> SpecError:
        # The innermost known ancestor is the most precise place we can point at (a missing key has no line).
        for end in range(len(path), -1, -1):
            prefix = tuple(path[:end])
            if prefix in self.merged_from:
                file, line = self.merged_from[prefix]
                return SpecError(message, file=file, line=line, key=key, hint=hint)
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


def dotted(path: Iterable[Any]) -> str:
    return ".".join(str(part) for part in path)


def did_you_mean(name: str, candidates: Sequence[str], prefix: str = "") -> str | None:
    """The valid key the user most likely meant: same last part first ('lr' -> 'optim.lr'), then spelling."""
    last = name.rsplit(".", 1)[-1]
    same_leaf = [c for c in candidates if c.rsplit(".", 1)[-1] == last and c != name]
    if len(same_leaf) == 1:
        match: str | None = same_leaf[0]
    else:
        matches = difflib.get_close_matches(name, candidates, n=1)
        match = matches[0] if matches else None
    return f"Did you mean '{prefix}{match}'?" if match else None


def short_repr(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _without_tags(loc: DocPath, prefix: DocPath, locator: Locator, detail: dict) -> DocPath:
    """loc without a tagged union's tag (`benchmarks.ucf.ucf101.split` -> `benchmarks.ucf.split`): a part the
    document does not have under a mapping it has, followed by a key the document has there (or by the missing
    key itself), or last in an error about that whole mapping."""
    known = set(locator.lines) | set(locator.overrides)
    missing = detail["type"] == "missing"
    for i, _ in enumerate(loc):
        here, parent = (*prefix, *loc[:i + 1]), (*prefix, *loc[:i])
        if here in known or parent not in locator.lines:
            continue
        if i == len(loc) - 1:
            tag = isinstance(detail["input"], dict) and not missing
        else:
            tag = (*parent, loc[i + 1]) in known or (missing and i == len(loc) - 2)
        if tag:
            return (*loc[:i], *loc[i + 1:])
    return loc


def located_validation_error(
    exc: ValidationError,
    locator: Locator,
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
        if loc and loc[-1] == "[key]":  # a bad mapping key: point at the key itself
            loc = loc[:-1]
        loc = tuple(part for part in loc if not str(part).startswith("<"))  # a union's tag (<...>) is no key
        loc = _without_tags(loc, prefix, locator, detail)
        key = (dotted(prefix + loc) if key_prefix is None else dotted((key_prefix, *loc))) or None
        kind = detail["type"]
        hint = None
        if kind == "extra_forbidden":
            message, hint = "unknown key", unknown_key_hint(loc)
        elif kind == "missing":
            message = "required key is missing"
        else:
            message = detail["msg"].removeprefix("Value error, ")
            if not isinstance(detail["input"], (dict, list)) and kind != "credential":  # never print a secret
                message += f" (got {short_repr(detail['input'])})"
            if kind == "string_pattern_mismatch" and loc == ("name",):
                hint = "Use lowercase letters, digits, '_' and '-': the name labels folders and jobs."
        error = locator.error(prefix + loc, message, key=key, hint=hint)
        if kind == "credential" and error.override:  # the -o text holds the secret itself
            error.override = error.override.split("=", 1)[0] + "=<hidden>"
        errors.append(error)
    return min(errors, key=lambda e: (e.line is None, e.line or 0))
