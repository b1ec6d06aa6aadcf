"""Sweep spec: expansion into trials, trial identity, overrides, and located error messages."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from vitolaunch.errors import SpecError, VitolaunchError
from vitolaunch.spec import SweepSpec, expand, load_spec
from vitolaunch.spec.resources import Resources, resolve_cluster
from vitolaunch.spec.yaml_lines import load_with_lines
from vitolaunch.workspace import Workspace

REPO = Path(__file__).resolve().parents[2]

TINY_BASE = """\
train:
  steps: 5
model:
  width: 8
"""


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def spec_error(path: Path, overrides: tuple[str, ...] = ()) -> SpecError:
    """Load and expand; the spec must be rejected."""
    with pytest.raises(SpecError) as caught:
        expand(load_spec(path, overrides))
    return caught.value


def assert_located(error: SpecError, path: Path, line: int | None, key: str) -> str:
    text = str(error)
    assert str(path) in text
    if line is not None:
        assert f"{path}:{line}:" in text, text
        assert error.line == line
    assert f"key '{key}'" in text, text
    assert error.key == key
    assert "\n" not in text  # one message, one line
    return text


# ---------------------------------------------------------------- expansion


def test_grid_of_two_lists_is_their_product_in_spec_order(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "grid.yaml",
        """\
        name: grid
        parameters:
          loss.temperature: [0.05, 0.1, 0.2]
          optim.lr: [0.1, 0.3]
        """,
    )
    trials = expand(load_spec(path))
    assert [t.params for t in trials] == [
        {"loss.temperature": temperature, "optim.lr": lr} for temperature in (0.05, 0.1, 0.2) for lr in (0.1, 0.3)
    ]
    assert [t.index for t in trials] == list(range(6))
    for trial in trials:
        assert trial.config.loss.temperature == trial.params["loss.temperature"]
        assert trial.config.optim.lr == trial.params["optim.lr"]
        assert trial.key == trial.config.fingerprint()
    assert len({t.key for t in trials}) == 6


def test_zip_group_varies_together(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "zip.yaml",
        """\
        name: zipped
        parameters:
          zip:
            - optim.lr: [0.1, 0.3, 0.5]
              optim.warmup_steps: [5, 10, 20]
        """,
    )
    trials = expand(load_spec(path))
    assert [(t.config.optim.lr, t.config.optim.warmup_steps) for t in trials] == [(0.1, 5), (0.3, 10), (0.5, 20)]


def test_grid_times_zip_groups(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "mixed.yaml",
        """\
        name: mixed
        parameters:
          loss.temperature: [0.1, 0.2]
          zip:
            - optim.lr: [0.1, 0.3]
              optim.warmup_steps: [5, 10]
            - train.seed: [1, 2, 3]
              eval.seed: [4, 5, 6]
        """,
    )
    trials = expand(load_spec(path))
    assert len(trials) == 2 * 2 * 3
    assert list(trials[0].params) == ["loss.temperature", "optim.lr", "optim.warmup_steps", "train.seed", "eval.seed"]
    pairs = {(t.params["optim.lr"], t.params["optim.warmup_steps"]) for t in trials}
    assert pairs == {(0.1, 5), (0.3, 10)}
    seeds = {(t.config.train.seed, t.config.eval.seed) for t in trials}
    assert seeds == {(1, 4), (2, 5), (3, 6)}
    assert {t.params["loss.temperature"] for t in trials} == {0.1, 0.2}


def test_no_parameters_is_one_trial_of_the_base(tmp_path: Path) -> None:
    path = write(tmp_path, "one.yaml", "name: one\nbase: {train: {steps: 7}}\n")
    [trial] = expand(load_spec(path))
    assert trial.params == {} and trial.config.train.steps == 7


RANDOM_SPEC = """\
name: random-search
method: random
count: 40
seed: {seed}
parameters:
  optim.lr: {{distribution: log_uniform, low: 1.0e-4, high: 1.0e-1}}
  loss.temperature: {{distribution: uniform, low: 0.05, high: 0.5}}
  train.steps: {{distribution: int_uniform, low: 10, high: 20}}
  model.pooling: [attention, average]
