"""`task: evaluate` specs: validation, and expansion into (checkpoint x grid) trials against a stand-in registry."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.unit.fake_registry import FakeRegistry
from tests.unit.run_records import RunRecord, run_record
from vito.checkpoint import MARKER_CONFIG, CheckpointStore
from vito.config import VitoConfig
from vitolaunch.errors import SpecError, VitolaunchError
from vitolaunch.launch.evaluate_targets import expand_evaluate
from vitolaunch.spec import expand, load_spec
from vitolaunch.tracking.records import TAG_CHECKPOINT, TAG_KIND, TAG_SWEEP, TAG_SWEPT

PRETRAIN = VitoConfig.model_validate({"model": {"width": 8}, "train": {"steps": 7}, "eval": {"train_clips": 9}})


def committed_store(root: Path, steps: tuple[int, ...]) -> str:
    store = CheckpointStore(str(root))
    for step in steps:
        local = root.parent / f"local_{root.name}_{step}"
        local.mkdir(parents=True)
        (local / "mp_rank_00_model_states.pt").write_bytes(b"weights")
        store.commit(step, store.upload(step, local))
    return str(root)


def trial_record(run_id: str, checkpoint: str, status: str = "FINISHED", temperature: float = 0.1) -> RunRecord:
    tags = {TAG_KIND: "trial", TAG_SWEEP: "pre", TAG_CHECKPOINT: checkpoint,
            TAG_SWEPT: json.dumps({"loss.temperature": temperature})}
    return run_record(status, tags, run_id=run_id, name=f"pre-{run_id}", start_time=None, experiment_id="7")


@pytest.fixture
def registry(tmp_path: Path) -> FakeRegistry:
    first = committed_store(tmp_path / "ckpt" / "a", (4, 7))
    second = committed_store(tmp_path / "ckpt" / "b", (7,))
    records = [trial_record("aaaa1111", first, temperature=0.1), trial_record("bbbb2222", second, temperature=0.2)]
    config = PRETRAIN.to_dict()
    return FakeRegistry({"pre": records}, {"aaaa1111": config, "bbbb2222": config})


def write_spec(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "evaluate.yaml"
    path.write_text(textwrap.dedent(body))
    return path


def test_evaluate_spec_needs_targets_and_pretrain_specs_refuse_them(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="needs something to evaluate"):
        load_spec(write_spec(tmp_path, "name: ev\ntask: evaluate\n"))
    with pytest.raises(SpecError, match="applies only to task: evaluate"):
        load_spec(write_spec(tmp_path, "name: ev\nevaluate: {runs: [x]}\n"))
    with pytest.raises(SpecError, match="evaluate"):
        load_spec(write_spec(tmp_path, "name: ev\ntask: evaluate\nevaluate: {}\n"))
    with pytest.raises(SpecError, match="that is an evaluate sweep"):
        load_spec(write_spec(tmp_path, "name: ev\nparameters: {eval.checkpoint: [/x]}\n"))


def test_sweep_target_crossed_with_the_grid(tmp_path: Path, registry: FakeRegistry) -> None:
    spec = load_spec(write_spec(tmp_path, """\
        name: ev
        task: evaluate
        evaluate: {runs: [pre]}
        base: {eval: {probe_epochs: 33}}
        parameters:
          eval.severities: [[1], [5]]
        """))
    plan = expand_evaluate(spec, expand(spec), registry)
    trials = plan.trials
    assert len(trials) == 4 and [t.index for t in trials] == [0, 1, 2, 3]
    assert len({t.key for t in trials}) == 4
    first = trials[0].config
    assert first.eval.checkpoint.endswith("ckpt/a") and first.eval.checkpoint_step == 7  # the newest committed step
    assert first.eval.pretrain_run_id == "aaaa1111"
    assert first.model == PRETRAIN.model and first.train.steps == 7, "the network comes from the pretraining run"
    assert first.eval.probe_epochs == 33 and first.eval.train_clips == 64, "the eval section comes from the spec"
    assert [t.config.eval.severities for t in trials] == [[1], [5], [1], [5]]
    assert trials[2].params["pretrain.run"] == "bbbb2222" and trials[2].params["pretrain.loss.temperature"] == 0.2
    assert trials[0].params["eval.severities"] == [1] and trials[0].params["pretrain.step"] == 7
    assert plan.experiment == "exp-7", "recorded next to the runs it evaluates"
    assert spec.tracking.experiment == "vitolaunch", "the spec is left as it was given"


def test_step_and_direct_checkpoints(tmp_path: Path, registry: FakeRegistry) -> None:
    spec = load_spec(write_spec(tmp_path, """\
        name: ev
        task: evaluate
        evaluate: {runs: [aaaa], step: 4}
        tracking: {experiment: mine}
        """))
    plan = expand_evaluate(spec, expand(spec), registry)
    (trial,) = plan.trials
    assert trial.config.eval.checkpoint_step == 4 and plan.experiment is None and spec.tracking.experiment == "mine"
    spec = load_spec(write_spec(tmp_path, """\
        name: ev
        task: evaluate
        evaluate: {runs: [aaaa], step: 5}
        """))
    with pytest.raises(VitolaunchError, match="step 5 is not a committed checkpoint"):
        expand_evaluate(spec, expand(spec), registry)


def test_unfinished_runs_are_refused_unless_asked(tmp_path: Path, registry: FakeRegistry) -> None:
    registry.sweeps["pre"][1] = trial_record("bbbb2222", registry.sweeps["pre"][1].tags[TAG_CHECKPOINT], status="KILLED")
    spec = load_spec(write_spec(tmp_path, "name: ev\ntask: evaluate\nevaluate: {runs: [pre]}\n"))
    with pytest.raises(VitolaunchError, match="include_unfinished"):
        expand_evaluate(spec, expand(spec), registry)
    spec = load_spec(write_spec(tmp_path, "name: ev\ntask: evaluate\nevaluate: {runs: [pre], include_unfinished: true}\n"))
    assert len(expand_evaluate(spec, expand(spec), registry).trials) == 2


def test_base_outside_eval_is_refused(tmp_path: Path, registry: FakeRegistry) -> None:
    spec = load_spec(write_spec(tmp_path, """\
        name: ev
        task: evaluate
        evaluate: {runs: [pre]}
        base: {model: {width: 16}}
        """))
    with pytest.raises(SpecError, match="takes the network and its data from the pretraining run"):
        expand_evaluate(spec, expand(spec), registry)


def test_same_checkpoint_twice_is_evaluated_once(tmp_path: Path, registry: FakeRegistry) -> None:
    spec = load_spec(write_spec(tmp_path, "name: ev\ntask: evaluate\nevaluate: {runs: [pre, aaaa1111]}\n"))
    assert len(expand_evaluate(spec, expand(spec), registry).trials) == 2


def committed_with_config(root: Path, step: int, config: dict | None) -> str:
    """A checkpoint MLflow does not know; its marker records `config` (None: as older versions committed)."""
    local = root.parent / f"{root.name}_local"
    local.mkdir()
    (local / "mp_rank_00_model_states.pt").write_bytes(b"not even a torch file: never read")
    store = CheckpointStore(str(root))
    store.commit(step, store.upload(step, local), {"world_size": 1, **({MARKER_CONFIG: config} if config else {})})
    return str(root)


def test_checkpoints_unknown_to_mlflow_take_their_config_from_the_marker(tmp_path: Path, registry: FakeRegistry) -> None:
    root = committed_with_config(tmp_path / "foreign", 3, PRETRAIN.to_dict())
    spec = load_spec(write_spec(tmp_path, f"""\
        name: ev
        task: evaluate
        evaluate: {{checkpoints: ["{root}"]}}
        """))
    plan = expand_evaluate(spec, expand(spec), registry)
    (trial,) = plan.trials
    assert plan.experiment is None, "no run to sit next to: the spec's experiment"
    assert trial.config.eval.checkpoint == str(root) and trial.config.eval.checkpoint_step == 3
    assert trial.config.model == PRETRAIN.model and trial.config.eval.pretrain_run_id is None
    assert trial.params == {"pretrain.checkpoint": str(root), "pretrain.step": 3}
    # The same, swept as a parameter.
    spec = load_spec(write_spec(tmp_path, f"""\
        name: ev
        task: evaluate
        parameters: {{eval.checkpoint: ["{root}"]}}
        """))
    (swept,) = expand_evaluate(spec, expand(spec), registry).trials
    assert swept.key == trial.key


def test_a_marker_without_config_is_one_clear_error(tmp_path: Path, registry: FakeRegistry) -> None:
    root = committed_with_config(tmp_path / "old", 5, None)
    spec = load_spec(write_spec(tmp_path, f"name: ev\ntask: evaluate\nevaluate: {{checkpoints: [\"{root}\"]}}\n"))
    with pytest.raises(VitolaunchError, match=f"checkpoint {root} step 5: its COMMITTED marker holds no config") as error:
        expand_evaluate(spec, expand(spec), registry)
    assert "evaluate: {runs: [RUN_ID]}" in str(error.value)


RESOLVE_WITHOUT_TORCH = """
import sys
from tests.unit.fake_registry import FakeRegistry
from vitolaunch.launch.evaluate_targets import expand_evaluate
from vitolaunch.spec import expand, load_spec

spec = load_spec(sys.argv[1])
plan = expand_evaluate(spec, expand(spec), FakeRegistry({}, {}))
assert [t.config.eval.checkpoint_step for t in plan.trials] == [3], plan.trials
print("torch imported:", "torch" in sys.modules)
"""


def test_resolving_a_checkpoint_target_imports_no_torch(tmp_path: Path) -> None:
    # In a fresh process: this one has torch already. The CLI's own check, with a real MLflow, is in
    # tests/integration/test_evaluate_sweep.py.
    root = committed_with_config(tmp_path / "foreign", 3, PRETRAIN.to_dict())
    spec = write_spec(tmp_path, f"name: ev\ntask: evaluate\nevaluate: {{checkpoints: [\"{root}\"]}}\n")
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(repo), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-c", RESOLVE_WITHOUT_TORCH, str(spec)], env=env, capture_output=True,
                          text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "torch imported: False" in done.stdout
