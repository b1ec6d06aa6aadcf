"""Hostile or mistaken spec files are refused before they are expanded: size and alias bombs."""

from __future__ import annotations

import pytest

from vitolaunch.errors import SpecError
from vitolaunch.spec import load_spec
from vitolaunch.spec.yaml_lines import MAX_EXPANDED_VALUES, MAX_FILE_BYTES, load_with_lines


def _billion_laughs(levels: int = 9) -> str:
    lines = ["name: bomb", 'a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    previous = "a"
    for name in "bcdefghijklm"[: levels - 1]:
        lines.append(f"{name}: &{name} [" + ", ".join([f"*{previous}"] * 9) + "]")
        previous = name
    lines.append(f"parameters: {{loss.temperature: *{previous}}}")
    return "\n".join(lines) + "\n"


@pytest.mark.timeout(10)  # expanding the aliases would run for minutes and take gigabytes
def test_alias_bomb_is_refused_at_the_line_where_it_multiplies(tmp_path):
    spec = tmp_path / "bomb.yaml"
    spec.write_text(_billion_laughs())
    with pytest.raises(SpecError) as refused:
        load_spec(spec)
    # a: 10 values, b: 91, ... f (line 7): 597,871 > 100,000.
    assert refused.value.line == 7 and refused.value.file == str(spec)
    assert f"more than {MAX_EXPANDED_VALUES:,} values" in str(refused.value) and "YAML bomb" in str(refused.value)


def test_aliases_that_stay_small_still_load():
    data, lines = load_with_lines("x: &x [1, 2]\ny: [*x, *x]\nz: *x\n", "ok.yaml")
    assert data == {"x": [1, 2], "y": [[1, 2], [1, 2]], "z": [1, 2]}
    assert lines[("z",)] == 3


@pytest.mark.timeout(10)
def test_recursive_alias_is_refused():
    with pytest.raises(SpecError) as refused:
        load_with_lines("name: x\nbase: &r [1, *r]\n", "rec.yaml")
    assert refused.value.line == 2 and "recursive alias" in str(refused.value)


def test_oversized_file_is_refused_with_its_size(tmp_path):
    spec = tmp_path / "huge.yaml"
    spec.write_text("name: huge\n" + "# padding\n" * (MAX_FILE_BYTES // 10 + 1))
    with pytest.raises(SpecError) as refused:
        load_spec(spec)
    assert refused.value.file == str(spec) and "KiB" in str(refused.value)