"""


def test_random_is_reproducible_and_respects_bounds(tmp_path: Path) -> None:
    path = write(tmp_path, "random.yaml", RANDOM_SPEC.format(seed=7))
    first, again = expand(load_spec(path)), expand(load_spec(path))
    assert len(first) == 40
    assert [t.params for t in first] == [t.params for t in again]
    assert [t.key for t in first] == [t.key for t in again]
    for trial in first:
        assert 1e-4 <= trial.params["optim.lr"] <= 1e-1
        assert 0.05 <= trial.params["loss.temperature"] <= 0.5
        steps = trial.params["train.steps"]
        assert isinstance(steps, int) and 10 <= steps <= 20
        assert trial.params["model.pooling"] in ("attention", "average")
        assert trial.config.optim.lr == trial.params["optim.lr"]
    # log_uniform spreads over decades: a uniform draw would put ~90% above 1e-2.
    logs = [math.log10(t.params["optim.lr"]) for t in first]
    assert sum(value < -2 for value in logs) >= 15
    assert len({t.params["train.steps"] for t in first}) >= 8  # 40 draws over 11 integers
    assert {t.params["model.pooling"] for t in first} == {"attention", "average"}


def test_random_seed_changes_the_draws(tmp_path: Path) -> None:
    seven = expand(load_spec(write(tmp_path, "a.yaml", RANDOM_SPEC.format(seed=7))))
    eight = expand(load_spec(write(tmp_path, "b.yaml", RANDOM_SPEC.format(seed=8))))
    assert [t.params for t in seven] != [t.params for t in eight]


def test_int_uniform_is_inclusive(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "ints.yaml",
        """\
        name: ints
        method: random
        count: 30
        parameters:
          train.steps: {distribution: int_uniform, low: 1, high: 3}
          optim.lr: {distribution: uniform, low: 0.1, high: 0.9}
        """,
    )
    assert {t.params["train.steps"] for t in expand(load_spec(path))} == {1, 2, 3}


# ---------------------------------------------------------------- trial identity


def test_trial_keys_are_stable_across_processes(tmp_path: Path) -> None:
    path = write(tmp_path, "grid.yaml", "name: g\nparameters:\n  loss.temperature: [0.1, 0.2]\n")
    here = [t.key for t in expand(load_spec(path))]
    code = f"from vitolaunch.spec import expand, load_spec; print(*[t.key for t in expand(load_spec({str(path)!r}))])"
    there = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True, env=_env()
    ).stdout.split()
    assert here == there
    assert len(set(here)) == 2 and all(len(key) == 12 for key in here)


def test_same_config_through_different_specs_has_the_same_key(tmp_path: Path) -> None:
    sweep = write(tmp_path, "sweep.yaml", "name: a\nparameters:\n  loss.temperature: [0.1, 0.2]\n  optim.lr: [0.3]\n")
    other = write(
        tmp_path,
        "other.yaml",
        """\
        name: b
        description: a different sweep reaching one of the same points
        base:
          loss: {temperature: 0.2}
        parameters:
          train.steps: [100, 50]
        """,
    )
    from_sweep = {t.params["loss.temperature"]: t.key for t in expand(load_spec(sweep))}
    from_other = {t.params["train.steps"]: t.key for t in expand(load_spec(other))}
    assert from_sweep[0.2] == from_other[100]  # 100 steps and lr 0.3 are the defaults
    assert from_other[50] not in from_sweep.values()


def test_base_as_path_or_inline_gives_the_same_trials(tmp_path: Path) -> None:
    write(tmp_path, "configs/tiny.yaml", TINY_BASE)
    parameters = "parameters:\n  loss.temperature: [0.1, 0.2]\n"
    by_path = write(tmp_path, "sweeps/by_path.yaml", "name: s\nbase: ../configs/tiny.yaml\n" + parameters)
    inline = write(tmp_path, "inline.yaml", "name: s\nbase:\n" + textwrap.indent(TINY_BASE, "  ") + parameters)
    spec_path, spec_inline = load_spec(by_path), load_spec(inline)
    assert [t.key for t in expand(spec_path)] == [t.key for t in expand(spec_inline)]
    assert expand(spec_path)[0].config.model.width == 8
    assert spec_path.base_config_dict() == spec_inline.base_config_dict()
    assert spec_path.spec_hash() == spec_inline.spec_hash()


def test_spec_hash_changes_with_content(tmp_path: Path) -> None:
    one = load_spec(write(tmp_path, "a.yaml", "name: s\nparameters:\n  loss.temperature: [0.1, 0.2]\n"))
    two = load_spec(write(tmp_path, "b.yaml", "name: s\nparameters:\n  loss.temperature: [0.1, 0.3]\n"))
    assert one.spec_hash() != two.spec_hash() and len(one.spec_hash()) == 12


# ---------------------------------------------------------------- overrides and resources


def test_overrides_set_spec_base_and_parameters(tmp_path: Path) -> None:
    write(tmp_path, "configs/tiny.yaml", TINY_BASE)
    path = write(
        tmp_path,
        "sweep.yaml",
        """\
        name: s
        base: configs/tiny.yaml
        parameters:
          loss.temperature: [0.1, 0.2]
          zip:
            - optim.lr: [0.1, 0.3]
              optim.warmup_steps: [5, 10]
        """,
    )
    spec = load_spec(
        path,
        [
            "resources.nodes=2",
            "tracking.experiment=ablations",
            "base.train.steps=9",
            "parameters.loss.temperature=[0.3, 0.4, 0.5]",
            "parameters.optim.lr=[1.0, 2.0]",
            "parameters.ema.base_momentum=[0.99]",
        ],
    )
    assert spec.resources.nodes == 2 and spec.tracking.experiment == "ablations"
    trials = expand(spec)
    assert len(trials) == 3 * 2
    assert {t.config.train.steps for t in trials} == {9}
    assert {t.config.model.width for t in trials} == {8}  # the rest of the base file still applies
    assert {(t.params["optim.lr"], t.params["optim.warmup_steps"]) for t in trials} == {(1.0, 5), (2.0, 10)}
    assert list(trials[0].params)[-1] == "ema.base_momentum"
    assert load_spec(path).spec_hash() != spec.spec_hash()


def test_tasks_per_node_follows_gpus_unless_given() -> None:
    assert Resources(gpus_per_node=4).tasks_per_node == 4
    assert Resources(gpus_per_node=4, tasks_per_node=1).tasks_per_node == 1
    assert Resources().tasks_per_node == 1


def test_resources_record_is_the_flat_tag_format_and_reads_back(tmp_path: Path) -> None:
    spec = load_spec(REPO / "sweeps" / "temperature_ablation.yaml")
    record = spec.resources.to_record()
    # The `vitolaunch.spec.resources` tag of existing runs: these keys, in this order, flat.
    assert json.dumps(record) == (
        '{"nodes": 4, "tasks_per_node": 8, "gpus_per_node": 8, "cpus_per_task": 10, "mem_gb": 480.0, '
        '"timeout_min": 2880, "partition": "gpu", "array_parallelism": 2, "retries_timeout": 10, "retries_crash": 2, '
        '"exclusive": true, "setup": ["module load cuda/12.4 nccl/2.21"], '
        '"env": {"OMP_NUM_THREADS": "10", "NCCL_SOCKET_IFNAME": "ib0", "NCCL_IB_HCA": "mlx5"}}'
    )
    back = Resources.from_record(json.loads(json.dumps(record)))
    assert back.to_record() == record and back.retries.timeout == 10 and back.ranks == 32
    assert Resources.from_record({}) == Resources()  # a run without the tag: the defaults
    assert Resources.from_record({"gpus_per_node": 2}).tasks_per_node == 2


def test_resolve_cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert resolve_cluster(Resources()) == "local"
    assert resolve_cluster(Resources(cluster="slurm")) == "slurm"
    sbatch = tmp_path / "sbatch"
    sbatch.write_text("#!/bin/sh\n")
    sbatch.chmod(0o755)
    assert resolve_cluster(Resources()) == "slurm"
    assert resolve_cluster(Resources(cluster="local")) == "local"


def test_checkpoint_root_resolves_from_the_spec_folder_or_the_workspace(tmp_path: Path) -> None:
    workspace = Workspace(tmp_path / "ws")
    spec = load_spec(write(tmp_path, "sweeps/s.yaml", "name: s\nstorage: {checkpoint_root: ../ckpt}\n"))
    assert spec.folder == tmp_path / "sweeps"
    assert spec.resolved_checkpoint_root(workspace) == str((tmp_path / "ckpt").resolve())
    plain = SweepSpec(name="plain", storage={"checkpoint_root": "s3://bucket/ckpt"})
    assert plain.resolved_checkpoint_root(workspace) == "s3://bucket/ckpt"
    default = load_spec(write(tmp_path, "sweeps/d.yaml", "name: d\n"))
    assert default.resolved_checkpoint_root(workspace) == str((tmp_path / "ws" / "checkpoints").resolve())
    assert SweepSpec(name="inline").folder == Path.cwd()


# ---------------------------------------------------------------- bad specs: one located message each

ZIP_UNEQUAL = """\
name: s
parameters:
  zip:
    - optim.lr: [0.1, 0.3]
      optim.warmup_steps: [5, 10, 20]
