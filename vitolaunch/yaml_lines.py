"""Load YAML and remember the line of every key, so errors can point at `file:line`."""

from __future__ import annotations

import re
from typing import Any

import yaml

from vitolaunch.errors import SpecError

Path_ = tuple[Any, ...]  # keys and list indices from the document root, e.g. ("parameters", "optim.lr", 1)


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads `1e-4` as a float (YAML 1.1 insists on `1.0e-4`, a classic sweep typo)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def parse_value(text: str) -> Any:
    """Parse one scalar or flow value (an `-o key=value` right-hand side) like a YAML value."""
    return yaml.load(text, Loader=_Loader)


def load_with_lines(text: str, filename: str) -> tuple[Any, dict[Path_, int]]:
    """Return the document's data and a map from each key's (or list item's) path to its 1-based line.

    Keys containing dots stay single keys. Duplicate keys are an error naming both lines.
    """
    loader = _Loader(text)
    try:
        root = loader.get_single_node()
        if root is None:  # an empty document
            return None, {}
        lines: dict[Path_, int] = {}
        return _build(loader, root, (), lines, filename), lines
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        message = f"invalid YAML: {exc.problem or exc.context}"
        if exc.context and exc.context_mark and mark is not exc.context_mark:
            # An unclosed bracket is reported where the file ends; also name where it was opened.
            message += f" ({exc.context} on line {exc.context_mark.line + 1})"
        raise SpecError(message, file=filename, line=mark.line + 1 if mark else None) from None
    except yaml.YAMLError as exc:
        raise SpecError(f"invalid YAML: {exc}", file=filename) from None
    finally:
        loader.dispose()


def _build(loader: _Loader, node: yaml.Node, path: Path_, lines: dict[Path_, int], filename: str) -> Any:
    if isinstance(node, yaml.MappingNode):
        explicit = {id(key) for key, _ in node.value if key.tag != "tag:yaml.org,2002:merge"}
        loader.flatten_mapping(node)  # resolves `<<: *anchor`; merged keys come first and may be overridden
        result: dict[Any, Any] = {}
        first_line: dict[Any, int] = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                hash(key)
            except TypeError:
                raise SpecError("a mapping key must be a plain value", file=filename, line=line) from None
            if key in first_line and id(key_node) in explicit and first_line[key] is not None:
                raise SpecError(
                    f"duplicate key '{key}' (first on line {first_line[key]})",
                    file=filename,
                    line=line,
                    key=_dotted(path + (key,)),
                    hint="Keep only one of them.",
                )
            first_line[key] = line if id(key_node) in explicit else None
            lines[path + (key,)] = line
            result[key] = _build(loader, value_node, path + (key,), lines, filename)
        return result
    if isinstance(node, yaml.SequenceNode):
        items = []
        for index, item in enumerate(node.value):
            lines[path + (index,)] = item.start_mark.line + 1
            items.append(_build(loader, item, path + (index,), lines, filename))
        return items
    return loader.construct_object(node, deep=True)


def _dotted(path: Path_) -> str:
    return ".".join(str(part) for part in path)
