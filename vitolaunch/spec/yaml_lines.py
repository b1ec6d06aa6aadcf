"""Load YAML and remember the line of every key, so errors can point at `file:line`."""

from __future__ import annotations

import re
from typing import Any

import yaml

from vitolaunch.errors import SpecError

Path_ = tuple[Any, ...]  # keys and list indices from the document root, e.g. ("parameters", "optim.lr", 1)

# A sweep spec, base config or profile is a page of settings. The bounds are far above any real file and far
# below what hurts: a "billion laughs" file of nested aliases is a few hundred bytes that would expand to
# billions of values (and gigabytes) if loaded naively.
MAX_FILE_BYTES = 1024 * 1024
MAX_EXPANDED_VALUES = 100_000


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

    Keys containing dots stay single keys. Duplicate keys are an error naming both lines. A file larger than
    MAX_FILE_BYTES, or whose aliases expand to more than MAX_EXPANDED_VALUES values, is refused before anything
    is expanded.
    """
    size = len(text.encode())
    if size > MAX_FILE_BYTES:
        raise SpecError(f"the file is {size / 1024:.0f} KiB, over the {MAX_FILE_BYTES // 1024} KiB a spec may have",
                        file=filename, hint="Is this the right file? Sweep specs and profiles are short YAML files.")
    loader = _Loader(text)
    try:
        root = loader.get_single_node()
        if root is None:  # an empty document
            return None, {}
        _check_expansion(root, filename)
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


def _check_expansion(root: yaml.Node, filename: str) -> None:
    """Refuse a document whose aliases would expand it past MAX_EXPANDED_VALUES, naming the culprit's line.

    The composed document is a graph in which an alias is the same node object used again, so the expanded
    size is computed per distinct node (memoised): linear in the file, however deep the nesting.
    """
    sizes: dict[int, int] = {}
    in_progress: set[int] = set()

    def expanded(node: yaml.Node) -> int:
        known = sizes.get(id(node))
        if known is not None:
            return known
        if id(node) in in_progress:
            raise SpecError("an alias refers to the value that contains it (a recursive alias)",
                            file=filename, line=node.start_mark.line + 1, hint="Replace the alias with the values.")
        in_progress.add(id(node))
        children: list[yaml.Node] = []
        if isinstance(node, yaml.MappingNode):
            children = [part for pair in node.value for part in pair]
        elif isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        total = 1
        for child in children:
            total += expanded(child)
            if total > MAX_EXPANDED_VALUES:
                # Each child alone is within the bound (it would have raised), so this is the innermost node
                # over it: its line is where the aliases multiply.
                raise SpecError(
                    f"aliases here expand to more than {MAX_EXPANDED_VALUES:,} values",
                    file=filename, line=node.start_mark.line + 1,
                    hint="Is this a YAML bomb? Write the values out, or use fewer nested aliases.",
                )
        in_progress.discard(id(node))
        sizes[id(node)] = total
        return total

    expanded(root)


def _dotted(path: Path_) -> str:
    return ".".join(str(part) for part in path)