"""

# (spec text, line, key, texts the message must contain); the spec is bad.yaml and the error names it.
LOCATED_ERRORS = {
    "unknown top-level key": (
        "name: s\n\nparamters:\n  loss.temperature: [0.1]\n", 3, "paramters", ["Did you mean 'parameters'?"]
    ),
    "vito key at top level points to base": ("name: s\nloss:\n  temperature: 0.1\n", 2, "loss", ["under 'base:'"]),
    "unknown nested spec key": (
        "name: s\nresources:\n  nodes: 1\n  node: 2\n", 4, "resources.node", ["Did you mean 'resources.nodes'?"]
    ),
    "unknown parameter path": (
        "name: s\nparameters:\n  optim.lr: [0.1]\n  loss.temprature: [0.1, 0.2]\n", 4, "loss.temprature",
        ["unknown parameter", "Did you mean 'loss.temperature'?"],
    ),
    "unknown parameter without its section": (
        "name: s\nparameters:\n  warmup_steps: [1]\n", 3, "warmup_steps", ["Did you mean 'optim.warmup_steps'?"]
    ),
    "wrong type": ("name: s\nresources:\n  nodes: two\n", 3, "resources.nodes", ["valid integer", "'two'"]),
    "bad name": ("name: Temperature Ablation\n", 1, "name", ["lowercase"]),
    "missing name": ("description: no name\n", None, "name", ["required key is missing"]),
    "empty grid list": ("name: s\nparameters:\n  loss.temperature: []\n", 3, "loss.temperature", ["empty list"]),
    "scalar instead of list": ("name: s\nparameters:\n  loss.temperature: 0.1\n", 3, "loss.temperature", ["[0.1]"]),
    "unequal zip": (ZIP_UNEQUAL, 5, "optim.warmup_steps", ["3 values", "'optim.lr' has 2"]),
    "duplicate key names both lines": (
        "name: s\nparameters:\n  loss.temperature: [0.1]\n  loss.temperature: [0.2]\n", 4,
        "parameters.loss.temperature", ["duplicate key", "line 3"],
    ),
    "distribution in a grid": (
        "name: s\nparameters:\n  optim.lr: {distribution: log_uniform, low: 1.0e-4, high: 0.1}\n", 3, "optim.lr",
        ["method: random"],
    ),
    "bad distribution": (
        "name: s\nmethod: random\ncount: 2\nparameters:\n  optim.lr: {distribution: log_uniform, low: 0, high: 0.1}\n",
        5, "optim.lr", ["low > 0"],
    ),
    "random needs count": ("name: s\nmethod: random\nparameters:\n  optim.lr: [0.1]\n", 2, "count", ["count"]),
    "grid forbids count": ("name: s\ncount: 3\n", 2, "count", ["only to method: random"]),
    "out-of-range value points at its item": (
        "name: s\nparameters:\n  loss.temperature:\n    - 0.1\n    - -0.2\n", 5, "loss.temperature",
        ["greater than 0", "-0.2"],
    ),
    "wrong type in a zip group": (
        "name: s\nparameters:\n  zip:\n    - optim.lr: [0.1, 0.3]\n      optim.name: [lars, sgd]\n", 5, "optim.name",
        ["'lars' or 'adamw'"],
    ),
    "list-valued key needs a list of lists": ("name: s\nparameters:\n  model.scales: [4, 5]\n", 3, "model.scales", ["[["]),
    "duplicate trials": (
        "name: s\nparameters:\n  optim.warmup_steps: [5, 10, 5.0]\n", 3, "optim.warmup_steps",
        ["trials 0 and 2", "same config"],
    ),
    "wrong type in inline base": (
        "name: s\nbase:\n  train:\n    steps: many\n", 4, "base.train.steps", ["valid integer"]
    ),
    "missing base file": ("name: s\n\nbase: configs/nope.yaml\n", 3, "base", ["nope.yaml"]),
}


@pytest.mark.parametrize(("text", "line", "key", "expected"), LOCATED_ERRORS.values(), ids=LOCATED_ERRORS.keys())
def test_bad_spec_is_one_located_message(tmp_path: Path, text: str, line: int | None, key: str, expected: list[str]) -> None:
    path = write(tmp_path, "bad.yaml", text)
    message = assert_located(spec_error(path), path, line, key)
    for part in expected:
        assert part in message, message


def test_list_valued_key_takes_a_list_of_lists(tmp_path: Path) -> None:
    good = write(tmp_path, "good.yaml", "name: s\nparameters:\n  model.scales: [[4], [4, 5]]\n")
    assert [t.config.model.scales for t in expand(load_spec(good))] == [[4], [4, 5]]


def test_unknown_key_in_base_file_names_that_file(tmp_path: Path) -> None:
    base = write(tmp_path, "configs/tiny.yaml", "train:\n  steps: 5\nmodel:\n  widht: 8\n")
    path = write(tmp_path, "bad.yaml", "name: s\nbase: configs/tiny.yaml\n")
    text = assert_located(spec_error(path), base, 4, "model.widht")
    assert "Did you mean 'model.width'?" in text


def test_bad_yaml_syntax(tmp_path: Path) -> None:
    path = write(tmp_path, "bad.yaml", "name: s\nparameters:\n  loss.temperature: [0.1, 0.2\n  optim.lr: [0.1]\n")
    with pytest.raises(SpecError) as caught:
        load_spec(path)
    text = str(caught.value)
    assert text.startswith(f"{path}:4:") and "invalid YAML" in text and "line 3" in text


BAD_OVERRIDES = {
    "resources.node=2": ("resources.node", "Did you mean 'resources.nodes'?"),
    "resources.nodes=two": ("resources.nodes", "valid integer"),
    "base.loss.temprature=1": ("base.loss.temprature", "Did you mean 'base.loss.temperature'?"),
    "base.loss.temperature=-1": ("base.loss.temperature", "greater than 0"),
    "parameters.loss.temp=[1]": ("loss.temp", "Did you mean 'loss.temperature'?"),
    "parameters.loss.temperature=[-1]": ("loss.temperature", "greater than 0"),
}


@pytest.mark.parametrize(("override", "key", "expected"), [(o, *case) for o, case in BAD_OVERRIDES.items()], ids=BAD_OVERRIDES)
def test_bad_override_names_the_option(tmp_path: Path, override: str, key: str, expected: str) -> None:
    path = write(tmp_path, "s.yaml", "name: s\nparameters:\n  loss.temperature: [0.1]\n")
    text = assert_located(spec_error(path, (override,)), path, None, key)
    assert f"(-o {override})" in text and expected in text, text


def test_override_without_a_value(tmp_path: Path) -> None:
    path = write(tmp_path, "s.yaml", "name: s\nparameters:\n  loss.temperature: [0.1]\n")
    assert "key=value" in str(spec_error(path, ("resources.nodes",)))


def test_error_format() -> None:
    error = SpecError(
        "unknown key", file="sweeps/x.yaml", line=12, key="loss.temprature", hint="Did you mean 'loss.temperature'?"
    )
    assert str(error) == "sweeps/x.yaml:12: key 'loss.temprature': unknown key. Did you mean 'loss.temperature'?"
    assert str(SpecError("bad value", key="k")) == "key 'k': bad value."
    assert isinstance(error, VitolaunchError)


def test_yaml_lines_keep_dotted_keys_whole() -> None:
    data, lines = load_with_lines("a: 1\nparameters:\n  loss.temperature:\n    - 0.1\n    - 0.2\n", "f.yaml")
    assert data == {"a": 1, "parameters": {"loss.temperature": [0.1, 0.2]}}
    assert lines[("parameters", "loss.temperature")] == 3
    assert lines[("parameters", "loss.temperature", 1)] == 5


def test_spec_import_stays_light() -> None:
    code = "import sys, vitolaunch.spec; print(*sorted({'torch', 'mlflow', 'deepspeed'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, env=_env())
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
